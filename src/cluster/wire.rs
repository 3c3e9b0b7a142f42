//! What nodes send each other on their Redis channels, sans I/O.
//!
//! A message on node N's channel is either a room event written by a Lua
//! script (JSON, first byte `{`), or a batch of frames from another node
//! (first byte [`BATCH`]): every frame one node had for N when it flushed,
//! one publish for all of them. A record is a relayed signal (with its
//! origin, so the sender can be told if it cannot be delivered) or one of
//! the server's own frames for a peer.

use bytes::{Buf, BufMut, Bytes};
use serde::{Deserialize, Serialize};

use crate::protocol::{
    Capabilities, Encoded, Flags, Member, MessageType, PeerId, RoomId, RoomMode, UserName,
};

/// First byte of a batch of frames.
pub const BATCH: u8 = 1;
const RELAY: u8 = 1;
const NOTIFY: u8 = 2;

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
    },
    /// One of the server's own frames for `to`.
    Notify {
        /// The receiver.
        to: PeerId,
        /// The frame.
        frame: Encoded,
    },
}

/// Starts an empty batch.
pub fn new_batch() -> Vec<u8> {
    vec![BATCH]
}

/// Appends a relayed signal to a batch.
pub fn put_relay(buf: &mut Vec<u8>, to: PeerId, origin: PeerId, seq: u32, frame: &Encoded) {
    buf.put_u8(RELAY);
    buf.put_u64_le(to.0);
    buf.put_u64_le(origin.0);
    buf.put_u32_le(seq);
    put_frame(buf, frame);
}

/// Appends one of the server's own frames to a batch.
pub fn put_notify(buf: &mut Vec<u8>, to: PeerId, frame: &Encoded) {
    buf.put_u8(NOTIFY);
    buf.put_u64_le(to.0);
    put_frame(buf, frame);
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

fn read_record(data: &mut Bytes) -> Result<Record, BadBatch> {
    let need = |data: &Bytes, n: usize| {
        if data.remaining() < n {
            Err(BadBatch)
        } else {
            Ok(())
        }
    };
    need(data, 9)?;
    let tag = data.get_u8();
    let to = PeerId(data.get_u64_le());
    let (origin, seq) = match tag {
        RELAY => {
            need(data, 12)?;
            (Some(PeerId(data.get_u64_le())), data.get_u32_le())
        }
        NOTIFY => (None, 0),
        _ => return Err(BadBatch),
    };
    need(data, 6)?;
    let kind = MessageType::from_byte(data.get_u8()).ok_or(BadBatch)?;
    let flags = Flags(data.get_u8());
    let len = data.get_u32_le() as usize;
    need(data, len)?;
    let frame = Encoded {
        kind,
        flags,
        payload: data.split_to(len),
    };
    Ok(match origin {
        Some(origin) => Record::Relay {
            to,
            origin,
            seq,
            frame,
        },
        None => Record::Notify { to, frame },
    })
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
        );
        put_notify(&mut buf, PeerId(8), &frame(MessageType::PeerLeft, b""));
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
                }),
                Ok(Record::Notify {
                    to: PeerId(8),
                    frame: frame(MessageType::PeerLeft, b""),
                }),
            ]
        );
    }

    #[test]
    fn a_truncated_batch_stops_at_the_bad_record() {
        let mut buf = new_batch();
        put_notify(&mut buf, PeerId(8), &frame(MessageType::Offer, b"abc"));
        put_notify(&mut buf, PeerId(9), &frame(MessageType::Offer, b"abcdef"));
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
