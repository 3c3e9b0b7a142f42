//! The fleet: one run of very many clients over the nodes of a cluster,
//! spread over several worker processes, with one aggregated report.
//!
//! A process can hold about 19,000 sockets (the open-files limit), so a
//! million clients take more than fifty load-generator processes. The
//! parent ([`run`]) splits the clients into pairs and the pairs into
//! slices, starts one worker per slice (the same binary again, through a
//! [`Command`] the caller makes: `switchboard-load fleet-worker`, or a test
//! binary), hands each its slice as a JSON line on its stdin, and reads
//! JSON events from its stdout: ready, progress, connected, status,
//! negotiated. Commands go the same way (`start`, `negotiate`, `exit`); a
//! worker whose stdin closes, or whose parent dies, exits.
//!
//! Pair `p` is two clients in the pair room `f<tag>-<p>`: member A on node
//! `p mod N`, member B on node `p + 1 mod N`, both in the same worker, so
//! every room spans two nodes and one worker can check both ends. Each
//! client connects (from 127.0.0.x, round robin over `source_ips`), says
//! Hello, logs in with a unique name and joins; then it holds, answering
//! the server's heartbeats. The worker connects `connect_concurrency`
//! pairs at a time and holds every connection in one task
//! ([`FuturesUnordered`]) on a [`Lite`] connection (no read buffer of its
//! own), so a held client costs the load generator a few hundred bytes.
//!
//! After the hold, `negotiate` randomly chosen pairs (chosen by the
//! parent, handed to their workers up front and held apart) run a full
//! negotiation across their two nodes: A sends an Offer (a real Chrome
//! SDP, deflated) and its ICE batch with end-of-candidates, B answers with
//! an Answer and its own batch. Each end checks that every message arrives
//! from the right peer, intact, exactly once (it keeps listening half a
//! second past completion for duplicates).
//!
//! With a [`storm`], one node is killed between the hold and the
//! negotiations, and its clients come back on the others (see there).

pub mod storm;

use crate::handshake::{candidates, ice_batch};
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::lite::{Lite, PONGS};
use crate::protocol::{
    sdp, Address, Capabilities, Hello, Join, Message, PeerId, RoomId, RoomMode, Sdp,
    SessionDescription, UserName, PROTOCOL_VERSION,
};
use crate::{latency_histogram, run_tag, Latency, LoadError};

/// Clients per worker when [`Options::workers`] is 0: under the 20,000
/// open files a process may have here, with room to spare.
pub const CLIENTS_PER_WORKER: usize = 18_000;

/// Options of a fleet run.
#[derive(Clone, Debug)]
pub struct Options {
    /// The nodes' WebSocket URLs (`ws://127.0.0.1:PORT/ws`), at least two.
    pub nodes: Vec<String>,
    /// Clients in all (even: they come in pairs).
    pub connections: usize,
    /// Worker processes; 0 picks one per [`CLIENTS_PER_WORKER`] clients.
    pub workers: usize,
    /// Pairs each worker connects at once.
    pub connect_concurrency: usize,
    /// How long every client stays connected once the last one joined.
    pub hold: Duration,
    /// Pairs that negotiate after the hold.
    pub negotiate: usize,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N.
    pub source_ips: u8,
    /// Seed of the choice of negotiating pairs (0: from the clock).
    pub seed: u64,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Where to write the phase the run is in (`connecting`, `holding`,
    /// `arming`, `storm`, `settling`, `negotiating`, `done`), for scripts
    /// that sample during the hold or the storm.
    pub phase_file: Option<PathBuf>,
    /// Kill the first node after the hold and bring its clients back on
    /// the others (see [`storm`]).
    pub storm: Option<storm::Options>,
}

impl Options {
    /// A run of `connections` clients over `nodes`: one worker per
    /// [`CLIENTS_PER_WORKER`], 32 pairs connecting at once per worker, a
    /// 10 s hold, no negotiation, no storm, the kernel's source address, a
    /// seed from the clock, no progress lines.
    pub fn new(nodes: Vec<String>, connections: usize) -> Options {
        Options {
            nodes,
            connections,
            workers: 0,
            connect_concurrency: 32,
            hold: Duration::from_secs(10),
            negotiate: 0,
            source_ips: 1,
            seed: 0,
            progress: false,
            phase_file: None,
            storm: None,
        }
    }
}

/// What a worker is given.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Spec {
    index: usize,
    tag: String,
    nodes: Vec<String>,
    layout: Layout,
    first_pair: u64,
    pairs: u64,
    negotiate: Vec<u64>,
    source_ips: u8,
    concurrency: usize,
    /// How the clients of a storm come back, if this run has one.
    storm: Option<storm::Plan>,
    /// Pairs that stream signals through the storm.
    stream: Vec<u64>,
}

/// Where the two members of every pair are.
///
/// Without a storm, pair `p` has member A on node `p mod N` and B on node
/// `p + 1 mod N`. With one, `heavy` pairs, spread evenly over the pair
/// numbers, have A on node 0 (the one to be killed) and B on one of the
/// others in turn; every other pair spans two of nodes 1 to N − 1 in the
/// same way as without a storm. So node 0 holds exactly `heavy` clients
/// and the survivors share the rest evenly.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct Layout {
    nodes: u64,
    pairs: u64,
    heavy: u64,
}

impl Layout {
    /// Pair `p`'s nodes: (A's, B's).
    fn nodes_of(&self, p: u64) -> (usize, usize) {
        let n = self.nodes;
        if self.heavy == 0 {
            return ((p % n) as usize, ((p + 1) % n) as usize);
        }
        let others = n - 1;
        let before = self.heavy_before(p);
        if self.is_heavy(p) {
            (0, (1 + before % others) as usize)
        } else {
            let q = p - before;
            ((1 + q % others) as usize, (1 + (q + 1) % others) as usize)
        }
    }

    /// Whether pair `p` has a member on node 0 in a storm.
    fn is_heavy(&self, p: u64) -> bool {
        self.heavy > 0 && self.heavy_before(p + 1) > self.heavy_before(p)
    }

    /// Heavy pairs among the pairs below `p`.
    fn heavy_before(&self, p: u64) -> u64 {
        (p as u128 * self.heavy as u128 / self.pairs as u128) as u64
    }
}

/// A held client: its connection, who it is, what it knows of its partner.
type Held = (Lite, Seat, storm::Partner);

/// One client of a pair: who it is, so that it can come back.
#[derive(Clone, Copy, Debug)]
struct Seat {
    pair: u64,
    /// b'a' or b'b'.
    side: u8,
    /// The node it is connected to.
    node: usize,
}

/// What a worker tells its parent, one JSON object a line.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Event {
    Ready {
        rss_kib: u64,
    },
    Progress {
        connected: u64,
        errors: u64,
    },
    Connected {
        connected: u64,
        errors: u64,
        same_node_pairs: u64,
        elapsed_s: f64,
        pongs: u64,
        rss_kib: u64,
        error_samples: Vec<String>,
    },
    Status {
        open: u64,
        dropped: u64,
        pongs: u64,
        rss_kib: u64,
    },
    Negotiated {
        outcomes: Vec<Outcome>,
    },
    /// Ready for the kill: drops from now on are the storm's.
    Armed,
    /// How far the storm has got in this worker.
    StormProgress {
        down: u64,
        back: u64,
        partners_back: u64,
    },
    /// The storm as this worker saw it, after `settle`.
    Stormed(Box<storm::Seen>),
}

/// One pair's negotiation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Outcome {
    /// Every message arrived once, intact, from the right peer.
    ok: bool,
    /// From the Offer sent to the last of the four messages received.
    time_us: Option<u64>,
    /// Expected messages that never arrived (of Offer, ICE to B; Answer,
    /// ICE to A).
    lost: u32,
    /// Messages that arrived more than once.
    duplicates: u32,
    /// Signals from a peer other than the pair's other member.
    misrouted: u32,
    /// Why it failed, if it did.
    failure: Option<String>,
}

/// Negotiations after the hold.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Negotiations {
    /// Pairs asked to negotiate.
    pub asked: usize,
    /// Pairs whose four messages all arrived once, intact.
    pub completed: u64,
    /// Pairs that did not.
    pub failed: u64,
    /// Messages that never arrived.
    pub lost_messages: u64,
    /// Messages that arrived twice or more.
    pub duplicates: u64,
    /// Signals that reached a client they were not sent to.
    pub misrouted: u64,
    /// Offer sent until the last message arrived.
    pub time_to_complete: Latency,
    /// The first few failures.
    pub failure_samples: Vec<String>,
}

/// The load generator's own memory.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LoadMemory {
    /// Worker processes.
    pub processes: usize,
    /// Sum of the workers' RSS before they connected, KiB.
    pub rss_before_kib: u64,
    /// Sum of the workers' RSS at the end of the hold, KiB.
    pub rss_held_kib: u64,
    /// (held − before) / clients held, bytes.
    pub rss_per_connection_bytes: Option<u64>,
}

/// What a fleet run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "fleet".
    pub scenario: &'static str,
    /// Nodes.
    pub nodes: usize,
    /// Clients asked for.
    pub connections: usize,
    /// Worker processes.
    pub workers: usize,
    /// Clients connected, logged in and joined.
    pub established: u64,
    /// Clients that failed to (both members of a failed pair count).
    pub errors: u64,
    /// The first few errors.
    pub error_samples: Vec<String>,
    /// Pairs whose members ended up on one node (should be 0).
    pub pairs_on_one_node: u64,
    /// Seconds from the start until the last client joined.
    pub time_to_all_s: f64,
    /// Clients per second over that time.
    pub connect_rate_per_s: u64,
    /// Most clients joined in one second.
    pub peak_connect_rate_per_s: u64,
    /// Seconds held.
    pub hold_s: f64,
    /// Clients still connected at the end of the hold.
    pub open_after_hold: u64,
    /// Clients whose connection ended during the hold.
    pub dropped_during_hold: u64,
    /// Server heartbeats answered during the hold.
    pub pongs_during_hold: u64,
    /// The negotiations after the hold.
    pub negotiations: Negotiations,
    /// The load generator's memory.
    pub loadgen: LoadMemory,
    /// The reconnect storm, if the run had one.
    pub storm: Option<storm::Report>,
    /// Every client joined, stayed (or came back after the storm) and
    /// every negotiation completed.
    pub ok: bool,
}

/// Where a node is: its address and the WebSocket path.
fn parse_node(url: &str) -> Result<(SocketAddr, String), LoadError> {
    let bad = |why| LoadError::BadUrl {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| bad("only ws:// is supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_string()),
        None => (rest, "/".to_string()),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|_| bad("host:port does not resolve"))?
        .next()
        .ok_or_else(|| bad("host does not resolve"))?;
    // A fleet is a benchmark of this machine: it only ever targets loopback.
    if !addr.ip().is_loopback() {
        return Err(bad("a fleet targets loopback addresses only"));
    }
    Ok((addr, path))
}

// ---------------------------------------------------------------------------
// The parent.

/// Runs a fleet: starts the workers that `worker` makes, drives them through
/// the run and aggregates their reports. Blocks (it is not async: the
/// workers do the I/O).
pub fn run(options: &Options, worker: &dyn Fn() -> Command) -> Result<Report, LoadError> {
    let n = options.nodes.len();
    if n < 2 {
        return Err(LoadError::Unexpected(
            "a fleet needs at least two nodes (pairs span two)".into(),
        ));
    }
    for url in &options.nodes {
        parse_node(url)?;
    }
    if options.connections == 0 || !options.connections.is_multiple_of(2) {
        return Err(LoadError::Unexpected(
            "--connections must be even and positive (clients come in pairs)".into(),
        ));
    }
    let pairs = (options.connections / 2) as u64;
    let workers = match options.workers {
        0 => options.connections.div_ceil(CLIENTS_PER_WORKER),
        k => k,
    }
    .clamp(1, pairs as usize);
    let per_worker = options.connections.div_ceil(workers);
    let limit = nofile_hard_limit();
    if per_worker as u64 + 64 > limit {
        return Err(LoadError::Unexpected(format!(
            "{per_worker} clients per worker do not fit under the open-files limit {limit}: \
             use more workers"
        )));
    }
    let heavy = match &options.storm {
        Some(storm) => storm.check(n, pairs)?,
        None => 0,
    };
    let layout = Layout {
        nodes: n as u64,
        pairs,
        heavy,
    };
    let tag = run_tag();
    // In a storm, negotiating pairs are held apart from the storm (they do
    // not come back), so they are chosen off the node that dies; the
    // streaming pairs are chosen on it.
    let chosen = choose(pairs, options.negotiate as u64, options.seed, &|p| {
        !layout.is_heavy(p)
    });
    let stream = match &options.storm {
        Some(storm) => choose(
            pairs,
            storm.stream_pairs as u64,
            options.seed ^ 0x5707,
            &|p| layout.is_heavy(p),
        ),
        None => Vec::new(),
    };
    let phase = |p: &str| {
        if let Some(path) = &options.phase_file {
            let _ = std::fs::write(path, format!("{p}\n"));
        }
        if options.progress {
            eprintln!("fleet: {p}");
        }
    };
    phase("starting");

    let mut fleet = Fleet::default();
    let (tx, rx) = mpsc::channel::<(usize, Option<Event>)>();
    for w in 0..workers {
        let first = w as u64 * pairs / workers as u64;
        let end = (w as u64 + 1) * pairs / workers as u64;
        let spec = Spec {
            index: w,
            tag: tag.clone(),
            nodes: options.nodes.clone(),
            layout,
            first_pair: first,
            pairs: end - first,
            negotiate: in_slice(&chosen, first..end),
            source_ips: options.source_ips.max(1),
            concurrency: options.connect_concurrency.max(1),
            storm: options.storm.as_ref().map(storm::Options::plan),
            stream: in_slice(&stream, first..end),
        };
        let mut cmd = worker();
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn()?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let line = serde_json::to_string(&spec).expect("specs serialize");
        writeln!(stdin, "{line}")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // A test binary as the worker prints text of its own, even
                // in front of the first event on its line.
                let Some(at) = line.find("{\"event\"") else {
                    continue;
                };
                match serde_json::from_str::<Event>(&line[at..]) {
                    Ok(e) => {
                        if tx.send((w, Some(e))).is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!("fleet worker {w}: bad line {line:?}: {e}"),
                }
            }
            let _ = tx.send((w, None));
        });
        fleet.children.push(child);
        fleet.stdins.push(Some(stdin));
    }
    drop(tx);
    let mut state = vec![WorkerState::default(); workers];

    // Every worker ready (runtime up, spec read), then all start at once.
    let ready_by = Instant::now() + Duration::from_secs(60);
    while state.iter().any(|s| s.rss_before_kib.is_none()) {
        let (w, e) = next_event(&rx, ready_by, "workers to start")?;
        state[w].apply(e)?;
    }
    phase("connecting");
    let started = Instant::now();
    fleet.broadcast("start")?;
    let mut last_report = Instant::now();
    let mut last_total = 0u64;
    let mut peak = 0u64;
    let mut last_change = Instant::now();
    let mut time_to_all = None;
    while state.iter().any(|s| s.connected_at.is_none()) {
        let tick = Instant::now() + Duration::from_millis(250);
        match rx.recv_timeout(tick.saturating_duration_since(Instant::now())) {
            Ok((w, e)) => {
                let done = state[w].apply(e)?;
                if done && state[w].connected_at.is_none() {
                    state[w].connected_at = Some(started.elapsed());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(LoadError::Unexpected("every worker exited".into()))
            }
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            let total: u64 = state.iter().map(|s| s.connected).sum();
            let errors: u64 = state.iter().map(|s| s.errors).sum();
            let secs = last_report.elapsed().as_secs_f64();
            let rate = ((total - last_total) as f64 / secs) as u64;
            peak = peak.max(rate);
            if total != last_total {
                last_change = Instant::now();
            }
            if options.progress {
                eprintln!(
                    "fleet: {:>6.1} s  {total}/{} joined  {rate}/s  errors {errors}",
                    started.elapsed().as_secs_f64(),
                    options.connections
                );
            }
            last_total = total;
            last_report = Instant::now();
            if last_change.elapsed() > Duration::from_secs(180) {
                return Err(LoadError::Timeout("connecting: no progress for 180 s"));
            }
        }
    }
    let total: u64 = state.iter().map(|s| s.connected).sum();
    if let Some(t) = state.iter().filter_map(|s| s.connected_at).max() {
        time_to_all = Some(t);
    }
    let time_to_all = time_to_all.unwrap_or_default().as_secs_f64();
    if options.progress {
        eprintln!(
            "fleet: {total} joined in {time_to_all:.1} s; holding for {:?}",
            options.hold
        );
    }

    phase("holding");
    let pongs_before: u64 = state.iter().map(|s| s.pongs).sum();
    let hold_start = Instant::now();
    let hold_end = hold_start + options.hold;
    let mut last_print = Instant::now();
    loop {
        let now = Instant::now();
        if now >= hold_end {
            break;
        }
        take_event(&rx, &mut state, hold_end - now)?;
        if options.progress && last_print.elapsed() >= Duration::from_secs(10) {
            let open: u64 = state.iter().map(|s| s.open).sum();
            let dropped: u64 = state.iter().map(|s| s.dropped).sum();
            let pongs: u64 = state.iter().map(|s| s.pongs).sum();
            eprintln!(
                "fleet: held {:>5.0} s  open {open}  dropped {dropped}  heartbeats answered {}",
                hold_start.elapsed().as_secs_f64(),
                pongs - pongs_before
            );
            last_print = Instant::now();
        }
    }
    let hold_s = hold_start.elapsed().as_secs_f64();
    // Fresh figures from every worker for the end of the hold.
    for s in state.iter_mut() {
        s.status_seen = false;
    }
    fleet.broadcast("status")?;
    let status_by = Instant::now() + Duration::from_secs(30);
    while state.iter().any(|s| !s.status_seen) {
        let (w, e) = next_event(&rx, status_by, "status at the end of the hold")?;
        state[w].apply(e)?;
    }
    let open_after_hold: u64 = state.iter().map(|s| s.open).sum();
    let dropped: u64 = state.iter().map(|s| s.dropped).sum();
    let pongs: u64 = state.iter().map(|s| s.pongs).sum::<u64>() - pongs_before;
    let rss_before: u64 = state.iter().filter_map(|s| s.rss_before_kib).sum();
    let rss_held: u64 = state.iter().map(|s| s.rss_kib).sum();

    let storm = match &options.storm {
        Some(storm) => Some(storm::run(
            options, storm, total, &phase, &mut fleet, &rx, &mut state,
        )?),
        None => None,
    };

    phase("negotiating");
    fleet.broadcast("negotiate")?;
    let negotiated_by = Instant::now() + Duration::from_secs(120);
    while state.iter().any(|s| s.outcomes.is_none()) {
        let (w, e) = next_event(&rx, negotiated_by, "negotiations")?;
        state[w].apply(e)?;
    }
    let mut negotiations = Negotiations {
        asked: chosen.len(),
        ..Negotiations::default()
    };
    let mut hist = latency_histogram();
    for o in state.iter().flat_map(|s| s.outcomes.iter().flatten()) {
        if o.ok {
            negotiations.completed += 1;
        } else {
            negotiations.failed += 1;
            if negotiations.failure_samples.len() < 5 {
                negotiations
                    .failure_samples
                    .push(o.failure.clone().unwrap_or_default());
            }
        }
        negotiations.lost_messages += o.lost as u64;
        negotiations.duplicates += o.duplicates as u64;
        negotiations.misrouted += o.misrouted as u64;
        if let Some(t) = o.time_us {
            let _ = hist.record(t.max(1));
        }
    }
    negotiations.time_to_complete = Latency::of(&hist);
    phase("done");
    fleet.broadcast("exit")?;
    fleet.wait();

    let established = total;
    let errors: u64 = state.iter().map(|s| s.errors).sum();
    let error_samples: Vec<String> = state
        .iter()
        .flat_map(|s| s.error_samples.iter().cloned())
        .take(5)
        .collect();
    let pairs_on_one_node = state.iter().map(|s| s.same_node_pairs).sum();
    let ok = established == options.connections as u64
        && errors == 0
        && pairs_on_one_node == 0
        && dropped == 0
        && open_after_hold == established
        && negotiations.completed == chosen.len() as u64
        && negotiations.lost_messages == 0
        && negotiations.duplicates == 0
        && negotiations.misrouted == 0
        && storm.as_ref().is_none_or(|s| s.ok);
    Ok(Report {
        scenario: "fleet",
        nodes: n,
        connections: options.connections,
        workers,
        established,
        errors,
        error_samples,
        pairs_on_one_node,
        time_to_all_s: round3(time_to_all),
        connect_rate_per_s: (established as f64 / time_to_all.max(1e-9)) as u64,
        peak_connect_rate_per_s: peak,
        hold_s: round3(hold_s),
        open_after_hold,
        dropped_during_hold: dropped,
        pongs_during_hold: pongs,
        negotiations,
        loadgen: LoadMemory {
            processes: workers,
            rss_before_kib: rss_before,
            rss_held_kib: rss_held,
            rss_per_connection_bytes: (open_after_hold > 0)
                .then(|| rss_held.saturating_sub(rss_before) * 1024 / open_after_hold),
        },
        storm,
        ok,
    })
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The pairs of `chosen` in `slice`.
fn in_slice(chosen: &[u64], slice: std::ops::Range<u64>) -> Vec<u64> {
    chosen
        .iter()
        .copied()
        .filter(|p| slice.contains(p))
        .collect()
}

/// Waits up to `wait` for a worker's event and applies it.
fn take_event(
    rx: &mpsc::Receiver<(usize, Option<Event>)>,
    state: &mut [WorkerState],
    wait: Duration,
) -> Result<(), LoadError> {
    match rx.recv_timeout(wait) {
        Ok((w, e)) => state[w].apply(e).map(|_| ()),
        Err(mpsc::RecvTimeoutError::Timeout) => Ok(()),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            Err(LoadError::Unexpected("every worker exited".into()))
        }
    }
}

fn next_event(
    rx: &mpsc::Receiver<(usize, Option<Event>)>,
    by: Instant,
    what: &'static str,
) -> Result<(usize, Option<Event>), LoadError> {
    rx.recv_timeout(by.saturating_duration_since(Instant::now()))
        .map_err(|_| LoadError::Timeout(what))
}

/// The worker processes; killed if the run ends early.
#[derive(Default)]
struct Fleet {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
}

impl Fleet {
    fn broadcast(&mut self, command: &str) -> Result<(), LoadError> {
        for stdin in self.stdins.iter_mut().flatten() {
            writeln!(stdin, "{command}")?;
            stdin.flush()?;
        }
        Ok(())
    }

    /// Waits for the workers to exit after `exit` (10 s, then kills them).
    fn wait(&mut self) {
        self.stdins.clear();
        let by = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() >= by => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
        self.children.clear();
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
        }
        for child in &mut self.children {
            let _ = child.wait();
        }
    }
}

/// What the parent knows of one worker.
#[derive(Clone, Debug, Default)]
struct WorkerState {
    rss_before_kib: Option<u64>,
    rss_kib: u64,
    connected: u64,
    errors: u64,
    same_node_pairs: u64,
    error_samples: Vec<String>,
    connected_at: Option<Duration>,
    open: u64,
    dropped: u64,
    pongs: u64,
    status_seen: bool,
    outcomes: Option<Vec<Outcome>>,
    armed: bool,
    /// Clients of this worker whose connection ended in the storm, and
    /// of those, the ones back in their room.
    down: u64,
    back: u64,
    /// Clients that saw their partner come back (after its leave, or
    /// before).
    partners_back: u64,
    stormed: Option<Box<storm::Seen>>,
}

impl WorkerState {
    /// Applies an event; true when it is the end of the connect phase.
    fn apply(&mut self, event: Option<Event>) -> Result<bool, LoadError> {
        match event {
            None => Err(LoadError::Unexpected(
                "a worker exited before the end of the run".into(),
            )),
            Some(Event::Ready { rss_kib }) => {
                self.rss_before_kib = Some(rss_kib);
                self.rss_kib = rss_kib;
                Ok(false)
            }
            Some(Event::Progress { connected, errors }) => {
                self.connected = connected;
                self.errors = errors;
                Ok(false)
            }
            Some(Event::Connected {
                connected,
                errors,
                same_node_pairs,
                pongs,
                rss_kib,
                error_samples,
                ..
            }) => {
                self.pongs = pongs;
                self.connected = connected;
                self.open = connected;
                self.errors = errors;
                self.same_node_pairs = same_node_pairs;
                self.rss_kib = rss_kib;
                self.error_samples = error_samples;
                Ok(true)
            }
            Some(Event::Status {
                open,
                dropped,
                pongs,
                rss_kib,
            }) => {
                self.open = open;
                self.dropped = dropped;
                self.pongs = pongs;
                self.rss_kib = rss_kib;
                self.status_seen = true;
                Ok(false)
            }
            Some(Event::Negotiated { outcomes }) => {
                self.outcomes = Some(outcomes);
                Ok(false)
            }
            Some(Event::Armed) => {
                self.armed = true;
                Ok(false)
            }
            Some(Event::StormProgress {
                down,
                back,
                partners_back,
            }) => {
                (self.down, self.back, self.partners_back) = (down, back, partners_back);
                Ok(false)
            }
            Some(Event::Stormed(seen)) => {
                (self.down, self.back) = (seen.down, seen.back);
                self.partners_back = seen.partners.saw_back + seen.partners.back_before_leave;
                self.stormed = Some(seen);
                Ok(false)
            }
        }
    }
}

/// `count` distinct pair numbers below `pairs` for which `eligible` holds
/// (all of them if fewer), at random (SplitMix64).
fn choose(pairs: u64, count: u64, seed: u64, eligible: &dyn Fn(u64) -> bool) -> Vec<u64> {
    let mut x = if seed == 0 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    } else {
        seed
    };
    let mut next = move || {
        x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let count = count.min((0..pairs).filter(|&p| eligible(p)).count() as u64);
    let mut picked = HashSet::with_capacity(count as usize);
    let mut out = Vec::with_capacity(count as usize);
    while (out.len() as u64) < count {
        let p = next() % pairs;
        if eligible(p) && picked.insert(p) {
            out.push(p);
        }
    }
    out.sort_unstable();
    out
}

fn nofile_hard_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return u64::MAX;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    let max = lim.rlim_max as u64;
    max
}

/// This process's resident set, KiB.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// A worker.

/// The worker's side: reads its slice from stdin, runs it, writes events to
/// stdout and exits when told to (or when stdin closes). For the hidden
/// `fleet-worker` subcommand, or a test binary acting as one.
pub fn worker_main() -> Result<(), LoadError> {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with these arguments only sets a flag of this process.
    unsafe {
        // Die with the parent, whatever kills it.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    raise_nofile();
    let mut stdin = BufReader::new(std::io::stdin());
    let mut line = String::new();
    stdin.read_line(&mut line)?;
    let spec: Spec = serde_json::from_str(&line)
        .map_err(|e| LoadError::Unexpected(format!("fleet worker spec: {e}")))?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in stdin.lines() {
            let Ok(line) = line else { break };
            if tx.send(line.trim().to_string()).is_err() {
                break;
            }
        }
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(worker(spec, rx))?;
    // Leave at once: the kernel closes a worker's sockets faster than it
    // could one by one.
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in and then read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

fn emit(event: &Event) {
    let line = serde_json::to_string(event).expect("events serialize");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Counters shared by a worker's tasks.
#[derive(Default)]
struct Counters {
    open: AtomicU64,
    dropped: AtomicU64,
}

/// What every client of a worker needs to connect (and come back).
struct Ctx {
    tag: String,
    nodes: Vec<(SocketAddr, String)>,
    hello: Hello,
    source_ips: u8,
    next_source: AtomicU64,
    counters: Counters,
    /// How clients come back, in a storm.
    storm: Option<storm::Plan>,
    /// Their reconnect delays.
    backoff: crate::client::ClientConfig,
    /// The storm's counts, which every held client adds to.
    recovery: storm::Recovery,
}

impl Ctx {
    async fn open(&self, node: usize) -> Result<Lite, LoadError> {
        let (addr, path) = &self.nodes[node];
        let source = (self.source_ips > 1).then(|| {
            let k = self.next_source.fetch_add(1, Ordering::Relaxed) % self.source_ips as u64;
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + k as u8))
        });
        Lite::connect(*addr, source, path, &self.hello).await
    }

    /// Pair `p`'s room.
    fn room(&self, p: u64) -> Result<RoomId, LoadError> {
        RoomId::new(&format!("f{}-{p}", self.tag))
            .map_err(|e| LoadError::Unexpected(format!("room id: {e}")))
    }

    /// The name a seat logs in with.
    fn name(&self, seat: Seat) -> Result<UserName, LoadError> {
        UserName::new(&format!("f{}-{}{}", self.tag, seat.pair, seat.side as char))
            .map_err(|e| LoadError::Unexpected(format!("user name: {e}")))
    }

    /// A connection ended: it comes back if a storm is on (true), or is
    /// counted as dropped.
    fn lost(&self) -> bool {
        self.counters.open.fetch_sub(1, Ordering::Relaxed);
        if self.recovery.armed() {
            return true;
        }
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        false
    }
}

async fn worker(
    spec: Spec,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<String>,
) -> Result<(), LoadError> {
    let nodes = spec
        .nodes
        .iter()
        .map(|u| parse_node(u))
        .collect::<Result<Vec<_>, _>>()?;
    let ctx = Arc::new(Ctx {
        tag: spec.tag.clone(),
        nodes,
        hello: Hello {
            protocol_version: PROTOCOL_VERSION,
            capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
            access_token: None,
            user_agent: concat!("switchboard-load-fleet/", env!("CARGO_PKG_VERSION")).into(),
            resume: None,
        },
        source_ips: spec.source_ips,
        // Workers start their round robin at different addresses.
        next_source: AtomicU64::new(spec.index as u64),
        counters: Counters::default(),
        backoff: spec
            .storm
            .as_ref()
            .map(storm::Plan::backoff)
            .unwrap_or_default(),
        storm: spec.storm.clone(),
        recovery: storm::Recovery::default(),
    });
    emit(&Event::Ready { rss_kib: rss_kib() });
    loop {
        match commands.recv().await.as_deref() {
            Some("start") => break,
            Some(_) => continue,
            None => return Ok(()),
        }
    }
    let started = Instant::now();
    let counters = &ctx.counters;

    // Every held connection is one future in one task.
    let (hold_tx, mut hold_rx) = tokio::sync::mpsc::unbounded_channel::<Held>();
    {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let mut held = FuturesUnordered::new();
            let mut taking = true;
            loop {
                tokio::select! {
                    c = hold_rx.recv(), if taking => match c {
                        Some((c, seat, partner)) => held.push(hold(c, seat, partner, ctx.clone())),
                        None => taking = false,
                    },
                    Some(()) = held.next(), if !held.is_empty() => {}
                    else => break,
                }
            }
        });
    }

    let negotiate: HashSet<u64> = spec.negotiate.iter().copied().collect();
    let stream: HashSet<u64> = spec.stream.iter().copied().collect();
    let (go_tx, go_rx) = watch::channel(false);
    let (stage_tx, stage_rx) = watch::channel(storm::Stage::Hold);
    let sdps = Arc::new(Sdps::new());
    let mut negotiators = Vec::new();
    let mut streamers = Vec::new();
    let (mut connected, mut errors, mut same_node) = (0u64, 0u64, 0u64);
    let mut error_samples = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let layout = spec.layout;
    let mut pairs = futures_util::stream::iter(spec.first_pair..spec.first_pair + spec.pairs)
        .map(|p| {
            let ctx = ctx.clone();
            async move {
                let (a, b) = layout.nodes_of(p);
                let r = tokio::time::timeout(Duration::from_secs(60), connect_pair(&ctx, p, a, b))
                    .await
                    .unwrap_or(Err(LoadError::Timeout("connect, log in and join")));
                (p, a, b, r)
            }
        })
        .buffer_unordered(spec.concurrency);
    loop {
        tokio::select! {
            r = pairs.next() => match r {
                None => break,
                Some((p, na, nb, Ok((a, b)))) => {
                    connected += 2;
                    counters.open.fetch_add(2, Ordering::Relaxed);
                    if a.id().node() == b.id().node() {
                        same_node += 1;
                    }
                    let seats = [
                        Seat { pair: p, side: b'a', node: na },
                        Seat { pair: p, side: b'b', node: nb },
                    ];
                    if negotiate.contains(&p) {
                        negotiators.push(tokio::spawn(negotiator(
                            [a, b], seats, go_rx.clone(), sdps.clone(), ctx.clone(),
                        )));
                    } else if stream.contains(&p) {
                        streamers.push(tokio::spawn(storm::streamer(
                            [a, b], seats, ctx.clone(), stage_rx.clone(), sdps.clone(),
                        )));
                    } else {
                        let (ida, idb) = (a.id(), b.id());
                        let _ = hold_tx.send((a, seats[0], storm::Partner::new(idb)));
                        let _ = hold_tx.send((b, seats[1], storm::Partner::new(ida)));
                    }
                }
                Some((p, _, _, Err(e))) => {
                    errors += 2;
                    if error_samples.len() < 5 {
                        error_samples.push(format!("pair {p}: {e}"));
                    }
                }
            },
            _ = tick.tick() => emit(&Event::Progress { connected, errors }),
        }
    }
    drop(pairs);
    emit(&Event::Connected {
        connected,
        errors,
        same_node_pairs: same_node,
        elapsed_s: started.elapsed().as_secs_f64(),
        pongs: PONGS.load(Ordering::Relaxed),
        rss_kib: rss_kib(),
        error_samples,
    });

    let status = |counters: &Counters| Event::Status {
        open: counters.open.load(Ordering::Relaxed),
        dropped: counters.dropped.load(Ordering::Relaxed),
        pongs: PONGS.load(Ordering::Relaxed),
        rss_kib: rss_kib(),
    };
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    let mut storm_tick = tokio::time::interval(Duration::from_millis(250));
    let mut storming = false;
    loop {
        tokio::select! {
            c = commands.recv() => match c.as_deref() {
                Some("status") => emit(&status(counters)),
                Some("arm") => {
                    ctx.recovery.arm();
                    let _ = stage_tx.send(storm::Stage::Armed);
                    storming = true;
                    emit(&Event::Armed);
                }
                Some("settle") => {
                    storming = false;
                    let _ = stage_tx.send(storm::Stage::Settle);
                    let mut signals = storm::Signals::default();
                    for h in streamers.drain(..) {
                        match h.await {
                            Ok(streamed) => {
                                signals.add(&streamed.signals);
                                for end in streamed.ends.into_iter().flatten() {
                                    let _ = hold_tx.send(end);
                                }
                            }
                            Err(e) => signals.failures.push(format!("streamer panicked: {e}")),
                        }
                    }
                    emit(&Event::Stormed(Box::new(ctx.recovery.seen(
                        signals,
                        counters.open.load(Ordering::Relaxed),
                    ))));
                }
                Some("negotiate") => {
                    let _ = go_tx.send(true);
                    let mut outcomes = Vec::with_capacity(negotiators.len());
                    for h in negotiators.drain(..) {
                        match h.await {
                            Ok((outcome, ends)) => {
                                outcomes.push(outcome);
                                for end in ends {
                                    let _ = hold_tx.send(end);
                                }
                            }
                            Err(e) => outcomes.push(Outcome {
                                failure: Some(format!("negotiator panicked: {e}")),
                                lost: 4,
                                ..Outcome::default()
                            }),
                        }
                    }
                    emit(&Event::Negotiated { outcomes });
                }
                Some("exit") | None => return Ok(()),
                Some(_) => {}
            },
            _ = tick.tick() => emit(&status(counters)),
            _ = storm_tick.tick(), if storming => emit(&ctx.recovery.progress()),
        }
    }
}

/// Holds one connection, answering heartbeats. A client whose connection
/// ends once a storm is armed comes back ([`storm::come_back`]) and holds
/// again; before that, the drop is counted and it ends.
async fn hold(mut c: Lite, mut seat: Seat, mut partner: storm::Partner, ctx: Arc<Ctx>) {
    loop {
        while c.recv(|m| partner.note(&m, &ctx.recovery)).await.is_ok() {}
        if !ctx.lost() {
            return;
        }
        // Boxed: the way back is far larger than a held connection.
        let back = Box::pin(storm::come_back(ctx.clone(), seat)).await;
        (c, seat) = (back.lite, back.seat);
        if let Some(id) = back.partner {
            partner = storm::Partner::new(id);
        }
        for m in &back.rest {
            partner.note(m, &ctx.recovery);
        }
    }
}

/// Connects pair `p`'s two clients (A on node `a`, B on node `b`), logs
/// each in and joins both to the pair's room.
async fn connect_pair(ctx: &Ctx, p: u64, a: usize, b: usize) -> Result<(Lite, Lite), LoadError> {
    let (mut ca, mut cb) = tokio::try_join!(ctx.open(a), ctx.open(b))?;
    let room = ctx.room(p)?;
    let seat = |side| Seat {
        pair: p,
        side,
        node: 0,
    };
    let (na, nb) = (ctx.name(seat(b'a'))?, ctx.name(seat(b'b'))?);
    let (ida, idb) = (ca.id(), cb.id());
    let (ma, mb) = tokio::try_join!(
        log_in_and_join(&mut ca, na, room.clone()),
        log_in_and_join(&mut cb, nb, room)
    )?;
    // Whoever joined second found the other in the room.
    if !ma.contains(&idb) && !mb.contains(&ida) {
        return Err(LoadError::Unexpected(format!(
            "pair {p}: neither member saw the other in the room"
        )));
    }
    Ok((ca, cb))
}

/// Login and Join in one message; the members the Joined listed.
async fn log_in_and_join(
    c: &mut Lite,
    name: UserName,
    room: RoomId,
) -> Result<Vec<PeerId>, LoadError> {
    c.send(&[
        Message::Login { name },
        Message::Join(Join {
            room,
            mode: RoomMode::Pair,
            capacity: None,
            display_name: String::new(),
        }),
    ])
    .await?;
    let mut logged_in = false;
    let mut members = None;
    c.until(|m| {
        match m {
            Message::LoginResult(r) => match r.error {
                None => logged_in = true,
                Some(e) => return Err(LoadError::Unexpected(format!("login: {e:?}"))),
            },
            Message::Joined(j) => {
                members = Some(j.members.iter().map(|m| m.peer_id).collect::<Vec<_>>())
            }
            Message::Error(e) => return Err(LoadError::Unexpected(format!("{e:?}"))),
            _ => {}
        }
        Ok(if logged_in { members.take() } else { None })
    })
    .await
}

const OFFER: &str = include_str!("../../../tests/data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("../../../tests/data/sdp/chrome-answer.sdp");

/// The SDPs, deflated as the clients send them.
struct Sdps {
    offer: Bytes,
    answer: Bytes,
}

impl Sdps {
    fn new() -> Sdps {
        Sdps {
            offer: sdp::deflate(OFFER.as_bytes()).into(),
            answer: sdp::deflate(ANSWER.as_bytes()).into(),
        }
    }
}

/// Whether an SDP that arrived is `want`.
fn same_sdp(got: &Sdp, want: &str) -> bool {
    match got {
        Sdp::Plain(b) => b.as_ref() == want.as_bytes(),
        Sdp::Deflated(b) => sdp::inflate(b, 1 << 20).is_ok_and(|s| s == want.as_bytes()),
    }
}

fn description(to: PeerId, sdp: &Bytes) -> SessionDescription {
    SessionDescription {
        peer: Address::Peer(to),
        sdp: Sdp::Deflated(sdp.clone()),
        room: None,
        app_data: String::new(),
    }
}

/// What arrived at each end of a negotiating pair.
#[derive(Default)]
struct Arrived {
    offer_at_b: u32,
    ice_at_b: u32,
    answer_at_a: u32,
    ice_at_a: u32,
    misrouted: u32,
    damaged: u32,
    errors: Vec<String>,
}

impl Arrived {
    fn complete(&self) -> bool {
        self.offer_at_b > 0 && self.ice_at_b > 0 && self.answer_at_a > 0 && self.ice_at_a > 0
    }

    fn counts(&self) -> [u32; 4] {
        [
            self.offer_at_b,
            self.ice_at_b,
            self.answer_at_a,
            self.ice_at_a,
        ]
    }
}

/// A negotiation's outcome, and its two clients to hold if they are
/// still connected.
type Negotiated = (Outcome, Vec<Held>);

/// Holds a chosen pair (answering heartbeats) until `go`, then negotiates.
async fn negotiator(
    [mut a, mut b]: [Lite; 2],
    seats: [Seat; 2],
    mut go: watch::Receiver<bool>,
    sdps: Arc<Sdps>,
    ctx: Arc<Ctx>,
) -> Negotiated {
    let failed = |why: String| {
        ctx.counters.open.fetch_sub(2, Ordering::Relaxed);
        ctx.counters.dropped.fetch_add(2, Ordering::Relaxed);
        (
            Outcome {
                lost: 4,
                failure: Some(why),
                ..Outcome::default()
            },
            Vec::new(),
        )
    };
    loop {
        tokio::select! {
            r = go.changed() => {
                if r.is_err() {
                    return failed("the worker ended before the negotiation".into());
                }
                if *go.borrow() {
                    break;
                }
            }
            r = a.recv(|_| {}) => if let Err(e) = r {
                return failed(format!("A dropped during the hold: {e}"));
            },
            r = b.recv(|_| {}) => if let Err(e) = r {
                return failed(format!("B dropped during the hold: {e}"));
            },
        }
    }
    match tokio::time::timeout(Duration::from_secs(30), negotiate(&mut a, &mut b, &sdps)).await {
        Ok(Ok(outcome)) => {
            let (ida, idb) = (a.id(), b.id());
            let a = (a, seats[0], storm::Partner::new(idb));
            (outcome, vec![a, (b, seats[1], storm::Partner::new(ida))])
        }
        Ok(Err(e)) => failed(format!("negotiation: {e}")),
        Err(_) => failed("negotiation: timed out".into()),
    }
}

/// One negotiation between A and B, with the checks.
async fn negotiate(a: &mut Lite, b: &mut Lite, sdps: &Sdps) -> Result<Outcome, LoadError> {
    let (ia, ib) = (a.id(), b.id());
    let arrived = std::sync::Mutex::new(Arrived::default());
    let answer_due = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    a.send(&[
        Message::Offer(description(ib, &sdps.offer)),
        ice_batch(ib, ia),
    ])
    .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut complete_at: Option<Duration> = None;
    let mut note_a = |m: Message| {
        let mut s = arrived.lock().expect("not poisoned");
        match m {
            Message::Answer(d) if d.peer == Address::Peer(ib) => {
                s.answer_at_a += 1;
                if !same_sdp(&d.sdp, ANSWER) {
                    s.damaged += 1;
                }
            }
            Message::Ice(i) if i.peer == Address::Peer(ib) => {
                s.ice_at_a += 1;
                if !i.end_of_candidates || i.candidates != candidates(ib) {
                    s.damaged += 1;
                }
            }
            Message::Offer(_) | Message::Answer(_) | Message::Ice(_) => s.misrouted += 1,
            Message::Error(e) => s.errors.push(format!("at A: {e:?}")),
            _ => {}
        }
    };
    let mut note_b = |m: Message| {
        let mut s = arrived.lock().expect("not poisoned");
        match m {
            Message::Offer(d) if d.peer == Address::Peer(ia) => {
                s.offer_at_b += 1;
                if !same_sdp(&d.sdp, OFFER) {
                    s.damaged += 1;
                }
                answer_due.store(true, Ordering::Relaxed);
            }
            Message::Ice(i) if i.peer == Address::Peer(ia) => {
                s.ice_at_b += 1;
                if !i.end_of_candidates || i.candidates != candidates(ia) {
                    s.damaged += 1;
                }
            }
            Message::Offer(_) | Message::Answer(_) | Message::Ice(_) => s.misrouted += 1,
            Message::Error(e) => s.errors.push(format!("at B: {e:?}")),
            _ => {}
        }
    };
    loop {
        // Half a second past completion, for duplicates.
        let end = match complete_at {
            Some(t) => tokio::time::Instant::from_std(t0 + t + Duration::from_millis(500)),
            None => deadline,
        };
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            r = a.recv(&mut note_a) => r?,
            r = b.recv(&mut note_b) => r?,
        }
        if answer_due.swap(false, Ordering::Relaxed) {
            b.send(&[
                Message::Answer(description(ia, &sdps.answer)),
                ice_batch(ia, ib),
            ])
            .await?;
        }
        if complete_at.is_none() && arrived.lock().expect("not poisoned").complete() {
            complete_at = Some(t0.elapsed());
        }
    }
    let s = arrived.into_inner().expect("not poisoned");
    let counts = s.counts();
    let lost = counts.iter().filter(|&&c| c == 0).count() as u32;
    let duplicates = counts.iter().map(|&c| c.saturating_sub(1)).sum();
    let ok =
        lost == 0 && duplicates == 0 && s.misrouted == 0 && s.damaged == 0 && s.errors.is_empty();
    let failure = (!ok).then(|| {
        format!(
            "offer/ice at B {}/{}, answer/ice at A {}/{}, misrouted {}, damaged {}, errors {:?}",
            counts[0], counts[1], counts[2], counts[3], s.misrouted, s.damaged, s.errors
        )
    });
    Ok(Outcome {
        ok,
        time_us: complete_at.map(|t| t.as_micros() as u64),
        lost,
        duplicates,
        misrouted: s.misrouted,
        failure,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choose_gives_distinct_pairs_in_range() {
        let all = |_| true;
        let c = choose(1000, 100, 7, &all);
        assert_eq!(c.len(), 100);
        assert!(c.windows(2).all(|w| w[0] < w[1]));
        assert!(c.iter().all(|&p| p < 1000));
        assert_eq!(choose(10, 50, 7, &all).len(), 10);
        assert_eq!(choose(1000, 100, 7, &all), c, "a seed repeats its choice");
        let odd = choose(1000, 600, 7, &|p| p % 2 == 1);
        assert_eq!(odd.len(), 500, "no more than are eligible");
        assert!(odd.iter().all(|p| p % 2 == 1));
    }

    #[test]
    fn a_storm_layout_puts_the_heavy_pairs_on_node_0_and_spreads_the_rest() {
        let layout = Layout {
            nodes: 5,
            pairs: 27_500,
            heavy: 19_000,
        };
        let mut clients = [0u64; 5];
        let mut heavy = 0;
        for p in 0..layout.pairs {
            let (a, b) = layout.nodes_of(p);
            assert_ne!(a, b, "pair {p} spans two nodes");
            assert_eq!(layout.is_heavy(p), a == 0, "pair {p}");
            assert_ne!(b, 0, "only member A is ever on node 0");
            heavy += u64::from(layout.is_heavy(p));
            clients[a] += 1;
            clients[b] += 1;
        }
        assert_eq!(heavy, 19_000);
        assert_eq!(clients[0], 19_000);
        // 55,000 clients: 19,000 on node 0, the rest evenly on the others.
        assert!(
            clients[1..].iter().all(|&c| c.abs_diff(9_000) <= 2),
            "{clients:?}"
        );
        // Without a storm, the plain fleet's layout.
        let plain = Layout { heavy: 0, ..layout };
        assert_eq!(plain.nodes_of(7), (2, 3));
        assert_eq!(plain.nodes_of(9), (4, 0));
    }

    #[test]
    fn nodes_must_be_loopback_websocket_urls() {
        let (addr, path) = parse_node("ws://127.0.0.1:8081/ws").unwrap();
        assert_eq!(addr.port(), 8081);
        assert_eq!(path, "/ws");
        assert!(parse_node("ws://192.0.2.1:80/ws").is_err());
        assert!(parse_node("http://127.0.0.1:80/ws").is_err());
    }
}
