//! The switchboard wire protocol, sans I/O: what a client in Rust needs to
//! speak to a switchboard server, and nothing else (no tokio, no sockets).
//!
//! Bytes in, validated [`Message`]s out, and back. Nothing here knows about
//! sockets, tasks or clocks (time is passed in), so every rule is unit-tested
//! and fuzzed without a server.
//!
//! # Layout
//!
//! - [`frame`]: the 12-byte header and the frames of one WebSocket message.
//! - [`message`]: the validated message types.
//! - [`ids`]: peer ids, room ids, user names.
//! - [`sdp`]: SDP deflate with the preset dictionary, bounded inflate.
//! - [`ice`]: batching of trickled ICE candidates.
//! - [`relay`]: the relay fast path: check a signal in place and re-address it.

pub mod frame;
pub mod ice;
pub mod ids;
pub mod message;
mod proto;
pub mod relay;
pub mod sdp;
pub mod text;

use bytes::{Bytes, BytesMut};
use prost::Message as _;

use crate::proto as pb;
pub use frame::{Flags, Frames, Header, MessageType, RawFrame, HEADER_LEN};
pub use ids::{IdError, PeerId, RoomId, UserName, MAX_ID_BYTES};
pub use message::{
    Address, Capabilities, ErrorCode, ErrorMessage, FieldError, Hello, IceCandidate, IceCandidates,
    IceServer, Join, Joined, LeaveReason, Limits, LoginResult, Member, Message, PeerJoined,
    PeerLeft, Resume, ResumeLimits, ResumeRefusal, ResumeRequest, RoomMode, Sdp,
    SessionDescription, Welcome, MAX_RESUME_TOKEN_BYTES, PROTOCOL_VERSION,
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
    /// A text frame is not a well-formed JSON envelope, or its body does
    /// not fit its type's schema.
    #[error("malformed json: {0}")]
    Json(String),
    /// A text frame names a type this version does not know.
    #[error("unknown message type {name:?}")]
    UnknownName {
        /// The name (at most 64 characters of it).
        name: String,
    },
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
            | DecodeError::Protobuf(_)
            | DecodeError::Json(_) => ErrorCode::Malformed,
            DecodeError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            DecodeError::UnknownType { .. } | DecodeError::UnknownName { .. } => {
                ErrorCode::UnknownType
            }
            DecodeError::TooLarge { .. } | DecodeError::TooManyFrames { .. } => ErrorCode::TooLarge,
            // Over-long, whatever the field: an id is no exception.
            DecodeError::Field(
                FieldError::TooLong { .. }
                | FieldError::TooMany { .. }
                | FieldError::Id {
                    source: IdError::TooLong { .. },
                    ..
                },
            ) => ErrorCode::TooLarge,
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
        MessageType::Welcome => {
            // Counted first, like Joined's members: an empty IceServer is two
            // bytes on the wire and a 72-byte struct once decoded.
            check_count(&p, 6, "ice_servers", message::MAX_ICE_SERVERS)?;
            Message::Welcome(pb::Welcome::decode(p)?.try_into()?)
        }
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
        MessageType::LoginResult => Message::LoginResult(pb::LoginResult::decode(p)?.try_into()?),
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

    /// The message again, for a receiver that needs it whole (the compat
    /// dialects); `None` if it does not decode under default limits.
    pub fn decode(&self) -> Option<Message> {
        let frame = RawFrame {
            header: Header {
                kind: self.kind as u8,
                flags: self.flags,
                seq: 0,
                len: u32::try_from(self.payload.len()).ok()?,
            },
            payload: self.payload.clone(),
        };
        decode(
            &frame,
            &CodecLimits {
                max_payload: usize::MAX,
                ..CodecLimits::default()
            },
        )
        .ok()
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
        Message::LoginResult(l) => (MessageType::LoginResult, payload(&pb::LoginResult::from(l))),
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
            (kind, payload(&message::session_description_to_wire(d)))
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

#[cfg(test)]
mod tests {
    //! Byte-literal tests: every literal below was written by hand from the
    //! protobuf encoding rules (tag byte = field number << 3 | wire type,
    //! varints little-endian in 7-bit groups, proto3 defaults omitted), not
    //! copied from the encoder's output.

    use std::time::Duration;

    use super::*;

    /// Parses whitespace-separated hex bytes; `|` is a visual separator.
    fn hex(s: &str) -> Vec<u8> {
        s.split_whitespace()
            .filter(|b| *b != "|")
            .map(|b| u8::from_str_radix(b, 16).expect("hex byte"))
            .collect()
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    fn user(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    /// A small concrete message of type `kind`, its sequence number and its
    /// frame as hex. The match is exhaustive, so a new type without a literal
    /// does not compile.
    fn literal(kind: MessageType) -> (Message, u32, &'static str) {
        match kind {
            // 08 01: protocol_version = 1; 12 02 01 02: capabilities, packed
            // [DEFLATE_SDP, ICE_BATCH]; 1a 01 "k": access_token; 22 01 "t": user_agent.
            MessageType::Hello => (
                Message::Hello(Hello {
                    resume: None,
                    protocol_version: 1,
                    capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
                    access_token: Some("k".into()),
                    user_agent: "t".into(),
                }),
                1,
                "01 01 00 00 00 00 00 01 00 00 00 0c | 08 01 12 02 01 02 1a 01 6b 22 01 74",
            ),
            // 300 = 0b10_0101100 -> varint ac 02.
            MessageType::Ping => (
                Message::Ping { nonce: 300 },
                2,
                "01 02 00 00 00 00 00 02 00 00 00 03 | 08 ac 02",
            ),
            MessageType::Pong => (
                Message::Pong { nonce: 300 },
                3,
                "01 03 00 00 00 00 00 03 00 00 00 03 | 08 ac 02",
            ),
            MessageType::Ack => (
                Message::Ack { seq: 5 },
                4,
                "01 04 00 00 00 00 00 04 00 00 00 02 | 08 05",
            ),
            // 0a 02 "r1": room; 10 02: MESH; 18 04: capacity; 22 01 "a": display_name.
            MessageType::Join => (
                Message::Join(Join {
                    room: room("r1"),
                    mode: RoomMode::Mesh,
                    capacity: Some(4),
                    display_name: "a".into(),
                }),
                5,
                "01 10 00 00 00 00 00 05 00 00 00 0b | 0a 02 72 31 10 02 18 04 22 01 61",
            ),
            MessageType::Leave => (
                Message::Leave { room: room("r1") },
                6,
                "01 11 00 00 00 00 00 06 00 00 00 04 | 0a 02 72 31",
            ),
            MessageType::Login => (
                Message::Login { name: user("bob") },
                7,
                "01 20 00 00 00 00 00 07 00 00 00 05 | 0a 03 62 6f 62",
            ),
            // Empty message, empty payload.
            MessageType::Logout => (
                Message::Logout,
                8,
                "01 21 00 00 00 00 00 08 00 00 00 00",
            ),
            // 0a 05: peer = Address { 12 03 "bob": user }.
            MessageType::HangUp => (
                Message::HangUp {
                    peer: Address::User(user("bob")),
                },
                9,
                "01 22 00 00 00 00 00 09 00 00 00 07 | 0a 05 12 03 62 6f 62",
            ),
            // 0a 02 08 02: peer = Address { peer_id: 2 }; 1a 05 "v=0\r\n": sdp.
            MessageType::Offer => (
                Message::Offer(SessionDescription {
                    peer: Address::Peer(PeerId(2)),
                    sdp: Sdp::Plain(Bytes::from_static(b"v=0\r\n")),
                    room: None,
                    app_data: String::new(),
                }),
                10,
                "01 30 00 00 00 00 00 0a 00 00 00 0b | 0a 02 08 02 1a 05 76 3d 30 0d 0a",
            ),
            // Flag 01 = DEFLATE_SDP; the sequence number is big-endian;
            // 1a 02 03 00: the (opaque) compressed sdp; 22 02 "r1": room.
            MessageType::Answer => (
                Message::Answer(SessionDescription {
                    peer: Address::Peer(PeerId(3)),
                    sdp: Sdp::Deflated(Bytes::from_static(&[0x03, 0x00])),
                    room: Some(room("r1")),
                    app_data: String::new(),
                }),
                0x0102_0304,
                "01 31 01 00 01 02 03 04 00 00 00 0c | 0a 02 08 03 1a 02 03 00 22 02 72 31",
            ),
            // 1a 08: one candidate { 0a 01 "c", 12 01 "0": sdp_mid,
            // 18 00: sdp_m_line_index = 0, present because it is optional };
            // 20 01: end_of_candidates.
            MessageType::Ice => (
                Message::Ice(IceCandidates {
                    peer: Address::Peer(PeerId(2)),
                    candidates: vec![IceCandidate {
                        candidate: "c".into(),
                        sdp_mid: Some("0".into()),
                        sdp_m_line_index: Some(0),
                        username_fragment: None,
                    }],
                    end_of_candidates: true,
                    room: None,
                    app_data: String::new(),
                }),
                12,
                "01 32 00 00 00 00 00 0c 00 00 00 10 | 0a 02 08 02 1a 08 0a 01 63 12 01 30 18 00 20 01",
            ),
            // 08 05: peer_id; 10 01: version; 1a 12: limits (18 bytes, 65536 =
            // 80 80 04); 20 98 75: 15000 ms; 28 c8 df 02: 45000 ms;
            // 32 08: ice server { 0a 06 "stun:x" }; 3a 02 01 02: capabilities;
            // 48 01: sdp_dictionary (field 9).
            MessageType::Welcome => (
                Message::Welcome(Welcome {
                    resume: None,
                    peer_id: PeerId(5),
                    protocol_version: 1,
                    limits: Limits {
                        max_message_bytes: 100,
                        max_frames_per_message: 16,
                        max_sdp_bytes: 65536,
                        rate_per_second: 10,
                        rate_burst: 20,
                        max_id_bytes: 64,
                        max_room_capacity: 8,
                        default_room_capacity: 4,
                        // Unset (0): proto3 writes nothing for them.
                        max_payload_bytes: 0,
                        max_candidates_per_batch: 0,
                        rate_bytes_per_second: 0,
                        rate_bytes_burst: 0,
                        max_rooms_per_peer: 0,
                    },
                    heartbeat_interval: Duration::from_millis(15000),
                    heartbeat_timeout: Duration::from_millis(45000),
                    ice_servers: vec![IceServer {
                        urls: vec!["stun:x".into()],
                        username: String::new(),
                        credential: String::new(),
                    }],
                    capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
                    sdp_dictionary: 1,
                }),
                1,
                "01 81 00 00 00 00 00 01 00 00 00 2f | 08 05 10 01 \
                 1a 12 08 64 10 10 18 80 80 04 20 0a 28 14 30 40 38 08 40 04 \
                 20 98 75 28 c8 df 02 32 08 0a 06 73 74 75 6e 3a 78 3a 02 01 02 48 01",
            ),
            // 10 01: PAIR; 18 02: capacity; 22 08: member { 08 02: peer_id,
            // 12 01 "a": display_name, 22 01 01: [DEFLATE_SDP] }; 28 01: initiator.
            MessageType::Joined => (
                Message::Joined(Joined {
                    room: room("r1"),
                    mode: RoomMode::Pair,
                    capacity: 2,
                    members: vec![Member {
                        peer_id: PeerId(2),
                        display_name: "a".into(),
                        user: None,
                        capabilities: Capabilities::DEFLATE_SDP,
                    }],
                    initiator: true,
                }),
                2,
                "01 90 00 00 00 00 00 02 00 00 00 14 | 0a 02 72 31 10 01 18 02 \
                 22 08 08 02 12 01 61 22 01 01 28 01",
            ),
            // 12 07: member { 08 03: peer_id, 1a 03 "bob": user }; initiator
            // false is the default and omitted.
            MessageType::PeerJoined => (
                Message::PeerJoined(PeerJoined {
                    room: room("r1"),
                    member: Member {
                        peer_id: PeerId(3),
                        display_name: String::new(),
                        user: Some(user("bob")),
                        capabilities: Capabilities::empty(),
                    },
                    initiator: false,
                }),
                3,
                "01 91 00 00 00 00 00 03 00 00 00 0d | 0a 02 72 31 12 07 08 03 1a 03 62 6f 62",
            ),
            // 10 03: peer_id; 18 02: DISCONNECTED.
            MessageType::PeerLeft => (
                Message::PeerLeft(PeerLeft {
                    room: room("r1"),
                    peer_id: PeerId(3),
                    reason: LeaveReason::Disconnected,
                }),
                4,
                "01 92 00 00 00 00 00 04 00 00 00 08 | 0a 02 72 31 10 03 18 02",
            ),
            MessageType::RoomFull => (
                Message::RoomFull {
                    room: room("r1"),
                    capacity: 2,
                },
                5,
                "01 93 00 00 00 00 00 05 00 00 00 06 | 0a 02 72 31 10 02",
            ),
            MessageType::Left => (
                Message::Left { room: room("r1") },
                6,
                "01 94 00 00 00 00 00 06 00 00 00 04 | 0a 02 72 31",
            ),
            // success = false is omitted; 18 0c: error = NAME_TAKEN (12).
            MessageType::LoginResult => (
                Message::LoginResult(LoginResult {
                    name: user("bob"),
                    error: Some(ErrorCode::NameTaken),
                }),
                7,
                "01 a0 00 00 00 00 00 07 00 00 00 07 | 0a 03 62 6f 62 18 0c",
            ),
            // 08 02: UNKNOWN_TYPE; 12 01 "x": message; 18 07: request_seq.
            MessageType::Error => (
                Message::Error(ErrorMessage {
                    code: ErrorCode::UnknownType,
                    message: "x".into(),
                    request_seq: 7,
                }),
                u32::MAX,
                "01 e0 00 00 ff ff ff ff 00 00 00 07 | 08 02 12 01 78 18 07",
            ),
        }
    }

    fn check_literal(kind: MessageType) {
        let (msg, seq, expected) = literal(kind);
        let expected = hex(expected);
        let mut out = BytesMut::new();
        encode_into(&msg, seq, &mut out);
        assert_eq!(&out[..], &expected[..], "{kind:?} encodes to its literal");
        assert_eq!(out[1], kind as u8, "{kind:?} type byte");
        assert_eq!(encode(&msg).frame_len(), expected.len());

        let decoded: Vec<_> =
            decode_message(Bytes::from(expected), &CodecLimits::default()).collect();
        assert_eq!(decoded, vec![Ok((seq, msg))], "{kind:?} decodes back");
    }

    macro_rules! literal_tests {
        ($($name:ident => $kind:ident,)*) => {
            $(
                #[test]
                fn $name() {
                    check_literal(MessageType::$kind);
                }
            )*
        };
    }

    literal_tests! {
        literal_hello => Hello,
        literal_ping => Ping,
        literal_pong => Pong,
        literal_ack => Ack,
        literal_join => Join,
        literal_leave => Leave,
        literal_login => Login,
        literal_logout => Logout,
        literal_hang_up => HangUp,
        literal_offer => Offer,
        literal_answer_deflated => Answer,
        literal_ice => Ice,
        literal_welcome => Welcome,
        literal_joined => Joined,
        literal_peer_joined => PeerJoined,
        literal_peer_left => PeerLeft,
        literal_room_full => RoomFull,
        literal_left => Left,
        literal_login_result => LoginResult,
        literal_error => Error,
    }

    #[test]
    fn every_type_has_a_literal() {
        for kind in MessageType::ALL {
            check_literal(kind);
        }
    }

    #[test]
    fn login_result_success() {
        // 10 01: success = true; error UNSPECIFIED is omitted.
        let msg = Message::LoginResult(LoginResult {
            name: user("bob"),
            error: None,
        });
        let mut out = BytesMut::new();
        encode_into(&msg, 1, &mut out);
        assert_eq!(
            &out[..],
            &hex("01 a0 00 00 00 00 00 01 00 00 00 07 | 0a 03 62 6f 62 10 01")[..]
        );
    }

    /// The two-frame example of docs/PROTOCOL.md, byte for byte.
    #[test]
    fn protocol_md_worked_example() {
        let join = Message::Join(Join {
            room: room("1001"),
            mode: RoomMode::Pair,
            capacity: None,
            display_name: "Ann".into(),
        });
        let ping = Message::Ping { nonce: 1 };
        let mut out = BytesMut::new();
        encode_into(&join, 1, &mut out);
        encode_into(&ping, 2, &mut out);
        let expected = hex(
            "01 10 00 00 00 00 00 01 00 00 00 0d | 0a 04 31 30 30 31 10 01 22 03 41 6e 6e \
             01 02 00 00 00 00 00 02 00 00 00 02 | 08 01",
        );
        assert_eq!(&out[..], &expected[..]);
        let decoded: Vec<_> = decode_message(out.freeze(), &CodecLimits::default()).collect();
        assert_eq!(decoded, vec![Ok((1, join)), Ok((2, ping))]);
    }

    fn frame(kind: u8, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        Header {
            kind,
            flags: Flags(flags),
            seq,
            len: payload.len() as u32,
        }
        .write(&mut out);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    fn decode_all(
        bytes: Vec<u8>,
        limits: &CodecLimits,
    ) -> Vec<Result<(u32, Message), DecodeError>> {
        decode_message(Bytes::from(bytes), limits).collect()
    }

    #[test]
    fn wrong_version_rejects_the_whole_message() {
        let mut bytes = hex("02 02 00 00 00 00 00 01 00 00 00 02 08 01");
        bytes.extend(frame(0x02, 0, 2, &[0x08, 0x01]));
        let decoded = decode_all(bytes, &CodecLimits::default());
        assert_eq!(
            decoded,
            vec![Err(DecodeError::UnsupportedVersion { version: 2 })]
        );
        assert_eq!(
            DecodeError::UnsupportedVersion { version: 2 }.code(),
            ErrorCode::UnsupportedVersion
        );
    }

    #[test]
    fn unknown_type_is_skipped_and_the_next_frame_decodes() {
        // 0x05 is reserved for session resume; 0x7f is simply unassigned.
        let mut bytes = frame(0x05, 0, 1, &[0x08, 0x01]);
        bytes.extend(frame(0x7f, 0, 2, &[0xff, 0xff]));
        bytes.extend(frame(0x02, 0, 3, &[0x08, 0x01]));
        let limits = CodecLimits::default();
        let frames: Vec<_> = Frames::new(
            Bytes::from(bytes.clone()),
            limits.max_payload,
            limits.max_frames,
        )
        .collect::<Result<_, _>>()
        .unwrap();
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0].header.seq, 1);
        assert_eq!(
            decode(&frames[0], &limits),
            Err(DecodeError::UnknownType { kind: 0x05 })
        );
        assert_eq!(
            decode(&frames[1], &limits),
            Err(DecodeError::UnknownType { kind: 0x7f })
        );
        assert_eq!(decode(&frames[2], &limits), Ok(Message::Ping { nonce: 1 }));
        assert_eq!(
            decode_all(bytes, &limits),
            vec![
                Err(DecodeError::UnknownType { kind: 0x05 }),
                Err(DecodeError::UnknownType { kind: 0x7f }),
                Ok((3, Message::Ping { nonce: 1 })),
            ]
        );
        assert_eq!(
            DecodeError::UnknownType { kind: 5 }.code(),
            ErrorCode::UnknownType
        );
    }

    #[test]
    fn unknown_flag_bits_are_rejected() {
        for flags in [0x02u8, 0x80, 0xfe, 0x03] {
            let mut bytes = frame(0x02, flags, 1, &[0x08, 0x01]);
            bytes.extend(frame(0x02, 0, 2, &[0x08, 0x02]));
            let decoded = decode_all(bytes, &CodecLimits::default());
            assert_eq!(
                decoded,
                vec![
                    Err(DecodeError::BadFlags { kind: 0x02, flags }),
                    Ok((2, Message::Ping { nonce: 2 })),
                ],
                "flags {flags:#04x}"
            );
        }
        assert_eq!(
            DecodeError::BadFlags { kind: 2, flags: 2 }.code(),
            ErrorCode::Malformed
        );
    }

    #[test]
    fn unknown_flag_bits_are_rejected_on_sdp_types_too() {
        let (_, _, offer) = literal(MessageType::Offer);
        let mut bytes = hex(offer);
        bytes[2] = 0x03;
        assert_eq!(
            decode_all(bytes, &CodecLimits::default()),
            vec![Err(DecodeError::BadFlags {
                kind: 0x30,
                flags: 0x03
            })]
        );
    }

    #[test]
    fn deflate_sdp_flag_only_on_offer_and_answer() {
        let limits = CodecLimits::default();
        for kind in MessageType::ALL {
            let (_, _, literal) = literal(kind);
            let mut bytes = hex(literal);
            bytes[2] = Flags::DEFLATE_SDP.0;
            let decoded = decode_all(bytes, &limits);
            if matches!(kind, MessageType::Offer | MessageType::Answer) {
                assert!(decoded[0].is_ok(), "{kind:?}: {decoded:?}");
            } else {
                assert_eq!(
                    decoded,
                    vec![Err(DecodeError::BadFlags {
                        kind: kind as u8,
                        flags: 0x01
                    })],
                    "{kind:?}"
                );
            }
        }
    }

    #[test]
    fn deflated_offer_is_kept_compressed() {
        let sdp = b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
        let compressed = Bytes::from(sdp::deflate(sdp));
        let msg = Message::Offer(SessionDescription {
            peer: Address::Peer(PeerId(9)),
            sdp: Sdp::Deflated(compressed.clone()),
            room: None,
            app_data: String::new(),
        });
        let encoded = encode(&msg);
        assert_eq!(encoded.flags, Flags::DEFLATE_SDP);
        let mut out = BytesMut::new();
        encoded.write(1, &mut out);
        let decoded = decode_all(out.to_vec(), &CodecLimits::default());
        assert_eq!(decoded, vec![Ok((1, msg))]);
        assert_eq!(sdp::inflate(&compressed, 64 * 1024).unwrap(), sdp);
    }

    #[test]
    fn plain_sdp_must_be_utf8() {
        // Offer literal with the sdp "v=0\r\n" changed to "v=\xff\r\n".
        let (_, _, offer) = literal(MessageType::Offer);
        let mut bytes = hex(offer);
        let at = bytes.len() - 3;
        bytes[at] = 0xff;
        let decoded = decode_all(bytes, &CodecLimits::default());
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::SdpNotUtf8))]
        );
        assert_eq!(
            decoded[0].as_ref().unwrap_err().code(),
            ErrorCode::Malformed
        );
    }

    #[test]
    fn length_over_limit_is_rejected_before_the_payload_is_read() {
        let limits = CodecLimits::default();
        // Only the header: a declared length of max_payload + 1 is refused
        // at once, not reported as "incomplete, send more".
        let too_long = (limits.max_payload + 1) as u32;
        let mut bytes = hex("01 02 00 00 00 00 00 01");
        bytes.extend(too_long.to_be_bytes());
        let decoded = decode_all(bytes.clone(), &limits);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::TooLarge {
                size: limits.max_payload + 1,
                max: limits.max_payload
            })]
        );
        assert_eq!(decoded[0].as_ref().unwrap_err().code(), ErrorCode::TooLarge);
        // Even u32::MAX.
        bytes[8..12].copy_from_slice(&[0xff; 4]);
        assert!(matches!(
            decode_all(bytes, &limits)[..],
            [Err(DecodeError::TooLarge {
                size: 0xffff_ffff,
                ..
            })]
        ));
    }

    #[test]
    fn payload_over_limit_in_decode() {
        let limits = CodecLimits {
            max_payload: 1,
            ..CodecLimits::default()
        };
        let raw = RawFrame {
            header: Header {
                kind: 0x02,
                flags: Flags::default(),
                seq: 1,
                len: 2,
            },
            payload: Bytes::from_static(&[0x08, 0x01]),
        };
        assert_eq!(
            decode(&raw, &limits),
            Err(DecodeError::TooLarge { size: 2, max: 1 })
        );
    }

    #[test]
    fn truncated_trailing_frame() {
        let whole = frame(0x02, 0, 1, &[0x08, 0x01]);
        for cut in 1..whole.len() {
            let mut bytes = whole.clone();
            bytes.extend_from_slice(&whole[..cut]);
            assert_eq!(
                decode_all(bytes, &CodecLimits::default()),
                vec![
                    Ok((1, Message::Ping { nonce: 1 })),
                    Err(DecodeError::Truncated)
                ],
                "cut at {cut}"
            );
        }
        assert_eq!(DecodeError::Truncated.code(), ErrorCode::Malformed);
    }

    #[test]
    fn too_many_frames() {
        let limits = CodecLimits {
            max_frames: 2,
            ..CodecLimits::default()
        };
        let mut bytes = Vec::new();
        for seq in 1..=4 {
            bytes.extend(frame(0x02, 0, seq, &[0x08, seq as u8]));
        }
        assert_eq!(
            decode_all(bytes, &limits),
            vec![
                Ok((1, Message::Ping { nonce: 1 })),
                Ok((2, Message::Ping { nonce: 2 })),
                Err(DecodeError::TooManyFrames { max: 2 }),
            ]
        );
        assert_eq!(
            DecodeError::TooManyFrames { max: 2 }.code(),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn exactly_max_frames_is_fine() {
        let limits = CodecLimits::default();
        let mut bytes = Vec::new();
        for seq in 0..limits.max_frames as u32 {
            bytes.extend(frame(0x21, 0, seq, &[]));
        }
        let decoded = decode_all(bytes, &limits);
        assert_eq!(decoded.len(), limits.max_frames);
        assert!(decoded
            .iter()
            .all(|d| matches!(d, Ok((_, Message::Logout)))));
    }

    #[test]
    fn empty_message_has_no_frames() {
        assert!(decode_all(Vec::new(), &CodecLimits::default()).is_empty());
    }

    #[test]
    fn malformed_protobuf_is_malformed() {
        // Field 1 as a length-delimited value claiming 5 bytes, with 1 present.
        let decoded = decode_all(
            frame(0x10, 0, 1, &[0x0a, 0x05, 0x31]),
            &CodecLimits::default(),
        );
        assert!(
            matches!(decoded[..], [Err(DecodeError::Protobuf(_))]),
            "{decoded:?}"
        );
        assert_eq!(
            decoded[0].as_ref().unwrap_err().code(),
            ErrorCode::Malformed
        );
    }

    #[test]
    fn invalid_fields_are_invalid_arguments() {
        let limits = CodecLimits::default();
        // Join with an empty room.
        let decoded = decode_all(frame(0x10, 0, 1, &[0x10, 0x01]), &limits);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::Id {
                field: "room",
                source: IdError::Empty
            }))]
        );
        assert_eq!(
            decoded[0].as_ref().unwrap_err().code(),
            ErrorCode::InvalidArgument
        );
        // Join with mode 9.
        let decoded = decode_all(frame(0x10, 0, 1, &[0x0a, 0x01, 0x72, 0x10, 0x09]), &limits);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::UnknownEnum {
                field: "mode",
                value: 9
            }))]
        );
        // Offer without a peer.
        let decoded = decode_all(frame(0x30, 0, 1, &[0x1a, 0x00]), &limits);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::Missing {
                field: "peer"
            }))]
        );
    }

    #[test]
    fn join_without_mode_means_pair() {
        let decoded = decode_all(
            frame(0x10, 0, 1, &[0x0a, 0x01, 0x72]),
            &CodecLimits::default(),
        );
        assert_eq!(
            decoded,
            vec![Ok((
                1,
                Message::Join(Join {
                    room: room("r"),
                    mode: RoomMode::Pair,
                    capacity: None,
                    display_name: String::new(),
                })
            ))]
        );
    }

    #[test]
    fn ice_servers_are_counted_before_decoding() {
        // 100 empty ice servers (32 00), then one that is not valid protobuf
        // inside: the count refuses before prost would see it.
        let mut payload = Vec::new();
        for _ in 0..100 {
            payload.extend([0x32, 0x00]);
        }
        payload.extend([0x32, 0x01, 0xff]);
        let decoded = decode_all(frame(0x81, 0, 1, &payload), &CodecLimits::default());
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::TooMany {
                field: "ice_servers",
                count: 101,
                max: message::MAX_ICE_SERVERS
            }))]
        );
    }

    #[test]
    fn ice_candidates_are_counted_before_decoding() {
        let limits = CodecLimits::default();
        // Address { peer_id: 1 }, then max_candidates + 1 empty candidates
        // (1a 00 each).
        let mut payload = vec![0x0a, 0x02, 0x08, 0x01];
        for _ in 0..=limits.max_candidates {
            payload.extend([0x1a, 0x00]);
        }
        let decoded = decode_all(frame(0x32, 0, 1, &payload), &limits);
        assert_eq!(
            decoded,
            vec![Err(DecodeError::Field(FieldError::TooMany {
                field: "candidates",
                count: limits.max_candidates + 1,
                max: limits.max_candidates
            }))]
        );
        assert_eq!(decoded[0].as_ref().unwrap_err().code(), ErrorCode::TooLarge);
    }
}
