//! Arbitrary bytes as compressed SDP: inflate must never panic and never
//! return more than its limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::protocol::sdp;

const MAX: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(out) = sdp::inflate(data, MAX) {
        assert!(
            out.len() <= MAX,
            "inflated {} bytes, limit {MAX}",
            out.len()
        );
    }
});
