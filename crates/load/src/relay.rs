//! The relay scenario: pairs in 1:1 rooms bounce ICE-sized messages.
//!
//! The initiating side of a pair starts `window` messages ("balls") and
//! every side answers every ball it receives with one to its partner, so
//! `window` balls per pair are always in flight (`2 × window` when both
//! sides initiate, [`Pattern::both_sides`]). By default every frame goes in
//! its own WebSocket message, as a browser's `ws.send` per signal does;
//! [`Pattern::coalesce`] packs everything a side has to send into one
//! message instead, as an SDK that batches would. A ball is one `IceCandidates` with one realistic
//! server-reflexive candidate (about 150 bytes of payload). A ball carries
//! the side that started it and when it last left that side, so each ball
//! returning to its origin is one round trip: its send, the server, the
//! partner, the server, back. Balls are encoded once and stamped or bounced
//! in place (see [`Ball`]), so the load generator spends its CPU on the
//! socket, not on protobuf, and can drive the server to its limit from one
//! core.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use super::{latency_histogram, run_tag, timed_run, Common, CpuProbe, CpuShare, Latency};
use super::{Connection, LoadError, PeerExt, Target};
use crate::protocol::{
    Address, IceCandidate, IceCandidates, Join, Message, MessageType, PeerId, RoomId, RoomMode,
};

/// The traffic a relay run sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Pattern {
    /// Both sides start `window` balls (else one side initiates and the
    /// other only answers, as in a negotiation).
    pub both_sides: bool,
    /// Everything a side has to send goes in one WebSocket message (else one
    /// frame per message, as clients that send each signal as it comes).
    pub coalesce: bool,
}

impl Pattern {
    /// The label the report carries.
    pub fn label(&self) -> &'static str {
        match (self.both_sides, self.coalesce) {
            (false, false) => "one side initiates, one frame per WebSocket message",
            (false, true) => "one side initiates, frames coalesced per WebSocket message",
            (true, false) => "both sides initiate, one frame per WebSocket message",
            (true, true) => "both sides initiate, frames coalesced per WebSocket message",
        }
    }
}

/// Options of the relay scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pairs (two connections each).
    pub pairs: usize,
    /// Balls each initiating side keeps in flight.
    pub window: usize,
    /// Measured time.
    pub duration: Duration,
    /// What traffic to send.
    pub pattern: Pattern,
    /// Where each pair's second peer connects, when not `Common::url`
    /// (another node of a cluster).
    pub peer_url: Option<String>,
}

/// What a relay run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "relay".
    pub scenario: &'static str,
    /// Pairs.
    pub pairs: usize,
    /// Window per initiating side.
    pub window: usize,
    /// What traffic was sent, in words.
    pub pattern: &'static str,
    /// The same as flags.
    pub both_sides: bool,
    /// The same as flags.
    pub coalesce: bool,
    /// Measured seconds.
    pub duration_s: f64,
    /// Messages the server delivered in the measured interval.
    pub relayed_messages: u64,
    /// Messages the server delivered per second.
    pub relayed_per_second: u64,
    /// Messages sent but never received, after draining.
    pub lost: u64,
    /// Error frames and failed connections.
    pub errors: u64,
    /// Round trips (client → server → partner → server → client).
    pub round_trip: Latency,
    /// CPU shares during the measured interval.
    pub cpu: CpuShare,
    /// Server CPU time per relayed message, in microseconds (needs
    /// `--server-pid`).
    pub server_us_per_message: Option<PerMessage>,
}

/// CPU time per relayed message, split as `/proc/PID/stat` splits it.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerMessage {
    /// User time (the server's own code), µs.
    pub user: f64,
    /// Kernel time (socket system calls, TCP), µs.
    pub kernel: f64,
}

/// A server-reflexive candidate of typical length.
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx \
                         raddr 192.168.1.10 rport 61665 generation 0 network-cost 999";

/// What the sides of a relay run count together.
pub(crate) struct Shared {
    pub(crate) epoch: Instant,
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) stopping: AtomicBool,
}

impl Shared {
    pub(crate) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            epoch: Instant::now(),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            stopping: AtomicBool::new(false),
        })
    }
}

/// Sets up `n` pairs, 64 at a time; the first failure fails the run.
pub(crate) async fn set_up<T, F, Fut>(n: usize, pair: F) -> Result<Vec<T>, LoadError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, LoadError>>,
{
    futures_util::stream::iter(0..n)
        .map(pair)
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect()
}

/// What one measured relay interval gave.
pub(crate) struct Measured {
    pub(crate) relayed: u64,
    pub(crate) elapsed: f64,
    pub(crate) cpu: CpuShare,
    pub(crate) round_trip: Histogram<u64>,
    pub(crate) lost: u64,
}

impl Measured {
    /// The report of a run of `pairs` pairs, `window` balls each, that
    /// sent `pattern` (its label and flags).
    pub(crate) fn report(
        &self,
        scenario: &'static str,
        (pairs, window): (usize, usize),
        (label, pattern): (&'static str, Pattern),
        shared: &Shared,
    ) -> Report {
        Report {
            scenario,
            pairs,
            window,
            pattern: label,
            both_sides: pattern.both_sides,
            coalesce: pattern.coalesce,
            server_us_per_message: self.per_message(),
            duration_s: (self.elapsed * 1000.0).round() / 1000.0,
            relayed_messages: self.relayed,
            relayed_per_second: (self.relayed as f64 / self.elapsed) as u64,
            lost: self.lost,
            errors: shared.errors.load(Ordering::Relaxed),
            round_trip: Latency::of(&self.round_trip),
            cpu: self.cpu,
        }
    }

    /// Server CPU seconds as microseconds per relayed message.
    pub(crate) fn per_message(&self) -> Option<PerMessage> {
        let per = |seconds: f64| (seconds * 1e7 / self.relayed.max(1) as f64).round() / 10.0;
        self.cpu.server_split.map(|(user, kernel)| PerMessage {
            user: per(user),
            kernel: per(kernel),
        })
    }
}

/// Starts the sides (`start`), measures for `duration`, then stops them
/// answering, waits (up to 2 s) for what is in flight to land, tells them
/// to exit and gathers their round trips.
pub(crate) async fn measure(
    common: &Common,
    duration: Duration,
    shared: &Shared,
    start: watch::Sender<bool>,
    exit: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<Result<Histogram<u64>, LoadError>>>,
) -> Measured {
    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let _ = start.send(true);
    let before = shared.received.load(Ordering::Relaxed);
    let last = AtomicU64::new(before);
    timed_run(common.progress, duration, || {
        let now = shared.received.load(Ordering::Relaxed);
        let delta = now - last.swap(now, Ordering::Relaxed);
        format!("{} msg/s", delta * 4)
    })
    .await;
    let relayed = shared.received.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = probe.finish();

    // Stop answering, then wait for the balls still in flight to land.
    shared.stopping.store(true, Ordering::Relaxed);
    let drain_until = Instant::now() + Duration::from_secs(2);
    while shared.sent.load(Ordering::Relaxed) > shared.received.load(Ordering::Relaxed)
        && Instant::now() < drain_until
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = exit.send(true);
    let mut round_trip = latency_histogram();
    for t in tasks {
        match t.await {
            Ok(Ok(h)) => round_trip.add(&h).expect("same bounds"),
            _ => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let received = shared.received.load(Ordering::Relaxed);
    Measured {
        relayed,
        elapsed,
        cpu,
        round_trip,
        lost: sent.saturating_sub(received),
    }
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let peer_target = match &options.peer_url {
        Some(url) => {
            Target::resolve(&Common {
                url: url.clone(),
                ..common.clone()
            })
            .await?
        }
        None => target.clone(),
    };
    let tag = run_tag();
    let pairs = set_up(options.pairs, |i| {
        let (target, peer_target) = (target.clone(), peer_target.clone());
        let room = RoomId::new(&format!("relay-{tag}-{i}")).expect("valid room id");
        async move { set_up_pair(&target, &peer_target, room).await }
    })
    .await?;

    let shared = Shared::new();
    let (exit_tx, exit_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(options.pairs * 2);
    for (a, b) in pairs {
        let (ida, idb) = (a.id(), b.id());
        for (side, peer, partner) in [(0, a, idb), (1, b, ida)] {
            let window = if side == 0 || options.pattern.both_sides {
                options.window
            } else {
                0
            };
            tasks.push(tokio::spawn(bounce(
                peer,
                side,
                partner,
                window,
                options.pattern.coalesce,
                shared.clone(),
                start_rx.clone(),
                exit_rx.clone(),
            )));
        }
    }

    let m = measure(common, options.duration, &shared, start_tx, exit_tx, tasks).await;
    Ok(m.report(
        "relay",
        (options.pairs, options.window),
        (options.pattern.label(), options.pattern),
        &shared,
    ))
}

/// Connects two peers and puts them in one pair room.
async fn set_up_pair(
    target: &Target,
    peer_target: &Target,
    room: RoomId,
) -> Result<(Connection, Connection), LoadError> {
    let mut a = target.peer().await?;
    let mut b = peer_target.peer().await?;
    let join = Message::Join(Join {
        room: room.clone(),
        mode: RoomMode::Pair,
        capacity: None,
        display_name: String::new(),
    });
    a.push(&join);
    a.flush().await?;
    a.expect("join", |m| matches!(m, Message::Joined(_)).then_some(()))
        .await?;
    b.push(&join);
    b.flush().await?;
    b.expect("join", |m| matches!(m, Message::Joined(_)).then_some(()))
        .await?;
    a.expect("peer joined", |m| {
        matches!(m, Message::PeerJoined(_)).then_some(())
    })
    .await?;
    Ok((a, b))
}

/// Width of the stamp: the originating side's digit, then nanoseconds.
const STAMP: usize = 20;

/// A ball, encoded once: an `IceCandidates` for `partner` whose
/// `username_fragment` is a fixed-width stamp ("<side><nanoseconds>") at the
/// very end of the payload. The server rewrites only the address field in
/// front, so the stamp stays at the same distance from the end of whatever
/// payload arrives, and balls are stamped and bounced without re-encoding.
struct Ball {
    payload: Vec<u8>,
    /// Bytes of the payload before the body the server passes on unchanged.
    address_len: usize,
}

impl Ball {
    fn new(partner: PeerId, side: usize) -> Ball {
        let placeholder = format!("{side}{:0w$}", 0, w = STAMP - 1);
        let message = Message::Ice(IceCandidates {
            peer: Address::Peer(partner),
            candidates: vec![IceCandidate {
                candidate: CANDIDATE.into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: Some(placeholder.clone()),
            }],
            end_of_candidates: false,
            room: None,
            app_data: String::new(),
        });
        let payload = crate::protocol::encode(&message).payload.to_vec();
        assert!(
            payload.ends_with(placeholder.as_bytes()),
            "the stamp is the last field"
        );
        // Field 1 (the address) comes first: key, length, contents.
        let address_len = 2 + usize::from(payload[1]);
        Ball {
            payload,
            address_len,
        }
    }

    fn stamped(&mut self, side: usize, now_ns: u64) -> &[u8] {
        let at = self.payload.len() - STAMP;
        let stamp = format!("{side}{now_ns:0w$}", w = STAMP - 1);
        self.payload[at..].copy_from_slice(stamp.as_bytes());
        &self.payload
    }

    /// Reads a received ball's stamp: (originating side, nanoseconds).
    fn stamp_of(payload: &[u8]) -> Option<(usize, u64)> {
        let stamp = payload.get(payload.len().checked_sub(STAMP)?..)?;
        let stamp = std::str::from_utf8(stamp).ok()?;
        Some((stamp[..1].parse().ok()?, stamp[1..].parse().ok()?))
    }

    /// The partner's ball sent back: our address field, its body.
    fn bounced<'a>(&'a mut self, received: &[u8], scratch: &'a mut Vec<u8>) -> &'a [u8] {
        let body = self.payload.len() - self.address_len;
        scratch.clear();
        scratch.extend_from_slice(&self.payload[..self.address_len]);
        scratch.extend_from_slice(&received[received.len() - body..]);
        scratch
    }
}

/// One side of a pair: answers every ball, records round trips.
#[allow(clippy::too_many_arguments)]
async fn bounce(
    mut peer: Connection,
    side: usize,
    partner: PeerId,
    window: usize,
    coalesce: bool,
    shared: Arc<Shared>,
    mut start: watch::Receiver<bool>,
    mut exit: watch::Receiver<bool>,
) -> Result<Histogram<u64>, LoadError> {
    let mut hist = latency_histogram();
    let result = async {
        start
            .wait_for(|s| *s)
            .await
            .map_err(|_| LoadError::Closed)?;
        let mut ball = Ball::new(partner, side);
        let mut scratch = Vec::new();
        let now = shared.epoch.elapsed().as_nanos() as u64;
        shared.sent.fetch_add(window as u64, Ordering::Relaxed);
        for _ in 0..window {
            peer.push_raw(MessageType::Ice, ball.stamped(side, now));
            if !coalesce {
                peer.flush().await?;
            }
        }
        peer.flush().await?;
        // Stamped payloads to send back: (is it our ball, payload).
        let mut replies: Vec<(bool, bytes::Bytes)> = Vec::with_capacity(window * 2);
        loop {
            let mut errors = 0u64;
            let mut received = 0u64;
            let stopping = shared.stopping.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = exit.changed() => return Ok(()),
                r = peer.recv_frames(|frame| {
                    if frame.header.kind != MessageType::Ice as u8 {
                        if frame.header.kind == MessageType::Error as u8 {
                            errors += 1;
                        }
                        return;
                    }
                    received += 1;
                    match Ball::stamp_of(&frame.payload) {
                        Some((origin, sent)) if origin == side => {
                            if !stopping {
                                let now = shared.epoch.elapsed().as_nanos() as u64;
                                let _ = hist.record((now.saturating_sub(sent) / 1000).max(1));
                                replies.push((true, frame.payload.clone()));
                            }
                        }
                        Some(_) => {
                            if !stopping {
                                replies.push((false, frame.payload.clone()));
                            }
                        }
                        None => errors += 1,
                    }
                }) => r?,
            }
            shared.received.fetch_add(received, Ordering::Relaxed);
            if errors > 0 {
                shared.errors.fetch_add(errors, Ordering::Relaxed);
            }
            if !replies.is_empty() {
                shared
                    .sent
                    .fetch_add(replies.len() as u64, Ordering::Relaxed);
                let now = shared.epoch.elapsed().as_nanos() as u64;
                for (ours, payload) in replies.drain(..) {
                    if ours {
                        peer.push_raw(MessageType::Ice, ball.stamped(side, now));
                    } else {
                        peer.push_raw(MessageType::Ice, ball.bounced(&payload, &mut scratch));
                    }
                    if !coalesce {
                        peer.flush().await?;
                    }
                }
            }
            peer.flush().await?;
        }
    }
    .await;
    match result {
        Ok(()) => Ok(hist),
        // After the measured interval a partner may close first.
        Err(_) if shared.stopping.load(Ordering::Relaxed) => Ok(hist),
        Err(e) => Err(e),
    }
}
