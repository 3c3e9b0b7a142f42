//! The handshake scenario: rooms of K peers negotiate, as browsers would.
//!
//! Each room: K connections open and say Hello; they join one after the
//! other (a pair room for K = 2, a mesh room otherwise); every joiner offers
//! to each member already there, who answers; both ends of each negotiation
//! then send one ICE batch of four candidates with the end-of-candidates
//! marker; then everyone leaves and disconnects. A negotiation is complete
//! when each end has the other's SDP and end of candidates.
//!
//! SDPs are Chrome's samples from `tests/data/sdp`, deflated with the
//! preset dictionary when the receiver announced DEFLATE_SDP, as a real
//! client would. They are deflated once per run, not per message, so the
//! load generator's CPU goes to the protocol rather than to zlib.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::{latency_histogram, run_tag, timed_run, Common, CpuProbe, CpuShare, Latency};
use super::{Connection, LoadError, PeerExt, Target};
use crate::protocol::{
    sdp, Address, Capabilities, IceCandidate, IceCandidates, Join, Message, PeerId, RoomId,
    RoomMode, Sdp, SessionDescription,
};

/// Options of the handshake scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Peers per room (at least 2).
    pub size: usize,
    /// Rooms negotiating at once.
    pub concurrency: usize,
    /// Stop starting rooms after this many (0: no limit).
    pub rooms: usize,
    /// Keep each worker's K connections open from room to room (join,
    /// negotiate, leave) instead of connecting anew per room, to measure
    /// negotiation apart from TCP and WebSocket setup.
    pub reuse_connections: bool,
    /// Measured time; rooms still running at the end are finished and not
    /// counted.
    pub duration: Duration,
}

/// What a handshake run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "handshake".
    pub scenario: &'static str,
    /// Peers per room.
    pub size: usize,
    /// Rooms at once.
    pub concurrency: usize,
    /// Measured seconds.
    pub duration_s: f64,
    /// Rooms whose negotiations all completed in the interval.
    pub rooms_completed: u64,
    /// Negotiations (peer pairs) completed in the interval.
    pub negotiations: u64,
    /// Negotiations completed per second.
    pub negotiations_per_second: u64,
    /// Rooms that failed.
    pub errors: u64,
    /// From the first connect of a room to its last negotiation's end.
    pub time_to_complete: Latency,
    /// CPU shares during the measured interval.
    pub cpu: CpuShare,
}

const OFFER: &str = include_str!("../../../tests/data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("../../../tests/data/sdp/chrome-answer.sdp");

/// The SDPs of a run, plain and deflated.
struct Sdps {
    offer: Bytes,
    offer_deflated: Bytes,
    answer: Bytes,
    answer_deflated: Bytes,
}

impl Sdps {
    fn new() -> Sdps {
        Sdps {
            offer: Bytes::from_static(OFFER.as_bytes()),
            offer_deflated: sdp::deflate(OFFER.as_bytes()).into(),
            answer: Bytes::from_static(ANSWER.as_bytes()),
            answer_deflated: sdp::deflate(ANSWER.as_bytes()).into(),
        }
    }

    fn body(&self, offer: bool, deflate: bool) -> Sdp {
        match (offer, deflate) {
            (true, true) => Sdp::Deflated(self.offer_deflated.clone()),
            (true, false) => Sdp::Plain(self.offer.clone()),
            (false, true) => Sdp::Deflated(self.answer_deflated.clone()),
            (false, false) => Sdp::Plain(self.answer.clone()),
        }
    }
}

struct Shared {
    sdps: Sdps,
    tag: String,
    next_room: AtomicU64,
    stop: AtomicBool,
    rooms_completed: AtomicU64,
    errors: AtomicU64,
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    assert!(options.size >= 2, "a room needs at least two peers");
    let target = Target::resolve(common).await?;
    let shared = Arc::new(Shared {
        sdps: Sdps::new(),
        tag: run_tag(),
        next_room: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        rooms_completed: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    let probe = CpuProbe::start(common.server_pid);
    let started = Instant::now();
    let workers: Vec<_> = (0..options.concurrency)
        .map(|_| {
            let (target, shared, options) = (target.clone(), shared.clone(), options.clone());
            tokio::spawn(async move {
                let mut hist = latency_histogram();
                let mut kept: Vec<Connection> = Vec::new();
                while !shared.stop.load(Ordering::Relaxed) {
                    let n = shared.next_room.fetch_add(1, Ordering::Relaxed);
                    if options.rooms > 0 && n >= options.rooms as u64 {
                        break;
                    }
                    let t0 = Instant::now();
                    match negotiate_room(&target, &shared, &options, n, &mut kept).await {
                        Ok(()) if !shared.stop.load(Ordering::Relaxed) => {
                            shared.rooms_completed.fetch_add(1, Ordering::Relaxed);
                            let _ = hist.record((t0.elapsed().as_micros() as u64).max(1));
                        }
                        Ok(()) => {}
                        Err(e) => {
                            kept.clear();
                            tracing::debug!("room {n}: {e}");
                            shared.errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                hist
            })
        })
        .collect();
    let pairs = (options.size * (options.size - 1) / 2) as u64;
    let all_done = async {
        for w in &workers {
            while !w.is_finished() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let last = AtomicU64::new(0);
    tokio::select! {
        _ = timed_run(common.progress, options.duration, || {
            let now = shared.rooms_completed.load(Ordering::Relaxed);
            let delta = now - last.swap(now, Ordering::Relaxed);
            format!("{} negotiations/s", delta * pairs * 4)
        }) => {}
        _ = all_done => {}
    }
    shared.stop.store(true, Ordering::Relaxed);
    let rooms_completed = shared.rooms_completed.load(Ordering::Relaxed);
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = probe.finish();
    let mut hist: Histogram<u64> = latency_histogram();
    for w in workers {
        match w.await {
            Ok(h) => hist.add(&h).expect("same bounds"),
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let negotiations = rooms_completed * pairs;
    Ok(Report {
        scenario: "handshake",
        size: options.size,
        concurrency: options.concurrency,
        duration_s: (elapsed * 1000.0).round() / 1000.0,
        rooms_completed,
        negotiations,
        negotiations_per_second: (negotiations as f64 / elapsed) as u64,
        errors: shared.errors.load(Ordering::Relaxed),
        time_to_complete: Latency::of(&hist),
        cpu,
    })
}

/// Progress of one peer's negotiation with one remote peer.
#[derive(Default)]
struct Negotiation {
    sdp: bool,
    end_of_candidates: bool,
}

/// Four host candidates for `peer` (also the fleet's, which checks them).
pub(crate) fn candidates(peer: PeerId) -> Vec<IceCandidate> {
    (0..4u32)
        .map(|i| IceCandidate {
            candidate: format!(
                "candidate:{} 1 udp {} 192.0.2.{} {} typ host generation 0 network-id 1",
                1_000_000 + i,
                2_122_260_223 - i,
                1 + (peer.0 % 200),
                50_000 + i
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("EsAw".into()),
        })
        .collect()
}

/// `from`'s candidates for `to`, with end-of-candidates.
pub(crate) fn ice_batch(to: PeerId, from: PeerId) -> Message {
    Message::Ice(IceCandidates {
        peer: Address::Peer(to),
        candidates: candidates(from),
        end_of_candidates: true,
        room: None,
        app_data: String::new(),
    })
}

/// One room, start to finish.
async fn negotiate_room(
    target: &Target,
    shared: &Shared,
    options: &Options,
    n: u64,
    kept: &mut Vec<Connection>,
) -> Result<(), LoadError> {
    let room = RoomId::new(&format!("hs-{}-{n}", shared.tag)).expect("valid room id");
    let mode = if options.size == 2 {
        RoomMode::Pair
    } else {
        RoomMode::Mesh
    };
    let mut peers: Vec<Connection> = if kept.is_empty() {
        futures_util::future::try_join_all((0..options.size).map(|_| target.peer())).await?
    } else {
        std::mem::take(kept)
    };
    // Join one after the other, so each joiner knows whom to offer to.
    let mut remotes: Vec<Vec<(PeerId, Capabilities)>> = Vec::with_capacity(options.size);
    for p in peers.iter_mut() {
        p.push(&Message::Join(Join {
            room: room.clone(),
            mode,
            capacity: (mode == RoomMode::Mesh).then_some(options.size as u32),
            display_name: String::new(),
        }));
        p.flush().await?;
        let members = p
            .expect("join", |m| match m {
                Message::Joined(j) => Some(j.members),
                _ => None,
            })
            .await?;
        let own = p.id();
        remotes.push(
            members
                .into_iter()
                .filter(|m| m.peer_id != own)
                .map(|m| (m.peer_id, m.capabilities))
                .collect(),
        );
    }
    let size = options.size;
    futures_util::future::try_join_all(
        peers
            .iter_mut()
            .zip(remotes)
            .map(|(p, offer_to)| negotiate_peer(p, offer_to, size - 1, &shared.sdps)),
    )
    .await?;
    if options.reuse_connections {
        for p in peers.iter_mut() {
            p.push(&Message::Leave { room: room.clone() });
            p.flush().await?;
            p.expect("leave", |m| matches!(m, Message::Left { .. }).then_some(()))
                .await?;
        }
        *kept = peers;
    } else {
        for mut p in peers {
            p.push(&Message::Leave { room: room.clone() });
            p.flush().await?;
            p.close().await?;
        }
    }
    Ok(())
}

/// One peer: offers to `offer_to`, answers everyone else, sends its ICE to
/// each, until `remotes` negotiations are complete.
async fn negotiate_peer(
    p: &mut Connection,
    offer_to: Vec<(PeerId, Capabilities)>,
    remotes: usize,
    sdps: &Sdps,
) -> Result<(), LoadError> {
    let me = p.id();
    let mut state: HashMap<PeerId, Negotiation> = HashMap::with_capacity(remotes);
    for (peer, caps) in &offer_to {
        p.push(&Message::Offer(SessionDescription {
            peer: Address::Peer(*peer),
            sdp: sdps.body(true, caps.contains(Capabilities::DEFLATE_SDP)),
            room: None,
            app_data: String::new(),
        }));
        p.push(&ice_batch(*peer, me));
        state.insert(*peer, Negotiation::default());
    }
    p.flush().await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let done = |state: &HashMap<PeerId, Negotiation>| {
        state.len() == remotes && state.values().all(|n| n.sdp && n.end_of_candidates)
    };
    while !done(&state) {
        let m = tokio::time::timeout_at(deadline, p.recv())
            .await
            .map_err(|_| LoadError::Timeout("negotiation"))??;
        match m {
            Message::Offer(d) => {
                if let Address::Peer(from) = d.peer {
                    state.entry(from).or_default().sdp = true;
                    // All of this generator's peers inflate; a real
                    // client would look up the sender's capabilities.
                    p.push(&Message::Answer(SessionDescription {
                        peer: Address::Peer(from),
                        sdp: sdps.body(false, true),
                        room: None,
                        app_data: String::new(),
                    }));
                    p.push(&ice_batch(from, me));
                }
            }
            Message::Answer(d) => {
                if let Address::Peer(from) = d.peer {
                    state.entry(from).or_default().sdp = true;
                }
            }
            Message::Ice(ice) => {
                if let Address::Peer(from) = ice.peer {
                    if ice.end_of_candidates {
                        state.entry(from).or_default().end_of_candidates = true;
                    }
                }
            }
            Message::Error(e) => return Err(LoadError::Unexpected(format!("{e:?}"))),
            _ => {}
        }
        // The answer and its candidates leave together (nothing when
        // nothing was queued).
        p.flush().await?;
    }
    Ok(())
}
