//! The churn scenario: connections that come and go.
//!
//! Each worker loops: connect, Hello, Join a pair room of its own, wait for
//! Joined, Leave, wait for Left, close. One loop is one operation.
//!
//! With `resume`, each worker keeps one session in a room instead and
//! loops: drop the connection without a close frame, connect again and
//! resume the session, Ping and wait for the Pong. One loop is one
//! reconnect-and-resume.

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
    /// Drop and resume one session per worker instead of new connections.
    pub resume: bool,
    /// With `resume`: other nodes of a cluster (`ws://` URLs) to resume on,
    /// in turn with the first, so every resume moves the session to
    /// another node.
    pub resume_on: Vec<String>,
}

/// What a churn run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// "churn", or "resume" with `resume`.
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
    let mut targets = vec![target.clone()];
    for url in &options.resume_on {
        let other = crate::Common {
            url: url.clone(),
            ..common.clone()
        };
        targets.push(Target::resolve(&other).await?);
    }
    let targets = Arc::new(targets);
    let tag = run_tag();
    let stop = Arc::new(AtomicBool::new(false));
    let operations = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let workers: Vec<_> = (0..options.workers)
        .map(|w| {
            let (target, targets, stop, operations, errors) = (
                target.clone(),
                targets.clone(),
                stop.clone(),
                operations.clone(),
                errors.clone(),
            );
            let room = RoomId::new(&format!("churn-{tag}-{w}")).expect("valid room id");
            let resume = options.resume;
            tokio::spawn(async move {
                let mut hist = latency_histogram();
                let mut held = None;
                let mut turn = 0;
                while !stop.load(Ordering::Relaxed) {
                    let t0 = Instant::now();
                    let done = if resume {
                        turn += 1;
                        let on = &targets[turn % targets.len()];
                        resume_once(&target, on, &room, &mut held).await
                    } else {
                        once(&target, &room).await
                    };
                    match done {
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
        scenario: if options.resume { "resume" } else { "churn" },
        workers: options.workers,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        operations: done,
        operations_per_second: (done as f64 / elapsed) as u64,
        errors: errors.load(Ordering::Relaxed),
        operation_time: Latency::of(&hist),
        cpu,
    })
}

/// A new connection to `target`, joined to pair room `room`.
async fn joined(target: &Target, room: &RoomId) -> Result<crate::client::Connection, LoadError> {
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
    Ok(p)
}

async fn once(target: &Target, room: &RoomId) -> Result<(), LoadError> {
    let mut p = joined(target, room).await?;
    p.push(&Message::Leave { room: room.clone() });
    p.flush().await?;
    p.expect("leave", |m| matches!(m, Message::Left { .. }).then_some(()))
        .await?;
    Ok(p.close().await?)
}

/// One reconnect-and-resume of the worker's session (made on `target` on
/// the first call, in `room`): the connection ends without a close frame,
/// a new one (to `on`) resumes the session, and a Ping answered shows it
/// live.
async fn resume_once(
    target: &Target,
    on: &Target,
    room: &RoomId,
    held: &mut Option<crate::client::SessionResume>,
) -> Result<(), LoadError> {
    let mut p = match held.take() {
        None => joined(target, room).await?,
        Some(session) => {
            let p = on.resume(&session).await?;
            if !p.resumed() {
                return Err(LoadError::Timeout("a resume the server refused"));
            }
            p
        }
    };
    p.push(&Message::Ping { nonce: 1 });
    p.flush().await?;
    p.expect("pong", |m| matches!(m, Message::Pong { .. }).then_some(()))
        .await?;
    *held = p.take_resume();
    // Dropped without a close frame: the server keeps the session.
    drop(p);
    Ok(())
}
