//! The relay scenario: pairs in 1:1 rooms bounce ICE-sized messages.
//!
//! Each side of a pair starts `window` messages ("balls") and answers every
//! ball it receives with one to its partner, so `2 × window` balls per pair
//! are always in flight. A ball is one `IceCandidates` with one realistic
//! server-reflexive candidate (about 120 bytes of payload). It carries the
//! time each side last sent it, side 0 in `sdp_mid` and side 1 in
//! `username_fragment` (nanoseconds since the run started), so every
//! received ball is one round trip for its receiver: its own send, the
//! server, the partner, the server, back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::watch;

use super::{latency_histogram, run_tag, timed_run, Common, CpuProbe, CpuShare, Latency};
use super::{LoadError, Peer, Target};
use crate::protocol::{
    Address, IceCandidate, IceCandidates, Join, Message, PeerId, RoomId, RoomMode,
};

/// Options of the relay scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pairs (two connections each).
    pub pairs: usize,
    /// Balls each side keeps in flight.
    pub window: usize,
    /// Measured time.
    pub duration: Duration,
}

/// What a relay run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "relay".
    pub scenario: &'static str,
    /// Pairs.
    pub pairs: usize,
    /// Window per side.
    pub window: usize,
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
}

/// A server-reflexive candidate of typical length.
const CANDIDATE: &str = "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx \
                         raddr 192.168.1.10 rport 61665 generation 0 network-cost 999";

struct Shared {
    epoch: Instant,
    sent: AtomicU64,
    received: AtomicU64,
    errors: AtomicU64,
    stopping: AtomicBool,
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let tag = run_tag();
    let pairs: Vec<(Peer, Peer)> = futures_util::stream::iter(0..options.pairs)
        .map(|i| {
            let target = target.clone();
            let room = RoomId::new(&format!("relay-{tag}-{i}")).expect("valid room id");
            async move { set_up_pair(&target, room).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;

    let shared = Arc::new(Shared {
        epoch: Instant::now(),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        stopping: AtomicBool::new(false),
    });
    let (exit_tx, exit_rx) = watch::channel(false);
    let (start_tx, start_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(options.pairs * 2);
    for (a, b) in pairs {
        let (ida, idb) = (a.id(), b.id());
        for (side, peer, partner) in [(0, a, idb), (1, b, ida)] {
            tasks.push(tokio::spawn(bounce(
                peer,
                side,
                partner,
                options.window,
                shared.clone(),
                start_rx.clone(),
                exit_rx.clone(),
            )));
        }
    }

    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let _ = start_tx.send(true);
    let before = shared.received.load(Ordering::Relaxed);
    let last = AtomicU64::new(before);
    timed_run(common.progress, options.duration, || {
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
    let _ = exit_tx.send(true);
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
    Ok(Report {
        scenario: "relay",
        pairs: options.pairs,
        window: options.window,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        relayed_messages: relayed,
        relayed_per_second: (relayed as f64 / elapsed) as u64,
        lost: sent.saturating_sub(received),
        errors: shared.errors.load(Ordering::Relaxed),
        round_trip: Latency::of(&round_trip),
        cpu,
    })
}

/// Connects two peers and puts them in one pair room.
async fn set_up_pair(target: &Target, room: RoomId) -> Result<(Peer, Peer), LoadError> {
    let mut a = target.peer().await?;
    let mut b = target.peer().await?;
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

fn ball(partner: PeerId, side: usize, now_ns: u64) -> Message {
    let (mine, theirs) = (now_ns.to_string(), "0".to_string());
    let (sdp_mid, ufrag) = if side == 0 {
        (mine, theirs)
    } else {
        (theirs, mine)
    };
    Message::Ice(IceCandidates {
        peer: Address::Peer(partner),
        candidates: vec![IceCandidate {
            candidate: CANDIDATE.into(),
            sdp_mid: Some(sdp_mid),
            sdp_m_line_index: Some(0),
            username_fragment: Some(ufrag),
        }],
        end_of_candidates: false,
        room: None,
    })
}

/// One side of a pair: answers every ball, records round trips.
async fn bounce(
    mut peer: Peer,
    side: usize,
    partner: PeerId,
    window: usize,
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
        let now = shared.epoch.elapsed().as_nanos() as u64;
        for _ in 0..window {
            peer.push(&ball(partner, side, now));
        }
        shared.sent.fetch_add(window as u64, Ordering::Relaxed);
        peer.flush().await?;
        let mut replies: Vec<Message> = Vec::with_capacity(window * 2);
        loop {
            let mut errors = 0u64;
            let mut received = 0u64;
            let stopping = shared.stopping.load(Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = exit.changed() => return Ok(()),
                r = peer.recv_batch(|m| match m {
                    Message::Ice(mut ice) => {
                        received += 1;
                        let now = shared.epoch.elapsed().as_nanos() as u64;
                        if let Some(c) = ice.candidates.first_mut() {
                            let mine = if side == 0 { &mut c.sdp_mid } else { &mut c.username_fragment };
                            if let Some(sent) = mine.as_deref().and_then(|s| s.parse::<u64>().ok()) {
                                if sent != 0 && !stopping {
                                    let _ = hist.record(((now.saturating_sub(sent)) / 1000).max(1));
                                }
                            }
                            *mine = Some(now.to_string());
                        }
                        if !stopping {
                            ice.peer = Address::Peer(partner);
                            replies.push(Message::Ice(ice));
                        }
                    }
                    Message::Error(_) => errors += 1,
                    _ => {}
                }) => r?,
            }
            shared.received.fetch_add(received, Ordering::Relaxed);
            if errors > 0 {
                shared.errors.fetch_add(errors, Ordering::Relaxed);
            }
            if !replies.is_empty() {
                shared.sent.fetch_add(replies.len() as u64, Ordering::Relaxed);
                for m in replies.drain(..) {
                    peer.push(&m);
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
