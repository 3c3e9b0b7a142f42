//! The memory budget of an idle connection, as the sizes of what each one
//! holds (BENCHMARKS.md, "Idle memory"). Each bound is what the type costs
//! now: a change that grows one fails here, and says so.
//!
//! The connection task itself (its future, in a tokio task cell of 896
//! bytes) is private to the server; `-Zprint-type-sizes` on a nightly
//! compiler shows it (BENCHMARKS.md says how).

use std::mem::size_of;

use switchboard::directory::LocalDirectory;
use switchboard::rate::{RateGuard, Tat};
use switchboard::session::Session;

/// A session is boxed on its own: 256 bytes is jemalloc's size class for
/// it (257 would cost 320).
#[test]
fn a_session_fits_256_bytes() {
    assert!(
        size_of::<Session<LocalDirectory>>() <= 256,
        "Session is {} bytes",
        size_of::<Session<LocalDirectory>>()
    );
}

/// One rate guard per connection, inside its session: two buckets of one
/// `u64` each (the GCRA arrival time; the limiters are shared), the abuse
/// window and the reply budget.
#[test]
fn a_rate_guard_is_72_bytes_at_most() {
    assert_eq!(size_of::<Tat>(), 8);
    assert!(
        size_of::<RateGuard>() <= 72,
        "RateGuard is {} bytes",
        size_of::<RateGuard>()
    );
}
