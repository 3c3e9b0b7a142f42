//! Arbitrary bytes as one WebSocket message: framing, protobuf and field
//! validation must never panic, whatever the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::{decode_message, CodecLimits};

fuzz_target!(|data: &[u8]| {
    let limits = CodecLimits::default();
    for frame in decode_message(bytes::Bytes::copy_from_slice(data), &limits) {
        let _ = frame;
    }
});
