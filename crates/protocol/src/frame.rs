//! The frame layer: a 12-byte header in front of each protobuf payload, and
//! several frames to one WebSocket message.
//!
//! ```text
//! offset  size  field
//! 0       1     version      (1)
//! 1       1     type         (MessageType)
//! 2       1     flags        (bit 0: DEFLATE_SDP; other bits must be 0)
//! 3       1     reserved     (sent as 0, ignored)
//! 4       4     seq          (u32, big-endian, per sender)
//! 8       4     length       (u32, big-endian, payload bytes)
//! 12      len   payload      (protobuf)
//! ```
//!
//! See `docs/PROTOCOL.md` for the full specification.

use bytes::{BufMut, Bytes, BytesMut};

use super::DecodeError;

/// Length of the fixed frame header.
pub const HEADER_LEN: usize = 12;
/// The frame-format version this crate reads and writes.
pub const VERSION: u8 = 1;

/// What a frame's payload is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum MessageType {
    /// `Hello`, client to server.
    Hello = 0x01,
    /// `Ping`, either direction.
    Ping = 0x02,
    /// `Pong`, either direction.
    Pong = 0x03,
    /// `Ack`, reserved for session resume.
    Ack = 0x04,
    /// `Join`, client to server.
    Join = 0x10,
    /// `Leave`, client to server.
    Leave = 0x11,
    /// `Login`, client to server.
    Login = 0x20,
    /// `Logout`, client to server.
    Logout = 0x21,
    /// `HangUp`, either direction.
    HangUp = 0x22,
    /// `SessionDescription` offer, either direction.
    Offer = 0x30,
    /// `SessionDescription` answer, either direction.
    Answer = 0x31,
    /// `IceCandidates`, either direction.
    Ice = 0x32,
    /// `Welcome`, server to client.
    Welcome = 0x81,
    /// `Joined`, server to client.
    Joined = 0x90,
    /// `PeerJoined`, server to client.
    PeerJoined = 0x91,
    /// `PeerLeft`, server to client.
    PeerLeft = 0x92,
    /// `RoomFull`, server to client.
    RoomFull = 0x93,
    /// `Left`, server to client.
    Left = 0x94,
    /// `LoginResult`, server to client.
    LoginResult = 0xA0,
    /// `Error`, server to client.
    Error = 0xE0,
}

impl MessageType {
    /// Every type, for tests and tables.
    pub const ALL: [MessageType; 20] = [
        MessageType::Hello,
        MessageType::Ping,
        MessageType::Pong,
        MessageType::Ack,
        MessageType::Join,
        MessageType::Leave,
        MessageType::Login,
        MessageType::Logout,
        MessageType::HangUp,
        MessageType::Offer,
        MessageType::Answer,
        MessageType::Ice,
        MessageType::Welcome,
        MessageType::Joined,
        MessageType::PeerJoined,
        MessageType::PeerLeft,
        MessageType::RoomFull,
        MessageType::Left,
        MessageType::LoginResult,
        MessageType::Error,
    ];

    /// The type of a type byte, if this version knows it.
    pub fn from_byte(b: u8) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| *t as u8 == b)
    }
}

/// Frame flag bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// The payload's `sdp` field is raw deflate with the preset dictionary.
    /// Valid on Offer and Answer only.
    pub const DEFLATE_SDP: Flags = Flags(0x01);
    /// Bits this version defines.
    pub const KNOWN: u8 = 0x01;

    /// Whether every bit of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Raw type byte (may be unknown to this version).
    pub kind: u8,
    /// Flag bits.
    pub flags: Flags,
    /// The sender's sequence number.
    pub seq: u32,
    /// Payload length in bytes.
    pub len: u32,
}

impl Header {
    /// Parses a header from the front of `buf`.
    ///
    /// Returns [`DecodeError::Incomplete`] when `buf` is shorter than a header
    /// and [`DecodeError::UnsupportedVersion`] for a version other than 1.
    pub fn parse(buf: &[u8]) -> Result<Header, DecodeError> {
        let Some(h) = buf.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Incomplete {
                needed: HEADER_LEN - buf.len(),
            });
        };
        if h[0] != VERSION {
            return Err(DecodeError::UnsupportedVersion { version: h[0] });
        }
        Ok(Header {
            kind: h[1],
            flags: Flags(h[2]),
            seq: u32::from_be_bytes([h[4], h[5], h[6], h[7]]),
            len: u32::from_be_bytes([h[8], h[9], h[10], h[11]]),
        })
    }

    /// Appends the 12 header bytes to `out`.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u8(VERSION);
        out.put_u8(self.kind);
        out.put_u8(self.flags.0);
        out.put_u8(0);
        out.put_u32(self.seq);
        out.put_u32(self.len);
    }
}

/// One frame cut out of a WebSocket message; the payload shares the
/// message's buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawFrame {
    /// The header.
    pub header: Header,
    /// The protobuf payload, `header.len` bytes.
    pub payload: Bytes,
}

/// Cuts the next frame off the front of `buf`.
///
/// Checks the declared length against `max_payload` before touching the
/// payload, and tells a short buffer ([`DecodeError::Incomplete`], with how
/// many more bytes are needed) from an invalid one.
pub fn split_frame(buf: &mut Bytes, max_payload: usize) -> Result<RawFrame, DecodeError> {
    let header = Header::parse(buf)?;
    let len = header.len as usize;
    if len > max_payload {
        return Err(DecodeError::TooLarge {
            size: len,
            max: max_payload,
        });
    }
    let total = HEADER_LEN + len;
    if buf.len() < total {
        return Err(DecodeError::Incomplete {
            needed: total - buf.len(),
        });
    }
    let mut frame = buf.split_to(total);
    let payload = frame.split_off(HEADER_LEN);
    Ok(RawFrame { header, payload })
}

/// Iterates over the frames of one WebSocket message.
///
/// A WebSocket message is complete, so a truncated trailing frame is an error
/// here ([`DecodeError::Truncated`]). Iteration stops after any error this
/// layer reports (wrong version, length over the limit, truncation, too many
/// frames): the rest of the message cannot be trusted. Errors found later by
/// [`decode`](super::decode) (unknown type, bad flags, bad payload) concern
/// one frame only, and the frames after it are still yielded.
#[derive(Debug)]
pub struct Frames {
    rest: Bytes,
    max_payload: usize,
    max_frames: usize,
    seen: usize,
    failed: bool,
}

impl Frames {
    /// Frames of `message`, each payload at most `max_payload` bytes, at most
    /// `max_frames` of them.
    pub fn new(message: Bytes, max_payload: usize, max_frames: usize) -> Frames {
        Frames {
            rest: message,
            max_payload,
            max_frames,
            seen: 0,
            failed: false,
        }
    }
}

impl Iterator for Frames {
    type Item = Result<RawFrame, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        if self.seen == self.max_frames {
            self.failed = true;
            return Some(Err(DecodeError::TooManyFrames {
                max: self.max_frames,
            }));
        }
        self.seen += 1;
        match split_frame(&mut self.rest, self.max_payload) {
            Ok(frame) => Some(Ok(frame)),
            Err(DecodeError::Incomplete { .. }) => {
                self.failed = true;
                Some(Err(DecodeError::Truncated))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// The sequence number after `seq`: wraps modulo 2³² and skips 0, which
/// `Error.request_seq` uses for "none".
pub fn next_seq(seq: u32) -> u32 {
    seq.wrapping_add(1).max(1)
}

/// Appends one frame (header and payload) to `out`.
pub fn write_frame(out: &mut BytesMut, kind: MessageType, flags: Flags, seq: u32, payload: &[u8]) {
    out.reserve(HEADER_LEN + payload.len());
    Header {
        kind: kind as u8,
        flags,
        seq,
        len: payload.len() as u32,
    }
    .write(out);
    out.put_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ping(seq: u32) -> Vec<u8> {
        let mut out = BytesMut::new();
        write_frame(
            &mut out,
            MessageType::Ping,
            Flags::default(),
            seq,
            &[0x08, 0x01],
        );
        out.to_vec()
    }

    #[test]
    fn header_layout() {
        let header = Header {
            kind: 0x30,
            flags: Flags::DEFLATE_SDP,
            seq: 0x0102_0304,
            len: 0x0a0b_0c0d,
        };
        let mut out = Vec::new();
        header.write(&mut out);
        assert_eq!(
            out,
            [0x01, 0x30, 0x01, 0x00, 0x01, 0x02, 0x03, 0x04, 0x0a, 0x0b, 0x0c, 0x0d]
        );
        assert_eq!(Header::parse(&out), Ok(header));
    }

    #[test]
    fn reserved_byte_is_ignored() {
        let mut bytes = ping(1);
        bytes[3] = 0xff;
        let header = Header::parse(&bytes).unwrap();
        assert_eq!(header.kind, 0x02);
        assert_eq!(header.len, 2);
    }

    #[test]
    fn wrong_version() {
        for version in [0x00, 0x02, 0xff] {
            let mut bytes = ping(1);
            bytes[0] = version;
            assert_eq!(
                Header::parse(&bytes),
                Err(DecodeError::UnsupportedVersion { version })
            );
            let mut frames = Frames::new(Bytes::from(bytes), 1024, 64);
            assert_eq!(
                frames.next(),
                Some(Err(DecodeError::UnsupportedVersion { version }))
            );
            assert_eq!(frames.next(), None);
        }
    }

    #[test]
    fn message_type_bytes_round_trip() {
        for kind in MessageType::ALL {
            assert_eq!(MessageType::from_byte(kind as u8), Some(kind));
        }
        let known = (0..=255u8)
            .filter(|b| MessageType::from_byte(*b).is_some())
            .count();
        assert_eq!(known, MessageType::ALL.len());
        // Reserved ranges stay unknown.
        for b in (0x05..=0x0f).chain(0xf0..=0xff) {
            assert_eq!(MessageType::from_byte(b), None, "{b:#04x}");
        }
    }

    #[test]
    fn split_frame_short_header_is_incomplete() {
        let bytes = ping(1);
        for have in 0..HEADER_LEN {
            let mut buf = Bytes::copy_from_slice(&bytes[..have]);
            assert_eq!(
                split_frame(&mut buf, 1024),
                Err(DecodeError::Incomplete {
                    needed: HEADER_LEN - have
                })
            );
            assert_eq!(buf.len(), have, "nothing is consumed");
        }
    }

    #[test]
    fn split_frame_short_payload_is_incomplete() {
        let mut bytes = Vec::new();
        Header {
            kind: 0x02,
            flags: Flags::default(),
            seq: 1,
            len: 3,
        }
        .write(&mut bytes);
        bytes.push(0x08);
        let mut buf = Bytes::from(bytes);
        assert_eq!(
            split_frame(&mut buf, 1024),
            Err(DecodeError::Incomplete { needed: 2 })
        );
        assert_eq!(buf.len(), HEADER_LEN + 1);
    }

    #[test]
    fn split_frame_checks_length_before_waiting_for_payload() {
        let mut bytes = Vec::new();
        Header {
            kind: 0x02,
            flags: Flags::default(),
            seq: 1,
            len: 1025,
        }
        .write(&mut bytes);
        let mut buf = Bytes::from(bytes);
        assert_eq!(
            split_frame(&mut buf, 1024),
            Err(DecodeError::TooLarge {
                size: 1025,
                max: 1024
            })
        );
    }

    #[test]
    fn split_frame_takes_exactly_one_frame() {
        let mut bytes = ping(7);
        bytes.extend(ping(8));
        let mut buf = Bytes::from(bytes);
        let first = split_frame(&mut buf, 1024).unwrap();
        assert_eq!(first.header.seq, 7);
        assert_eq!(&first.payload[..], &[0x08, 0x01]);
        let second = split_frame(&mut buf, 1024).unwrap();
        assert_eq!(second.header.seq, 8);
        assert!(buf.is_empty());
        assert_eq!(
            split_frame(&mut buf, 1024),
            Err(DecodeError::Incomplete { needed: HEADER_LEN })
        );
    }

    #[test]
    fn payload_of_exactly_max_is_accepted() {
        let mut out = BytesMut::new();
        write_frame(
            &mut out,
            MessageType::Offer,
            Flags::default(),
            1,
            &[0u8; 100],
        );
        let mut buf = out.freeze();
        assert_eq!(split_frame(&mut buf, 100).unwrap().payload.len(), 100);
    }

    #[test]
    fn frames_truncated_trailing_frame() {
        let mut bytes = ping(1);
        bytes.extend(&ping(2)[..13]);
        let mut frames = Frames::new(Bytes::from(bytes), 1024, 64);
        assert_eq!(frames.next().unwrap().unwrap().header.seq, 1);
        assert_eq!(frames.next(), Some(Err(DecodeError::Truncated)));
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn frames_too_many() {
        let mut bytes = Vec::new();
        for seq in 0..4 {
            bytes.extend(ping(seq));
        }
        let mut frames = Frames::new(Bytes::from(bytes.clone()), 1024, 3);
        for seq in 0..3 {
            assert_eq!(frames.next().unwrap().unwrap().header.seq, seq);
        }
        assert_eq!(
            frames.next(),
            Some(Err(DecodeError::TooManyFrames { max: 3 }))
        );
        assert_eq!(frames.next(), None);
        // Exactly at the limit is fine.
        let frames = Frames::new(Bytes::from(bytes), 1024, 4);
        assert_eq!(frames.filter(Result::is_ok).count(), 4);
    }

    #[test]
    fn frames_stop_after_an_oversized_frame() {
        let mut bytes = ping(1);
        bytes.extend(ping(2));
        let mut frames = Frames::new(Bytes::from(bytes), 1, 64);
        assert_eq!(
            frames.next(),
            Some(Err(DecodeError::TooLarge { size: 2, max: 1 }))
        );
        assert_eq!(frames.next(), None);
    }

    #[test]
    fn frames_share_the_message_buffer() {
        let bytes = Bytes::from(ping(1));
        let frame = Frames::new(bytes.clone(), 1024, 64)
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(frame.payload.as_ptr(), bytes[HEADER_LEN..].as_ptr());
    }
}

#[cfg(test)]
mod seq_tests {
    use super::next_seq;

    #[test]
    fn sequence_numbers_wrap_past_zero() {
        assert_eq!(next_seq(0), 1);
        assert_eq!(next_seq(41), 42);
        assert_eq!(next_seq(u32::MAX), 1, "0 means 'no request' in Error");
    }
}

#[cfg(test)]
mod schema_tests {
    use super::*;
    use crate::proto as pb;

    /// The type table in the schema (for other languages' bindings) is the
    /// one the codec uses, value for value and name for name.
    #[test]
    fn the_schema_has_the_codec_type_table_and_flags() {
        for t in MessageType::ALL {
            let in_schema = pb::MessageType::try_from(t as i32)
                .unwrap_or_else(|_| panic!("{t:?} is not in the schema's MessageType"));
            let name = crate::text::type_name(t).to_ascii_uppercase();
            assert_eq!(in_schema.as_str_name(), format!("MESSAGE_TYPE_{name}"));
        }
        for v in 1..=255 {
            if let Ok(t) = pb::MessageType::try_from(v) {
                assert!(
                    MessageType::from_byte(v as u8).is_some(),
                    "{t:?} is in the schema but not in the codec"
                );
            }
        }
        assert_eq!(pb::FrameFlag::DeflateSdp as u8, Flags::DEFLATE_SDP.0);
        let defined = (1..=255)
            .filter(|v| pb::FrameFlag::try_from(*v).is_ok())
            .fold(0u8, |bits, v| bits | v as u8);
        assert_eq!(defined, Flags::KNOWN);
    }
}
