//! SDP compression: raw DEFLATE (RFC 1951) with a preset dictionary.
//!
//! Offers and answers are the bulk of signaling traffic, and most of an SDP is
//! boilerplate that every browser repeats: codec maps, RTCP feedback lines,
//! header-extension URIs. A preset dictionary of such lines lets even the first
//! message of a connection compress well, where plain DEFLATE has nothing to
//! refer back to yet.
//!
//! The format is deliberately the plainest one a browser library can speak:
//! raw DEFLATE, no zlib or gzip header, no checksum, with
//! [`DICTIONARY`] as the preset dictionary on both sides. In JavaScript this is
//! `pako.deflateRaw(sdp, { dictionary })` and
//! `pako.inflateRaw(data, { dictionary })`. Integrity is the transport's job
//! (WebSocket over TLS); the decoder still rejects anything that is not exactly
//! one complete DEFLATE stream.
//!
//! This module is pure: bytes in, bytes out, no I/O and no async.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Id of the preset dictionary, announced in `Welcome.sdp_dictionary`.
///
/// A new dictionary gets a new id and a new file; the bytes of a published id
/// never change, because peers inflate with the dictionary they were told.
pub const DICTIONARY_ID: u32 = 1;

/// The preset dictionary: common lines of Chrome, Firefox and Safari SDPs,
/// the most frequent last, since DEFLATE reaches the end of its window with the
/// shortest distance codes.
pub static DICTIONARY: &[u8] = include_bytes!("sdp_dictionary_v1.txt");

/// Compression level used by [`deflate`]. On the browser samples in
/// `tests/data/sdp`, level 9 is no smaller than the default level 6.
const LEVEL: u32 = 6;

/// How much the inflate output grows per step, so that a small message never
/// reserves `max` bytes up front.
const INFLATE_CHUNK: usize = 16 * 1024;

/// Why compressed SDP could not be inflated.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum SdpError {
    /// The inflated SDP would be longer than `max` bytes; inflation stopped
    /// there, so a deflate bomb costs at most `max` bytes of memory.
    #[error("inflated SDP exceeds {max} bytes")]
    TooLarge {
        /// The limit that was passed to [`inflate`].
        max: usize,
    },
    /// The data is not a valid DEFLATE stream (bad block type, bad code
    /// lengths, a distance reaching before the dictionary, ...).
    #[error("compressed SDP is corrupt")]
    Corrupt,
    /// The data ended before the final DEFLATE block did. A partial SDP is
    /// never returned.
    #[error("compressed SDP is truncated")]
    Truncated,
    /// The DEFLATE stream ended before the data did.
    #[error("{extra} bytes of trailing data after the compressed SDP")]
    TrailingData {
        /// How many bytes followed the end of the stream.
        extra: usize,
    },
}

/// Compresses `sdp` as raw DEFLATE with the preset [`DICTIONARY`].
///
/// Any input is accepted, including an empty one, and the result always
/// inflates back to `sdp` with [`inflate`].
pub fn deflate(sdp: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::new(LEVEL), false);
    compress
        .set_dictionary(DICTIONARY)
        .expect("a fresh raw deflate stream accepts a dictionary");
    // DEFLATE expands incompressible input by 5 bytes per 16 KiB stored block;
    // this capacity is enough in one pass, and the loop covers the rest.
    let mut out = Vec::with_capacity(sdp.len() + sdp.len() / 1000 + 64);
    loop {
        let consumed = compress.total_in() as usize;
        let status = compress
            .compress_vec(&sdp[consumed..], &mut out, FlushCompress::Finish)
            .expect("deflate of in-memory input cannot fail");
        match status {
            Status::StreamEnd => return out,
            Status::Ok | Status::BufError => out.reserve(out.capacity().max(64)),
        }
    }
}

/// Compresses `sdp` like [`deflate`], and returns `Some` only when that saves
/// bytes, so that a sender can fall back to the plain SDP.
pub fn deflate_if_smaller(sdp: &[u8]) -> Option<Vec<u8>> {
    let compressed = deflate(sdp);
    (compressed.len() < sdp.len()).then_some(compressed)
}

/// Inflates raw DEFLATE `data` made with the preset [`DICTIONARY`], producing
/// at most `max` bytes.
///
/// The output grows in steps of at most 16 KiB and never past `max + 1`
/// bytes, so hostile input cannot make this allocate more than that, plus
/// the fixed 32 KiB window inside the inflater.
///
/// # Errors
///
/// [`SdpError::TooLarge`] when the SDP is longer than `max`,
/// [`SdpError::Truncated`] when `data` stops before the end of the stream
/// (including empty `data`), [`SdpError::TrailingData`] when bytes follow it,
/// and [`SdpError::Corrupt`] for anything that is not DEFLATE.
pub fn inflate(data: &[u8], max: usize) -> Result<Vec<u8>, SdpError> {
    let mut decompress = Decompress::new(false);
    decompress
        .set_dictionary(DICTIONARY)
        .expect("a fresh raw inflate stream accepts a dictionary");
    // One byte beyond `max` is room enough to tell "exactly max" from "more".
    let limit = max.saturating_add(1);
    let mut out = Vec::new();
    loop {
        if out.len() == out.capacity() {
            if out.len() >= limit {
                return Err(SdpError::TooLarge { max });
            }
            let grown = out.len().saturating_add(INFLATE_CHUNK).min(limit);
            out.reserve_exact(grown - out.len());
        }
        let consumed = decompress.total_in() as usize;
        let produced = out.len();
        let status = decompress
            .decompress_vec(&data[consumed..], &mut out, FlushDecompress::None)
            .map_err(|_| SdpError::Corrupt)?;
        if out.len() > max {
            return Err(SdpError::TooLarge { max });
        }
        let consumed_now = decompress.total_in() as usize;
        match status {
            Status::StreamEnd if consumed_now == data.len() => return Ok(out),
            Status::StreamEnd => {
                return Err(SdpError::TrailingData {
                    extra: data.len() - consumed_now,
                })
            }
            Status::Ok | Status::BufError => {
                // The inflater stops only when it runs out of input or of
                // output space. With space left, it needs input we do not have.
                let stalled = consumed_now == consumed && out.len() == produced;
                if out.len() < out.capacity() || stalled {
                    if consumed_now == data.len() {
                        return Err(SdpError::Truncated);
                    }
                    if stalled {
                        return Err(SdpError::Corrupt);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const MAX: usize = 64 * 1024;

    /// Every browser-generated sample in `tests/data/sdp`, by file name.
    fn samples() -> Vec<(String, Vec<u8>)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/sdp");
        let mut samples: Vec<_> = std::fs::read_dir(&dir)
            .expect("tests/data/sdp exists")
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "sdp"))
            .map(|path| {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read(&path).unwrap())
            })
            .collect();
        samples.sort();
        assert!(
            samples.len() >= 5,
            "expected the browser samples in {dir:?}"
        );
        samples
    }

    #[test]
    fn samples_round_trip_and_shrink() {
        for (name, sdp) in samples() {
            let compressed = deflate(&sdp);
            assert_eq!(inflate(&compressed, MAX).unwrap(), sdp, "{name}");
            assert!(
                compressed.len() * 2 < sdp.len(),
                "{name}: {} -> {} bytes",
                sdp.len(),
                compressed.len()
            );
            assert_eq!(deflate_if_smaller(&sdp), Some(compressed), "{name}");
        }
    }

    #[test]
    fn dictionary_beats_plain_deflate_on_samples() {
        for (name, sdp) in samples() {
            let mut plain = flate2::write::DeflateEncoder::new(Vec::new(), Compression::new(LEVEL));
            std::io::Write::write_all(&mut plain, &sdp).unwrap();
            let plain = plain.finish().unwrap();
            assert!(deflate(&sdp).len() < plain.len(), "{name}");
        }
    }

    #[test]
    fn dictionary_is_small_and_text() {
        assert!(DICTIONARY.len() <= 8 * 1024);
        assert!(std::str::from_utf8(DICTIONARY).is_ok());
    }

    #[test]
    fn without_the_dictionary_samples_do_not_inflate() {
        let (_, sdp) = &samples()[0];
        let mut plain = Decompress::new(false);
        let mut out = Vec::with_capacity(MAX);
        let result = plain.decompress_vec(&deflate(sdp), &mut out, FlushDecompress::Finish);
        assert!(result.is_err() || out != *sdp);
    }

    #[test]
    fn limit_is_exact() {
        let (_, sdp) = &samples()[0];
        let compressed = deflate(sdp);
        assert_eq!(inflate(&compressed, sdp.len()).unwrap(), *sdp);
        assert_eq!(
            inflate(&compressed, sdp.len() - 1),
            Err(SdpError::TooLarge { max: sdp.len() - 1 })
        );
        assert_eq!(inflate(&compressed, 0), Err(SdpError::TooLarge { max: 0 }));
    }

    #[test]
    fn deflate_bomb_is_too_large() {
        let bomb = deflate(&vec![0u8; 10 * 1024 * 1024]);
        assert!(bomb.len() < 20 * 1024, "bomb is {} bytes", bomb.len());
        assert_eq!(inflate(&bomb, MAX), Err(SdpError::TooLarge { max: MAX }));
    }

    #[test]
    fn truncated_stream_is_an_error() {
        let (_, sdp) = &samples()[0];
        let compressed = deflate(sdp);
        for cut in 0..compressed.len() {
            assert_eq!(
                inflate(&compressed[..cut], MAX),
                Err(SdpError::Truncated),
                "cut at {cut} of {}",
                compressed.len()
            );
        }
    }

    #[test]
    fn trailing_data_is_an_error() {
        let (_, sdp) = &samples()[0];
        let mut compressed = deflate(sdp);
        compressed.extend_from_slice(b"\0garbage");
        assert_eq!(
            inflate(&compressed, MAX),
            Err(SdpError::TrailingData { extra: 8 })
        );
    }

    #[test]
    fn garbage_is_corrupt() {
        // BFINAL=1 with the reserved block type 11.
        assert_eq!(inflate(&[0xff; 64], MAX), Err(SdpError::Corrupt));
        // A plain-text SDP is not DEFLATE.
        assert!(inflate(b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n", MAX).is_err());
        // A stored block whose length check does not match.
        assert_eq!(
            inflate(&[0x01, 0x05, 0x00, 0x00, 0x00], MAX),
            Err(SdpError::Corrupt)
        );
    }

    #[test]
    fn empty_input() {
        assert_eq!(inflate(&[], MAX), Err(SdpError::Truncated));
        let empty = deflate(b"");
        assert!(!empty.is_empty());
        assert_eq!(inflate(&empty, MAX), Ok(Vec::new()));
        assert_eq!(inflate(&empty, 0), Ok(Vec::new()));
        assert_eq!(deflate_if_smaller(b""), None);
    }

    #[test]
    fn tiny_inputs_are_not_worth_compressing() {
        assert_eq!(deflate_if_smaller(b"x"), None);
        assert_eq!(deflate_if_smaller(b"Qz7"), None);
        assert_eq!(deflate_if_smaller(&[0x00, 0xff, 0x80, 0x7f]), None);
    }

    #[test]
    fn dictionary_lines_compress_to_almost_nothing() {
        // Any generic line taken from the dictionary is a single back-reference.
        let line = b"a=rtcp-fb:96 nack pli\r\n";
        assert!(DICTIONARY.windows(line.len()).any(|w| w == line));
        assert!(deflate(line).len() < 8);
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn round_trip(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
                prop_assert_eq!(inflate(&deflate(&data), 4096), Ok(data));
            }

            #[test]
            fn round_trip_sdp_like(lines in proptest::collection::vec("[a-z]=[ -~]{0,60}", 0..50)) {
                let sdp = lines.join("\r\n").into_bytes();
                prop_assert_eq!(inflate(&deflate(&sdp), sdp.len()), Ok(sdp));
            }

            #[test]
            fn inflate_never_panics_and_respects_max(
                data in proptest::collection::vec(any::<u8>(), 0..512),
                max in 0usize..8192,
            ) {
                if let Ok(out) = inflate(&data, max) {
                    prop_assert!(out.len() <= max);
                }
            }
        }
    }
}
