//! The per-client rate guard: what a client may send, how often it hears
//! that it sent too much, and when it is an abuser to disconnect.
//!
//! Sans-IO: time is passed in. Every check takes `now`, which the guard
//! hands to governor through a [`PassedClock`], so tests decide what time
//! it is and nothing here reads a clock. Every inbound unit costs one token: each
//! protocol frame, and each WebSocket message or control frame that carries
//! no frame (ping, pong, text, an empty message, one whose frame layer
//! failed), before Hello as after it. Nothing a client sends is free, so no
//! kind of flood escapes the limit.
//!
//! Three rules, each bounded:
//! - two token buckets ([`governor`]): units (`rate_per_second`, burst
//!   `rate_burst`) and bytes (`rate_bytes_per_second`, burst
//!   `rate_bytes_burst`), so large frames cost more than small ones and
//!   no client can push a peer more than the byte rate. The limiters
//!   (quotas) are made once per server ([`RateLimits`]); a client's guard
//!   keeps only its buckets' state, one GCRA arrival time each ([`Tat`]);
//! - `RATE_LIMITED` replies are themselves limited to
//!   [`REPLIES_PER_SECOND`]; drops past that are counted and the count is
//!   reported in the next reply, before the next accepted frame, or by the
//!   caller's timer ([`RateGuard::take_unreported`]), so a client learns of
//!   every drop without the server answering each frame of a flood;
//! - abuse is a ratio over a window, not a run: a client that, within one
//!   `rate_abuse_window`, has at least `rate_abuse_threshold` units dropped
//!   *and* more dropped than accepted is closed. A flood paced just above
//!   the limit is throttled; one well above it is closed.

use std::cell::Cell;
use std::hash::{Hash, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
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

thread_local! {
    /// The time of the input being judged on this thread, in nanoseconds
    /// since the judging guard's origin: set by [`RateGuard::check`] right
    /// before it asks governor, read by [`PassedClock`] within that call.
    static NOW: Cell<u64> = const { Cell::new(0) };
}

/// A governor clock that says what the guard being checked was told: the
/// time passed in to [`RateGuard::check`] (so tests decide what time it
/// is and nothing here reads a clock). The limiters are shared by every
/// guard of a server, so the time cannot live in them: it travels through
/// a thread-local, set and read within one synchronous call.
#[derive(Clone, Copy, Debug, Default)]
pub struct PassedClock;

impl Clock for PassedClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::from(NOW.with(Cell::get))
    }
}

/// One bucket of one guard: all the state governor's GCRA keeps, the
/// "theoretical arrival time" in nanoseconds since the guard's origin
/// (0: the bucket was never drawn on). This is what governor's
/// `InMemoryState` holds; here it lives in the guard, and governor reaches
/// it as the key of the shared limiter ([`Tats`]).
#[derive(Debug, Default)]
pub struct Tat(AtomicU64);

// A key of a keyed limiter must be `Clone + Eq + Hash`; [`Tats`] never
// clones, compares or hashes one, but these say what it would mean.
impl Clone for Tat {
    fn clone(&self) -> Tat {
        Tat(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for Tat {
    fn eq(&self, other: &Tat) -> bool {
        self.0.load(Ordering::Relaxed) == other.0.load(Ordering::Relaxed)
    }
}

impl Eq for Tat {}

impl Hash for Tat {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.load(Ordering::Relaxed).hash(state);
    }
}

/// The state store of the shared limiters: it keeps nothing itself, the
/// state is the key ([`Tat`]), so each connection pays 8 bytes a bucket
/// instead of a limiter of its own.
#[derive(Debug, Default)]
pub struct Tats;

impl StateStore for Tats {
    type Key = Tat;

    fn measure_and_replace<T, F, E>(&self, key: &Tat, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // A guard is checked through `&mut self`: nothing else reads or
        // writes its buckets meanwhile, so no compare-and-swap is needed.
        let prev = key.0.load(Ordering::Relaxed);
        let (result, next) = f((prev != 0).then(|| Nanos::from(prev)))?;
        key.0.store(next.as_u64(), Ordering::Relaxed);
        Ok(result)
    }
}

type Limiter = RateLimiter<Tat, Tats, PassedClock, NoOpMiddleware<Nanos>>;

/// What every [`RateGuard`] of a server shares: governor's limiters for
/// the unit and byte buckets (their quotas, as GCRA parameters) and the
/// abuse rule. Made once, from configuration.
pub struct RateLimits {
    units: Limiter,
    bytes: Limiter,
    abuse_threshold: u32,
    abuse_window: Nanos,
}

impl RateLimits {
    /// The limits of `policy`.
    pub fn new(policy: RatePolicy) -> RateLimits {
        let rate = NonZeroU32::new(policy.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(policy.burst).unwrap_or(NonZeroU32::MIN);
        let byte_rate = NonZeroU32::new(policy.bytes_per_second).unwrap_or(NonZeroU32::MIN);
        let byte_burst = NonZeroU32::new(policy.bytes_burst).unwrap_or(NonZeroU32::MIN);
        // A limiter's time 0 is its clock's reading when it is made: every
        // guard's time 0 is its own origin.
        NOW.with(|n| n.set(0));
        RateLimits {
            units: RateLimiter::new(
                Quota::per_second(rate).allow_burst(burst),
                Tats,
                PassedClock,
            ),
            bytes: RateLimiter::new(
                Quota::per_second(byte_rate).allow_burst(byte_burst),
                Tats,
                PassedClock,
            ),
            abuse_threshold: policy.abuse_threshold.max(1),
            abuse_window: Nanos::from(policy.abuse_window.max(Duration::from_millis(1))),
        }
    }
}

/// One client's rate state: its two buckets and its drop counts. The
/// limits themselves are shared ([`RateLimits`]).
pub struct RateGuard {
    limits: Arc<RateLimits>,
    /// What time 0 of the buckets is.
    origin: Instant,
    units: Tat,
    bytes: Tat,
    window_start: Nanos,
    reply_second: Nanos,
    accepted: u32,
    dropped: u32,
    unreported: u32,
    replies: u16,
}

impl RateGuard {
    /// A guard with full buckets at `now`, with limits of its own.
    pub fn new(policy: RatePolicy, now: Instant) -> RateGuard {
        RateGuard::sharing(&Arc::new(RateLimits::new(policy)), now)
    }

    /// A guard with full buckets at `now`, under the shared `limits`.
    pub fn sharing(limits: &Arc<RateLimits>, now: Instant) -> RateGuard {
        RateGuard {
            limits: limits.clone(),
            origin: now,
            units: Tat::default(),
            bytes: Tat::default(),
            window_start: Nanos::from(0),
            reply_second: Nanos::from(0),
            accepted: 0,
            dropped: 0,
            unreported: 0,
            replies: 0,
        }
    }

    /// `t` in nanoseconds since this guard was made (0 for any time
    /// before): the compact form of a time that [`RateGuard::at`] turns
    /// back, exactly.
    pub fn since(&self, t: Instant) -> u64 {
        let d = t.saturating_duration_since(self.origin);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    /// The time `since` nanoseconds after this guard was made.
    pub fn at(&self, since: u64) -> Instant {
        self.origin + Duration::from_nanos(since)
    }

    /// Judges one inbound unit of `bytes` bytes: it needs a unit token and
    /// `bytes` byte tokens.
    pub fn check(&mut self, now: Instant, bytes: usize) -> Verdict {
        self.check_at(self.since(now), bytes)
    }

    /// [`RateGuard::check`] at `now` given as [`RateGuard::since`] gives it.
    pub fn check_at(&mut self, now: u64, bytes: usize) -> Verdict {
        let now = Nanos::from(now);
        NOW.with(|n| n.set(now.as_u64()));
        let limits = &*self.limits;
        if now.duration_since(self.window_start) >= limits.abuse_window {
            self.window_start = now;
            self.accepted = 0;
            self.dropped = 0;
        }
        let bytes = NonZeroU32::new(u32::try_from(bytes).unwrap_or(u32::MAX));
        // The byte bucket is only drawn on when the unit passes.
        let accepted = limits.units.check_key(&self.units).is_ok()
            && match bytes {
                None => true,
                Some(n) => matches!(limits.bytes.check_key_n(&self.bytes, n), Ok(Ok(()))),
            };
        if accepted {
            self.accepted = self.accepted.saturating_add(1);
            return Verdict::Accept {
                unreported: std::mem::take(&mut self.unreported),
            };
        }
        self.dropped = self.dropped.saturating_add(1);
        if self.dropped >= limits.abuse_threshold && self.dropped > self.accepted {
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

    /// Every connection holds one guard (two while its Hello is awaited):
    /// its two buckets are one `u64` each, the limits are shared. It was
    /// 144 bytes with a governor limiter per bucket.
    #[test]
    fn a_guard_is_small() {
        assert!(std::mem::size_of::<RateGuard>() <= 72);
        assert_eq!(std::mem::size_of::<Tat>(), 8);
    }

    #[test]
    fn times_since_the_origin_come_back_exactly() {
        let t = Instant::now();
        let g = RateGuard::new(policy(), t);
        for d in [0, 1, 999, 1_000_000_007, 86_400_000_000_123] {
            let later = t + Duration::from_nanos(d);
            assert_eq!(g.since(later), d);
            assert_eq!(g.at(g.since(later)), later);
        }
        // Before the origin is the origin.
        if let Some(earlier) = t.checked_sub(Duration::from_secs(1)) {
            assert_eq!(g.since(earlier), 0);
        }
    }

    #[test]
    fn guards_sharing_limits_keep_their_own_buckets_and_time() {
        let limits = Arc::new(RateLimits::new(policy()));
        let t = Instant::now();
        let mut a = RateGuard::sharing(&limits, t);
        let mut b = RateGuard::sharing(&limits, t + Duration::from_secs(5));
        for _ in 0..10 {
            assert_eq!(a.check(t, 1), Verdict::Accept { unreported: 0 });
        }
        assert_eq!(a.check(t, 1), Verdict::Drop { reply: Some(1) });
        // `a` spent its burst; `b`, made later, has a full one.
        let later = t + Duration::from_secs(5);
        for _ in 0..10 {
            assert_eq!(b.check(later, 1), Verdict::Accept { unreported: 0 });
        }
        assert_eq!(b.check(later, 1), Verdict::Drop { reply: Some(1) });
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
