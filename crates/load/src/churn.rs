//! The churn scenario: connections that come and go.
//!
//! Each worker loops: connect, Hello, Join a pair room of its own, wait for
//! Joined, Leave, wait for Left, close. One loop is one operation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::{latency_histogram, run_tag, timed_run, Common, CpuProbe, CpuShare, Latency};
use super::{LoadError, PeerExt, Target};
use crate::protocol::{Join, Message, RoomId, RoomMode};

/// Options of the churn scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrent loops.
    pub workers: usize,
    /// Measured time.
    pub duration: Duration,
}

/// What a churn run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "churn".
    pub scenario: &'static str,
    /// Concurrent loops.
    pub workers: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Completed connect/join/leave/disconnect loops.
    pub operations: u64,
    /// Loops per second.
    pub operations_per_second: u64,
    /// Loops that failed.
    pub errors: u64,
    /// Time of one loop.
    pub operation_time: Latency,
    /// CPU shares during the measured interval.
    pub cpu: CpuShare,
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let tag = run_tag();
    let stop = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let workers: Vec<_> = (0..options.workers)
        .map(|w| {
            let (target, stop, operations, errors) = (
                target.clone(),
                stop.clone(),
                operations.clone(),
                errors.clone(),
            );
            let room = RoomId::new(&format!("churn-{tag}-{w}")).expect("valid room id");
            tokio::spawn(async move {
                let mut hist = latency_histogram();
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    match once(&target, &room).await {
                        Ok(()) => {
                            operations.fetch_add(1, Ordering::Relaxed);
                            let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        Err(e) => {
                            tracing::debug!("churn: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            // Back off a little so a refusing server is not spun on.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                hist
            })
        })
        .collect();
    let last = AtomicU64::new(0);
    timed_run(common.progress, options.duration, || {
        let now = operations.load(Ordering::Relaxed);
        format!("{} ops/s", (now - last.swap(now, Ordering::Relaxed)) * 4)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let done = operations.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = probe.finish();
    let mut hist = latency_histogram();
    for w in workers {
        match w.await {
            Ok(h) => hist.add(&h).expect("same bounds"),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Report {
        scenario: "churn",
        workers: options.workers,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        operations: done,
        operations_per_second: (done as f64 / elapsed) as u64,
        errors: errors.load(Ordering::Relaxed),
        operation_time: Latency::of(&hist),
        cpu,
    })
}

async fn once(target: &Target, room: &RoomId) -> Result<(), LoadError> {
    let mut p = target.peer().await?;
    p.push(&Message::Join(Join {
        room: room.clone(),
        mode: RoomMode::Pair,
        capacity: None,
        display_name: String::new(),
    }));
    p.flush().await?;
    p.expect("join", |m| matches!(m, Message::Joined(_)).then_some(()))
        .await?;
    p.push(&Message::Leave { room: room.clone() });
    p.flush().await?;
    p.expect("leave", |m| matches!(m, Message::Left { .. }).then_some(()))
        .await?;
    Ok(p.close().await?)
}
