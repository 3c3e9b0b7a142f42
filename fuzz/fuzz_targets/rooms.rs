//! Arbitrary sequences of client actions against the pure room and name
//! rules, checked against a model after every step (see `rooms_model.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod rooms_model;

fuzz_target!(|data: &[u8]| {
    rooms_model::Harness::run(data);
});
