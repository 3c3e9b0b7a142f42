//! Arbitrary text as a text-mode frame and as each tutorial dialect: no
//! panic, and what converts decodes (or is refused) like any binary frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard::compat::{Dialect, Translator};
use switchboard::protocol::{decode, frame::split_frame, text, CodecLimits};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(mut frame) = text::to_frame(s) {
        if let Ok(raw) = split_frame(&mut frame, usize::MAX) {
            let _ = decode(&raw, &CodecLimits::default());
        }
    }
    let _ = text::claimed_seq(s);
    for dialect in [Dialect::Mesh, Dialect::Pair, Dialect::Users] {
        let mut t = Translator::new(dialect);
        for message in t.inbound(s).messages {
            let _ = t.outbound(&message);
        }
    }
});
