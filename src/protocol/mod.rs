//! The sans-IO wire protocol.
//!
//! Bytes in, validated [`Message`]s out, and back. Nothing here knows about
//! sockets, tasks or clocks (time is passed in), so every rule is unit-tested
//! and fuzzed without a server.
//!
//! - [`frame`]: the 12-byte header and the frames of one WebSocket message.
//! - [`message`]: the validated message types.
//! - [`ids`]: peer ids, room ids, user names.
//! - [`sdp`]: SDP deflate with the preset dictionary, bounded inflate.
//! - [`ice`]: batching of trickled ICE candidates.

pub mod frame;
pub mod ice;
pub mod ids;
pub mod message;
pub mod sdp;

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::proto as pb;
pub use frame::{Flags, Frames, Header, MessageType, RawFrame, HEADER_LEN};
pub use ids::{IdError, PeerId, RoomId, UserName, MAX_ID_BYTES};
pub use message::{
    Address, Capabilities, ErrorCode, ErrorMessage, FieldError, Hello, IceCandidate,
    IceCandidates, IceServer, Join, Joined, LeaveReason, Limits, LoginResult, Member, Message,
    PeerJoined, PeerLeft, RoomMode, Sdp, SessionDescription, Welcome, PROTOCOL_VERSION,
};

/// Size limits the decoder enforces before it allocates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodecLimits {
    /// Largest frame payload, in bytes.
    pub max_payload: usize,
    /// Most frames in one WebSocket message.
    pub max_frames: usize,
    /// Largest SDP on the wire, and largest inflated SDP, in bytes.
    pub max_sdp: usize,
    /// Most candidates in one ICE batch.
    pub max_candidates: usize,
}

impl Default for CodecLimits {
    fn default() -> CodecLimits {
        CodecLimits {
            max_payload: 96 * 1024,
            max_frames: 64,
            max_sdp: 64 * 1024,
            max_candidates: 64,
        }
    }
}

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// More bytes are needed (streaming use only; a complete WebSocket
    /// message that ends early is [`DecodeError::Truncated`]).
    #[error("incomplete frame: {needed} more bytes needed")]
    Incomplete {
        /// How many more bytes at least.
        needed: usize,
    },
    /// A WebSocket message ended in the middle of a frame.
    #[error("message ends in the middle of a frame")]
    Truncated,
    /// The header's version byte is not 1.
    #[error("unsupported frame version {version}")]
    UnsupportedVersion {
        /// The version byte.
        version: u8,
    },
    /// The header's type byte is unknown; the frame can be skipped.
    #[error("unknown message type 0x{kind:02x}")]
    UnknownType {
        /// The type byte.
        kind: u8,
    },
    /// The header sets flag bits this version does not define, or sets
    /// DEFLATE_SDP on a message without SDP.
    #[error("invalid flags 0x{flags:02x} for message type 0x{kind:02x}")]
    BadFlags {
        /// The type byte.
        kind: u8,
        /// The flag byte.
        flags: u8,
    },
    /// A frame's payload is larger than the limit.
    #[error("frame payload of {size} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A message holds more frames than the limit.
    #[error("more than {max} frames in one message")]
    TooManyFrames {
        /// The limit.
        max: usize,
    },
    /// The payload is not valid protobuf for its type.
    #[error("malformed payload: {0}")]
    Protobuf(String),
    /// A field is invalid.
    #[error("invalid field: {0}")]
    Field(#[from] FieldError),
    /// Compressed SDP could not be inflated within the limit.
    #[error("bad compressed sdp: {0}")]
    Compression(#[from] sdp::SdpError),
}

impl DecodeError {
    /// The wire error code that reports this error to the sender.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::Incomplete { .. }
            | DecodeError::Truncated
            | DecodeError::BadFlags { .. }
            | DecodeError::Protobuf(_) => ErrorCode::Malformed,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownType { .. } => ErrorCode::UnknownType,
            DecodeError::TooLarge { .. } | DecodeError::TooManyFrames { .. } => {
                ErrorCode::TooLarge
            }
            DecodeError::Field(FieldError::TooLong { .. } | FieldError::TooMany { .. }) => {
                ErrorCode::TooLarge
            }
            DecodeError::Field(FieldError::SdpNotUtf8) => ErrorCode::Malformed,
            DecodeError::Field(_) => ErrorCode::InvalidArgument,
            DecodeError::Compression(_) => ErrorCode::BadCompression,
        }
    }
}

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> DecodeError {
        DecodeError::Protobuf(e.to_string())
    }
}

/// Counts the top-level occurrences of field `number` in a protobuf payload
/// without decoding it, so a repeated field's size is checked before prost
/// allocates one struct per (possibly empty) entry.
fn count_field(mut payload: &[u8], number: u32) -> Result<usize, DecodeError> {
    use prost::encoding::{decode_key, skip_field, DecodeContext};
    let mut count = 0;
    while !payload.is_empty() {
        let (tag, wire_type) = decode_key(&mut payload)?;
        if tag == number {
            count += 1;
        }
        skip_field(wire_type, tag, &mut payload, DecodeContext::default())?;
    }
    Ok(count)
}

fn check_count(
    payload: &[u8],
    number: u32,
    field: &'static str,
    max: usize,
) -> Result<(), DecodeError> {
    let count = count_field(payload, number)?;
    if count > max {
        return Err(FieldError::TooMany { field, count, max }.into());
    }
    Ok(())
}

/// Decodes one frame into a validated message.
///
/// Unknown types give [`DecodeError::UnknownType`]; the caller may skip the
/// frame and go on with the next one.
pub fn decode(frame: &RawFrame, limits: &CodecLimits) -> Result<Message, DecodeError> {
    let kind = frame.header.kind;
    let Some(ty) = MessageType::from_byte(kind) else {
        return Err(DecodeError::UnknownType { kind });
    };
    let flags = frame.header.flags;
    let sdp_allowed = matches!(ty, MessageType::Offer | MessageType::Answer);
    if flags.0 & !Flags::KNOWN != 0 || (flags.contains(Flags::DEFLATE_SDP) && !sdp_allowed) {
        return Err(DecodeError::BadFlags {
            kind,
            flags: flags.0,
        });
    }
    if frame.payload.len() > limits.max_payload {
        return Err(DecodeError::TooLarge {
            size: frame.payload.len(),
            max: limits.max_payload,
        });
    }
    let p = frame.payload.clone();
    let deflated = flags.contains(Flags::DEFLATE_SDP);
    Ok(match ty {
        MessageType::Hello => Message::Hello(pb::Hello::decode(p)?.try_into()?),
        MessageType::Welcome => Message::Welcome(pb::Welcome::decode(p)?.try_into()?),
        MessageType::Ping => Message::Ping {
            nonce: pb::Ping::decode(p)?.nonce,
        },
        MessageType::Pong => Message::Pong {
            nonce: pb::Pong::decode(p)?.nonce,
        },
        MessageType::Ack => Message::Ack {
            seq: pb::Ack::decode(p)?.seq,
        },
        MessageType::Join => Message::Join(pb::Join::decode(p)?.try_into()?),
        MessageType::Joined => {
            check_count(&p, 4, "members", message::MAX_MEMBERS)?;
            Message::Joined(pb::Joined::decode(p)?.try_into()?)
        }
        MessageType::PeerJoined => Message::PeerJoined(pb::PeerJoined::decode(p)?.try_into()?),
        MessageType::PeerLeft => Message::PeerLeft(pb::PeerLeft::decode(p)?.try_into()?),
        MessageType::RoomFull => {
            let r = pb::RoomFull::decode(p)?;
            Message::RoomFull {
                room: message::room_field("room", &r.room)?,
                capacity: r.capacity,
            }
        }
        MessageType::Leave => Message::Leave {
            room: message::room_field("room", &pb::Leave::decode(p)?.room)?,
        },
        MessageType::Left => Message::Left {
            room: message::room_field("room", &pb::Left::decode(p)?.room)?,
        },
        MessageType::Login => Message::Login {
            name: message::user_field("name", &pb::Login::decode(p)?.name)?,
        },
        MessageType::LoginResult => {
            Message::LoginResult(pb::LoginResult::decode(p)?.try_into()?)
        }
        MessageType::Logout => {
            pb::Logout::decode(p)?;
            Message::Logout
        }
        MessageType::HangUp => Message::HangUp {
            peer: pb::HangUp::decode(p)?.try_into()?,
        },
        MessageType::Offer => Message::Offer(message::session_description(
            pb::SessionDescription::decode(p)?,
            deflated,
            limits.max_sdp,
        )?),
        MessageType::Answer => Message::Answer(message::session_description(
            pb::SessionDescription::decode(p)?,
            deflated,
            limits.max_sdp,
        )?),
        MessageType::Ice => {
            check_count(&p, 3, "candidates", limits.max_candidates)?;
            Message::Ice(message::ice_candidates(
                pb::IceCandidates::decode(p)?,
                limits.max_candidates,
            )?)
        }
        MessageType::Error => Message::Error(pb::Error::decode(p)?.try_into()?),
    })
}

/// A message encoded once, ready to be framed with any sequence number.
///
/// The payload is reference-counted, so one encoding is shared by every
/// receiver of a broadcast.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// The message type.
    pub kind: MessageType,
    /// The frame flags.
    pub flags: Flags,
    /// The protobuf payload.
    pub payload: Bytes,
}

impl Encoded {
    /// Bytes this frame takes on the wire.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Appends the frame, numbered `seq`, to `out`.
    pub fn write(&self, seq: u32, out: &mut BytesMut) {
        frame::write_frame(out, self.kind, self.flags, seq, &self.payload);
    }
}

fn payload(m: &impl prost::Message) -> Bytes {
    m.encode_to_vec().into()
}

/// Encodes a message's payload and picks its type and flags.
pub fn encode(msg: &Message) -> Encoded {
    let mut flags = Flags::default();
    let (kind, payload) = match msg {
        Message::Hello(h) => (MessageType::Hello, payload(&pb::Hello::from(h))),
        Message::Welcome(w) => (MessageType::Welcome, payload(&pb::Welcome::from(w))),
        Message::Ping { nonce } => (MessageType::Ping, payload(&pb::Ping { nonce: *nonce })),
        Message::Pong { nonce } => (MessageType::Pong, payload(&pb::Pong { nonce: *nonce })),
        Message::Ack { seq } => (MessageType::Ack, payload(&pb::Ack { seq: *seq })),
        Message::Join(j) => (MessageType::Join, payload(&pb::Join::from(j))),
        Message::Joined(j) => (MessageType::Joined, payload(&pb::Joined::from(j))),
        Message::PeerJoined(p) => (MessageType::PeerJoined, payload(&pb::PeerJoined::from(p))),
        Message::PeerLeft(p) => (MessageType::PeerLeft, payload(&pb::PeerLeft::from(p))),
        Message::RoomFull { room, capacity } => (
            MessageType::RoomFull,
            payload(&pb::RoomFull {
                room: room.as_str().to_owned(),
                capacity: *capacity,
            }),
        ),
        Message::Leave { room } => (
            MessageType::Leave,
            payload(&pb::Leave {
                room: room.as_str().to_owned(),
            }),
        ),
        Message::Left { room } => (
            MessageType::Left,
            payload(&pb::Left {
                room: room.as_str().to_owned(),
            }),
        ),
        Message::Login { name } => (
            MessageType::Login,
            payload(&pb::Login {
                name: name.as_str().to_owned(),
            }),
        ),
        Message::LoginResult(l) => (
            MessageType::LoginResult,
            payload(&pb::LoginResult::from(l)),
        ),
        Message::Logout => (MessageType::Logout, Bytes::new()),
        Message::HangUp { peer } => (
            MessageType::HangUp,
            payload(&message::hang_up_to_wire(peer)),
        ),
        Message::Offer(d) | Message::Answer(d) => {
            if matches!(d.sdp, Sdp::Deflated(_)) {
                flags = Flags::DEFLATE_SDP;
            }
            let kind = if matches!(msg, Message::Offer(_)) {
                MessageType::Offer
            } else {
                MessageType::Answer
            };
            (
                kind,
                payload(&message::session_description_to_wire(d)),
            )
        }
        Message::Ice(i) => (
            MessageType::Ice,
            payload(&message::ice_candidates_to_wire(i)),
        ),
        Message::Error(e) => (MessageType::Error, payload(&pb::Error::from(e))),
    };
    Encoded {
        kind,
        flags,
        payload,
    }
}

/// Encodes `msg` as one frame numbered `seq` and appends it to `out`.
pub fn encode_into(msg: &Message, seq: u32, out: &mut BytesMut) {
    encode(msg).write(seq, out);
}

/// Decodes every frame of one WebSocket message.
///
/// Convenience for clients and tests; the server walks [`Frames`] itself so
/// it can answer each bad frame separately.
pub fn decode_message(
    message: Bytes,
    limits: &CodecLimits,
) -> impl Iterator<Item = Result<(u32, Message), DecodeError>> + '_ {
    Frames::new(message, limits.max_payload, limits.max_frames)
        .map(move |frame| frame.and_then(|f| Ok((f.header.seq, decode(&f, limits)?))))
}
