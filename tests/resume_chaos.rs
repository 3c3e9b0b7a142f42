//! Chaos for session resume (docs/PROTOCOL.md, section 11a; issue #11,
//! item 8): hundreds of `Client` pairs negotiate over and over through a
//! proxy that resets random connections (some just as the server's Welcome
//! is on its way), against the real binary. Every signal must arrive
//! exactly once, in order, at the right peer; no one may see anyone leave
//! or join; the server's memory stays bounded. Beside it, on a server with
//! a short grace, a few clients are kept away past it on purpose: their
//! partners see exactly one `PeerLeft{TIMED_OUT}`, they start fresh
//! (`EXPIRED`), rejoin, and the calls go on.
//!
//! The run is drawn from a seed, printed at the start; `CHAOS_SEED=<seed>`
//! draws the same choices again (which connection is cut, the pauses, the
//! candidate counts), though not the same timing.

mod common;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child::{Server, LIFTED};
use common::proxy::Proxy;
use common::redis::Redis;
use common::room;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchboard::client::{Client, ClientConfig, Event};
use switchboard::protocol::{Address, IceCandidate, LeaveReason, PeerId, ResumeRefusal, RoomMode};
use tokio::task::JoinSet;

/// Pairs under random cuts, on the server with a long grace.
const PAIRS: usize = 200;
/// Rounds of negotiation every pair completes, at least; they go on until
/// the cutter is done.
const MIN_ROUNDS: u32 = 6;
/// A pair's pause between negotiations, drawn from this range: a pace that
/// leaves the two cores some room (flat out, timers run late and the cuts
/// with them).
const PAUSE_MS: std::ops::RangeInclusive<u64> = 500..=1500;
/// Connections the cutter resets, one at a time...
const CUTS: usize = 400;
/// ...after a pause drawn from 0 to twice this...
const CUT_EVERY: Duration = Duration::from_millis(20);
/// ...and before one cut in this many, it also dooms the next connection
/// to lose the server's Welcome (a resume answered, never heard).
const WELCOME_EVERY: usize = 10;
/// Pairs of which one side is kept away past the short grace.
const EXPIRY_PAIRS: usize = 4;
/// The short grace of the second server, in milliseconds.
const SHORT_GRACE_MS: u64 = 500;
/// Longest wait for any one event.
const EVENT_WAIT: Duration = Duration::from_secs(20);
/// Longest the whole test may take.
const TEST_LIMIT: Duration = Duration::from_secs(150);
/// The chaos server's peak resident memory, at most. A debug server with
/// these 400 sessions peaks at about 30 MiB.
const PEAK_BOUND_KIB: u64 = 128 * 1024;

const OFFER: &str = include_str!("data/sdp/chrome-offer-audio.sdp");
const ANSWER: &str = include_str!("data/sdp/chrome-answer-audio.sdp");

fn config() -> ClientConfig {
    ClientConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

/// One signal of a stream, as sent and as expected in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signal {
    Sdp { offer: bool, seq: u32 },
    Candidate { seq: u32 },
    End,
    HangUp,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Signal::Sdp { offer: true, seq } => write!(f, "offer #{seq}"),
            Signal::Sdp { offer: false, seq } => write!(f, "answer #{seq}"),
            Signal::Candidate { seq } => write!(f, "candidate #{seq}"),
            Signal::End => f.write_str("end-of-candidates"),
            Signal::HangUp => f.write_str("hang-up"),
        }
    }
}

/// One direction of a pair's signaling: what the sender sent that the
/// receiver has not had yet, in order.
#[derive(Default)]
struct Stream {
    /// The sender's last sequence number.
    seq: u32,
    pending: VecDeque<Signal>,
    delivered: u64,
}

const SIDES: [&str; 2] = ["A", "B"];
const STREAMS: [&str; 2] = ["A→B", "B→A"];

struct Side {
    client: Client,
    id: PeerId,
    /// Between Disconnected and Resumed.
    away: bool,
    disconnects: u32,
    resumes: u32,
}

/// A pair of clients in a pair room, and the checks on what they see.
struct Pair {
    index: usize,
    room: String,
    sides: [Side; 2],
    /// `streams[s]`: sent by side `s`, received by the other.
    streams: [Stream; 2],
    rng: StdRng,
    round: u32,
}

#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    signals: u64,
    rounds: u64,
    disconnects: u64,
    resumes: u64,
}

impl Pair {
    /// Connects both sides (A through `url_a`, B through `url_b`) and joins
    /// them to their pair room; every event of the joins read.
    async fn setup(
        index: usize,
        tag: &str,
        url_a: &str,
        url_b: &str,
        seed: u64,
    ) -> Result<Pair, String> {
        let name = format!("{tag}-{index}");
        let connect = |url: String, side: &'static str| async move {
            match tokio::time::timeout(EVENT_WAIT, Client::connect(&url, config())).await {
                Ok(Ok(c)) => Ok(c),
                Ok(Err(e)) => Err(format!("{side}: connect failed: {e}")),
                Err(_) => Err(format!("{side}: connect timed out")),
            }
        };
        let (a, b) = tokio::join!(
            connect(url_a.to_owned(), "A"),
            connect(url_b.to_owned(), "B")
        );
        let (a, b) = (
            a.map_err(|e| format!("pair {index}: {e}"))?,
            b.map_err(|e| format!("pair {index}: {e}"))?,
        );
        let side = |client: Client| Side {
            id: client.peer_id(),
            client,
            away: false,
            disconnects: 0,
            resumes: 0,
        };
        let mut pair = Pair {
            index,
            room: name,
            sides: [side(a), side(b)],
            streams: Default::default(),
            rng: StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            round: 0,
        };
        let r = room(&pair.room);
        pair.sides[0]
            .client
            .join(r.clone(), RoomMode::Pair)
            .await
            .map_err(|e| pair.fail(&format!("A: join: {e}")))?;
        match pair.side_event(0).await? {
            Event::Joined(j) if j.room == r && j.members.is_empty() => {}
            other => {
                return Err(pair.fail(&format!(
                    "A: expected Joined of an empty room, got {other:?}"
                )))
            }
        }
        pair.sides[1]
            .client
            .join(r.clone(), RoomMode::Pair)
            .await
            .map_err(|e| pair.fail(&format!("B: join: {e}")))?;
        let a_id = pair.sides[0].id;
        match pair.side_event(1).await? {
            Event::Joined(j) if j.room == r && j.members.iter().map(|m| m.peer_id).eq([a_id]) => {}
            other => {
                return Err(pair.fail(&format!(
                    "B: expected Joined with A ({a_id:?}) in, got {other:?}"
                )))
            }
        }
        let b_id = pair.sides[1].id;
        match pair.side_event(0).await? {
            Event::PeerJoined(p) if p.member.peer_id == b_id => {}
            other => {
                return Err(pair.fail(&format!(
                    "A: expected PeerJoined of B ({b_id:?}), got {other:?}"
                )))
            }
        }
        Ok(pair)
    }

    /// A failure message naming the pair, its round and both streams.
    fn fail(&self, what: &str) -> String {
        let stream = |s: usize| {
            let st = &self.streams[s];
            let pending: Vec<String> = st.pending.iter().map(ToString::to_string).collect();
            format!(
                "{} ({:?} → {:?}): {} delivered, still expected [{}]",
                STREAMS[s],
                self.sides[s].id,
                self.sides[1 - s].id,
                st.delivered,
                pending.join(", ")
            )
        };
        let side = |s: usize| {
            let sd = &self.sides[s];
            format!(
                "{}: away {}, {} disconnects, {} resumes",
                SIDES[s], sd.away, sd.disconnects, sd.resumes
            )
        };
        format!(
            "pair {} (room {}), round {}: {what}\n    {}\n    {}\n    {}\n    {}",
            self.index,
            self.room,
            self.round,
            stream(0),
            stream(1),
            side(0),
            side(1)
        )
    }

    /// The next event of side `s` alone, within `EVENT_WAIT`.
    async fn side_event(&mut self, s: usize) -> Result<Event, String> {
        match tokio::time::timeout(EVENT_WAIT, self.sides[s].client.next_event()).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(self.fail(&format!("{}: the session ended", SIDES[s]))),
            Err(_) => Err(self.fail(&format!("{}: no event for {EVENT_WAIT:?}", SIDES[s]))),
        }
    }

    /// The next event of either side, within `EVENT_WAIT`.
    async fn event(&mut self, waiting_for: &str) -> Result<(usize, Event), String> {
        let [a, b] = &mut self.sides;
        let got = tokio::time::timeout(EVENT_WAIT, async {
            tokio::select! {
                e = a.client.next_event() => (0, e),
                e = b.client.next_event() => (1, e),
            }
        })
        .await;
        match got {
            Ok((s, Some(e))) => Ok((s, e)),
            Ok((s, None)) => Err(self.fail(&format!(
                "{}: the session ended (waiting for {waiting_for})",
                SIDES[s]
            ))),
            Err(_) => Err(self.fail(&format!(
                "no event for {EVENT_WAIT:?} (waiting for {waiting_for})"
            ))),
        }
    }

    /// Handles events until `done` holds.
    async fn until(
        &mut self,
        waiting_for: &str,
        done: impl Fn(&Pair) -> bool,
    ) -> Result<(), String> {
        while !done(self) {
            let (s, e) = self.event(waiting_for).await?;
            self.handle(s, e)?;
        }
        Ok(())
    }

    /// Checks one event of side `r` against what its partner sent.
    fn handle(&mut self, r: usize, e: Event) -> Result<(), String> {
        let s = 1 - r;
        let partner = Address::Peer(self.sides[s].id);
        let offer = matches!(e, Event::Offer { .. });
        match e {
            Event::Offer { from, sdp, .. } | Event::Answer { from, sdp, .. } if from == partner => {
                let base = if offer { OFFER } else { ANSWER };
                let seq = self
                    .tag(s, sdp_tag(&sdp, base))
                    .map_err(|w| self.fail(&format!("{}: {w}", SIDES[r])))?;
                self.expect(s, Signal::Sdp { offer, seq })
            }
            Event::Ice {
                from,
                candidates,
                end_of_candidates,
            } if from == partner => {
                if candidates.is_empty() && !end_of_candidates {
                    return Err(
                        self.fail(&format!("{}: an empty ICE batch without the end", SIDES[r]))
                    );
                }
                for c in &candidates {
                    let seq = self
                        .tag(s, candidate_tag(c))
                        .map_err(|w| self.fail(&format!("{}: {w}", SIDES[r])))?;
                    if *c != candidate(self.index, s, seq) {
                        return Err(self.fail(&format!("{}: a mangled candidate {c:?}", SIDES[r])));
                    }
                    self.expect(s, Signal::Candidate { seq })?;
                }
                if end_of_candidates {
                    self.expect(s, Signal::End)?;
                }
                Ok(())
            }
            Event::HangUp { from } if from == partner => self.expect(s, Signal::HangUp),
            Event::Disconnected { .. } => {
                let side = &mut self.sides[r];
                side.away = true;
                side.disconnects += 1;
                Ok(())
            }
            Event::Resumed { peer_id } if self.sides[r].away && peer_id == self.sides[r].id => {
                let side = &mut self.sides[r];
                side.away = false;
                side.resumes += 1;
                Ok(())
            }
            other => Err(self.fail(&format!("{}: unexpected event {other:?}", SIDES[r]))),
        }
    }

    /// The sequence number of a received tag, checked to belong to this
    /// pair and stream `s`.
    fn tag(&self, s: usize, tag: Option<(usize, usize, u32)>) -> Result<u32, String> {
        match tag {
            Some((pair, stream, seq)) if pair == self.index && stream == s => Ok(seq),
            Some((pair, stream, seq)) => Err(format!(
                "got a signal of pair {pair}, stream {}, #{seq}: meant for someone else",
                STREAMS.get(stream).unwrap_or(&"?")
            )),
            None => Err("got a signal without a chaos tag, or mangled".into()),
        }
    }

    /// `got` arrived on stream `s`: it must be the next one sent.
    fn expect(&mut self, s: usize, got: Signal) -> Result<(), String> {
        match self.streams[s].pending.front() {
            Some(want) if *want == got => {
                self.streams[s].pending.pop_front();
                self.streams[s].delivered += 1;
                Ok(())
            }
            Some(want) => Err(self.fail(&format!(
                "stream {}: expected {want}, got {got} (a loss, a duplicate or a reordering)",
                STREAMS[s]
            ))),
            None => Err(self.fail(&format!(
                "stream {}: expected nothing, got {got} (a duplicate)",
                STREAMS[s]
            ))),
        }
    }

    fn to(&self, s: usize) -> Address {
        Address::Peer(self.sides[1 - s].id)
    }

    async fn send_sdp(&mut self, s: usize, offer: bool) -> Result<(), String> {
        let st = &mut self.streams[s];
        st.seq += 1;
        let seq = st.seq;
        st.pending.push_back(Signal::Sdp { offer, seq });
        let base = if offer { OFFER } else { ANSWER };
        let sdp = format!("{base}a=x-chaos:{}:{s}:{seq}\r\n", self.index);
        let (to, client) = (self.to(s), &self.sides[s].client);
        let sent = if offer {
            client.send_offer(to, sdp).await
        } else {
            client.send_answer(to, sdp).await
        };
        sent.map_err(|e| self.fail(&format!("{}: send: {e}", SIDES[s])))
    }

    /// Trickles 2 to 6 candidates (some batched by the client's window,
    /// some flushed by the end), then the end of candidates.
    async fn send_candidates(&mut self, s: usize) -> Result<(), String> {
        let count = self.rng.random_range(2..=6);
        for _ in 0..count {
            let st = &mut self.streams[s];
            st.seq += 1;
            let seq = st.seq;
            st.pending.push_back(Signal::Candidate { seq });
            let c = candidate(self.index, s, seq);
            let to = self.to(s);
            self.sides[s]
                .client
                .send_ice(to, c)
                .await
                .map_err(|e| self.fail(&format!("{}: send: {e}", SIDES[s])))?;
            if self.rng.random_bool(0.3) {
                let pause = self.rng.random_range(0..30);
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
        self.streams[s].pending.push_back(Signal::End);
        let to = self.to(s);
        self.sides[s]
            .client
            .end_of_candidates(to)
            .await
            .map_err(|e| self.fail(&format!("{}: send: {e}", SIDES[s])))
    }

    /// One complete negotiation: the initiator (A and B in turn) offers
    /// and trickles; the other answers when the offer is in, and trickles.
    async fn negotiate(&mut self) -> Result<(), String> {
        let init = (self.round % 2) as usize;
        let resp = 1 - init;
        self.send_sdp(init, true).await?;
        self.send_candidates(init).await?;
        self.until("the offer", |p| {
            !matches!(p.streams[init].pending.front(), Some(Signal::Sdp { .. }))
        })
        .await?;
        self.send_sdp(resp, false).await?;
        self.send_candidates(resp).await?;
        self.until("the end of the negotiation", Pair::quiet)
            .await?;
        self.round += 1;
        Ok(())
    }

    /// Nothing sent is still on its way.
    fn quiet(&self) -> bool {
        self.streams.iter().all(|s| s.pending.is_empty())
    }

    /// The next initiator hangs up instead of offering.
    async fn hang_up(&mut self) -> Result<(), String> {
        let s = (self.round % 2) as usize;
        self.streams[s].pending.push_back(Signal::HangUp);
        let to = self.to(s);
        self.sides[s]
            .client
            .hang_up(to)
            .await
            .map_err(|e| self.fail(&format!("{}: send: {e}", SIDES[s])))?;
        self.until("the hang-up", Pair::quiet).await
    }

    /// After the chaos: both sides back (resumed), then nothing more for a
    /// while, and each drop was resumed under the same peer id.
    async fn settle(&mut self) -> Result<(), String> {
        self.until("the last resumes", |p| p.sides.iter().all(|s| !s.away))
            .await?;
        let end = tokio::time::Instant::now() + Duration::from_millis(300);
        loop {
            let [a, b] = &mut self.sides;
            let got = tokio::time::timeout_at(end, async {
                tokio::select! {
                    e = a.client.next_event() => (0, e),
                    e = b.client.next_event() => (1, e),
                }
            })
            .await;
            match got {
                Err(_) => break,
                Ok((s, Some(e))) => self.handle(s, e)?,
                Ok((s, None)) => return Err(self.fail(&format!("{}: the session ended", SIDES[s]))),
            }
        }
        if !self.quiet() || self.sides.iter().any(|s| s.away) {
            return Err(self.fail("not settled"));
        }
        for (s, side) in self.sides.iter().enumerate() {
            if side.client.peer_id() != side.id {
                return Err(self.fail(&format!(
                    "{}: peer id changed to {:?}",
                    SIDES[s],
                    side.client.peer_id()
                )));
            }
            if side.disconnects != side.resumes {
                return Err(self.fail(&format!("{}: drops and resumes differ", SIDES[s])));
            }
        }
        Ok(())
    }

    fn totals(&self) -> Totals {
        Totals {
            signals: self.streams.iter().map(|s| s.delivered).sum(),
            rounds: u64::from(self.round),
            disconnects: self.sides.iter().map(|s| u64::from(s.disconnects)).sum(),
            resumes: self.sides.iter().map(|s| u64::from(s.resumes)).sum(),
        }
    }

    /// Keeps side A away (its proxy refusing) past the grace: B sees it
    /// leave as timed out, once; A starts fresh (`EXPIRED`) under a new
    /// peer id and rejoins; B sees it join.
    async fn expire_a(&mut self, proxy: &Proxy) -> Result<(), String> {
        let old = self.sides[0].id;
        proxy.cut();
        let mut left = 0;
        while !(self.sides[0].away && left == 1) {
            match self.event("A's drop and B's PeerLeft").await? {
                (1, Event::PeerLeft(p)) => {
                    if (p.peer_id, p.reason, &p.room)
                        != (old, LeaveReason::TimedOut, &room(&self.room))
                    {
                        return Err(self.fail(&format!(
                            "B: expected PeerLeft of A ({old:?}) TIMED_OUT, got {p:?}"
                        )));
                    }
                    left += 1;
                }
                (s, e) => self.handle(s, e)?,
            }
        }
        // Past the grace, and then some: A comes back to an expired session.
        tokio::time::sleep(Duration::from_millis(100)).await;
        proxy.restore();
        let (mut fresh, mut new_id, mut joined, mut seen_join) = (false, None, false, None);
        while !(joined && seen_join.is_some()) {
            match self.event("A's fresh start and B's PeerJoined").await? {
                (0, Event::StartedFresh { refusal })
                    if !fresh && refusal == Some(ResumeRefusal::Expired) =>
                {
                    fresh = true;
                }
                (0, Event::Reconnected { peer_id }) if fresh && new_id.is_none() => {
                    if peer_id == old {
                        return Err(self.fail("A: a fresh session under the old peer id"));
                    }
                    new_id = Some(peer_id);
                }
                (0, Event::Joined(j)) if new_id.is_some() && !joined => {
                    let b = self.sides[1].id;
                    if j.room != room(&self.room) || !j.members.iter().map(|m| m.peer_id).eq([b]) {
                        return Err(self.fail(&format!(
                            "A: expected Joined with B ({b:?}) alone in, got {j:?}"
                        )));
                    }
                    joined = true;
                }
                (1, Event::PeerJoined(p)) if seen_join.is_none() => {
                    seen_join = Some(p.member.peer_id)
                }
                (1, Event::PeerLeft(p)) => {
                    return Err(self.fail(&format!("B: a second PeerLeft: {p:?}")));
                }
                (s, e) => self.handle(s, e)?,
            }
        }
        let new_id = new_id.expect("reconnected");
        if seen_join != Some(new_id) {
            return Err(self.fail(&format!(
                "B: PeerJoined of {seen_join:?}, A is {new_id:?} now"
            )));
        }
        let a = &mut self.sides[0];
        a.id = new_id;
        a.away = false;
        Ok(())
    }
}

fn candidate(pair: usize, stream: usize, seq: u32) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{seq} 1 udp 2122260223 192.0.2.7 {} typ host",
            50000 + seq % 10000
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some(format!("p{pair}s{stream}n{seq}")),
    }
}

/// The (pair, stream, seq) a candidate carries.
fn candidate_tag(c: &IceCandidate) -> Option<(usize, usize, u32)> {
    let u = c.username_fragment.as_deref()?.strip_prefix('p')?;
    let (pair, rest) = u.split_once('s')?;
    let (stream, seq) = rest.split_once('n')?;
    Some((pair.parse().ok()?, stream.parse().ok()?, seq.parse().ok()?))
}

/// The (pair, stream, seq) an SDP carries on the line after `base`, where
/// `send_sdp` put it (`None` if anything else differs).
fn sdp_tag(sdp: &str, base: &str) -> Option<(usize, usize, u32)> {
    let tag = sdp
        .strip_prefix(base)?
        .strip_prefix("a=x-chaos:")?
        .strip_suffix("\r\n")?;
    let mut parts = tag.split(':');
    let tag = (
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    );
    parts.next().is_none().then_some(tag)
}

fn seed() -> u64 {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .map(|s| s.parse().expect("CHAOS_SEED: a u64"))
        .unwrap_or_else(rand::random);
    println!("resume chaos seed: {seed} (run again with CHAOS_SEED={seed})");
    seed
}

/// Collects the pairs (or the failures) of a set of pair tasks.
async fn gather(mut tasks: JoinSet<Result<Pair, String>>, what: &str, seed: u64) -> Vec<Pair> {
    let mut pairs = Vec::new();
    let mut failures = Vec::new();
    while let Some(done) = tasks.join_next().await {
        match done.expect("a pair task panicked") {
            Ok(p) => pairs.push(p),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        let n = failures.len();
        failures.truncate(5);
        panic!(
            "{what} (seed {seed}): {n} pairs failed; the first:\n{}",
            failures.join("\n")
        );
    }
    pairs.sort_by_key(|p| p.index);
    pairs
}

/// What the chaos phase did.
struct Chaos {
    totals: Totals,
    /// Connections reset one by one.
    cuts: u64,
    /// Connections made after the joins.
    reconnects: u64,
    /// The server's peak resident memory, KiB.
    peak: u64,
}

/// The chaos: `PAIRS` pairs through a proxy that cuts random connections.
async fn chaos(seed: u64) -> Chaos {
    let args = [LIFTED, &["--resume-grace-ms", "30000"][..]].concat();
    let mut server = Server::start(&args);
    let proxy = Proxy::start(server.addr).await;
    let chaos = under_cuts(&proxy, PAIRS, CUTS, "chaos", seed).await;
    server.assert_alive();
    let peak = server.peak_kib();
    assert!(
        peak < PEAK_BOUND_KIB,
        "the chaos server's resident memory peaked at {peak} KiB (bound {PEAK_BOUND_KIB} KiB; \
         seed {seed})"
    );
    Chaos { peak, ..chaos }
}

/// `pairs` pairs negotiating through `proxy` while it makes `cuts` cuts.
async fn under_cuts(proxy: &Proxy, pairs: usize, cuts: usize, tag: &str, seed: u64) -> Chaos {
    let url = proxy.url();
    let mut tasks = JoinSet::new();
    for i in 0..pairs {
        let (url, tag) = (url.clone(), tag.to_owned());
        tasks.spawn(async move { Pair::setup(i, &tag, &url, &url, seed).await });
    }
    let pairs = gather(tasks, "joining", seed).await;
    let connected = proxy.stats().accepted;

    let stop = Arc::new(AtomicBool::new(false));
    let cutter = proxy.cut_randomly(StdRng::seed_from_u64(seed), CUT_EVERY, cuts, WELCOME_EVERY);
    let mut tasks = JoinSet::new();
    for mut pair in pairs {
        let stop = stop.clone();
        tasks.spawn(async move {
            while pair.round < MIN_ROUNDS || !stop.load(Ordering::SeqCst) {
                let pause = pair.rng.random_range(PAUSE_MS);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                pair.negotiate().await?;
            }
            pair.hang_up().await?;
            Ok(pair)
        });
    }
    cutter.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    let pairs = gather(tasks, "negotiating under cuts", seed).await;
    let stats = proxy.stats();

    let mut tasks = JoinSet::new();
    for mut pair in pairs {
        tasks.spawn(async move { pair.settle().await.map(|()| pair) });
    }
    let pairs = gather(tasks, "settling", seed).await;
    let mut totals = Totals::default();
    for p in &pairs {
        let t = p.totals();
        totals.signals += t.signals;
        totals.rounds += t.rounds;
        totals.disconnects += t.disconnects;
        totals.resumes += t.resumes;
    }
    Chaos {
        totals,
        cuts: stats.cuts,
        reconnects: stats.accepted - connected,
        peak: 0,
    }
}

/// A few pairs on a server with a short grace, one side of each kept away
/// past it.
async fn expiry(seed: u64) -> Totals {
    let ms = SHORT_GRACE_MS.to_string();
    let args = [LIFTED, &["--resume-grace-ms", &ms][..]].concat();
    let server = Server::start(&args);
    let mut tasks = JoinSet::new();
    for i in 0..EXPIRY_PAIRS {
        let (url, addr) = (server.url(), server.addr);
        tasks.spawn(async move {
            let proxy = Proxy::start(addr).await;
            let mut pair = Pair::setup(i, "expiry", &proxy.url(), &url, seed).await?;
            for _ in 0..2 {
                pair.negotiate().await?;
            }
            pair.expire_a(&proxy).await?;
            for _ in 0..2 {
                pair.negotiate().await?;
            }
            pair.hang_up().await?;
            Ok(pair)
        });
    }
    let pairs = gather(tasks, "expiry", seed).await;
    let mut totals = Totals::default();
    for p in &pairs {
        let t = p.totals();
        totals.signals += t.signals;
        totals.rounds += t.rounds;
    }
    drop(pairs);
    drop(server);
    totals
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_survive_random_cuts_exactly_once_in_order() {
    let seed = seed();
    let started = Instant::now();
    let run = async { tokio::join!(chaos(seed), expiry(seed)) };
    let (chaos, expiry) = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the chaos did not end within {TEST_LIMIT:?} (seed {seed})"));
    let Chaos {
        totals: chaos,
        cuts,
        reconnects,
        peak,
    } = chaos;
    let signals = chaos.signals + expiry.signals;
    println!(
        "resume chaos (seed {seed}): {} pairs, {} negotiations, {} signals delivered exactly once \
         in order; {cuts} connections cut, {reconnects} reconnects, {} drops seen and resumed; \
         {} expiry pairs ({} signals); server peak {peak} KiB; {:.1} s",
        PAIRS + EXPIRY_PAIRS,
        chaos.rounds + expiry.rounds,
        signals,
        chaos.disconnects,
        EXPIRY_PAIRS,
        expiry.signals,
        started.elapsed().as_secs_f64()
    );
    assert!(signals >= 10_000, "only {signals} signals (seed {seed})");
    assert!(cuts >= CUTS as u64 / 2, "only {cuts} cuts (seed {seed})");
}

/// The Welcome of a resume is lost on its way (the server answered, took
/// the session over and gave it a new token; the client never heard):
/// the client tries again with the token it has, and must get its session
/// back, not `UNKNOWN_TOKEN` (which would leave the old session waiting
/// out its grace in the room, and the partner's signals with it).
#[tokio::test]
async fn a_resume_whose_welcome_was_lost_resumes_on_the_next_try() {
    let args = [LIFTED, &["--resume-grace-ms", "10000"][..]].concat();
    let server = Server::start(&args);
    let proxy = Proxy::start(server.addr).await;
    let ok = |r: Result<(), String>| r.unwrap_or_else(|e| panic!("{e}"));
    let mut pair = Pair::setup(0, "lost-welcome", &proxy.url(), &server.url(), 0)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    ok(pair.negotiate().await);
    proxy.cut();
    ok(pair.until("A's drop", |p| p.sides[0].away).await);
    proxy.lose_first_message(1);
    proxy.restore();
    ok(pair.until("A's resume", |p| !p.sides[0].away).await);
    assert_eq!(proxy.stats().cuts, 1, "one Welcome lost");
    ok(pair.negotiate().await);
    ok(pair.hang_up().await);
    ok(pair.settle().await);
}

/// Pairs under random cuts in a cluster of three nodes.
const CLUSTER_PAIRS: usize = 150;
/// Connections the cutter resets in the cluster.
const CLUSTER_CUTS: usize = 400;

/// The chaos in a cluster of three nodes on one Redis (issue #11, item 8):
/// the proxy sends every new connection to the next node, so nearly every
/// reconnection lands on another node than the session's, which must move
/// the session there (docs/PROTOCOL.md, section 11a, "Across nodes") with
/// every signal in flight forwarded: each arrives exactly once, in order;
/// nobody sees anyone leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_survive_random_cuts_and_moves_between_three_nodes() {
    let seed = seed();
    let started = Instant::now();
    let redis = Redis::start();
    let args = [LIFTED, &["--resume-grace-ms", "30000"][..]].concat();
    let mut nodes = redis.nodes(&format!("chaos-{}", std::process::id()), 3, &args);
    let proxy = Proxy::start_many(nodes.iter().map(|n| n.addr).collect()).await;
    let run = under_cuts(&proxy, CLUSTER_PAIRS, CLUSTER_CUTS, "moving", seed);
    let chaos = tokio::time::timeout(TEST_LIMIT, run)
        .await
        .unwrap_or_else(|_| panic!("the chaos did not end within {TEST_LIMIT:?} (seed {seed})"));
    let mut moves = 0;
    for node in &mut nodes {
        node.assert_alive();
        moves += node.log_text().matches("session moved here").count();
        let peak = node.peak_kib();
        assert!(
            peak < PEAK_BOUND_KIB,
            "a node's resident memory peaked at {peak} KiB (bound {PEAK_BOUND_KIB} KiB; seed {seed})"
        );
    }
    let Chaos {
        totals,
        cuts,
        reconnects,
        ..
    } = chaos;
    println!(
        "resume chaos over three nodes (seed {seed}): {CLUSTER_PAIRS} pairs, {} negotiations, {} \
         signals delivered exactly once in order; {cuts} connections cut, {reconnects} \
         reconnects, {} drops seen and resumed, {moves} sessions moved between nodes; {:.1} s",
        totals.rounds,
        totals.signals,
        totals.disconnects,
        started.elapsed().as_secs_f64()
    );
    assert!(
        cuts >= CLUSTER_CUTS as u64 / 2,
        "only {cuts} cuts (seed {seed})"
    );
    assert!(
        totals.signals >= 10_000,
        "only {} signals (seed {seed})",
        totals.signals
    );
    assert!(
        moves as u64 >= cuts / 2,
        "only {moves} sessions moved for {cuts} cuts (seed {seed})"
    );
}
