//! The bounded per-peer queue of frames waiting to be written to one
//! connection, and who to tell when a relayed frame is never delivered.

use std::collections::VecDeque;
use std::time::Instant;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{Encoded, PeerId, RoomId};

/// Why an outbox refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its bound: a relayed frame is refused (its sender is
    /// told `PEER_BUSY`); the receiver is not punished for it.
    Full,
    /// The receiver is gone or going.
    Closed,
}

/// Why the connection owning an outbox must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// It did not read what was sent to it fast enough.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

/// Bounds of one outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most frames queued.
    pub frames: usize,
    /// Most payload bytes queued.
    pub bytes: usize,
}

/// Who sent a relayed frame: told if it is never delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The sender.
    pub peer: PeerId,
    /// The sequence number of its frame.
    pub seq: u32,
    /// When the server read it (for the relay latency metric).
    pub read_at: Instant,
}

#[derive(Debug)]
struct Queued {
    frame: Encoded,
    /// Set for relayed frames; `None` for the server's own.
    origin: Option<Origin>,
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<Queued>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// Relayed frames thrown away when the outbox was cut off.
    undelivered: Vec<Origin>,
    /// What only a few outboxes need. Boxed: one word in every idle
    /// connection's state.
    rare: Option<Box<Rare>>,
}

#[derive(Debug, Default)]
struct Rare {
    /// Rooms an operator removed the owner from, for its session to forget.
    kicked: Vec<RoomId>,
    /// While the owner's session is moving here from another node: the
    /// frames that must wait behind those the old node still forwards
    /// (see [`Outbox::holding`]).
    held: Option<VecDeque<Queued>>,
}

/// The bounded queue of frames waiting to be written to one connection.
///
/// Many senders push; the connection task drains everything queued at once
/// and writes it as one WebSocket message. The queue allocates nothing until
/// the first push.
///
/// Two bounds. A relayed frame ([`Outbox::push_relayed`]) is refused at the
/// soft bound (`limits`): its sender gets `PEER_BUSY` and the receiver keeps
/// its queue, so a sender cannot get a receiver that reads at a normal pace
/// disconnected by flooding it. The server's own frames (replies, room
/// notices: [`Outbox::push`]) may go up to twice the bound, so no notice is
/// lost to a full queue; past that the receiver is not reading at all and is
/// cut off ([`CloseReason::SlowConsumer`]), and the senders of the relayed
/// frames thrown away are kept for [`Outbox::take_undelivered`].
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    limits: OutboxLimits,
    /// Set while `state.rare.kicked` holds rooms: checked without the lock.
    kicks: std::sync::atomic::AtomicBool,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            ready: Notify::new(),
            limits,
            kicks: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// An empty outbox that holds back what is pushed until
    /// [`Outbox::release`]; only [`Outbox::push_forwarded`] goes through.
    /// A session moving here from another node gets one: the frames the
    /// old node forwards come first, then what was sent here directly.
    pub fn holding(limits: OutboxLimits) -> Outbox {
        let outbox = Outbox::new(limits);
        outbox.state.lock().rare = Some(Box::new(Rare {
            kicked: Vec::new(),
            held: Some(VecDeque::new()),
        }));
        outbox
    }

    /// Queues a frame the node that had this peer before forwarded: it goes
    /// ahead of anything held.
    pub fn push_forwarded(&self, frame: Encoded, origin: Option<Origin>) -> Result<(), PushError> {
        self.enqueue_at(Queued { frame, origin }, true)
    }

    /// Ends the hold of [`Outbox::holding`]: what was held follows what was
    /// forwarded.
    pub fn release(&self) {
        {
            let mut s = self.state.lock();
            let Some(held) = s.rare.as_mut().and_then(|r| r.held.take()) else {
                return;
            };
            s.frames.extend(held);
        }
        self.ready.notify_one();
    }

    /// Takes every frame queued (and held), with the sender and sequence
    /// number of the relayed ones: the outbox of a session moving to another
    /// node.
    pub fn take_queued(&self) -> Vec<(Encoded, Option<Origin>)> {
        let mut s = self.state.lock();
        let mut frames = std::mem::take(&mut s.frames);
        if let Some(held) = s.rare.as_mut().and_then(|r| r.held.as_mut()) {
            frames.extend(held.drain(..));
        }
        s.bytes = 0;
        frames.into_iter().map(|q| (q.frame, q.origin)).collect()
    }

    /// Queues one of the server's own frames (a reply, a notice).
    pub fn push(&self, frame: Encoded) -> Result<(), PushError> {
        self.enqueue(Queued {
            frame,
            origin: None,
        })
    }

    /// Queues a frame relayed from `origin`, unless the soft bound is
    /// reached.
    pub fn push_relayed(&self, frame: Encoded, origin: Origin) -> Result<(), PushError> {
        self.enqueue(Queued {
            frame,
            origin: Some(origin),
        })
    }

    fn enqueue(&self, queued: Queued) -> Result<(), PushError> {
        self.enqueue_at(queued, false)
    }

    fn enqueue_at(&self, queued: Queued, forwarded: bool) -> Result<(), PushError> {
        {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return Err(PushError::Closed);
            }
            let held = s
                .rare
                .as_ref()
                .and_then(|r| r.held.as_ref())
                .map_or(0, |h| h.len());
            let frames = s.frames.len() + held + 1;
            let bytes = s.bytes + queued.frame.frame_len();
            let (max_frames, max_bytes) = match queued.origin {
                Some(_) => (self.limits.frames, self.limits.bytes),
                None => (2 * self.limits.frames, 2 * self.limits.bytes),
            };
            if frames > max_frames || bytes > max_bytes {
                if queued.origin.is_some() {
                    return Err(PushError::Full);
                }
                s.closed = Some(CloseReason::SlowConsumer);
                let mut dropped = std::mem::take(&mut s.frames);
                if let Some(held) = s.rare.as_mut().and_then(|r| r.held.as_mut()) {
                    dropped.extend(held.drain(..));
                }
                s.undelivered
                    .extend(dropped.into_iter().filter_map(|q| q.origin));
                s.bytes = 0;
                drop(s);
                self.ready.notify_one();
                return Err(PushError::Closed);
            }
            s.bytes = bytes;
            match s.rare.as_mut().and_then(|r| r.held.as_mut()) {
                Some(held) if !forwarded => {
                    // Counted, not yet drainable.
                    held.push_back(queued);
                    return Ok(());
                }
                _ => s.frames.push_back(queued),
            }
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Tells the owner's session it is no longer in `room` (the directory
    /// has removed it already), and wakes the owner.
    pub fn kicked_from(&self, room: RoomId) {
        self.state
            .lock()
            .rare
            .get_or_insert_with(Default::default)
            .kicked
            .push(room);
        self.kicks.store(true, std::sync::atomic::Ordering::Release);
        self.ready.notify_one();
    }

    /// The rooms the owner was removed from since the last call; empty
    /// (and lock-free) in the common case.
    pub fn take_kicks(&self) -> Vec<RoomId> {
        use std::sync::atomic::Ordering;
        // A plain load first: the swap is a locked instruction, and this
        // runs before every drain.
        if !self.kicks.load(Ordering::Relaxed) || !self.kicks.swap(false, Ordering::Acquire) {
            return Vec::new();
        }
        self.state
            .lock()
            .rare
            .as_mut()
            .map_or_else(Vec::new, |r| std::mem::take(&mut r.kicked))
    }

    /// Opens again an outbox closed for a shutdown: its session is kept
    /// (parked) for its client to resume on another node, and what is
    /// sent to it meanwhile must queue, to go along.
    pub fn reopen(&self) {
        let mut s = self.state.lock();
        if s.closed == Some(CloseReason::Shutdown) {
            s.closed = None;
        }
    }

    /// Closes the outbox; later pushes fail and the owner is woken.
    pub fn close(&self, reason: CloseReason) {
        self.state.lock().closed.get_or_insert(reason);
        self.ready.notify_one();
    }

    /// Moves queued frames into `out`, at most `max_frames` of them and
    /// `max_bytes` in all (but at least one frame); returns why the outbox
    /// closed, if it did.
    pub fn drain(
        &self,
        out: &mut Vec<Encoded>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Option<CloseReason> {
        self.drain_timed(out, max_frames, max_bytes, |_| {})
    }

    /// [`Outbox::drain`], calling `relayed` with the read time of each
    /// relayed frame taken.
    pub fn drain_timed(
        &self,
        out: &mut Vec<Encoded>,
        max_frames: usize,
        max_bytes: usize,
        mut relayed: impl FnMut(Instant),
    ) -> Option<CloseReason> {
        let mut s = self.state.lock();
        let mut taken = 0;
        let mut count = 0;
        while let Some(q) = s.frames.front() {
            if count > 0 && (count == max_frames || taken + q.frame.frame_len() > max_bytes) {
                break;
            }
            count += 1;
            taken += q.frame.frame_len();
            let q = s.frames.pop_front().expect("front exists");
            if let Some(origin) = q.origin {
                relayed(origin.read_at);
            }
            out.push(q.frame);
        }
        s.bytes -= taken;
        if s.frames.is_empty() {
            // An idle peer's outbox holds no memory.
            s.frames = VecDeque::new();
        }
        s.closed
    }

    /// The senders of relayed frames that will never be delivered: those
    /// thrown away when the outbox was cut off, and, once its owner is
    /// done (`closing`), those still queued.
    pub fn take_undelivered(&self, closing: bool) -> Vec<Origin> {
        let mut s = self.state.lock();
        let mut origins = std::mem::take(&mut s.undelivered);
        if closing {
            s.closed.get_or_insert(CloseReason::SlowConsumer);
            let mut queued = std::mem::take(&mut s.frames);
            if let Some(held) = s.rare.as_mut().and_then(|r| r.held.as_mut()) {
                queued.extend(held.drain(..));
            }
            s.bytes = 0;
            origins.extend(queued.into_iter().filter_map(|q| q.origin));
        }
        origins
    }

    /// Whether frames are waiting.
    pub fn has_pending(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }

    /// Why the outbox was closed, if it was.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Waits until something is queued or the outbox is closed; at once if
    /// frames are already waiting (a drain that stopped early to let the
    /// owner read its socket leaves some).
    pub async fn ready(&self) {
        {
            let s = self.state.lock();
            if !s.frames.is_empty() || s.closed.is_some() {
                return;
            }
        }
        self.ready.notified().await;
    }

    /// Waits until something more is queued or the outbox is closed, even
    /// if frames are already waiting (for an owner in the middle of a
    /// write, which only cares about a cut-off).
    pub async fn changed(&self) {
        self.ready.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{encode, Message, MessageType};

    fn frame(n: u64) -> Encoded {
        encode(&Message::Ping { nonce: n })
    }

    #[test]
    fn outbox_drains_in_order_and_cuts_off_past_its_bound() {
        let outbox = Outbox::new(OutboxLimits {
            frames: 3,
            bytes: 1 << 20,
        });
        let origin = |seq| Origin {
            peer: PeerId(9),
            seq,
            read_at: Instant::now(),
        };
        for n in 0..3 {
            outbox.push_relayed(frame(n), origin(n as u32)).unwrap();
        }
        // A relayed frame past the bound is refused; the receiver stays.
        assert_eq!(
            outbox.push_relayed(frame(3), origin(3)),
            Err(PushError::Full)
        );
        assert_eq!(outbox.closed(), None);
        // The server's own frames may go to twice the bound...
        for n in 0..3 {
            outbox.push(frame(10 + n)).unwrap();
        }
        // ...past which the receiver is not reading: it is cut off, and the
        // senders of the relayed frames thrown away are kept.
        assert_eq!(outbox.push(frame(13)), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(
            outbox.drain(&mut out, usize::MAX, usize::MAX),
            Some(CloseReason::SlowConsumer)
        );
        assert!(out.is_empty(), "a cut-off consumer's queue is dropped");
        let lost: Vec<u32> = outbox
            .take_undelivered(false)
            .iter()
            .map(|o| o.seq)
            .collect();
        assert_eq!(lost, vec![0, 1, 2]);
        assert_eq!(outbox.push(frame(4)), Err(PushError::Closed));

        let outbox = Outbox::new(OutboxLimits {
            frames: 8,
            bytes: 1 << 20,
        });
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(2)).unwrap();
        assert_eq!(outbox.drain(&mut out, usize::MAX, usize::MAX), None);
        assert_eq!(out, vec![frame(1), frame(2)]);
        assert!(out.iter().all(|f| f.kind == MessageType::Ping));
    }

    #[test]
    fn a_holding_outbox_puts_forwarded_frames_first() {
        let outbox = Outbox::holding(OutboxLimits {
            frames: 8,
            bytes: 1 << 20,
        });
        outbox.push(frame(3)).unwrap();
        outbox.push_forwarded(frame(1), None).unwrap();
        let mut out = Vec::new();
        outbox.drain(&mut out, usize::MAX, usize::MAX);
        assert_eq!(out, vec![frame(1)], "held frames wait");
        outbox.push_forwarded(frame(2), None).unwrap();
        outbox.release();
        outbox.push(frame(4)).unwrap();
        out.clear();
        outbox.drain(&mut out, usize::MAX, usize::MAX);
        assert_eq!(out, vec![frame(2), frame(3), frame(4)]);
        // Held frames count towards the bound like any other.
        let outbox = Outbox::holding(OutboxLimits {
            frames: 2,
            bytes: 1 << 20,
        });
        let origin = Origin {
            peer: PeerId(9),
            seq: 1,
            read_at: Instant::now(),
        };
        outbox.push_relayed(frame(1), origin).unwrap();
        outbox.push_relayed(frame(2), origin).unwrap();
        assert_eq!(outbox.push_relayed(frame(3), origin), Err(PushError::Full));
        assert_eq!(outbox.take_queued().len(), 2);
    }
}
