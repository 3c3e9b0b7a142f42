//! The directory scenario: the requests a node decides in its shared
//! directory.
//!
//! Each worker opens one connection up front and loops: Login with a fresh
//! name, Join a pair room of its own, Leave it, Logout. Each step waits for
//! its answer and is timed on its own, so on a cluster (`--redis-url`) the
//! figures are the latency of the directory round trips behind each
//! request. Logout has no answer in the protocol, so a Ping follows it in
//! the same WebSocket message: the server handles a connection's frames in
//! order, so its Pong arrives once the Logout is done, and the time to the
//! Pong is the logout's.
//!
//! With [`Options::peer_url`] each worker also holds a connection on
//! another node that sits in the worker's room, so every Join is a join
//! into a room with a member on another node. The loop goes on once both
//! the Joined has come back and the PeerJoined the Join causes has reached
//! the other node's connection; the time from sending the Join to that
//! PeerJoined is reported on its own, as `peer_joined_notice`.
//!
//! A failed step counts as an error and the worker starts over on new
//! connections and a new room.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::relay::set_up;
use super::{latency_histogram, run_tag, timed_run, Common, CpuProbe, CpuShare, Latency};
use super::{Connection, LoadError, PeerExt, Target};
use crate::protocol::{Join, Message, RoomId, RoomMode, UserName};

/// Options of the directory scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Concurrent loops, one connection each.
    pub workers: usize,
    /// Measured time.
    pub duration: Duration,
    /// Another node of the cluster: each worker's room gets a member there
    /// first, and every Join must reach it as a PeerJoined.
    pub peer_url: Option<String>,
}

/// What a directory run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "directory".
    pub scenario: &'static str,
    /// Concurrent loops.
    pub workers: usize,
    /// Whether each room had a member on another node (`peer_url`).
    pub cross_node: bool,
    /// Measured seconds.
    pub duration_s: f64,
    /// Completed login/join/leave/logout loops.
    pub loops: u64,
    /// Loops per second.
    pub loops_per_second: u64,
    /// Failed steps (each restarts its worker on new connections).
    pub errors: u64,
    /// Login until LoginResult.
    pub login: Step,
    /// Join until Joined.
    pub join: Step,
    /// Leave until Left.
    pub leave: Step,
    /// Logout until the Pong of the Ping sent after it.
    pub logout: Step,
    /// Join until the PeerJoined arrives on the other node's connection
    /// (only with `peer_url`).
    pub peer_joined_notice: Option<Step>,
    /// CPU shares during the measured interval.
    pub cpu: CpuShare,
}

/// One kind of request over the measured interval.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Step {
    /// Completed requests per second.
    pub per_second: u64,
    /// Their latency.
    #[serde(flatten)]
    pub latency: Latency,
}

impl Step {
    fn of(h: &Histogram<u64>, elapsed: f64) -> Step {
        Step {
            per_second: (h.len() as f64 / elapsed) as u64,
            latency: Latency::of(h),
        }
    }
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let peer_target = match &options.peer_url {
        Some(url) => Some(
            Target::resolve(&Common {
                url: url.clone(),
                ..common.clone()
            })
            .await?,
        ),
        None => None,
    };
    let tag = run_tag();
    let first = set_up(options.workers, |w| {
        let (target, peer_target) = (target.clone(), peer_target.clone());
        let room = room_of(&tag, w, 0);
        async move { Worker::connect(&target, peer_target.as_ref(), room).await }
    })
    .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let loops = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let tasks: Vec<_> = first
        .into_iter()
        .enumerate()
        .map(|(w, worker)| {
            let (target, peer_target, tag) = (target.clone(), peer_target.clone(), tag.clone());
            let (stop, loops, errors) = (stop.clone(), loops.clone(), errors.clone());
            tokio::spawn(async move {
                let mut hist = Histograms::new();
                let mut worker = Some(worker);
                let (mut generation, mut i) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let current = match &mut worker {
                        Some(current) => current,
                        None => {
                            generation += 1;
                            let room = room_of(&tag, w, generation);
                            match Worker::connect(&target, peer_target.as_ref(), room).await {
                                Ok(fresh) => worker.insert(fresh),
                                Err(e) => {
                                    tracing::debug!("directory: reconnect: {e}");
                                    errors.fetch_add(1, Ordering::Relaxed);
                                    tokio::time::sleep(Duration::from_millis(10)).await;
                                    continue;
                                }
                            }
                        }
                    };
                    i += 1;
                    let name = UserName::new(&format!("dir-{tag}-{w}-{i}")).expect("valid name");
                    match current.once(name, i).await {
                        // The loop that straddles the end is not counted.
                        Ok(t) if !stop.load(Ordering::Relaxed) => {
                            hist.record(&t);
                            loops.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!("directory: {e}");
                            errors.fetch_add(1, Ordering::Relaxed);
                            worker = None;
                            // Back off a little so a refusing server is not spun on.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                if let Some(worker) = worker {
                    worker.close().await;
                }
                hist
            })
        })
        .collect();
    let last = AtomicU64::new(0);
    timed_run(common.progress, options.duration, || {
        let now = loops.load(Ordering::Relaxed);
        format!("{} loops/s", (now - last.swap(now, Ordering::Relaxed)) * 4)
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let done = loops.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = probe.finish();
    let mut hist = Histograms::new();
    for t in tasks {
        match t.await {
            Ok(h) => hist.add(&h),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(Report {
        scenario: "directory",
        workers: options.workers,
        cross_node: peer_target.is_some(),
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        loops: done,
        loops_per_second: (done as f64 / elapsed) as u64,
        errors: errors.load(Ordering::Relaxed),
        login: Step::of(&hist.login, elapsed),
        join: Step::of(&hist.join, elapsed),
        leave: Step::of(&hist.leave, elapsed),
        logout: Step::of(&hist.logout, elapsed),
        peer_joined_notice: peer_target
            .is_some()
            .then(|| Step::of(&hist.notice, elapsed)),
        cpu,
    })
}

/// The room of worker `w`'s `generation`-th set of connections.
fn room_of(tag: &str, w: usize, generation: u64) -> RoomId {
    RoomId::new(&format!("dir-{tag}-{w}-{generation}")).expect("valid room id")
}

fn join(room: &RoomId) -> Message {
    Message::Join(Join {
        room: room.clone(),
        mode: RoomMode::Pair,
        capacity: None,
        display_name: String::new(),
    })
}

/// How long the steps of one loop took.
struct Timings {
    login: Duration,
    join: Duration,
    leave: Duration,
    logout: Duration,
    notice: Option<Duration>,
}

/// The latencies of the steps, in microseconds.
struct Histograms {
    login: Histogram<u64>,
    join: Histogram<u64>,
    leave: Histogram<u64>,
    logout: Histogram<u64>,
    notice: Histogram<u64>,
}

impl Histograms {
    fn new() -> Histograms {
        Histograms {
            login: latency_histogram(),
            join: latency_histogram(),
            leave: latency_histogram(),
            logout: latency_histogram(),
            notice: latency_histogram(),
        }
    }

    fn record(&mut self, t: &Timings) {
        let us = |d: Duration| (d.as_micros() as u64).max(1);
        let _ = self.login.record(us(t.login));
        let _ = self.join.record(us(t.join));
        let _ = self.leave.record(us(t.leave));
        let _ = self.logout.record(us(t.logout));
        if let Some(n) = t.notice {
            let _ = self.notice.record(us(n));
        }
    }

    fn add(&mut self, other: &Histograms) {
        for (a, b) in [
            (&mut self.login, &other.login),
            (&mut self.join, &other.join),
            (&mut self.leave, &other.leave),
            (&mut self.logout, &other.logout),
            (&mut self.notice, &other.notice),
        ] {
            a.add(b).expect("same bounds");
        }
    }
}

/// One worker's connections.
struct Worker {
    /// The measured connection.
    local: Connection,
    /// With `peer_url`: the member of `room` on the other node.
    remote: Option<Connection>,
    /// The worker's room.
    room: RoomId,
}

impl Worker {
    /// Opens the measured connection and, with `peer_target`, one there
    /// that joins `room` first.
    async fn connect(
        target: &Target,
        peer_target: Option<&Target>,
        room: RoomId,
    ) -> Result<Worker, LoadError> {
        let local = target.peer().await?;
        let remote = match peer_target {
            Some(t) => {
                let mut remote = t.peer().await?;
                remote.push(&join(&room));
                remote.flush().await?;
                remote
                    .expect("remote join", |m| {
                        matches!(m, Message::Joined(_)).then_some(())
                    })
                    .await?;
                Some(remote)
            }
            None => None,
        };
        Ok(Worker {
            local,
            remote,
            room,
        })
    }

    /// One loop: Login as `name`, Join, Leave, Logout (then Ping `nonce`).
    async fn once(&mut self, name: UserName, nonce: u64) -> Result<Timings, LoadError> {
        let Worker {
            local,
            remote,
            room,
        } = self;
        let me = local.id();

        let t0 = Instant::now();
        local.push(&Message::Login { name });
        local.flush().await?;
        let result = local
            .expect("login", |m| match m {
                Message::LoginResult(r) => Some(r),
                _ => None,
            })
            .await?;
        if let Some(code) = result.error {
            return Err(LoadError::Unexpected(format!("login: {code:?}")));
        }
        let login = t0.elapsed();

        let t0 = Instant::now();
        local.push(&join(room));
        local.flush().await?;
        let joined = async {
            local
                .expect("join", |m| matches!(m, Message::Joined(_)).then_some(()))
                .await
                .map(|()| t0.elapsed())
        };
        let (join, notice) = match remote {
            Some(remote) => {
                // The PeerLeft of the previous loop's Leave is dropped here.
                let noticed = async {
                    remote
                        .expect("peer joined", |m| {
                            matches!(m, Message::PeerJoined(p) if p.member.peer_id == me)
                                .then_some(())
                        })
                        .await
                        .map(|()| t0.elapsed())
                };
                let (join, notice) = tokio::try_join!(joined, noticed)?;
                (join, Some(notice))
            }
            None => (joined.await?, None),
        };

        let t0 = Instant::now();
        local.push(&Message::Leave { room: room.clone() });
        local.flush().await?;
        local
            .expect("leave", |m| matches!(m, Message::Left { .. }).then_some(()))
            .await?;
        let leave = t0.elapsed();

        let t0 = Instant::now();
        local.push(&Message::Logout);
        local.push(&Message::Ping { nonce });
        local.flush().await?;
        local
            .expect("logout", |m| {
                matches!(m, Message::Pong { nonce: n } if n == nonce).then_some(())
            })
            .await?;
        let logout = t0.elapsed();

        Ok(Timings {
            login,
            join,
            leave,
            logout,
            notice,
        })
    }

    /// Closes the connections politely, ignoring failures.
    async fn close(self) {
        let _ = self.local.close().await;
        if let Some(remote) = self.remote {
            let _ = remote.close().await;
        }
    }
}
