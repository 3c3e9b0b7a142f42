//! Arbitrary sequences of client inputs and time steps against the session
//! core, checked after every step (see `session_model.rs`).
#![no_main]

use libfuzzer_sys::fuzz_target;

mod session_model;

fuzz_target!(|data: &[u8]| {
    session_model::Harness::run(data);
});
