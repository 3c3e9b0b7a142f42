//! Validated protocol messages and their conversion to and from the generated
//! protobuf types.
//!
//! Conversion from the wire (`TryFrom<pb::X>`) is where every field is
//! checked: ids are [`RoomId`]/[`UserName`], enums are known, sizes are within
//! [`Limits`](super::Limits). Past this boundary the crate never sees a raw
//! protobuf value.

use std::time::Duration;

use bytes::Bytes;

use super::ids::{IdError, PeerId, RoomId, UserName, MAX_ID_BYTES};
use crate::proto as pb;

pub use pb::ErrorCode;
pub use pb::LeaveReason;
pub use pb::ResumeRefusal;
pub use pb::RoomMode;

/// Protocol version spoken by this crate.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest display name, in bytes.
pub const MAX_DISPLAY_NAME_BYTES: usize = 128;
/// Longest ICE candidate line or sdpMid/ufrag, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 1024;
/// Longest access token, in bytes.
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Longest free-text field (error message, user agent), in bytes.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest `app_data` beside a signal, in bytes.
pub const MAX_APP_DATA_BYTES: usize = 1024;

/// A field that failed validation at the codec boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    /// A room id or user name is invalid.
    #[error("{field} {source}")]
    Id {
        /// The protobuf field name.
        field: &'static str,
        /// What is wrong with it.
        source: IdError,
    },
    /// A required field is absent.
    #[error("{field} is required")]
    Missing {
        /// The protobuf field name.
        field: &'static str,
    },
    /// A field is longer than its limit.
    #[error("{field} is {len} bytes long, the limit is {max}")]
    TooLong {
        /// The protobuf field name.
        field: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A repeated field has too many entries.
    #[error("{field} has {count} entries, the limit is {max}")]
    TooMany {
        /// The protobuf field name.
        field: &'static str,
        /// Number of entries.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// An enum field holds a value this version does not know.
    #[error("{field} has unknown value {value}")]
    UnknownEnum {
        /// The protobuf field name.
        field: &'static str,
        /// The raw value.
        value: i32,
    },
    /// Plain SDP is not valid UTF-8.
    #[error("sdp is not valid UTF-8")]
    SdpNotUtf8,
}

/// Optional client features; a small bit set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Capabilities(u8);

impl Capabilities {
    /// Inflates SDP sent with the DEFLATE_SDP flag.
    pub const DEFLATE_SDP: Capabilities = Capabilities(1 << 0);
    /// Accepts ICE batches of more than one candidate.
    pub const ICE_BATCH: Capabilities = Capabilities(1 << 1);
    /// Reserved: lossless session resume.
    pub const RESUME: Capabilities = Capabilities(1 << 2);

    /// No capability.
    pub const fn empty() -> Capabilities {
        Capabilities(0)
    }

    /// Whether every capability in `other` is in `self`.
    pub const fn contains(self, other: Capabilities) -> bool {
        self.0 & other.0 == other.0
    }

    /// The union of both sets.
    pub const fn union(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 | other.0)
    }

    /// The set as bits (bit 0 `DEFLATE_SDP`, bit 1 `ICE_BATCH`, bit 2
    /// `RESUME`), for a server to store it.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// The set stored as [`Capabilities::bits`]; unknown bits are dropped.
    pub const fn from_bits(bits: u8) -> Capabilities {
        Capabilities(bits & 0b111)
    }

    /// The capabilities both sets hold.
    pub const fn intersection(self, other: Capabilities) -> Capabilities {
        Capabilities(self.0 & other.0)
    }

    fn from_wire(values: &[i32]) -> Capabilities {
        // Unknown capabilities are ignored: a newer client may offer features
        // this server does not have, and that is not an error.
        values.iter().fold(Capabilities::empty(), |set, &v| {
            let bit = match pb::Capability::try_from(v) {
                Ok(pb::Capability::DeflateSdp) => Capabilities::DEFLATE_SDP,
                Ok(pb::Capability::IceBatch) => Capabilities::ICE_BATCH,
                Ok(pb::Capability::Resume) => Capabilities::RESUME,
                _ => Capabilities::empty(),
            };
            set.union(bit)
        })
    }

    fn to_wire(self) -> Vec<i32> {
        [
            (Capabilities::DEFLATE_SDP, pb::Capability::DeflateSdp),
            (Capabilities::ICE_BATCH, pb::Capability::IceBatch),
            (Capabilities::RESUME, pb::Capability::Resume),
        ]
        .into_iter()
        .filter(|(bit, _)| self.contains(*bit))
        .map(|(_, wire)| wire as i32)
        .collect()
    }
}

/// The other end of a call or negotiation.
///
/// From a client it names the target; from the server it names the sender.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Address {
    /// A peer sharing a room with the other end.
    Peer(PeerId),
    /// A logged-in user.
    User(UserName),
}

/// An SDP body, as sent on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sdp {
    /// UTF-8 SDP text.
    Plain(Bytes),
    /// Raw deflate with the preset dictionary (`protocol::sdp`); the frame
    /// carries the DEFLATE_SDP flag.
    Deflated(Bytes),
}

impl Sdp {
    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        match self {
            Sdp::Plain(b) | Sdp::Deflated(b) => b.len(),
        }
    }
}

/// `Hello`: the first frame a client sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Highest protocol version the client speaks.
    pub protocol_version: u32,
    /// Features the client supports.
    pub capabilities: Capabilities,
    /// Access token, when the server requires one.
    pub access_token: Option<String>,
    /// Client software name, for logs.
    pub user_agent: String,
    /// The session to resume, with `CAPABILITY_RESUME`.
    pub resume: Option<ResumeRequest>,
}

/// Longest resume token accepted, in bytes.
pub const MAX_RESUME_TOKEN_BYTES: usize = 64;

/// `Hello`'s request to resume a session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResumeRequest {
    /// The token of the session's last `Welcome`.
    pub token: Bytes,
    /// The highest sequence number of the server's frames the client has
    /// processed.
    pub last_seq: u32,
}

/// What `Welcome` says of session resume, when `CAPABILITY_RESUME` is
/// granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resume {
    /// The token to resume this session with (only the latest is valid).
    pub token: Bytes,
    /// Whether this `Welcome` continues the session `Hello` named.
    pub resumed: bool,
    /// Why a resume that was asked for did not happen.
    pub refusal: Option<ResumeRefusal>,
    /// On a resume: the highest sequence number of the client's frames the
    /// server has processed.
    pub last_seq: u32,
    /// The limits of resume.
    pub limits: ResumeLimits,
}

/// The limits of session resume, announced in `Welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResumeLimits {
    /// How long a dropped session waits for its client.
    pub grace: Duration,
    /// Most frames each side keeps unacknowledged.
    pub replay_frames: u32,
    /// Most payload bytes each side keeps unacknowledged.
    pub replay_bytes: u32,
    /// Longest wait before acknowledging.
    pub ack_delay: Duration,
}

/// A STUN or TURN server offered to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:` / `turn:` / `turns:` URLs.
    pub urls: Vec<String>,
    /// TURN username (empty for STUN).
    pub username: String,
    /// TURN password (empty for STUN).
    pub credential: String,
}

/// Limits the server enforces, announced in `Welcome`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_bytes: u32,
    /// Most frames in one WebSocket message.
    pub max_frames_per_message: u32,
    /// Largest inflated SDP, in bytes.
    pub max_sdp_bytes: u32,
    /// Sustained messages per second.
    pub rate_per_second: u32,
    /// Burst of messages above the sustained rate.
    pub rate_burst: u32,
    /// Longest room id or user name, in bytes.
    pub max_id_bytes: u32,
    /// Largest mesh room capacity a join may ask for.
    pub max_room_capacity: u32,
    /// Capacity of a mesh room created without asking.
    pub default_room_capacity: u32,
    /// Largest frame payload accepted, in bytes.
    pub max_payload_bytes: u32,
    /// Most candidates in one `IceCandidates`.
    pub max_candidates_per_batch: u32,
    /// Sustained bytes per second.
    pub rate_bytes_per_second: u32,
    /// Burst of bytes above the sustained rate.
    pub rate_bytes_burst: u32,
    /// Most rooms one connection may be in.
    pub max_rooms_per_peer: u32,
}

/// `Welcome`: the server's answer to `Hello`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// The id the connection is known by.
    pub peer_id: PeerId,
    /// Protocol version the server will speak.
    pub protocol_version: u32,
    /// Limits the server enforces.
    pub limits: Limits,
    /// The server pings after this much silence.
    pub heartbeat_interval: Duration,
    /// The server closes a connection silent for this long.
    pub heartbeat_timeout: Duration,
    /// STUN/TURN servers for the client's RTCPeerConnection.
    pub ice_servers: Vec<IceServer>,
    /// Capabilities the server honours on this connection.
    pub capabilities: Capabilities,
    /// Id of the preset SDP dictionary.
    pub sdp_dictionary: u32,
    /// Session resume, when granted.
    pub resume: Option<Resume>,
}

/// A room member as other members see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// The member's peer id.
    pub peer_id: PeerId,
    /// The name it asked to be shown by (may be empty).
    pub display_name: String,
    /// Its user name when logged in.
    pub user: Option<UserName>,
    /// Its capabilities, so senders know whether to compress SDP for it.
    pub capabilities: Capabilities,
}

/// `Join` a room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Join {
    /// The room.
    pub room: RoomId,
    /// Pair (1:1) or mesh. An unspecified mode on the wire means pair.
    pub mode: RoomMode,
    /// Capacity asked for when this join creates a mesh room.
    pub capacity: Option<u32>,
    /// Name shown to other members.
    pub display_name: String,
}

/// `Joined`: the answer to a successful `Join`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Joined {
    /// The room.
    pub room: RoomId,
    /// Its mode.
    pub mode: RoomMode,
    /// Its capacity.
    pub capacity: u32,
    /// The other members, in join order.
    pub members: Vec<Member>,
    /// Pair rooms: the receiver creates the offer.
    pub initiator: bool,
}

/// `PeerJoined`: told to every other member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerJoined {
    /// The room.
    pub room: RoomId,
    /// The newcomer.
    pub member: Member,
    /// Pair rooms: whether the receiver is the initiator (always false in v1:
    /// the later joiner initiates).
    pub initiator: bool,
}

/// `PeerLeft`: told to the remaining members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerLeft {
    /// The room.
    pub room: RoomId,
    /// Who left.
    pub peer_id: PeerId,
    /// Why.
    pub reason: LeaveReason,
}

/// `LoginResult`: the answer to `Login`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoginResult {
    /// The name asked for.
    pub name: UserName,
    /// `None` on success, else why it failed.
    pub error: Option<ErrorCode>,
}

/// An offer or answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// Target (from a client) or sender (from the server).
    pub peer: Address,
    /// The SDP.
    pub sdp: Sdp,
    /// The room the negotiation belongs to, if the sender said.
    pub room: Option<RoomId>,
    /// Application data relayed unchanged; empty for none.
    pub app_data: String,
}

/// One ICE candidate, as in `RTCIceCandidateInit`.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IceCandidate {
    /// The `candidate:` line.
    pub candidate: String,
    /// `sdpMid`.
    pub sdp_mid: Option<String>,
    /// `sdpMLineIndex`.
    pub sdp_m_line_index: Option<u32>,
    /// `usernameFragment`.
    pub username_fragment: Option<String>,
}

/// A batch of ICE candidates, possibly ending the gathering.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IceCandidates {
    /// Target (from a client) or sender (from the server).
    pub peer: Address,
    /// One or more candidates (none for a bare end-of-candidates marker).
    pub candidates: Vec<IceCandidate>,
    /// No more candidates will follow.
    pub end_of_candidates: bool,
    /// The room the negotiation belongs to, if the sender said.
    pub room: Option<RoomId>,
    /// Application data relayed unchanged; empty for none.
    pub app_data: String,
}

/// `Error`: a typed error answering a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorMessage {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Sequence number of the frame this answers, 0 if none.
    pub request_seq: u32,
}

/// Every message of protocol v1, in both directions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client's first frame.
    Hello(Hello),
    /// Server's answer to Hello.
    Welcome(Welcome),
    /// Liveness probe, answered with Pong.
    Ping {
        /// Echoed in the Pong.
        nonce: u64,
    },
    /// Answer to Ping.
    Pong {
        /// The Ping's nonce.
        nonce: u64,
    },
    /// Reserved for session resume: cumulative acknowledgement.
    Ack {
        /// Highest sequence number processed.
        seq: u32,
    },
    /// Join a room.
    Join(Join),
    /// Joined a room.
    Joined(Joined),
    /// Someone joined a room the receiver is in.
    PeerJoined(PeerJoined),
    /// Someone left a room the receiver is in.
    PeerLeft(PeerLeft),
    /// The room is at capacity.
    RoomFull {
        /// The room.
        room: RoomId,
        /// Its capacity.
        capacity: u32,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// Left a room.
    Left {
        /// The room.
        room: RoomId,
    },
    /// Log in with a unique name.
    Login {
        /// The name.
        name: UserName,
    },
    /// Answer to Login.
    LoginResult(LoginResult),
    /// Give up the name.
    Logout,
    /// End a call.
    HangUp {
        /// The other end (client) or who hung up (server).
        peer: Address,
    },
    /// SDP offer.
    Offer(SessionDescription),
    /// SDP answer.
    Answer(SessionDescription),
    /// ICE candidates.
    Ice(IceCandidates),
    /// A typed error.
    Error(ErrorMessage),
}

// ------------------------------------------------------------------ wire -> domain

fn room(field: &'static str, s: &str) -> Result<RoomId, FieldError> {
    RoomId::new(s).map_err(|source| FieldError::Id { field, source })
}

fn opt_room(field: &'static str, s: &str) -> Result<Option<RoomId>, FieldError> {
    if s.is_empty() {
        Ok(None)
    } else {
        room(field, s).map(Some)
    }
}

fn user(field: &'static str, s: &str) -> Result<UserName, FieldError> {
    UserName::new(s).map_err(|source| FieldError::Id { field, source })
}

fn bounded(field: &'static str, s: String, max: usize) -> Result<String, FieldError> {
    if s.len() > max {
        return Err(FieldError::TooLong {
            field,
            len: s.len(),
            max,
        });
    }
    Ok(s)
}

/// At most `max` items in a repeated field.
fn at_most<T>(field: &'static str, items: &[T], max: usize) -> Result<(), FieldError> {
    if items.len() > max {
        return Err(FieldError::TooMany {
            field,
            count: items.len(),
            max,
        });
    }
    Ok(())
}

fn bounded_opt(
    field: &'static str,
    s: Option<String>,
    max: usize,
) -> Result<Option<String>, FieldError> {
    s.map(|s| bounded(field, s, max)).transpose()
}

fn known<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, FieldError> {
    E::try_from(value).map_err(|_| FieldError::UnknownEnum { field, value })
}

fn address(field: &'static str, a: Option<pb::Address>) -> Result<Address, FieldError> {
    match a.and_then(|a| a.kind) {
        Some(pb::address::Kind::PeerId(id)) => Ok(Address::Peer(PeerId(id))),
        Some(pb::address::Kind::User(name)) => user(field, &name).map(Address::User),
        None => Err(FieldError::Missing { field }),
    }
}

fn address_to_wire(a: &Address) -> pb::Address {
    pb::Address {
        kind: Some(match a {
            Address::Peer(id) => pb::address::Kind::PeerId(id.0),
            Address::User(name) => pb::address::Kind::User(name.as_str().to_owned()),
        }),
    }
}

fn member(m: pb::Member) -> Result<Member, FieldError> {
    Ok(Member {
        peer_id: PeerId(m.peer_id),
        display_name: bounded("display_name", m.display_name, MAX_DISPLAY_NAME_BYTES)?,
        user: if m.user.is_empty() {
            None
        } else {
            Some(user("member.user", &m.user)?)
        },
        capabilities: Capabilities::from_wire(&m.capabilities),
    })
}

fn member_to_wire(m: &Member) -> pb::Member {
    pb::Member {
        peer_id: m.peer_id.0,
        display_name: m.display_name.clone(),
        user: m
            .user
            .as_ref()
            .map(|u| u.as_str().to_owned())
            .unwrap_or_default(),
        capabilities: m.capabilities.to_wire(),
    }
}

fn candidate(c: pb::IceCandidate) -> Result<IceCandidate, FieldError> {
    Ok(IceCandidate {
        candidate: bounded("candidate", c.candidate, MAX_CANDIDATE_BYTES)?,
        sdp_mid: bounded_opt("sdp_mid", c.sdp_mid, MAX_ID_BYTES)?,
        sdp_m_line_index: c.sdp_m_line_index,
        username_fragment: bounded_opt("username_fragment", c.username_fragment, MAX_ID_BYTES)?,
    })
}

fn candidate_to_wire(c: &IceCandidate) -> pb::IceCandidate {
    pb::IceCandidate {
        candidate: c.candidate.clone(),
        sdp_mid: c.sdp_mid.clone(),
        sdp_m_line_index: c.sdp_m_line_index,
        username_fragment: c.username_fragment.clone(),
    }
}

/// Checks an SDP body: plain SDP must be UTF-8 and within `max_sdp`;
/// deflated SDP must be within `max_sdp` compressed (it is inflated, with the
/// same cap, only by whoever reads it).
fn sdp(bytes: Bytes, deflated: bool, max_sdp: usize) -> Result<Sdp, FieldError> {
    if bytes.len() > max_sdp {
        return Err(FieldError::TooLong {
            field: "sdp",
            len: bytes.len(),
            max: max_sdp,
        });
    }
    if deflated {
        return Ok(Sdp::Deflated(bytes));
    }
    if std::str::from_utf8(&bytes).is_err() {
        return Err(FieldError::SdpNotUtf8);
    }
    Ok(Sdp::Plain(bytes))
}

pub(super) fn session_description(
    d: pb::SessionDescription,
    deflated: bool,
    max_sdp: usize,
) -> Result<SessionDescription, FieldError> {
    Ok(SessionDescription {
        peer: address("peer", d.peer)?,
        sdp: sdp(d.sdp, deflated, max_sdp)?,
        room: opt_room("room", &d.room)?,
        app_data: bounded("app_data", d.app_data, MAX_APP_DATA_BYTES)?,
    })
}

pub(super) fn session_description_to_wire(d: &SessionDescription) -> pb::SessionDescription {
    pb::SessionDescription {
        peer: Some(address_to_wire(&d.peer)),
        sdp: match &d.sdp {
            Sdp::Plain(b) | Sdp::Deflated(b) => b.clone(),
        },
        room: d
            .room
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        app_data: d.app_data.clone(),
    }
}

pub(super) fn ice_candidates(
    i: pb::IceCandidates,
    max_candidates: usize,
) -> Result<IceCandidates, FieldError> {
    at_most("candidates", &i.candidates, max_candidates)?;
    Ok(IceCandidates {
        peer: address("peer", i.peer)?,
        candidates: i
            .candidates
            .into_iter()
            .map(candidate)
            .collect::<Result<_, _>>()?,
        end_of_candidates: i.end_of_candidates,
        room: opt_room("room", &i.room)?,
        app_data: bounded("app_data", i.app_data, MAX_APP_DATA_BYTES)?,
    })
}

pub(super) fn ice_candidates_to_wire(i: &IceCandidates) -> pb::IceCandidates {
    pb::IceCandidates {
        peer: Some(address_to_wire(&i.peer)),
        candidates: i.candidates.iter().map(candidate_to_wire).collect(),
        end_of_candidates: i.end_of_candidates,
        room: i
            .room
            .as_ref()
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        app_data: i.app_data.clone(),
    }
}

impl TryFrom<pb::Hello> for Hello {
    type Error = FieldError;
    fn try_from(h: pb::Hello) -> Result<Hello, FieldError> {
        Ok(Hello {
            protocol_version: h.protocol_version,
            capabilities: Capabilities::from_wire(&h.capabilities),
            access_token: if h.access_token.is_empty() {
                None
            } else {
                Some(bounded("access_token", h.access_token, MAX_TOKEN_BYTES)?)
            },
            user_agent: bounded("user_agent", h.user_agent, MAX_TEXT_BYTES)?,
            resume: if h.resume_token.is_empty() {
                None
            } else {
                if h.resume_token.len() > MAX_RESUME_TOKEN_BYTES {
                    return Err(FieldError::TooLong {
                        field: "resume_token",
                        len: h.resume_token.len(),
                        max: MAX_RESUME_TOKEN_BYTES,
                    });
                }
                Some(ResumeRequest {
                    token: h.resume_token,
                    last_seq: h.resume_last_seq,
                })
            },
        })
    }
}

impl From<&Hello> for pb::Hello {
    fn from(h: &Hello) -> pb::Hello {
        pb::Hello {
            protocol_version: h.protocol_version,
            capabilities: h.capabilities.to_wire(),
            access_token: h.access_token.clone().unwrap_or_default(),
            user_agent: h.user_agent.clone(),
            resume_token: h
                .resume
                .as_ref()
                .map_or_else(Bytes::new, |r| r.token.clone()),
            resume_last_seq: h.resume.as_ref().map_or(0, |r| r.last_seq),
        }
    }
}

impl From<pb::Limits> for Limits {
    fn from(l: pb::Limits) -> Limits {
        Limits {
            max_message_bytes: l.max_message_bytes,
            max_frames_per_message: l.max_frames_per_message,
            max_sdp_bytes: l.max_sdp_bytes,
            rate_per_second: l.rate_per_second,
            rate_burst: l.rate_burst,
            max_id_bytes: l.max_id_bytes,
            max_room_capacity: l.max_room_capacity,
            default_room_capacity: l.default_room_capacity,
            max_payload_bytes: l.max_payload_bytes,
            max_candidates_per_batch: l.max_candidates_per_batch,
            rate_bytes_per_second: l.rate_bytes_per_second,
            rate_bytes_burst: l.rate_bytes_burst,
            max_rooms_per_peer: l.max_rooms_per_peer,
        }
    }
}

impl From<&Limits> for pb::Limits {
    fn from(l: &Limits) -> pb::Limits {
        pb::Limits {
            max_message_bytes: l.max_message_bytes,
            max_frames_per_message: l.max_frames_per_message,
            max_sdp_bytes: l.max_sdp_bytes,
            rate_per_second: l.rate_per_second,
            rate_burst: l.rate_burst,
            max_id_bytes: l.max_id_bytes,
            max_room_capacity: l.max_room_capacity,
            default_room_capacity: l.default_room_capacity,
            max_payload_bytes: l.max_payload_bytes,
            max_candidates_per_batch: l.max_candidates_per_batch,
            rate_bytes_per_second: l.rate_bytes_per_second,
            rate_bytes_burst: l.rate_bytes_burst,
            max_rooms_per_peer: l.max_rooms_per_peer,
        }
    }
}

/// Most ICE servers a Welcome may list.
pub const MAX_ICE_SERVERS: usize = 16;

impl TryFrom<pb::Welcome> for Welcome {
    type Error = FieldError;
    fn try_from(w: pb::Welcome) -> Result<Welcome, FieldError> {
        at_most("ice_servers", &w.ice_servers, MAX_ICE_SERVERS)?;
        Ok(Welcome {
            peer_id: PeerId(w.peer_id),
            protocol_version: w.protocol_version,
            limits: w
                .limits
                .map(Limits::from)
                .ok_or(FieldError::Missing { field: "limits" })?,
            heartbeat_interval: Duration::from_millis(w.heartbeat_interval_ms.into()),
            heartbeat_timeout: Duration::from_millis(w.heartbeat_timeout_ms.into()),
            ice_servers: w
                .ice_servers
                .into_iter()
                .map(|s| IceServer {
                    urls: s.urls,
                    username: s.username,
                    credential: s.credential,
                })
                .collect(),
            capabilities: Capabilities::from_wire(&w.capabilities),
            sdp_dictionary: w.sdp_dictionary,
            resume: if w.resume_token.is_empty() {
                None
            } else {
                let limits = w.resume_limits.unwrap_or_default();
                Some(Resume {
                    token: w.resume_token,
                    resumed: w.resumed,
                    // An unknown reason from a newer server is still a refusal.
                    refusal: match w.resume_refusal {
                        0 => None,
                        r => {
                            Some(ResumeRefusal::try_from(r).unwrap_or(ResumeRefusal::UnknownToken))
                        }
                    },
                    last_seq: w.resume_last_seq,
                    limits: ResumeLimits {
                        grace: Duration::from_millis(limits.grace_ms.into()),
                        replay_frames: limits.replay_frames,
                        replay_bytes: limits.replay_bytes,
                        ack_delay: Duration::from_millis(limits.ack_delay_ms.into()),
                    },
                })
            },
        })
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl From<&Welcome> for pb::Welcome {
    fn from(w: &Welcome) -> pb::Welcome {
        pb::Welcome {
            peer_id: w.peer_id.0,
            protocol_version: w.protocol_version,
            limits: Some((&w.limits).into()),
            heartbeat_interval_ms: millis(w.heartbeat_interval),
            heartbeat_timeout_ms: millis(w.heartbeat_timeout),
            ice_servers: w
                .ice_servers
                .iter()
                .map(|s| pb::IceServer {
                    urls: s.urls.clone(),
                    username: s.username.clone(),
                    credential: s.credential.clone(),
                })
                .collect(),
            capabilities: w.capabilities.to_wire(),
            resume_token: w
                .resume
                .as_ref()
                .map_or_else(Bytes::new, |r| r.token.clone()),
            sdp_dictionary: w.sdp_dictionary,
            resumed: w.resume.as_ref().is_some_and(|r| r.resumed),
            resume_refusal: w
                .resume
                .as_ref()
                .and_then(|r| r.refusal)
                .map_or(0, |r| r as i32),
            resume_last_seq: w.resume.as_ref().map_or(0, |r| r.last_seq),
            resume_limits: w.resume.as_ref().map(|r| pb::ResumeLimits {
                grace_ms: millis(r.limits.grace),
                replay_frames: r.limits.replay_frames,
                replay_bytes: r.limits.replay_bytes,
                ack_delay_ms: millis(r.limits.ack_delay),
            }),
        }
    }
}

impl TryFrom<pb::Join> for Join {
    type Error = FieldError;
    fn try_from(j: pb::Join) -> Result<Join, FieldError> {
        let mode = match known::<RoomMode>("mode", j.mode)? {
            RoomMode::Unspecified => RoomMode::Pair,
            mode => mode,
        };
        Ok(Join {
            room: room("room", &j.room)?,
            mode,
            capacity: (j.capacity != 0).then_some(j.capacity),
            display_name: bounded("display_name", j.display_name, MAX_DISPLAY_NAME_BYTES)?,
        })
    }
}

impl From<&Join> for pb::Join {
    fn from(j: &Join) -> pb::Join {
        pb::Join {
            room: j.room.as_str().to_owned(),
            mode: j.mode as i32,
            capacity: j.capacity.unwrap_or(0),
            display_name: j.display_name.clone(),
        }
    }
}

/// Most members a Joined may list.
pub const MAX_MEMBERS: usize = 1024;

impl TryFrom<pb::Joined> for Joined {
    type Error = FieldError;
    fn try_from(j: pb::Joined) -> Result<Joined, FieldError> {
        at_most("members", &j.members, MAX_MEMBERS)?;
        Ok(Joined {
            room: room("room", &j.room)?,
            mode: known("mode", j.mode)?,
            capacity: j.capacity,
            members: j
                .members
                .into_iter()
                .map(member)
                .collect::<Result<_, _>>()?,
            initiator: j.initiator,
        })
    }
}

impl From<&Joined> for pb::Joined {
    fn from(j: &Joined) -> pb::Joined {
        pb::Joined {
            room: j.room.as_str().to_owned(),
            mode: j.mode as i32,
            capacity: j.capacity,
            members: j.members.iter().map(member_to_wire).collect(),
            initiator: j.initiator,
        }
    }
}

impl TryFrom<pb::PeerJoined> for PeerJoined {
    type Error = FieldError;
    fn try_from(p: pb::PeerJoined) -> Result<PeerJoined, FieldError> {
        Ok(PeerJoined {
            room: room("room", &p.room)?,
            member: member(p.member.ok_or(FieldError::Missing { field: "member" })?)?,
            initiator: p.initiator,
        })
    }
}

impl From<&PeerJoined> for pb::PeerJoined {
    fn from(p: &PeerJoined) -> pb::PeerJoined {
        pb::PeerJoined {
            room: p.room.as_str().to_owned(),
            member: Some(member_to_wire(&p.member)),
            initiator: p.initiator,
        }
    }
}

impl TryFrom<pb::PeerLeft> for PeerLeft {
    type Error = FieldError;
    fn try_from(p: pb::PeerLeft) -> Result<PeerLeft, FieldError> {
        Ok(PeerLeft {
            room: room("room", &p.room)?,
            peer_id: PeerId(p.peer_id),
            reason: known("reason", p.reason)?,
        })
    }
}

impl From<&PeerLeft> for pb::PeerLeft {
    fn from(p: &PeerLeft) -> pb::PeerLeft {
        pb::PeerLeft {
            room: p.room.as_str().to_owned(),
            peer_id: p.peer_id.0,
            reason: p.reason as i32,
        }
    }
}

impl TryFrom<pb::LoginResult> for LoginResult {
    type Error = FieldError;
    fn try_from(l: pb::LoginResult) -> Result<LoginResult, FieldError> {
        let code: ErrorCode = known("error", l.error)?;
        Ok(LoginResult {
            name: user("name", &l.name)?,
            error: if l.success {
                None
            } else if code == ErrorCode::Unspecified {
                Some(ErrorCode::Internal)
            } else {
                Some(code)
            },
        })
    }
}

impl From<&LoginResult> for pb::LoginResult {
    fn from(l: &LoginResult) -> pb::LoginResult {
        pb::LoginResult {
            name: l.name.as_str().to_owned(),
            success: l.error.is_none(),
            error: l.error.unwrap_or(ErrorCode::Unspecified) as i32,
        }
    }
}

impl TryFrom<pb::HangUp> for Address {
    type Error = FieldError;
    fn try_from(h: pb::HangUp) -> Result<Address, FieldError> {
        address("peer", h.peer)
    }
}

pub(super) fn hang_up_to_wire(peer: &Address) -> pb::HangUp {
    pb::HangUp {
        peer: Some(address_to_wire(peer)),
    }
}

impl TryFrom<pb::Error> for ErrorMessage {
    type Error = FieldError;
    fn try_from(e: pb::Error) -> Result<ErrorMessage, FieldError> {
        Ok(ErrorMessage {
            code: known("code", e.code)?,
            message: bounded("message", e.message, MAX_TEXT_BYTES)?,
            request_seq: e.request_seq,
        })
    }
}

impl From<&ErrorMessage> for pb::Error {
    fn from(e: &ErrorMessage) -> pb::Error {
        pb::Error {
            code: e.code as i32,
            message: e.message.clone(),
            request_seq: e.request_seq,
        }
    }
}

pub(super) fn room_field(field: &'static str, s: &str) -> Result<RoomId, FieldError> {
    room(field, s)
}

pub(super) fn user_field(field: &'static str, s: &str) -> Result<UserName, FieldError> {
    user(field, s)
}
