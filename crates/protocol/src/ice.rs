//! Batching of trickled ICE candidates.
//!
//! A browser trickles candidates one `icecandidate` event at a time, often
//! several within a few milliseconds. Sending each in its own frame costs a
//! header, an address and, without coalescing, a WebSocket message apiece.
//! [`IceBatcher`] gathers them for a short window (or up to a count) and
//! hands back one [`Batch`] to send as a single `IceCandidates` message.
//!
//! The batcher is sans-IO: it never sleeps and never reads a clock. The caller
//! passes the current [`Instant`] in, and asks [`IceBatcher::deadline`] when
//! it should call [`IceBatcher::poll`] next.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use switchboard_protocol::ice::{BatchConfig, IceBatcher};
//! use switchboard_protocol::IceCandidate;
//!
//! let mut batcher = IceBatcher::new(BatchConfig::default());
//! let t0 = Instant::now();
//! let c = IceCandidate { candidate: "candidate:1 1 udp 1 192.0.2.2 5000 typ host".into(), ..Default::default() };
//! assert!(batcher.push(c, t0).is_none());
//! assert_eq!(batcher.deadline(), Some(t0 + Duration::from_millis(20)));
//! assert!(batcher.poll(t0 + Duration::from_millis(5)).is_none());
//! let batch = batcher.poll(t0 + Duration::from_millis(20)).unwrap();
//! assert_eq!(batch.candidates.len(), 1);
//! ```

use std::time::{Duration, Instant};

use super::ids::RoomId;
use super::message::{Address, IceCandidate, IceCandidates};

/// How long and how many candidates to gather into one batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// How long after the first pending candidate the batch is sent.
    pub window: Duration,
    /// Most candidates in one batch; a batch is sent as soon as it is full.
    /// Zero behaves like one (no batching). It should not exceed the
    /// receiver's `CodecLimits::max_candidates` (64 by default).
    pub max: usize,
}

impl Default for BatchConfig {
    fn default() -> BatchConfig {
        BatchConfig {
            window: Duration::from_millis(20),
            max: 8,
        }
    }
}

/// Candidates to send together in one `IceCandidates` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The candidates, in the order they were pushed.
    pub candidates: Vec<IceCandidate>,
    /// Gathering is complete; no candidate follows this batch.
    pub end_of_candidates: bool,
}

impl Batch {
    /// Whether the batch carries neither candidates nor the end marker, so
    /// there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.candidates.is_empty() && !self.end_of_candidates
    }

    /// The message that carries this batch to (or from) `peer`.
    pub fn into_message(self, peer: Address, room: Option<RoomId>) -> IceCandidates {
        IceCandidates {
            peer,
            candidates: self.candidates,
            end_of_candidates: self.end_of_candidates,
            room,
            app_data: String::new(),
        }
    }
}

/// Gathers trickled candidates into batches; one per negotiation (per remote
/// peer).
#[derive(Clone, Debug)]
pub struct IceBatcher {
    config: BatchConfig,
    pending: Vec<IceCandidate>,
    /// When the oldest pending candidate was pushed; `None` when nothing is
    /// pending. The window runs from here, not from the latest push, so a
    /// steady trickle cannot postpone a batch forever.
    first_at: Option<Instant>,
}

impl IceBatcher {
    /// An empty batcher.
    pub fn new(config: BatchConfig) -> IceBatcher {
        IceBatcher {
            config,
            pending: Vec::new(),
            first_at: None,
        }
    }

    /// The configuration it was made with.
    pub fn config(&self) -> BatchConfig {
        self.config
    }

    /// How many candidates wait to be sent.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Adds a candidate gathered at `now`.
    ///
    /// Returns the batch to send at once when it is full, or when the caller
    /// is late and the window of the pending candidates has already expired
    /// (the new candidate then rides along rather than waiting a new window).
    pub fn push(&mut self, candidate: IceCandidate, now: Instant) -> Option<Batch> {
        let first_at = *self.first_at.get_or_insert(now);
        self.pending.push(candidate);
        let full = self.pending.len() >= self.config.max.max(1);
        let expired = now >= first_at + self.config.window;
        (full || expired).then(|| self.take(false))
    }

    /// Gathering is complete: returns everything pending together with the
    /// end-of-candidates marker (a bare marker when nothing is pending).
    ///
    /// The batcher is empty afterwards and may be reused, e.g. after an ICE
    /// restart.
    pub fn end_of_candidates(&mut self) -> Batch {
        self.take(true)
    }

    /// Returns the pending batch if its window has expired at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<Batch> {
        let deadline = self.deadline()?;
        (now >= deadline).then(|| self.take(false))
    }

    /// When the caller should call [`IceBatcher::poll`]; `None` while nothing
    /// is pending.
    pub fn deadline(&self) -> Option<Instant> {
        self.first_at.map(|t| t + self.config.window)
    }

    fn take(&mut self, end_of_candidates: bool) -> Batch {
        self.first_at = None;
        Batch {
            candidates: std::mem::take(&mut self.pending),
            end_of_candidates,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PeerId;

    fn candidate(n: u32) -> IceCandidate {
        IceCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2122260223 192.0.2.2 {} typ host",
                50000 + n
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("abcd".into()),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_20ms_and_8() {
        assert_eq!(
            BatchConfig::default(),
            BatchConfig {
                window: ms(20),
                max: 8
            }
        );
    }

    #[test]
    fn empty_batcher_has_no_deadline_and_nothing_to_poll() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.poll(t0 + ms(1000)), None);
        assert_eq!(b.pending(), 0);
    }

    #[test]
    fn window_runs_from_the_first_pending_candidate() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        assert_eq!(b.push(candidate(1), t0), None);
        assert_eq!(b.deadline(), Some(t0 + ms(20)));
        // A later candidate does not move the deadline.
        assert_eq!(b.push(candidate(2), t0 + ms(15)), None);
        assert_eq!(b.deadline(), Some(t0 + ms(20)));
        assert_eq!(b.poll(t0 + ms(19)), None);
        let batch = b.poll(t0 + ms(20)).unwrap();
        assert_eq!(batch.candidates, vec![candidate(1), candidate(2)]);
        assert!(!batch.end_of_candidates);
        assert_eq!(b.deadline(), None);
        assert_eq!(b.poll(t0 + ms(40)), None);
    }

    #[test]
    fn next_window_starts_with_the_next_candidate() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        b.push(candidate(1), t0);
        assert!(b.poll(t0 + ms(20)).is_some());
        assert_eq!(b.push(candidate(2), t0 + ms(100)), None);
        assert_eq!(b.deadline(), Some(t0 + ms(120)));
    }

    #[test]
    fn full_batch_is_returned_by_push() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig {
            window: ms(20),
            max: 3,
        });
        assert_eq!(b.push(candidate(1), t0), None);
        assert_eq!(b.push(candidate(2), t0 + ms(1)), None);
        let batch = b.push(candidate(3), t0 + ms(2)).unwrap();
        assert_eq!(
            batch.candidates,
            vec![candidate(1), candidate(2), candidate(3)]
        );
        assert!(!batch.end_of_candidates);
        assert_eq!(b.pending(), 0);
        assert_eq!(b.deadline(), None);
    }

    #[test]
    fn default_max_is_eight() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        for n in 0..7 {
            assert_eq!(b.push(candidate(n), t0), None);
        }
        assert_eq!(b.push(candidate(7), t0).unwrap().candidates.len(), 8);
    }

    #[test]
    fn late_push_flushes_with_the_new_candidate() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        b.push(candidate(1), t0);
        // The caller missed the deadline; the new candidate goes out too.
        let batch = b.push(candidate(2), t0 + ms(25)).unwrap();
        assert_eq!(batch.candidates, vec![candidate(1), candidate(2)]);
    }

    #[test]
    fn end_of_candidates_flushes_pending_with_the_marker() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        b.push(candidate(1), t0);
        b.push(candidate(2), t0 + ms(1));
        let batch = b.end_of_candidates();
        assert_eq!(
            batch,
            Batch {
                candidates: vec![candidate(1), candidate(2)],
                end_of_candidates: true
            }
        );
        assert!(!batch.is_empty());
        assert_eq!(b.deadline(), None);
        assert_eq!(b.poll(t0 + ms(100)), None);
    }

    #[test]
    fn bare_end_of_candidates_marker() {
        let mut b = IceBatcher::new(BatchConfig::default());
        let batch = b.end_of_candidates();
        assert!(batch.candidates.is_empty());
        assert!(batch.end_of_candidates);
        assert!(!batch.is_empty());
        assert!(Batch::default().is_empty());
    }

    #[test]
    fn batcher_is_reusable_after_end_of_candidates() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig::default());
        b.push(candidate(1), t0);
        b.end_of_candidates();
        assert_eq!(b.push(candidate(2), t0 + ms(50)), None);
        assert_eq!(b.deadline(), Some(t0 + ms(70)));
    }

    #[test]
    fn zero_max_sends_each_candidate_alone() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig {
            window: ms(20),
            max: 0,
        });
        assert_eq!(b.push(candidate(1), t0).unwrap().candidates.len(), 1);
    }

    #[test]
    fn zero_window_flushes_on_push() {
        let t0 = Instant::now();
        let mut b = IceBatcher::new(BatchConfig {
            window: Duration::ZERO,
            max: 8,
        });
        assert_eq!(b.push(candidate(1), t0).unwrap().candidates.len(), 1);
    }

    #[test]
    fn batch_becomes_a_message() {
        let batch = Batch {
            candidates: vec![candidate(1)],
            end_of_candidates: true,
        };
        let room = RoomId::new("1001").unwrap();
        let msg = batch.into_message(Address::Peer(PeerId(7)), Some(room.clone()));
        assert_eq!(
            msg,
            IceCandidates {
                peer: Address::Peer(PeerId(7)),
                candidates: vec![candidate(1)],
                end_of_candidates: true,
                room: Some(room),
                app_data: String::new(),
            }
        );
    }
}
