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
/// here. After an error that leaves frame boundaries intact (a frame that is
/// only too large is not one of them) iteration stops: the rest of the
/// message cannot be trusted.
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
