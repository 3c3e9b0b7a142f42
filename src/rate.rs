//! The per-client rate guard: what a client may send, how often it hears
//! that it sent too much, and when it is an abuser to disconnect.
//!
//! Sans-IO: time is passed in. Every check takes `now`, which the guard
//! hands to its governor buckets through a [`PassedClock`], so tests
//! decide what time it is and nothing here reads a clock. Every inbound unit costs one token: each
//! protocol frame, and each WebSocket message or control frame that carries
//! no frame (ping, pong, text, an empty message, one whose frame layer
//! failed), before Hello as after it. Nothing a client sends is free, so no
//! kind of flood escapes the limit.
//!
//! Three rules, each bounded:
//! - two token buckets ([`governor`]): units (`rate_per_second`, burst
//!   `rate_burst`) and bytes (`rate_bytes_per_second`, burst
//!   `rate_bytes_burst`), so large frames cost more than small ones and
//!   no client can push a peer more than the byte rate;
//! - `RATE_LIMITED` replies are themselves limited to
//!   [`REPLIES_PER_SECOND`]; drops past that are counted and the count is
//!   reported in the next reply, before the next accepted frame, or by the
//!   caller's timer ([`RateGuard::take_unreported`]), so a client learns of
//!   every drop without the server answering each frame of a flood;
//! - abuse is a ratio over a window, not a run: a client that, within one
//!   `rate_abuse_window`, has at least `rate_abuse_threshold` units dropped
//!   *and* more dropped than accepted is closed. A flood paced just above
//!   the limit is throttled; one well above it is closed.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

/// Most `RATE_LIMITED` replies per second of one client.
pub const REPLIES_PER_SECOND: u16 = 10;

/// The limits of [`RateGuard`], from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RatePolicy {
    /// Sustained units per second.
    pub per_second: u32,
    /// Units above the sustained rate in one burst.
    pub burst: u32,
    /// Sustained bytes per second (frame headers and payloads, or the
    /// WebSocket payload of a frameless unit).
    pub bytes_per_second: u32,
    /// Bytes above the sustained byte rate in one burst; at least the
    /// largest message, or that message could never pass.
    pub bytes_burst: u32,
    /// Dropped units within one window before the ratio rule applies.
    pub abuse_threshold: u32,
    /// Length of the abuse window.
    pub abuse_window: Duration,
}

/// What to do with one inbound unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it. `unreported` units were dropped since the last
    /// `RATE_LIMITED` reply: tell the client before handling this one.
    Accept {
        /// Drops not yet reported (0 almost always).
        unreported: u32,
    },
    /// Drop it. `Some(n)`: send a `RATE_LIMITED` reply now, covering `n`
    /// dropped units (this one included); `None`: the reply budget is spent,
    /// the drop is counted for a later reply.
    Drop {
        /// Units the reply covers, if one is to be sent.
        reply: Option<u32>,
    },
    /// The client persists well above its limit: close it (1008).
    Abuse,
}

/// A governor clock that says what it was last told: the time of the
/// input being judged, in nanoseconds since the guard was made.
#[derive(Debug, Default)]
pub struct PassedClock(AtomicU64);

impl PassedClock {
    fn set(&self, now: Nanos) {
        self.0.store(now.as_u64(), Ordering::Relaxed);
    }
}

impl Clone for PassedClock {
    fn clone(&self) -> PassedClock {
        PassedClock(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl Clock for PassedClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(self.0.load(Ordering::Relaxed))
    }
}

type Limiter = RateLimiter<NotKeyed, InMemoryState, PassedClock, NoOpMiddleware<Nanos>>;

/// One client's rate state.
pub struct RateGuard {
    limiter: Limiter,
    bytes: Limiter,
    /// What time 0 of the buckets is.
    origin: Instant,
    window_start: Nanos,
    accepted: u32,
    dropped: u32,
    reply_second: Nanos,
    replies: u16,
    unreported: u32,
    abuse_threshold: u32,
    abuse_window: Nanos,
}

impl RateGuard {
    /// A guard with full buckets at `now`.
    pub fn new(policy: RatePolicy, now: Instant) -> RateGuard {
        let rate = NonZeroU32::new(policy.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        let byte_rate = NonZeroU32::new(policy.bytes_per_second).unwrap_or(NonZeroU32::MIN);
        let byte_burst = NonZeroU32::new(policy.bytes_burst).unwrap_or(NonZeroU32::MIN);
        RateGuard {
            bytes: RateLimiter::direct_with_clock(
                Quota::per_second(byte_rate).allow_burst(byte_burst),
                PassedClock::default(),
            ),
            limiter: RateLimiter::direct_with_clock(
                Quota::per_second(rate).allow_burst(burst),
                PassedClock::default(),
            ),
            origin: now,
            window_start: Nanos::from(0),
            accepted: 0,
            dropped: 0,
            reply_second: Nanos::from(0),
            replies: 0,
            unreported: 0,
            abuse_threshold: policy.abuse_threshold.max(1),
            abuse_window: Nanos::from(policy.abuse_window.max(Duration::from_millis(1))),
        }
    }

    /// Judges one inbound unit of `bytes` bytes: it needs a unit token and
    /// `bytes` byte tokens.
    pub fn check(&mut self, now: Instant, bytes: usize) -> Verdict {
        let now = Nanos::from(now.saturating_duration_since(self.origin));
        self.limiter.clock().set(now);
        self.bytes.clock().set(now);
        if now.duration_since(self.window_start) >= self.abuse_window {
            self.window_start = now;
            self.accepted = 0;
            self.dropped = 0;
        }
        let bytes = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX));
        // The byte bucket is only drawn on when the unit passes.
        let accepted = self.limiter.check().is_ok()
            && match bytes {
                None => true,
                Some(n) => matches!(self.bytes.check_n(n), Ok(Ok(()))),
            };
        if accepted {
            self.accepted = self.accepted.saturating_add(1);
            return Verdict::Accept {
                unreported: std::mem::take(&mut self.unreported),
            };
        }
        self.dropped = self.dropped.saturating_add(1);
        if self.dropped >= self.abuse_threshold && self.dropped > self.accepted {
            return Verdict::Abuse;
        }
        self.unreported = self.unreported.saturating_add(1);
        if now.duration_since(self.reply_second) >= Nanos::from(Duration::from_secs(1)) {
            self.reply_second = now;
            self.replies = 0;
        }
        if self.replies < REPLIES_PER_SECOND {
            self.replies += 1;
            return Verdict::Drop {
                reply: Some(std::mem::take(&mut self.unreported)),
            };
        }
        Verdict::Drop { reply: None }
    }

    /// Takes the count of drops not yet reported, for a report the caller
    /// sends on its own (a timer, so the last drops of a flood that then
    /// stops are reported too).
    pub fn take_unreported(&mut self) -> u32 {
        std::mem::take(&mut self.unreported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard and the time, which the test moves on.
    struct Clock {
        now: Instant,
    }

    impl Clock {
        fn advance(&mut self, d: Duration) {
            self.now += d;
        }
    }

    fn policy() -> RatePolicy {
        RatePolicy {
            per_second: 100,
            burst: 10,
            bytes_per_second: 1_000_000,
            bytes_burst: 1_000_000,
            abuse_threshold: 50,
            abuse_window: Duration::from_secs(10),
        }
    }

    fn guard() -> (RateGuard, Clock) {
        let now = Instant::now();
        (RateGuard::new(policy(), now), Clock { now })
    }

    #[test]
    fn a_burst_passes_then_units_are_dropped_and_replies_are_limited() {
        let (mut g, clock) = guard();
        for _ in 0..10 {
            assert_eq!(g.check(clock.now, 1), Verdict::Accept { unreported: 0 });
        }
        // The next ten drops each get a reply, then the budget is spent.
        for _ in 0..10 {
            assert_eq!(g.check(clock.now, 1), Verdict::Drop { reply: Some(1) });
        }
        for _ in 0..5 {
            assert_eq!(g.check(clock.now, 1), Verdict::Drop { reply: None });
        }
    }

    #[test]
    fn unreported_drops_are_reported_by_the_next_reply_or_accept() {
        let (mut g, mut clock) = guard();
        for _ in 0..10 {
            g.check(clock.now, 1);
        }
        for _ in 0..10 {
            g.check(clock.now, 1);
        }
        for _ in 0..3 {
            assert_eq!(g.check(clock.now, 1), Verdict::Drop { reply: None });
        }
        // A second later the bucket has refilled and the reply budget too:
        // the first accepted unit carries the three unreported drops.
        clock.advance(Duration::from_secs(1));
        assert_eq!(g.check(clock.now, 1), Verdict::Accept { unreported: 3 });
        assert_eq!(g.check(clock.now, 1), Verdict::Accept { unreported: 0 });
    }

    #[test]
    fn a_flood_well_above_the_limit_is_abuse() {
        let (mut g, mut clock) = guard();
        let mut closed_after = None;
        // 64x the rate of 100/s: 64 units every 10 ms.
        'outer: for step in 0..1_000u32 {
            for _ in 0..64 {
                if g.check(clock.now, 1) == Verdict::Abuse {
                    closed_after = Some(step * 10);
                    break 'outer;
                }
            }
            clock.advance(Duration::from_millis(10));
        }
        let ms = closed_after.expect("a 64x flood must be closed");
        assert!(ms < 1_000, "closed only after {ms} ms");
    }

    #[test]
    fn a_client_just_above_the_limit_is_throttled_not_closed() {
        let (mut g, mut clock) = guard();
        // 1.5x the rate for a minute: drops are fewer than accepts.
        for ms in 0..60_000u32 {
            if ms % 20 < 3 {
                assert_ne!(g.check(clock.now, 1), Verdict::Abuse, "closed at {ms} ms");
            }
            clock.advance(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_abuse_count_starts_again_each_window() {
        let (mut g, mut clock) = guard();
        // 40 drops (under the threshold of 50) in each of many windows.
        for _ in 0..20 {
            for _ in 0..50 {
                assert_ne!(g.check(clock.now, 1), Verdict::Abuse);
            }
            clock.advance(Duration::from_secs(10));
        }
    }

    #[test]
    fn bytes_are_limited_too() {
        let mut clock = Clock {
            now: Instant::now(),
        };
        let mut g = RateGuard::new(
            RatePolicy {
                bytes_per_second: 10_000,
                bytes_burst: 20_000,
                ..policy()
            },
            clock.now,
        );
        // Two 10 KB frames use the byte burst; the third waits a second.
        assert!(matches!(g.check(clock.now, 10_000), Verdict::Accept { .. }));
        assert!(matches!(g.check(clock.now, 10_000), Verdict::Accept { .. }));
        assert!(matches!(g.check(clock.now, 10_000), Verdict::Drop { .. }));
        clock.advance(Duration::from_secs(1));
        assert!(matches!(g.check(clock.now, 10_000), Verdict::Accept { .. }));
        // A unit larger than the whole burst can never pass.
        clock.advance(Duration::from_secs(10));
        assert!(matches!(g.check(clock.now, 30_000), Verdict::Drop { .. }));
    }
}
