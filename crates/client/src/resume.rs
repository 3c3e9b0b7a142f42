//! Session resume's bookkeeping on the client side, sans I/O, time passed
//! in (docs/PROTOCOL.md, section 11a).
//!
//! - [`ReplayBuffer`]: the frames this client sent that the server has not
//!   acknowledged, as they went on the wire (header and all, so a resend
//!   carries the original sequence number), bounded by the server's
//!   `resume_limits`.
//! - [`Inbound`]: the highest server frame processed, which frames are
//!   duplicates, and when an `Ack` is due.
//! - [`SessionResume`]: both, with the token and the numbering: what one
//!   session carries from a dropped connection to the next.
//!
//! [`Connection`](crate::Connection) drives these; they hold no socket.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::protocol::frame::next_seq;
use crate::protocol::{encode_into, Message, ResumeLimits, ResumeRequest, HEADER_LEN};

/// Whether sequence number `a` comes after `b` (serial-number order, so the
/// wrap from `0xFFFF_FFFF` to `1` keeps the order).
pub fn seq_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

/// The frames sent and not yet acknowledged, oldest first.
///
/// Past `replay_frames` frames or `replay_bytes` payload bytes the oldest
/// is dropped, and the session cannot be resumed until the server has
/// acknowledged every dropped frame (a resume would lose them).
#[derive(Clone, Debug)]
pub struct ReplayBuffer {
    frames: VecDeque<(u32, Bytes)>,
    payload_bytes: usize,
    max_frames: usize,
    max_bytes: usize,
    /// The highest frame dropped before the server acknowledged it.
    lost_through: Option<u32>,
}

impl ReplayBuffer {
    /// An empty buffer bounded by `limits`.
    pub fn new(limits: &ResumeLimits) -> ReplayBuffer {
        ReplayBuffer {
            frames: VecDeque::new(),
            payload_bytes: 0,
            max_frames: limits.replay_frames as usize,
            max_bytes: limits.replay_bytes as usize,
            lost_through: None,
        }
    }

    /// Takes new bounds (a resumed `Welcome` may announce others).
    pub fn set_limits(&mut self, limits: &ResumeLimits) {
        self.max_frames = limits.replay_frames as usize;
        self.max_bytes = limits.replay_bytes as usize;
        self.enforce();
    }

    /// Holds `frame` (header and payload, as sent), numbered `seq`.
    pub fn hold(&mut self, seq: u32, frame: Bytes) {
        self.payload_bytes += frame.len().saturating_sub(HEADER_LEN);
        self.frames.push_back((seq, frame));
        self.enforce();
    }

    fn enforce(&mut self) {
        while self.frames.len() > self.max_frames || self.payload_bytes > self.max_bytes {
            let Some((seq, frame)) = self.frames.pop_front() else {
                break;
            };
            self.payload_bytes -= frame.len().saturating_sub(HEADER_LEN);
            self.lost_through = Some(seq);
        }
    }

    /// The server processed every frame up to `seq`: forgets them.
    pub fn acknowledged(&mut self, seq: u32) {
        while let Some((front, frame)) = self.frames.front() {
            if seq_after(*front, seq) {
                break;
            }
            self.payload_bytes -= frame.len().saturating_sub(HEADER_LEN);
            self.frames.pop_front();
        }
        if self.lost_through.is_some_and(|lost| !seq_after(lost, seq)) {
            // The server had the dropped frames after all.
            self.lost_through = None;
        }
    }

    /// Whether every frame the server may not have processed is held.
    pub fn resumable(&self) -> bool {
        self.lost_through.is_none()
    }

    /// The held frames numbered above `seq`, oldest first: what to send
    /// again to a server that processed everything up to `seq`.
    pub fn after(&self, seq: u32) -> impl Iterator<Item = &(u32, Bytes)> + '_ {
        self.frames.iter().filter(move |(s, _)| seq_after(*s, seq))
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Payload bytes held (headers not counted, as the server counts).
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }
}

/// The server's frames as this client processes them: the highest sequence
/// number processed, duplicates, and when an `Ack` is due.
#[derive(Clone, Debug)]
pub struct Inbound {
    last: u32,
    acked: u32,
    due: Option<Instant>,
    delay: Duration,
    duplicates: u64,
}

impl Inbound {
    /// Nothing processed yet; acknowledgements at most `delay` late.
    pub fn new(delay: Duration) -> Inbound {
        Inbound {
            last: 0,
            acked: 0,
            due: None,
            delay,
            duplicates: 0,
        }
    }

    /// A server frame numbered `seq` is about to be processed at `now`.
    /// `false`: it was processed before (sent again after a resume) and is
    /// to be skipped. Frames numbered 0 (`Ack`, a resumed `Welcome`) are
    /// outside the numbering: always processed, never acknowledged.
    pub fn receive(&mut self, seq: u32, now: Instant) -> bool {
        if seq == 0 {
            return true;
        }
        if self.last != 0 && !seq_after(seq, self.last) {
            self.duplicates += 1;
            return false;
        }
        self.last = seq;
        self.due.get_or_insert(now + self.delay);
        true
    }

    /// The highest server frame processed (`Hello.resume_last_seq`).
    pub fn last(&self) -> u32 {
        self.last
    }

    /// The sequence number an `Ack` should carry now, if anything was
    /// processed since the last one.
    pub fn pending_ack(&self) -> Option<u32> {
        (self.last != self.acked).then_some(self.last)
    }

    /// When the pending `Ack` must go out at the latest.
    pub fn due(&self) -> Option<Instant> {
        self.due.filter(|_| self.pending_ack().is_some())
    }

    /// An `Ack` for `seq` went out.
    pub fn acked(&mut self, seq: u32) {
        if self.acked == 0 || seq_after(seq, self.acked) {
            self.acked = seq;
        }
        if self.pending_ack().is_none() {
            self.due = None;
        }
    }

    /// Frames skipped as duplicates so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    fn set_delay(&mut self, delay: Duration) {
        self.delay = delay;
    }
}

/// What a resumable session carries across its connections: the latest
/// token, the limits, the numbering of this client's frames, the frames
/// the server has not acknowledged, and what this client processed.
///
/// [`Connection::take_resume`](crate::Connection::take_resume) hands it
/// out when a connection is lost; [`Connection::resume`](crate::Connection::resume)
/// takes it to resume the session on a new one.
#[derive(Clone, Debug)]
pub struct SessionResume {
    token: Bytes,
    limits: ResumeLimits,
    /// The sequence number of the last frame numbered.
    out_seq: u32,
    replay: ReplayBuffer,
    inbound: Inbound,
}

impl SessionResume {
    /// A session whose `Welcome` granted resume with `token` and `limits`;
    /// `out_seq` frames numbered so far (the Hello).
    pub fn new(token: Bytes, limits: ResumeLimits, out_seq: u32) -> SessionResume {
        SessionResume {
            token,
            limits,
            out_seq,
            replay: ReplayBuffer::new(&limits),
            inbound: Inbound::new(limits.ack_delay),
        }
    }

    /// The `Hello.resume` that asks to resume this session.
    pub fn request(&self) -> ResumeRequest {
        ResumeRequest {
            token: self.token.clone(),
            last_seq: self.inbound.last(),
        }
    }

    /// Whether a resume can lose nothing of what this client sent.
    pub fn resumable(&self) -> bool {
        self.replay.resumable()
    }

    /// The current token (only the latest `Welcome`'s is valid).
    pub fn token(&self) -> &Bytes {
        &self.token
    }

    /// The limits the server announced.
    pub fn limits(&self) -> &ResumeLimits {
        &self.limits
    }

    /// The sequence number of the last frame numbered.
    pub fn out_seq(&self) -> u32 {
        self.out_seq
    }

    /// The frames the server has not acknowledged.
    pub fn replay(&self) -> &ReplayBuffer {
        &self.replay
    }

    /// The server's frames as processed.
    pub fn inbound(&self) -> &Inbound {
        &self.inbound
    }

    pub(crate) fn inbound_mut(&mut self) -> &mut Inbound {
        &mut self.inbound
    }

    pub(crate) fn replay_mut(&mut self) -> &mut ReplayBuffer {
        &mut self.replay
    }

    pub(crate) fn set_out_seq(&mut self, seq: u32) {
        self.out_seq = seq;
    }

    /// The session goes on under a resumed `Welcome`'s new token and
    /// limits; the server processed this client's frames up to `last_seq`
    /// (they are forgotten), and the resume Hello acknowledged the
    /// server's.
    pub fn resumed(&mut self, token: Bytes, limits: ResumeLimits, last_seq: u32) {
        self.token = token;
        self.limits = limits;
        self.replay.set_limits(&limits);
        self.inbound.set_delay(limits.ack_delay);
        self.replay.acknowledged(last_seq);
        // The resume Hello told the server what was processed.
        let last = self.inbound.last();
        self.inbound.acked(last);
    }

    /// Numbers `message` as the session's next frame and holds it, to be
    /// sent when the session resumes (signaling while disconnected).
    /// Returns its sequence number; an `Ack` is not held (0).
    pub fn queue(&mut self, message: &Message) -> u32 {
        if matches!(message, Message::Ack { .. }) {
            return 0;
        }
        self.out_seq = next_seq(self.out_seq);
        let mut out = BytesMut::new();
        encode_into(message, self.out_seq, &mut out);
        self.replay.hold(self.out_seq, out.freeze());
        self.out_seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_message, CodecLimits};

    fn limits(frames: u32, bytes: u32) -> ResumeLimits {
        ResumeLimits {
            grace: Duration::from_secs(30),
            replay_frames: frames,
            replay_bytes: bytes,
            ack_delay: Duration::from_millis(200),
        }
    }

    fn frame(seq: u32, nonce: u64) -> Bytes {
        let mut out = BytesMut::new();
        encode_into(&Message::Ping { nonce }, seq, &mut out);
        out.freeze()
    }

    fn seqs<'a>(frames: impl Iterator<Item = &'a (u32, Bytes)>) -> Vec<u32> {
        frames.map(|(s, _)| *s).collect()
    }

    #[test]
    fn serial_order_survives_the_wrap() {
        assert!(seq_after(2, 1));
        assert!(!seq_after(1, 2));
        assert!(!seq_after(7, 7));
        assert!(seq_after(1, u32::MAX), "1 follows 0xFFFFFFFF");
        assert!(!seq_after(u32::MAX, 1));
    }

    #[test]
    fn frames_are_held_until_acknowledged_and_resent_above_the_servers_last() {
        let mut r = ReplayBuffer::new(&limits(16, 1 << 20));
        for seq in 2..=6 {
            r.hold(seq, frame(seq, seq.into()));
        }
        assert_eq!(r.len(), 5);
        r.acknowledged(3);
        assert_eq!(seqs(r.after(0)), [4, 5, 6]);
        assert_eq!(seqs(r.after(4)), [5, 6]);
        assert_eq!(r.after(4).next().unwrap().1, frame(5, 5), "as sent");
        // An old or repeated Ack trims nothing more.
        r.acknowledged(2);
        r.acknowledged(3);
        assert_eq!(r.len(), 3);
        assert_eq!(r.payload_bytes(), 3 * (frame(4, 4).len() - HEADER_LEN));
        r.acknowledged(6);
        assert!(r.is_empty() && r.payload_bytes() == 0 && r.resumable());
    }

    #[test]
    fn an_overflow_drops_the_oldest_and_blocks_resume_until_acknowledged() {
        let mut r = ReplayBuffer::new(&limits(3, 1 << 20));
        for seq in 1..=5 {
            r.hold(seq, frame(seq, 1));
        }
        assert_eq!(seqs(r.after(0)), [3, 4, 5]);
        assert!(!r.resumable(), "frames 1 and 2 are gone");
        r.acknowledged(1);
        assert!(!r.resumable(), "frame 2 is still unacknowledged and gone");
        r.acknowledged(2);
        assert!(r.resumable(), "the server had them after all");
        assert_eq!(r.len(), 3);

        // The byte bound likewise: each Ping{1} has a 2-byte payload.
        let mut r = ReplayBuffer::new(&limits(100, 5));
        for seq in 1..=3 {
            r.hold(seq, frame(seq, 1));
        }
        assert_eq!(seqs(r.after(0)), [2, 3]);
        assert_eq!(r.payload_bytes(), 4);
        assert!(!r.resumable());
        // Tighter limits from a resumed Welcome apply at once.
        r.set_limits(&limits(1, 5));
        assert_eq!(seqs(r.after(0)), [3]);
    }

    #[test]
    fn acks_trim_across_the_wrap() {
        let mut r = ReplayBuffer::new(&limits(16, 1 << 20));
        let mut seq = u32::MAX - 2;
        for _ in 0..5 {
            r.hold(seq, frame(seq, 1));
            seq = next_seq(seq);
        }
        assert_eq!(seqs(r.after(u32::MAX)), [1, 2]);
        r.acknowledged(u32::MAX);
        assert_eq!(seqs(r.after(0)), [1, 2]);
    }

    #[test]
    fn inbound_frames_are_acknowledged_within_the_delay_and_duplicates_skipped() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut i = Inbound::new(ms(200));
        assert_eq!((i.pending_ack(), i.due()), (None, None));
        assert!(i.receive(1, t0));
        assert!(i.receive(2, t0 + ms(50)));
        assert!(i.receive(0, t0 + ms(60)), "Acks are outside the numbering");
        assert_eq!(i.due(), Some(t0 + ms(200)), "from the first unacknowledged");
        assert_eq!(i.pending_ack(), Some(2));
        i.acked(2);
        assert_eq!((i.pending_ack(), i.due()), (None, None));
        // Sent again after a resume: skipped, counted.
        assert!(!i.receive(2, t0 + ms(300)));
        assert!(!i.receive(1, t0 + ms(300)));
        assert_eq!(i.duplicates(), 2);
        assert_eq!(i.pending_ack(), None);
        // A new frame starts a new delay.
        assert!(i.receive(3, t0 + ms(400)));
        assert_eq!(i.due(), Some(t0 + ms(600)));
        assert_eq!(i.last(), 3);
        // An Ack that went out while more arrived leaves the rest pending.
        assert!(i.receive(4, t0 + ms(410)));
        i.acked(3);
        assert_eq!(i.pending_ack(), Some(4));
        assert_eq!(i.due(), Some(t0 + ms(600)));
    }

    #[test]
    fn a_session_resumes_where_the_server_left_off() {
        let t0 = Instant::now();
        // Hello was #1; the server's Welcome #1 processed.
        let mut s = SessionResume::new(Bytes::from_static(b"token-1"), limits(8, 1 << 20), 1);
        s.inbound_mut().receive(1, t0);
        s.inbound_mut().receive(2, t0);
        // Sent while connected (#2, #3), then queued while away (#4, #5).
        for nonce in 2..=3 {
            s.set_out_seq(nonce as u32);
            s.replay_mut()
                .hold(nonce as u32, frame(nonce as u32, nonce));
        }
        assert_eq!(s.queue(&Message::Ping { nonce: 4 }), 4);
        assert_eq!(s.queue(&Message::Ack { seq: 9 }), 0, "Acks are not held");
        assert_eq!(s.queue(&Message::Ping { nonce: 5 }), 5);
        assert_eq!(
            s.request(),
            ResumeRequest {
                token: Bytes::from_static(b"token-1"),
                last_seq: 2
            }
        );

        // The server had processed #2 only.
        s.resumed(Bytes::from_static(b"token-2"), limits(8, 1 << 20), 2);
        assert_eq!(s.token(), &Bytes::from_static(b"token-2"));
        assert_eq!(s.inbound().pending_ack(), None, "the Hello acknowledged #2");
        let resend: Vec<_> = s.replay().after(2).cloned().collect();
        assert_eq!(seqs(resend.iter()), [3, 4, 5]);
        let codec = CodecLimits::default();
        let decoded: Vec<_> = resend
            .iter()
            .flat_map(|(_, f)| decode_message(f.clone(), &codec))
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            decoded,
            [
                (3, Message::Ping { nonce: 3 }),
                (4, Message::Ping { nonce: 4 }),
                (5, Message::Ping { nonce: 5 }),
            ],
            "original numbers, original bytes"
        );
        assert_eq!(s.out_seq(), 5, "numbering goes on");
    }

    #[test]
    fn queueing_past_the_bound_makes_the_session_unresumable() {
        let mut s = SessionResume::new(Bytes::from_static(b"t"), limits(2, 1 << 20), 1);
        for nonce in 0..3 {
            s.queue(&Message::Ping { nonce });
        }
        assert!(!s.resumable());
        assert_eq!(s.replay().len(), 2);
    }
}
