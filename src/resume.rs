//! Session resume, sans I/O: what a resumable session keeps so that a
//! dropped connection loses nothing (docs/PROTOCOL.md, section 11a).
//!
//! A [`Resumption`] holds the session's current token, the frames written
//! to the client that it has not acknowledged (bounded; an overflow makes
//! the session unresumable rather than unbounded), the highest client frame
//! processed, and when an `Ack` for it is due. Time is passed in.

use std::collections::VecDeque;
use std::time::Instant;

use bytes::Bytes;

use crate::protocol::{Capabilities, Encoded, MessageType, PeerId, ResumeLimits, RoomId, UserName};

/// A resume token: the id of the node that holds the session (2 bytes,
/// big-endian), then 30 bytes (240 bits) from a cryptographically secure
/// generator seeded by the operating system. The node id lets another
/// node of a cluster know whom to ask for the session; it is no secret.
pub type Token = [u8; 32];

/// A new random token for a session held by node `node`.
pub fn new_token(node: u16) -> Token {
    let mut token: Token = rand::random();
    token[..2].copy_from_slice(&node.to_be_bytes());
    token
}

/// The node that held the session when `token` was made.
pub fn token_node(token: &Token) -> u16 {
    u16::from_be_bytes([token[0], token[1]])
}

/// The frames a client missed are no longer all held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("frames the client did not acknowledge were dropped")]
pub struct ReplayLost;

/// A resumable session as one node of a cluster hands it to another when
/// its client comes back there: everything but its socket, its rate
/// guard (the new connection starts a fresh one) and its grant (the
/// resuming `Hello` carries the access token again).
#[derive(Debug)]
pub struct Handoff {
    /// The peer, which keeps its id on the new node.
    pub peer: PeerId,
    /// The capabilities agreed with the client.
    pub capabilities: Capabilities,
    /// Its rooms, and which of them is its pair room.
    pub rooms: Vec<RoomId>,
    /// Its pair room, if any.
    pub pair_room: Option<RoomId>,
    /// Its logged-in name.
    pub user: Option<UserName>,
    /// Its display name.
    pub display_name: String,
    /// The last sequence number written to the client.
    pub seq_out: u32,
    /// The identity of the access token it was opened with.
    pub identity: Option<UserName>,
    /// Resume's bookkeeping (token, frames held for a replay, acks).
    pub resume: Resumption,
    /// Frames queued for the client and not yet written, with the sender
    /// and sequence number of the relayed ones.
    pub queued: Vec<(Encoded, Option<(PeerId, u32)>)>,
}

/// [`Resumption`]'s state as plain data, for a [`Handoff`]'s encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumptionParts {
    /// The current token.
    pub token: Token,
    /// The older token still accepted.
    pub previous: Option<Token>,
    /// The limits announced to the client.
    pub limits: ResumeLimits,
    /// Frames written and not acknowledged, with their numbers.
    pub held: Vec<(u32, Encoded)>,
    /// The highest number dropped from `held` without an Ack.
    pub lost_up_to: u32,
    /// The highest client frame processed.
    pub client_seq: u32,
    /// The highest client frame acknowledged.
    pub acked: u32,
}

/// What a resumable session keeps.
#[derive(Debug)]
pub struct Resumption {
    token: Token,
    /// An older token still accepted: the last one the client is known to
    /// hold, while it has not shown (by sending anything) that it got the
    /// `Welcome` carrying `token`. A resume whose `Welcome` is lost on the
    /// way can so be tried again with the token the client has.
    previous: Option<Token>,
    /// Whether what the client sends now shows it got the current token:
    /// not the frames that came in the same message as its resume `Hello`
    /// (sent before the `Welcome` could arrive).
    armed: bool,
    /// The older token the server's table lists for this session (it may
    /// outlive `previous`), so it can be removed.
    listed: Option<Token>,
    limits: ResumeLimits,
    /// Frames written and not acknowledged, oldest first, with their
    /// sequence numbers.
    held: VecDeque<(u32, Encoded)>,
    held_bytes: usize,
    /// The highest sequence number dropped from `held` without an Ack.
    lost_up_to: u32,
    /// The highest client frame processed, and the highest acknowledged.
    client_seq: u32,
    acked: u32,
    ack_due: Option<Instant>,
}

impl Resumption {
    /// A fresh resumable session held by node `node`, with a new token.
    pub fn new(limits: ResumeLimits, node: u16) -> Resumption {
        Resumption {
            token: new_token(node),
            previous: None,
            armed: true,
            listed: None,
            limits,
            held: VecDeque::new(),
            held_bytes: 0,
            lost_up_to: 0,
            client_seq: 0,
            acked: 0,
            ack_due: None,
        }
    }

    /// The state as plain data (the token tables' bookkeeping, `listed`,
    /// stays with the node that had the session).
    pub fn to_parts(&self) -> ResumptionParts {
        ResumptionParts {
            token: self.token,
            previous: self.previous,
            limits: self.limits,
            held: self.held.iter().cloned().collect(),
            lost_up_to: self.lost_up_to,
            client_seq: self.client_seq,
            acked: self.acked,
        }
    }

    /// A session's resume state from [`Resumption::to_parts`]; an `Ack`
    /// for what was processed is due at `now`.
    pub fn from_parts(parts: ResumptionParts) -> Resumption {
        let held_bytes = parts.held.iter().map(|(_, f)| f.payload.len()).sum();
        Resumption {
            token: parts.token,
            previous: parts.previous,
            armed: true,
            listed: None,
            limits: parts.limits,
            held: parts.held.into(),
            held_bytes,
            lost_up_to: parts.lost_up_to,
            client_seq: parts.client_seq,
            acked: parts.acked,
            ack_due: None,
        }
    }

    /// The current token.
    pub fn token(&self) -> Token {
        self.token
    }

    /// The current token as `Welcome` carries it.
    pub fn token_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(&self.token)
    }

    /// Replaces the token (every resume does; `node` now holds the
    /// session). `presented`, the token the client resumed with (so the
    /// one it holds), stays valid until the client shows it got the new one
    /// ([`Resumption::confirm`]); every other is void.
    pub fn rotate(&mut self, presented: Token, node: u16) -> Token {
        self.previous = Some(presented);
        self.token = new_token(node);
        self.armed = false;
        self.token
    }

    /// From now on what the client sends was sent after the `Welcome`
    /// carrying the current token.
    pub fn arm(&mut self) {
        self.armed = true;
    }

    /// The older token still accepted, if the client has not yet shown it
    /// got the current one.
    pub fn previous(&self) -> Option<Token> {
        self.previous
    }

    /// The older token the server's table lists for this session, replaced
    /// by `listed` (what it lists from now on).
    pub fn relist(&mut self, listed: Option<Token>) -> Option<Token> {
        std::mem::replace(&mut self.listed, listed)
    }

    /// The client sent something on its new connection: it got the
    /// `Welcome` with the current token, and the older one is void.
    pub fn confirm(&mut self) {
        if self.armed {
            self.previous = None;
        }
    }

    /// The limits announced to the client.
    pub fn limits(&self) -> ResumeLimits {
        self.limits
    }

    /// The sequence number a written frame gets: `0` for an `Ack` (outside
    /// the numbering), else `next()`; the frame is held until acknowledged.
    pub fn number(&mut self, frame: &Encoded, next: impl FnOnce() -> u32) -> u32 {
        if frame.kind == MessageType::Ack {
            return 0;
        }
        let seq = next();
        self.held.push_back((seq, frame.clone()));
        self.held_bytes += frame.payload.len();
        while self.held.len() > self.limits.replay_frames as usize
            || self.held_bytes > self.limits.replay_bytes as usize
        {
            let Some((dropped, frame)) = self.held.pop_front() else {
                break;
            };
            self.held_bytes -= frame.payload.len();
            self.lost_up_to = dropped;
        }
        seq
    }

    /// The client acknowledged every frame up to `seq`.
    pub fn acknowledged(&mut self, seq: u32) {
        self.confirm();
        while self.held.front().is_some_and(|(s, _)| *s <= seq) {
            if let Some((_, frame)) = self.held.pop_front() {
                self.held_bytes -= frame.payload.len();
            }
        }
    }

    /// Whether a client frame numbered `seq` was processed already (it is
    /// sent again after a resume).
    pub fn is_duplicate(&self, seq: u32) -> bool {
        seq != 0 && seq <= self.client_seq
    }

    /// A client frame numbered `seq` is being processed at `now`: it is to
    /// be acknowledged within the ack delay.
    pub fn processing(&mut self, seq: u32, now: Instant) {
        if seq > self.client_seq {
            self.client_seq = seq;
            self.ack_due.get_or_insert(now + self.limits.ack_delay);
        }
    }

    /// The highest client frame processed.
    pub fn client_seq(&self) -> u32 {
        self.client_seq
    }

    /// When an `Ack` must be sent at the latest.
    pub fn ack_due(&self) -> Option<Instant> {
        self.ack_due
    }

    /// The sequence number to acknowledge now, if anything is new.
    pub fn take_ack(&mut self) -> Option<u32> {
        self.ack_due = None;
        (self.client_seq > self.acked).then(|| {
            self.acked = self.client_seq;
            self.client_seq
        })
    }

    /// The frames to send again to a client that processed every frame up
    /// to `last_seq`, in order with their numbers.
    pub fn replay_after(&self, last_seq: u32) -> Result<Vec<(u32, Encoded)>, ReplayLost> {
        if self.lost_up_to > last_seq {
            return Err(ReplayLost);
        }
        Ok(self
            .held
            .iter()
            .filter(|(seq, _)| *seq > last_seq)
            .cloned()
            .collect())
    }

    /// After a resume: the client acknowledged `last_seq` by resuming, and
    /// an `Ack` for what the server processed goes out with the `Welcome`.
    pub fn resumed(&mut self, last_seq: u32) {
        self.acknowledged(last_seq);
        self.acked = self.client_seq;
        self.ack_due = None;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::protocol::{encode, Message};

    fn limits(frames: u32, bytes: u32) -> ResumeLimits {
        ResumeLimits {
            grace: Duration::from_secs(30),
            replay_frames: frames,
            replay_bytes: bytes,
            ack_delay: Duration::from_millis(200),
        }
    }

    fn ping(nonce: u64) -> Encoded {
        encode(&Message::Ping { nonce })
    }

    #[test]
    fn frames_are_held_until_acknowledged_and_replayed_in_order() {
        let mut r = Resumption::new(limits(16, 1 << 20), 7);
        let mut seq = 0;
        for nonce in 1..=5 {
            r.number(&ping(nonce), || {
                seq += 1;
                seq
            });
        }
        assert_eq!(r.number(&encode(&Message::Ack { seq: 9 }), || 99), 0);
        r.acknowledged(2);
        let replay = r.replay_after(3).unwrap();
        assert_eq!(replay.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(replay[0].1, ping(4));
        // A client that claims less than it acknowledged gets what is held.
        assert_eq!(r.replay_after(0).unwrap().len(), 3);
    }

    #[test]
    fn an_overflow_makes_the_session_unresumable_not_unbounded() {
        let mut r = Resumption::new(limits(3, 1 << 20), 7);
        for seq in 1..=5 {
            r.number(&ping(seq.into()), || seq);
        }
        assert_eq!(r.held.len(), 3);
        assert_eq!(r.replay_after(1), Err(ReplayLost));
        // Had the client seen frames 1 and 2, nothing it needs is lost.
        assert_eq!(r.replay_after(2).unwrap().len(), 3);
    }

    #[test]
    fn client_frames_are_acknowledged_once_and_duplicates_recognised() {
        let t0 = Instant::now();
        let mut r = Resumption::new(limits(16, 1 << 20), 7);
        assert!(!r.is_duplicate(1));
        r.processing(1, t0);
        r.processing(2, t0 + Duration::from_millis(50));
        assert_eq!(r.ack_due(), Some(t0 + Duration::from_millis(200)));
        assert!(r.is_duplicate(2) && r.is_duplicate(1) && !r.is_duplicate(3));
        assert!(
            !r.is_duplicate(0),
            "seq 0 frames (Acks) are never duplicates"
        );
        assert_eq!(r.take_ack(), Some(2));
        assert_eq!(r.take_ack(), None);
        assert_eq!(r.ack_due(), None);
    }

    #[test]
    fn the_token_the_client_holds_stays_valid_until_it_has_the_new_one() {
        let mut r = Resumption::new(limits(1, 1), 7);
        let first = r.token();
        assert_eq!(token_node(&first), 7, "a token names its node");
        assert_ne!(first[2..], [0; 30]);
        assert_ne!(new_token(7), first, "and 240 random bits");
        let second = r.rotate(first, 7);
        assert_ne!(second, first);
        assert_eq!(r.previous(), Some(first));
        // The Welcome with `second` was lost: the client comes back with
        // `first` again, and the one it then gets replaces `second`.
        let third = r.rotate(first, 7);
        assert_eq!(
            r.previous(),
            Some(first),
            "the client still holds the first"
        );
        r.confirm();
        assert_eq!(
            r.previous(),
            Some(first),
            "what came with the resume Hello proves nothing"
        );
        r.arm();
        r.acknowledged(0);
        assert_eq!(r.previous(), None, "an Ack shows it got the third");
        assert_eq!(r.token(), third);
        // It got the third this time and comes back with it: the first is
        // void from now on.
        r.rotate(third, 7);
        assert_eq!(r.previous(), Some(third));
        r.arm();
        r.confirm();
        assert_eq!(r.previous(), None);
    }
}
