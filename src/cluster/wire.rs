//! What nodes send each other on their Redis channels, sans I/O.
//!
//! A message on node N's channel is either a room event written by a Lua
//! script (JSON, first byte `{`), or a batch of frames from another node
//! (first byte [`BATCH`]): every frame one node had for N when it flushed,
//! one publish for all of them. A record is a relayed signal (with its
//! origin, so the sender can be told if it cannot be delivered) or one of
//! the server's own frames for a peer, either possibly *forwarded* by the
//! node a peer moved away from; or a step of moving a resumable session
//! between nodes (a request for it, the session itself, a fence, the end
//! of forwarding: see `ClusterDirectory::fetch_session`).

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::protocol::{
    Capabilities, Encoded, Flags, Member, MessageType, PeerId, ResumeLimits, ResumeRefusal, RoomId,
    RoomMode, UserName,
};
use crate::resume::{Handoff, Resumption, ResumptionParts, Token};

/// First byte of a batch of frames.
pub const BATCH: u8 = 1;
const RELAY: u8 = 1;
const NOTIFY: u8 = 2;
const FORWARDED_RELAY: u8 = 3;
const FORWARDED_NOTIFY: u8 = 4;
const TAKE: u8 = 5;
const GIVE: u8 = 6;
const FENCE: u8 = 7;
const DONE: u8 = 8;
const MARK: u8 = 9;
const ACK: u8 = 10;

/// One record of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Record {
    /// A signal relayed from `origin`'s frame `seq` to `to`.
    Relay {
        /// The receiver, on the node that reads the batch.
        to: PeerId,
        /// The sender, on the node that wrote it.
        origin: PeerId,
        /// The sender's sequence number of the frame.
        seq: u32,
        /// The frame.
        frame: Encoded,
        /// Forwarded by the node `to` moved away from.
        forwarded: bool,
    },
    /// One of the server's own frames for `to`.
    Notify {
        /// The receiver.
        to: PeerId,
        /// The frame.
        frame: Encoded,
        /// Forwarded by the node `to` moved away from.
        forwarded: bool,
    },
    /// Node `from` asks for the resumable session `token` names (its
    /// request `req`), for a client with access-token `identity`.
    Take {
        /// The request, for the answer.
        req: u64,
        /// The asking node.
        from: u16,
        /// The token the client presented.
        token: Token,
        /// The client's access-token identity.
        identity: Option<UserName>,
        /// How many nodes passed the request on (to where the session
        /// went since).
        hops: u8,
    },
    /// The answer to request `req`: the session ([`read_handoff`]), or why
    /// not.
    Give {
        /// The request answered.
        req: u64,
        /// The node that answered (and held the session).
        node: u16,
        /// The encoded [`Handoff`], or the refusal.
        session: Result<Bytes, ResumeRefusal>,
    },
    /// Node `from` routes `peer`, which moved, to its new node from now
    /// on: whatever it sent the old node is ahead of this.
    Fence {
        /// The peer that moved.
        peer: PeerId,
        /// The node that will not send it here again.
        from: u16,
    },
    /// The old node of `peer` has forwarded everything it will.
    Done {
        /// The peer that moved here.
        peer: PeerId,
    },
    /// The end of batch `seq` from node `from` (its batches to this node are
    /// numbered): to be acknowledged.
    Mark {
        /// The node that sent the batch.
        from: u16,
        /// The batch's number.
        seq: u64,
    },
    /// Node `from` has processed every batch this node sent it up to
    /// `seq`.
    Ack {
        /// The node that acknowledges.
        from: u16,
        /// The last batch processed.
        seq: u64,
    },
}

/// Starts an empty batch.
pub fn new_batch() -> Vec<u8> {
    vec![BATCH]
}

/// Appends a relayed signal to a batch (`forwarded` by the node `to`
/// moved away from).
pub fn put_relay(
    buf: &mut Vec<u8>,
    to: PeerId,
    origin: PeerId,
    seq: u32,
    frame: &Encoded,
    forwarded: bool,
) {
    buf.put_u8(if forwarded { FORWARDED_RELAY } else { RELAY });
    buf.put_u64_le(to.0);
    buf.put_u64_le(origin.0);
    buf.put_u32_le(seq);
    put_frame(buf, frame);
}

/// Appends one of the server's own frames to a batch.
pub fn put_notify(buf: &mut Vec<u8>, to: PeerId, frame: &Encoded, forwarded: bool) {
    buf.put_u8(if forwarded { FORWARDED_NOTIFY } else { NOTIFY });
    buf.put_u64_le(to.0);
    put_frame(buf, frame);
}

/// Appends a request for the session `token` names.
pub fn put_take(
    buf: &mut Vec<u8>,
    req: u64,
    from: u16,
    token: &Token,
    identity: Option<&UserName>,
    hops: u8,
) {
    buf.put_u8(TAKE);
    buf.put_u64_le(req);
    buf.put_u16_le(from);
    buf.put_u8(hops);
    buf.extend_from_slice(token);
    let identity = identity.map_or("", |u| u.as_str());
    buf.put_u16_le(identity.len() as u16);
    buf.extend_from_slice(identity.as_bytes());
}

/// Appends the answer to request `req`.
pub fn put_give(buf: &mut Vec<u8>, req: u64, node: u16, session: Result<&Handoff, ResumeRefusal>) {
    buf.put_u8(GIVE);
    buf.put_u64_le(req);
    buf.put_u16_le(node);
    match session {
        Ok(handoff) => {
            let at = buf.len();
            buf.put_u32_le(0);
            put_handoff(buf, handoff);
            let len = (buf.len() - at - 4) as u32;
            buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
        Err(why) => {
            buf.put_u32_le(u32::MAX);
            buf.put_i32_le(why as i32);
        }
    }
}

/// Appends a fence: node `from` routes `peer` elsewhere from now on.
pub fn put_fence(buf: &mut Vec<u8>, peer: PeerId, from: u16) {
    buf.put_u8(FENCE);
    buf.put_u64_le(peer.0);
    buf.put_u16_le(from);
}

/// Appends the end mark of batch `seq` from node `from`.
pub fn put_mark(buf: &mut Vec<u8>, from: u16, seq: u64) {
    buf.put_u8(MARK);
    buf.put_u16_le(from);
    buf.put_u64_le(seq);
}

/// Appends node `from`'s acknowledgement of batches up to `seq`.
pub fn put_ack(buf: &mut Vec<u8>, from: u16, seq: u64) {
    buf.put_u8(ACK);
    buf.put_u16_le(from);
    buf.put_u64_le(seq);
}

/// Appends the end of forwarding for `peer`.
pub fn put_done(buf: &mut Vec<u8>, peer: PeerId) {
    buf.put_u8(DONE);
    buf.put_u64_le(peer.0);
}

/// A [`Handoff`]'s fields that are not frames (JSON).
#[derive(Serialize, Deserialize)]
struct HandoffMeta {
    peer: u64,
    caps: u8,
    rooms: Vec<String>,
    pair: Option<String>,
    user: Option<String>,
    display: String,
    seq_out: u32,
    identity: Option<String>,
    token: String,
    previous: Option<String>,
    grace_ms: u64,
    replay_frames: u32,
    replay_bytes: u32,
    ack_delay_ms: u64,
    lost_up_to: u32,
    client_seq: u32,
    acked: u32,
}

fn put_handoff(buf: &mut Vec<u8>, h: &Handoff) {
    let r = h.resume.to_parts();
    let meta = HandoffMeta {
        peer: h.peer.0,
        caps: h.capabilities.bits(),
        rooms: h.rooms.iter().map(|r| r.to_string()).collect(),
        pair: h.pair_room.as_ref().map(|r| r.to_string()),
        user: h.user.as_ref().map(|u| u.to_string()),
        display: h.display_name.clone(),
        seq_out: h.seq_out,
        identity: h.identity.as_ref().map(|u| u.to_string()),
        token: hex::encode(r.token),
        previous: r.previous.map(hex::encode),
        grace_ms: r.limits.grace.as_millis() as u64,
        replay_frames: r.limits.replay_frames,
        replay_bytes: r.limits.replay_bytes,
        ack_delay_ms: r.limits.ack_delay.as_millis() as u64,
        lost_up_to: r.lost_up_to,
        client_seq: r.client_seq,
        acked: r.acked,
    };
    let meta = serde_json::to_vec(&meta).expect("a handoff serializes");
    buf.put_u32_le(meta.len() as u32);
    buf.extend_from_slice(&meta);
    buf.put_u32_le(r.held.len() as u32);
    for (seq, frame) in &r.held {
        buf.put_u32_le(*seq);
        put_frame(buf, frame);
    }
    buf.put_u32_le(h.queued.len() as u32);
    for (frame, origin) in &h.queued {
        let (peer, seq) = origin.unwrap_or((PeerId(0), 0));
        buf.put_u8(origin.is_some().into());
        buf.put_u64_le(peer.0);
        buf.put_u32_le(seq);
        put_frame(buf, frame);
    }
}

/// The session a [`Record::Give`] carries.
pub fn read_handoff(mut data: Bytes) -> Result<Handoff, BadBatch> {
    let data = &mut data;
    need(data, 4)?;
    let len = data.get_u32_le() as usize;
    need(data, len)?;
    let meta: HandoffMeta = serde_json::from_slice(&data.split_to(len)).map_err(|_| BadBatch)?;
    let token = |hex: &str| -> Result<Token, BadBatch> {
        hex::decode(hex)
            .ok()
            .and_then(|t| Token::try_from(&t[..]).ok())
            .ok_or(BadBatch)
    };
    let room = |r: &str| RoomId::new(r).map_err(|_| BadBatch);
    let user = |u: &str| UserName::new(u).map_err(|_| BadBatch);
    need(data, 4)?;
    let count = data.get_u32_le() as usize;
    let mut held = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        need(data, 4)?;
        let seq = data.get_u32_le();
        held.push((seq, read_frame(data)?));
    }
    need(data, 4)?;
    let count = data.get_u32_le() as usize;
    let mut queued = Vec::with_capacity(count.min(4096));
    for _ in 0..count {
        need(data, 13)?;
        let relayed = data.get_u8() == 1;
        let (peer, seq) = (PeerId(data.get_u64_le()), data.get_u32_le());
        queued.push((read_frame(data)?, relayed.then_some((peer, seq))));
    }
    Ok(Handoff {
        peer: PeerId(meta.peer),
        capabilities: Capabilities::from_bits(meta.caps),
        rooms: meta
            .rooms
            .iter()
            .map(|r| room(r))
            .collect::<Result<_, _>>()?,
        pair_room: meta.pair.as_deref().map(room).transpose()?,
        user: meta.user.as_deref().map(user).transpose()?,
        display_name: meta.display,
        seq_out: meta.seq_out,
        identity: meta.identity.as_deref().map(user).transpose()?,
        resume: Resumption::from_parts(ResumptionParts {
            token: token(&meta.token)?,
            previous: meta.previous.as_deref().map(token).transpose()?,
            limits: ResumeLimits {
                grace: std::time::Duration::from_millis(meta.grace_ms),
                replay_frames: meta.replay_frames,
                replay_bytes: meta.replay_bytes,
                ack_delay: std::time::Duration::from_millis(meta.ack_delay_ms),
            },
            held,
            lost_up_to: meta.lost_up_to,
            client_seq: meta.client_seq,
            acked: meta.acked,
        }),
        queued,
    })
}

fn put_frame(buf: &mut Vec<u8>, frame: &Encoded) {
    buf.put_u8(frame.kind as u8);
    buf.put_u8(frame.flags.0);
    buf.put_u32_le(frame.payload.len() as u32);
    buf.extend_from_slice(&frame.payload);
}

/// A batch that does not parse: a node of another version, or a bug. The
/// records before it are still delivered.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable batch from another node")]
pub struct BadBatch;

/// The records of a batch (without its first byte), payloads sharing
/// `data`'s memory.
pub fn records(mut data: Bytes) -> impl Iterator<Item = Result<Record, BadBatch>> {
    let mut failed = false;
    std::iter::from_fn(move || {
        if failed || data.is_empty() {
            return None;
        }
        let record = read_record(&mut data);
        failed = record.is_err();
        Some(record)
    })
}

fn need(data: &Bytes, n: usize) -> Result<(), BadBatch> {
    if data.remaining() < n {
        Err(BadBatch)
    } else {
        Ok(())
    }
}

fn read_frame(data: &mut Bytes) -> Result<Encoded, BadBatch> {
    need(data, 6)?;
    let kind = MessageType::from_byte(data.get_u8()).ok_or(BadBatch)?;
    let flags = Flags(data.get_u8());
    let len = data.get_u32_le() as usize;
    need(data, len)?;
    Ok(Encoded {
        kind,
        flags,
        payload: data.split_to(len),
    })
}

fn read_record(data: &mut Bytes) -> Result<Record, BadBatch> {
    need(data, 1)?;
    let tag = data.get_u8();
    match tag {
        RELAY | FORWARDED_RELAY => {
            need(data, 20)?;
            let (to, origin, seq) = (
                PeerId(data.get_u64_le()),
                PeerId(data.get_u64_le()),
                data.get_u32_le(),
            );
            Ok(Record::Relay {
                to,
                origin,
                seq,
                frame: read_frame(data)?,
                forwarded: tag == FORWARDED_RELAY,
            })
        }
        NOTIFY | FORWARDED_NOTIFY => {
            need(data, 8)?;
            let to = PeerId(data.get_u64_le());
            Ok(Record::Notify {
                to,
                frame: read_frame(data)?,
                forwarded: tag == FORWARDED_NOTIFY,
            })
        }
        TAKE => {
            need(data, 8 + 2 + 1 + 32 + 2)?;
            let (req, from, hops) = (data.get_u64_le(), data.get_u16_le(), data.get_u8());
            let mut token: Token = [0; 32];
            data.copy_to_slice(&mut token);
            let len = data.get_u16_le() as usize;
            need(data, len)?;
            let identity = data.split_to(len);
            let identity = if identity.is_empty() {
                None
            } else {
                let name = std::str::from_utf8(&identity).map_err(|_| BadBatch)?;
                Some(UserName::new(name).map_err(|_| BadBatch)?)
            };
            Ok(Record::Take {
                req,
                from,
                token,
                identity,
                hops,
            })
        }
        GIVE => {
            need(data, 14)?;
            let (req, node, len) = (data.get_u64_le(), data.get_u16_le(), data.get_u32_le());
            let session = if len == u32::MAX {
                need(data, 4)?;
                Err(ResumeRefusal::try_from(data.get_i32_le())
                    .unwrap_or(ResumeRefusal::UnknownToken))
            } else {
                need(data, len as usize)?;
                Ok(data.split_to(len as usize))
            };
            Ok(Record::Give { req, node, session })
        }
        FENCE => {
            need(data, 10)?;
            Ok(Record::Fence {
                peer: PeerId(data.get_u64_le()),
                from: data.get_u16_le(),
            })
        }
        DONE => {
            need(data, 8)?;
            Ok(Record::Done {
                peer: PeerId(data.get_u64_le()),
            })
        }
        MARK | ACK => {
            need(data, 10)?;
            let (from, seq) = (data.get_u16_le(), data.get_u64_le());
            Ok(if tag == MARK {
                Record::Mark { from, seq }
            } else {
                Record::Ack { from, seq }
            })
        }
        _ => Err(BadBatch),
    }
}

/// A peer as Redis stores it: 16 hexadecimal digits, node first.
pub fn peer_key(peer: PeerId) -> String {
    format!("{:016x}", peer.0)
}

/// The peer a [`peer_key`] names.
pub fn parse_peer(key: &str) -> Option<PeerId> {
    u64::from_str_radix(key.get(..16)?, 16).ok().map(PeerId)
}

/// A room mode as scripts store it.
pub fn mode_key(mode: RoomMode) -> &'static str {
    crate::rooms::mode_name(mode)
}

/// The mode a [`mode_key`] names.
pub fn parse_mode(key: &str) -> RoomMode {
    if key == "mesh" {
        RoomMode::Mesh
    } else {
        RoomMode::Pair
    }
}

/// A room member as scripts store it (JSON).
#[derive(Serialize, Deserialize)]
struct MemberRecord {
    p: String,
    d: String,
    /// The user name, or empty.
    u: String,
    c: u8,
}

/// `member` as its record.
pub fn member_record(member: &Member) -> String {
    serde_json::to_string(&MemberRecord {
        p: peer_key(member.peer_id),
        d: member.display_name.clone(),
        u: member
            .user
            .as_ref()
            .map(|u| u.to_string())
            .unwrap_or_default(),
        c: member.capabilities.bits(),
    })
    .expect("a member record serializes")
}

/// The member a record describes.
pub fn parse_member(record: &str) -> Option<Member> {
    let r: MemberRecord = serde_json::from_str(record).ok()?;
    Some(Member {
        peer_id: parse_peer(&r.p)?,
        display_name: r.d,
        user: if r.u.is_empty() {
            None
        } else {
            UserName::new(&r.u).ok()
        },
        capabilities: Capabilities::from_bits(r.c),
    })
}

/// A room event, as the scripts publish it.
#[derive(Debug, Deserialize)]
#[serde(tag = "k")]
pub enum Event {
    /// `p` joined room `r`; `m` is every member's record in join order.
    #[serde(rename = "j")]
    Joined {
        r: String,
        p: String,
        mode: String,
        cap: u32,
        m: Vec<String>,
    },
    /// `p` left room `r` for reason `why` (a LeaveReason number).
    #[serde(rename = "l")]
    Left { r: String, p: String, why: i32 },
    /// `p` is listed in room `r` with user name `u` (empty: none).
    #[serde(rename = "u")]
    User { r: String, p: String, u: String },
    /// Tell `to` that its call partner `from` hung up (it is gone).
    #[serde(rename = "h")]
    HangUp { to: String, from: String },
    /// An operator removed `p` from room `r`: tell it.
    #[serde(rename = "k")]
    Kicked { r: String, p: String, why: String },
    /// An operator closed room `r`: tell every member here.
    #[serde(rename = "c")]
    Closed { r: String },
    /// Node `n` was found dead (its lease ran out): what was sent there
    /// lately may have died with it.
    #[serde(rename = "d")]
    Died { n: u16 },
    /// Peer `p`'s session moved from node `f` to node `n` (`n` 0: `p` is
    /// gone, forget where it was). `ns` are the nodes told (each sends `f`
    /// a fence); `rooms` are `p`'s rooms, for `n`'s copy.
    #[serde(rename = "m")]
    Moved {
        p: String,
        n: u16,
        #[serde(default)]
        f: u16,
        #[serde(default, deserialize_with = "lua_list")]
        ns: Vec<u16>,
        #[serde(default, deserialize_with = "lua_list")]
        rooms: Vec<RoomState>,
    },
}

/// A room as an event carries it whole.
#[derive(Debug, Deserialize)]
pub struct RoomState {
    /// The room.
    pub r: String,
    /// Its mode.
    pub mode: String,
    /// Its capacity.
    pub cap: u32,
    /// Its members' records, in join order.
    #[serde(deserialize_with = "lua_list")]
    pub m: Vec<String>,
}

/// A list from Lua's cjson, which writes an empty one as `{}`.
fn lua_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Object(o) if o.is_empty() => Ok(Vec::new()),
        v => serde_json::from_value(v).map_err(serde::de::Error::custom),
    }
}

/// A room id from an event (checked again: it comes from Redis).
pub fn parse_room(r: &str) -> Option<RoomId> {
    RoomId::new(r).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: MessageType, payload: &'static [u8]) -> Encoded {
        Encoded {
            kind,
            flags: Flags(1),
            payload: Bytes::from_static(payload),
        }
    }

    #[test]
    fn a_batch_gives_back_its_records_in_order() {
        let mut buf = new_batch();
        put_relay(
            &mut buf,
            PeerId(7),
            PeerId(9),
            42,
            &frame(MessageType::Offer, b"sdp"),
            false,
        );
        put_notify(
            &mut buf,
            PeerId(8),
            &frame(MessageType::PeerLeft, b""),
            true,
        );
        put_fence(&mut buf, PeerId(8), 3);
        put_done(&mut buf, PeerId(8));
        put_mark(&mut buf, 3, 17);
        put_ack(&mut buf, 4, 16);
        assert_eq!(buf[0], BATCH);
        let got: Vec<_> = records(Bytes::from(buf).slice(1..)).collect();
        assert_eq!(
            got,
            vec![
                Ok(Record::Relay {
                    to: PeerId(7),
                    origin: PeerId(9),
                    seq: 42,
                    frame: frame(MessageType::Offer, b"sdp"),
                    forwarded: false,
                }),
                Ok(Record::Notify {
                    to: PeerId(8),
                    frame: frame(MessageType::PeerLeft, b""),
                    forwarded: true,
                }),
                Ok(Record::Fence {
                    peer: PeerId(8),
                    from: 3
                }),
                Ok(Record::Done { peer: PeerId(8) }),
                Ok(Record::Mark { from: 3, seq: 17 }),
                Ok(Record::Ack { from: 4, seq: 16 }),
            ]
        );
    }

    #[test]
    fn a_session_survives_its_trip_between_nodes() {
        use crate::resume::new_token;
        use std::time::Duration;
        let limits = ResumeLimits {
            grace: Duration::from_secs(30),
            replay_frames: 16,
            replay_bytes: 1 << 16,
            ack_delay: Duration::from_millis(200),
        };
        let mut resume = Resumption::new(limits, 3);
        let first = resume.token();
        resume.rotate(first, 3);
        let mut seq = 0;
        for payload in [&b"one"[..], b"two"] {
            resume.number(&frame(MessageType::Offer, payload), || {
                seq += 1;
                seq
            });
        }
        resume.processing(9, std::time::Instant::now());
        let handoff = Handoff {
            peer: PeerId::new(3, 1, 42),
            capabilities: Capabilities::DEFLATE_SDP,
            rooms: vec![RoomId::new("a").unwrap(), RoomId::new("b").unwrap()],
            pair_room: Some(RoomId::new("a").unwrap()),
            user: Some(UserName::new("ann").unwrap()),
            display_name: "Ann".into(),
            seq_out: 2,
            identity: None,
            resume,
            queued: vec![
                (frame(MessageType::Answer, b"sdp"), Some((PeerId(5), 7))),
                (frame(MessageType::PeerLeft, b""), None),
            ],
        };
        let token = new_token(3);
        let mut buf = new_batch();
        put_take(&mut buf, 11, 4, &token, handoff.user.as_ref(), 1);
        put_give(&mut buf, 11, 3, Ok(&handoff));
        put_give(&mut buf, 12, 3, Err(ResumeRefusal::Forbidden));
        let got: Vec<_> = records(Bytes::from(buf).slice(1..)).collect();
        assert_eq!(
            got[0],
            Ok(Record::Take {
                req: 11,
                from: 4,
                token,
                identity: handoff.user.clone(),
                hops: 1
            })
        );
        let Ok(Record::Give {
            req: 11,
            node: 3,
            session: Ok(bytes),
        }) = &got[1]
        else {
            panic!("a Give with the session: {:?}", got[1]);
        };
        let back = read_handoff(bytes.clone()).unwrap();
        assert_eq!(
            (back.peer, back.capabilities, &back.rooms, &back.pair_room),
            (
                handoff.peer,
                handoff.capabilities,
                &handoff.rooms,
                &handoff.pair_room
            )
        );
        assert_eq!(
            (&back.user, &back.display_name, back.seq_out),
            (&handoff.user, &handoff.display_name, 2)
        );
        assert_eq!(back.queued, handoff.queued);
        assert_eq!(back.resume.to_parts(), handoff.resume.to_parts());
        assert_eq!(back.resume.previous(), Some(first));
        assert_eq!(
            got[2],
            Ok(Record::Give {
                req: 12,
                node: 3,
                session: Err(ResumeRefusal::Forbidden)
            })
        );
        // A truncated session is refused, not half read.
        assert!(read_handoff(bytes.slice(..bytes.len() - 1)).is_err());
    }

    #[test]
    fn a_truncated_batch_stops_at_the_bad_record() {
        let mut buf = new_batch();
        put_notify(
            &mut buf,
            PeerId(8),
            &frame(MessageType::Offer, b"abc"),
            false,
        );
        put_notify(
            &mut buf,
            PeerId(9),
            &frame(MessageType::Offer, b"abcdef"),
            false,
        );
        buf.truncate(buf.len() - 2);
        let got: Vec<_> = records(Bytes::from(buf).slice(1..)).collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].is_ok());
        assert_eq!(got[1], Err(BadBatch));
    }

    #[test]
    fn peers_and_members_survive_their_redis_form() {
        let peer = PeerId::new(3, 7, 99);
        let key = peer_key(peer);
        assert_eq!(
            &key[..4],
            "0003",
            "scripts read the node from the first four digits"
        );
        assert_eq!(parse_peer(&key), Some(peer));
        let member = Member {
            peer_id: peer,
            display_name: "Ann \"A\"".into(),
            user: Some(UserName::new("ann").unwrap()),
            capabilities: Capabilities::DEFLATE_SDP,
        };
        assert_eq!(parse_member(&member_record(&member)), Some(member));
    }
}
