//! The reconnect storm: a fleet run in which a node dies under its clients.
//!
//! After the hold the parent kills the first node (SIGKILL, by the process
//! id it is given) and every client that node held comes back as a real
//! client would: it sees its socket close, waits a backoff with jitter (the
//! client crate's [`backoff`]), connects to another node (round robin over
//! the others, from a place its pair number picks), says Hello, logs in
//! with its old name and joins its pair room again. Its old session cannot
//! be resumed (it died with its node), and its name stays taken until a
//! surviving node reaps the dead node's peers once its lease has run out:
//! a login before that is answered `NAME_TAKEN`, and the client tries
//! again on the same connection after the next backoff. Its partner, on a
//! surviving node, sees `PeerLeft` and then `PeerJoined`.
//!
//! Meanwhile [`Options::stream_pairs`] pairs stream signals both ways
//! (Offers and ICE batches numbered in `app_data`) to the peer id each
//! member last learned, from a second before the kill until everyone is
//! back, and account for each signal: delivered (once, intact), or told
//! undelivered (an `Error` naming its frame), or lost with the sender's
//! own connection (the one the kill cut, which the sender saw drop), or
//! else silently lost, which must not happen.
//!
//! The layout puts exactly [`Options::clients_on_killed`] clients on the
//! node that dies (see `Layout`): survivors must have room for them.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{
    description, next_event, same_sdp, take_event, Ctx, Event, Fleet, Held, Sdps, Seat,
    WorkerState, OFFER,
};
use crate::client::{backoff, ClientConfig};
use crate::handshake::candidates;
use crate::lite::Lite;
use crate::protocol::{
    Address, ErrorCode, IceCandidates, Join, Message, PeerId, RoomMode, SessionDescription,
};
use crate::{Latency, LoadError};

/// How long streaming pairs keep listening once they stopped sending, for
/// the fate of the signals still in flight (an `UNAVAILABLE` answer can
/// take the nodes' Redis timeout).
const LINGER: Duration = Duration::from_secs(5);

/// Silently lost signals described one by one in a report (the first
/// half of them and the last).
const LOST_SAMPLES: usize = 10;

/// The longest wait for a connection or an answer on the way back.
const ANSWER_LIMIT: Duration = Duration::from_secs(20);

/// Options of a storm.
#[derive(Clone, Debug)]
pub struct Options {
    /// The process of the first node (`--nodes`' first URL): killed with
    /// SIGKILL after the hold.
    pub kill_pid: u32,
    /// Clients on the first node, each member A of a pair whose B is on
    /// another node.
    pub clients_on_killed: usize,
    /// Pairs (with A on the first node) that stream signals both ways
    /// through the kill.
    pub stream_pairs: usize,
    /// Time between two signals of each member of a streaming pair.
    pub signal_interval: Duration,
    /// The clients' first reconnect delay (the client crate's default).
    pub backoff_initial: Duration,
    /// Their longest reconnect delay (the client crate's default).
    pub backoff_max: Duration,
    /// Stop waiting for every client to be back after this long.
    pub timeout: Duration,
}

impl Options {
    /// A storm on node 0 (process `kill_pid`) with `clients_on_killed`
    /// clients there, the client crate's backoff, 100 streaming pairs
    /// signalling every 100 ms, and five minutes for everyone to be back.
    pub fn new(kill_pid: u32, clients_on_killed: usize) -> Options {
        let client = ClientConfig::default();
        Options {
            kill_pid,
            clients_on_killed,
            stream_pairs: 100,
            signal_interval: Duration::from_millis(100),
            backoff_initial: client.backoff_initial,
            backoff_max: client.backoff_max,
            timeout: Duration::from_secs(300),
        }
    }

    /// Checks the storm against the run; the pairs with a member on the
    /// node that dies.
    pub(super) fn check(&self, nodes: usize, pairs: u64) -> Result<u64, LoadError> {
        let heavy = self.clients_on_killed as u64;
        let why = if nodes < 3 {
            "a storm needs three nodes or more (pairs span two survivors)"
        } else if heavy == 0 || heavy > pairs {
            "the clients on the killed node must be between 1 and half the connections"
        } else if self.kill_pid == 0 {
            "the killed node's process id is missing"
        } else {
            return Ok(heavy);
        };
        Err(LoadError::Unexpected(why.into()))
    }

    pub(super) fn plan(&self) -> Plan {
        Plan {
            signal_interval_us: self.signal_interval.as_micros() as u64,
            backoff_initial_us: self.backoff_initial.as_micros() as u64,
            backoff_max_us: self.backoff_max.as_micros() as u64,
        }
    }
}

/// What a worker needs of the storm's options.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Plan {
    signal_interval_us: u64,
    backoff_initial_us: u64,
    backoff_max_us: u64,
}

impl Plan {
    /// The reconnect delays, as the client crate's [`ClientConfig`].
    pub(super) fn backoff(&self) -> ClientConfig {
        ClientConfig {
            backoff_initial: Duration::from_micros(self.backoff_initial_us),
            backoff_max: Duration::from_micros(self.backoff_max_us),
            ..ClientConfig::default()
        }
    }
}

/// Where a worker's streaming pairs are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    /// Holding: nothing is sent.
    Hold,
    /// The kill is coming: stream.
    Armed,
    /// Everyone is back: stop sending, listen a while, and account.
    Settle,
}

/// The steps on the way back, counted.
#[derive(Clone, Copy)]
enum Step {
    Connect,
    ConnectFailed,
    Login,
    NameTaken,
    LoginFailed,
    Join,
    JoinFailed,
}

/// The storm as one worker's clients live it (shared by its tasks).
#[derive(Default)]
pub(super) struct Recovery {
    armed: AtomicBool,
    down: AtomicU64,
    back: AtomicU64,
    steps: [AtomicU64; 7],
    /// What partners saw, by [`Saw`] (the fields of [`Partners`]).
    partners: [AtomicU64; 5],
    /// Partners whose partner is gone (seen leave, not back) now.
    absent: std::sync::atomic::AtomicI64,
    /// (noticed the drop, back in the room), µs since the epoch.
    times: Mutex<Vec<(u64, u64)>>,
    samples: Mutex<Vec<String>>,
}

impl Recovery {
    pub(super) fn arm(&self) {
        self.armed.store(true, Ordering::Relaxed);
    }

    pub(super) fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    fn count(&self, step: Step) {
        self.steps[step as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn failed(&self, step: Step, seat: Seat, why: String) {
        self.count(step);
        self.sample(seat, why);
    }

    fn sample(&self, seat: Seat, why: String) {
        let mut samples = self.samples.lock().expect("not poisoned");
        if samples.len() < 5 {
            samples.push(format!("pair {} {}: {why}", seat.pair, seat.side as char));
        }
    }

    pub(super) fn progress(&self) -> Event {
        Event::StormProgress {
            down: self.down.load(Ordering::Relaxed),
            back: self.back.load(Ordering::Relaxed),
            partners_back: self.partners[Saw::Back as usize].load(Ordering::Relaxed)
                + self.partners[Saw::BackBeforeLeave as usize].load(Ordering::Relaxed),
        }
    }

    /// What the worker reports after `settle`.
    pub(super) fn seen(&self, signals: Signals, open: u64) -> Seen {
        let step = |s: Step| self.steps[s as usize].load(Ordering::Relaxed);
        let partner = |i: Saw| self.partners[i as usize].load(Ordering::Relaxed);
        Seen {
            down: self.down.load(Ordering::Relaxed),
            back: self.back.load(Ordering::Relaxed),
            attempts: Attempts {
                connects: step(Step::Connect),
                connect_failures: step(Step::ConnectFailed),
                logins: step(Step::Login),
                names_taken: step(Step::NameTaken),
                login_failures: step(Step::LoginFailed),
                joins: step(Step::Join),
                join_failures: step(Step::JoinFailed),
            },
            partners: Partners {
                saw_left: partner(Saw::Left),
                saw_back: partner(Saw::Back),
                back_before_leave: partner(Saw::BackBeforeLeave),
                left_twice: partner(Saw::LeftTwice),
                stray_leaves: partner(Saw::StrayLeave),
                gone_at_the_end: self.absent.load(Ordering::Relaxed),
            },
            times: std::mem::take(&mut *self.times.lock().expect("not poisoned")),
            samples: self.samples.lock().expect("not poisoned").clone(),
            signals,
            open,
        }
    }
}

/// What a partner saw, counted.
#[derive(Clone, Copy)]
enum Saw {
    Left,
    Back,
    BackBeforeLeave,
    LeftTwice,
    StrayLeave,
}

/// What a held client knows of its partner: its id, and whether it saw
/// it leave (and not come back yet).
#[derive(Clone, Copy, Debug)]
pub(super) struct Partner {
    id: PeerId,
    left: bool,
}

impl Partner {
    pub(super) fn new(id: PeerId) -> Partner {
        Partner { id, left: false }
    }

    /// Notes room news. A PeerJoined of the id it knows, not gone, is not
    /// counted: the first member of a pair to join may read its partner's
    /// arrival only once it holds.
    pub(super) fn note(&mut self, m: &Message, r: &Recovery) {
        let seen = match m {
            Message::PeerLeft(l) if l.peer_id != self.id => Saw::StrayLeave,
            Message::PeerLeft(_) if self.left => Saw::LeftTwice,
            Message::PeerLeft(_) => {
                self.left = true;
                Saw::Left
            }
            Message::PeerJoined(j) => {
                let id = j.member.peer_id;
                let seen = if self.left {
                    Saw::Back
                } else if id != self.id {
                    Saw::BackBeforeLeave
                } else {
                    return;
                };
                *self = Partner::new(id);
                seen
            }
            _ => return,
        };
        r.partners[seen as usize].fetch_add(1, Ordering::Relaxed);
        match seen {
            Saw::Left => r.absent.fetch_add(1, Ordering::Relaxed),
            Saw::Back => r.absent.fetch_sub(1, Ordering::Relaxed),
            _ => 0,
        };
    }
}

/// Reconnect attempts and their failures, over all clients.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Attempts {
    /// Connections tried.
    pub connects: u64,
    /// Of those, refused or timed out.
    pub connect_failures: u64,
    /// Logins sent.
    pub logins: u64,
    /// Answered NAME_TAKEN (the old session's name, not yet reaped).
    pub names_taken: u64,
    /// Answered with another error (UNAVAILABLE...), or not in time.
    pub login_failures: u64,
    /// Joins sent.
    pub joins: u64,
    /// Refused (room full, an error) or not answered in time.
    pub join_failures: u64,
}

impl Attempts {
    fn add(&mut self, o: &Attempts) {
        self.connects += o.connects;
        self.connect_failures += o.connect_failures;
        self.logins += o.logins;
        self.names_taken += o.names_taken;
        self.login_failures += o.login_failures;
        self.joins += o.joins;
        self.join_failures += o.join_failures;
    }
}

/// What the partners of the clients that came back saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Partners {
    /// Saw their partner leave (PeerLeft of the id they knew).
    pub saw_left: u64,
    /// Then saw it join again under a new id (PeerJoined).
    pub saw_back: u64,
    /// Saw it join under a new id before they saw the old one leave (the
    /// old one's PeerLeft then counts as stray).
    pub back_before_leave: u64,
    /// Saw a second PeerLeft of the same id (a departure announced twice).
    pub left_twice: u64,
    /// Saw a PeerLeft of an id that is not their partner's now.
    pub stray_leaves: u64,
    /// Their partner left and had not come back when everyone else was.
    pub gone_at_the_end: i64,
}

impl Partners {
    fn add(&mut self, o: &Partners) {
        self.saw_left += o.saw_left;
        self.saw_back += o.saw_back;
        self.back_before_leave += o.back_before_leave;
        self.left_twice += o.left_twice;
        self.stray_leaves += o.stray_leaves;
        self.gone_at_the_end += o.gone_at_the_end;
    }
}

/// One worker's view of the storm.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(super) struct Seen {
    pub(super) down: u64,
    pub(super) back: u64,
    attempts: Attempts,
    pub(super) partners: Partners,
    times: Vec<(u64, u64)>,
    samples: Vec<String>,
    signals: Signals,
    open: u64,
}

/// A client on its way back, and where it got to.
pub(super) struct Back {
    pub(super) lite: Lite,
    pub(super) seat: Seat,
    /// The partner's id, from Joined.
    pub(super) partner: Option<PeerId>,
    /// What else arrived on the way back (signals may).
    pub(super) rest: Vec<Message>,
}

/// Brings back a client whose connection ended: backoff, another node,
/// Hello, login under its name (again while it is taken), join. Tries until
/// it is back.
pub(super) async fn come_back(ctx: Arc<Ctx>, mut seat: Seat) -> Back {
    let r = &ctx.recovery;
    let down_at = unix_us();
    r.down.fetch_add(1, Ordering::Relaxed);
    let n = ctx.nodes.len();
    let gone = seat.node;
    let mut attempt = 0u32;
    let mut turn = seat.pair as usize;
    loop {
        tokio::time::sleep(backoff(&ctx.backoff, attempt)).await;
        attempt = attempt.saturating_add(1);
        let node = (gone + 1 + turn % (n - 1)) % n;
        turn += 1;
        r.count(Step::Connect);
        let opened = tokio::time::timeout(ANSWER_LIMIT, ctx.open(node))
            .await
            .unwrap_or(Err(LoadError::Timeout("a connection on the way back")));
        let mut c = match opened {
            Ok(c) => c,
            Err(e) => {
                let why = format!("connect to node {node}: {e}");
                r.failed(Step::ConnectFailed, seat, why);
                continue;
            }
        };
        match rejoin(&ctx, &mut c, seat, &mut attempt).await {
            Ok((partner, rest)) => {
                seat.node = node;
                r.back.fetch_add(1, Ordering::Relaxed);
                r.times
                    .lock()
                    .expect("not poisoned")
                    .push((down_at, unix_us()));
                ctx.counters.open.fetch_add(1, Ordering::Relaxed);
                return Back {
                    lite: c,
                    seat,
                    partner,
                    rest,
                };
            }
            // A new connection after the next backoff.
            Err(e) => r.sample(seat, format!("on node {node}: {e}")),
        }
    }
}

/// Logs in (waiting a backoff after each refusal) and joins the pair room
/// on a fresh connection; the partner's id, and what else arrived.
async fn rejoin(
    ctx: &Ctx,
    c: &mut Lite,
    seat: Seat,
    attempt: &mut u32,
) -> Result<(Option<PeerId>, Vec<Message>), LoadError> {
    let r = &ctx.recovery;
    let name = ctx.name(seat)?;
    let mut rest = Vec::new();
    loop {
        r.count(Step::Login);
        c.send(&[Message::Login { name: name.clone() }]).await?;
        let refused = answer(c, &mut rest, |m| match m {
            Message::LoginResult(l) => Some(l.error),
            Message::Error(e) => Some(Some(e.code)),
            _ => None,
        })
        .await;
        match refused {
            Ok(None) => break,
            Ok(Some(ErrorCode::NameTaken)) => r.count(Step::NameTaken),
            Ok(Some(code)) => r.failed(Step::LoginFailed, seat, format!("login: {code:?}")),
            Err(e) => {
                r.count(Step::LoginFailed);
                return Err(e);
            }
        }
        pause(c, &mut rest, backoff(&ctx.backoff, *attempt)).await?;
        *attempt = attempt.saturating_add(1);
    }
    let room = ctx.room(seat.pair)?;
    let me = c.id();
    loop {
        r.count(Step::Join);
        let join = Message::Join(Join {
            room: room.clone(),
            mode: RoomMode::Pair,
            capacity: None,
            display_name: String::new(),
        });
        c.send(std::slice::from_ref(&join)).await?;
        let joined = answer(c, &mut rest, |m| match m {
            Message::Joined(j) => Some(Ok(j.members.iter().map(|m| m.peer_id).find(|&p| p != me))),
            Message::RoomFull { .. } => Some(Err("room full".to_string())),
            Message::Error(e) => Some(Err(format!("{:?}", e.code))),
            _ => None,
        })
        .await;
        match joined {
            Ok(Ok(partner)) => return Ok((partner, rest)),
            Ok(Err(why)) => r.failed(Step::JoinFailed, seat, format!("join: {why}")),
            Err(e) => {
                r.count(Step::JoinFailed);
                return Err(e);
            }
        }
        pause(c, &mut rest, backoff(&ctx.backoff, *attempt)).await?;
        *attempt = attempt.saturating_add(1);
    }
}

/// The first message `pick` takes, within [`ANSWER_LIMIT`]; every other
/// goes to `rest` (not [`Lite::until`], which drops them): a signal may
/// come right behind a Joined, or before it, where a join the node gave
/// up on was done in Redis after all.
async fn answer<T>(
    c: &mut Lite,
    rest: &mut Vec<Message>,
    mut pick: impl FnMut(&Message) -> Option<T>,
) -> Result<T, LoadError> {
    let read = async {
        loop {
            let mut found = None;
            c.recv(|m| match found {
                Some(_) => rest.push(m),
                None => {
                    found = pick(&m);
                    if found.is_none() {
                        rest.push(m);
                    }
                }
            })
            .await?;
            if let Some(t) = found {
                return Ok(t);
            }
        }
    };
    tokio::time::timeout(ANSWER_LIMIT, read)
        .await
        .unwrap_or(Err(LoadError::Timeout("an answer on the way back")))
}

/// Waits `d`, answering heartbeats meanwhile; what arrives goes to
/// `rest`.
async fn pause(c: &mut Lite, rest: &mut Vec<Message>, d: Duration) -> Result<(), LoadError> {
    let over = tokio::time::sleep(d);
    tokio::pin!(over);
    loop {
        tokio::select! {
            () = &mut over => return Ok(()),
            r = c.recv(|m| rest.push(m)) => r?,
        }
    }
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------
// Signals in flight.

/// One signal sent by a streaming pair's member.
struct Sent {
    at_us: u64,
    /// The sender's connection it went out on (0: the first).
    connection: u32,
    to: PeerId,
    /// The sender had seen its partner leave (and not come back yet).
    after_leave: bool,
    delivered: u32,
    told: Option<ErrorCode>,
}

/// One member of a streaming pair.
struct End {
    seat: Seat,
    conn: Option<Lite>,
    back: Option<Pin<Box<dyn Future<Output = Back> + Send>>>,
    inbox: Vec<Message>,
    /// The current connection's number; its id is `ids[connection]`.
    connection: u32,
    ids: Vec<PeerId>,
    /// The partner's id as this member last learned it.
    to: PeerId,
    partner: Partner,
    sent: Vec<Sent>,
    /// The current connection's frames that are signals: their numbers.
    by_seq: HashMap<u32, usize>,
    /// Signals that reached this member from someone else than its
    /// partner; that arrived garbled or numbered past what was sent.
    misrouted: u64,
    damaged: u64,
    /// Errors naming no signal of this member's connection.
    unmatched_errors: u64,
}

impl End {
    fn new(lite: Lite, seat: Seat, to: PeerId) -> End {
        End {
            seat,
            ids: vec![lite.id()],
            conn: Some(lite),
            back: None,
            inbox: Vec::new(),
            connection: 0,
            to,
            partner: Partner::new(to),
            sent: Vec::new(),
            by_seq: HashMap::new(),
            misrouted: 0,
            damaged: 0,
            unmatched_errors: 0,
        }
    }

    /// Sends the next signal (Offers and ICE batches by turns) to the
    /// partner's last known id.
    async fn signal(&mut self, sdps: &Sdps, ctx: &Arc<Ctx>) {
        let Some(c) = self.conn.as_mut() else {
            return;
        };
        let n = self.sent.len();
        let m = if n.is_multiple_of(2) {
            Message::Offer(SessionDescription {
                app_data: n.to_string(),
                ..description(self.to, &sdps.offer)
            })
        } else {
            Message::Ice(IceCandidates {
                peer: Address::Peer(self.to),
                candidates: candidates(c.id()),
                end_of_candidates: true,
                room: None,
                app_data: n.to_string(),
            })
        };
        self.sent.push(Sent {
            at_us: unix_us(),
            connection: self.connection,
            to: self.to,
            after_leave: self.partner.left,
            delivered: 0,
            told: None,
        });
        let sent = c.send(std::slice::from_ref(&m)).await;
        self.by_seq.insert(c.last_seq(), n);
        if sent.is_err() {
            self.lost(ctx);
        }
    }

    /// The connection ended: come back, if the storm is on.
    fn lost(&mut self, ctx: &Arc<Ctx>) {
        self.conn = None;
        self.by_seq.clear();
        if ctx.lost() {
            self.back = Some(Box::pin(come_back(ctx.clone(), self.seat)));
        }
    }

    fn returned(&mut self, back: Back) {
        self.ids.push(back.lite.id());
        self.conn = Some(back.lite);
        self.seat = back.seat;
        self.connection += 1;
        if let Some(partner) = back.partner {
            self.to = partner;
            self.partner = Partner::new(partner);
        }
        self.inbox.extend(back.rest);
    }

    /// Takes what this member received: signals from `other`, errors about
    /// its own, news of its partner.
    fn absorb(&mut self, other: &mut End, r: &Recovery) {
        let inbox = std::mem::take(&mut self.inbox);
        for m in &inbox {
            self.partner.note(m, r);
            match m {
                Message::PeerJoined(j) => self.to = j.member.peer_id,
                Message::Offer(d) => {
                    self.arrived(other, &d.peer, &d.app_data, |_| same_sdp(&d.sdp, OFFER))
                }
                Message::Ice(i) => self.arrived(other, &i.peer, &i.app_data, |from| {
                    i.end_of_candidates && i.candidates == candidates(from)
                }),
                Message::Error(e) => match self.by_seq.remove(&e.request_seq) {
                    Some(n) => self.sent[n].told = Some(e.code),
                    None => self.unmatched_errors += 1,
                },
                _ => {}
            }
        }
        self.inbox = inbox;
        self.inbox.clear();
    }

    /// A signal arrived here, from `from`, numbered `app_data`.
    fn arrived(
        &mut self,
        other: &mut End,
        from: &Address,
        app_data: &str,
        intact: impl FnOnce(PeerId) -> bool,
    ) {
        let from = match from {
            Address::Peer(p) if other.ids.contains(p) => *p,
            _ => {
                self.misrouted += 1;
                return;
            }
        };
        match app_data
            .parse::<usize>()
            .ok()
            .and_then(|n| other.sent.get_mut(n))
        {
            Some(s) if intact(from) => s.delivered += 1,
            _ => self.damaged += 1,
        }
    }

    /// The fate of every signal this member sent to `other`.
    fn tally(&self, other: &End) -> Tally {
        let mut t = Tally {
            sent: self.sent.len() as u64,
            misrouted: other.misrouted,
            damaged: other.damaged,
            unmatched_errors: self.unmatched_errors,
            ..Tally::default()
        };
        for (n, s) in self.sent.iter().enumerate() {
            // The connection it went out on ended before it was answered.
            let cut = s.connection < self.connection || self.conn.is_none();
            match fate(s, cut) {
                Fate::Told(code) => {
                    t.told_undelivered += 1;
                    *t.told_codes.entry(format!("{code:?}")).or_default() += 1;
                }
                Fate::LostWithConnection => t.lost_with_senders_connection += 1,
                Fate::SilentlyLost => {
                    t.silently_lost += 1;
                    t.lost_sent_us = Some(match t.lost_sent_us {
                        Some((first, last)) => (first.min(s.at_us), last.max(s.at_us)),
                        None => (s.at_us, s.at_us),
                    });
                    t.lost_samples.push(LostSignal {
                        pair: self.seat.pair,
                        number: n as u64,
                        sent_at_us: s.at_us,
                        sent_after_kill_ms: None,
                        senders_connection: s.connection,
                        partners_connection: other.ids.iter().position(|&p| p == s.to),
                        after_partner_left: s.after_leave,
                    });
                }
                Fate::Delivered { extra, told } => {
                    t.delivered += 1;
                    t.duplicates += u64::from(extra);
                    t.delivered_and_told += u64::from(told);
                }
            }
        }
        t.trim_samples();
        t
    }
}

/// What became of a signal.
#[derive(Debug, PartialEq)]
enum Fate {
    /// Delivered, `extra` times more than once; `told` undelivered too.
    Delivered { extra: u32, told: bool },
    /// Not delivered, and its sender told so.
    Told(ErrorCode),
    /// Not delivered nor answered, and the connection it went out on ended.
    LostWithConnection,
    /// Not delivered nor answered, its sender still connected.
    SilentlyLost,
}

/// The fate of `s`; `cut` when the connection it went out on has ended.
fn fate(s: &Sent, cut: bool) -> Fate {
    match (s.delivered, s.told) {
        (0, Some(code)) => Fate::Told(code),
        (0, None) if cut => Fate::LostWithConnection,
        (0, None) => Fate::SilentlyLost,
        (d, told) => Fate::Delivered {
            extra: d - 1,
            told: told.is_some(),
        },
    }
}

/// A signal neither delivered nor answered while its sender stayed
/// connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LostSignal {
    /// The streaming pair.
    pub pair: u64,
    /// The signal's number in its direction.
    pub number: u64,
    /// When it was sent, µs since the epoch.
    pub sent_at_us: u64,
    /// When it was sent, after the kill (negative: before).
    pub sent_after_kill_ms: Option<f64>,
    /// The sender's connection it went out on (0: the first).
    pub senders_connection: u32,
    /// The partner's connection whose id it was addressed to (0: the one
    /// on the killed node or its survivor partner's first).
    pub partners_connection: Option<usize>,
    /// Sent after the sender saw its partner leave (PeerLeft).
    pub after_partner_left: bool,
}

/// The fate of the signals of one direction of the streaming pairs.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tally {
    /// Signals sent.
    pub sent: u64,
    /// Delivered (once, or more: see `duplicates`).
    pub delivered: u64,
    /// Not delivered, and the sender was told with an Error naming the
    /// signal's frame.
    pub told_undelivered: u64,
    /// Those by error code.
    pub told_codes: BTreeMap<String, u64>,
    /// Neither delivered nor answered, sent on a connection that ended
    /// before an answer could come (the killed node's): the sender saw its
    /// connection drop with the signal in flight. Knowing which of them
    /// were lost would take a session resume across nodes.
    pub lost_with_senders_connection: u64,
    /// Neither delivered nor answered though the sender stayed connected:
    /// must be 0.
    pub silently_lost: u64,
    /// Deliveries past the first.
    pub duplicates: u64,
    /// Delivered, and yet the sender was told it perhaps was not: its
    /// receiver's node died before acknowledging the batch it came in
    /// (expected towards the killed node's clients, never from them).
    pub delivered_and_told: u64,
    /// Arrived from someone else than the partner.
    pub misrouted: u64,
    /// Arrived garbled or with a number never sent.
    pub damaged: u64,
    /// Errors that name no signal of the sender's connection.
    pub unmatched_errors: u64,
    /// When the first and the last of them were sent, µs since the epoch.
    pub lost_sent_us: Option<(u64, u64)>,
    /// The same after the kill, ms (negative: before).
    pub lost_sent_after_kill_ms: Option<(f64, f64)>,
    /// The first and the last silently lost signals.
    pub lost_samples: Vec<LostSignal>,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.sent += o.sent;
        self.delivered += o.delivered;
        self.told_undelivered += o.told_undelivered;
        for (code, k) in &o.told_codes {
            *self.told_codes.entry(code.clone()).or_default() += k;
        }
        self.lost_with_senders_connection += o.lost_with_senders_connection;
        self.silently_lost += o.silently_lost;
        self.duplicates += o.duplicates;
        self.delivered_and_told += o.delivered_and_told;
        self.misrouted += o.misrouted;
        self.damaged += o.damaged;
        self.unmatched_errors += o.unmatched_errors;
        self.lost_sent_us = match (self.lost_sent_us, o.lost_sent_us) {
            (Some((a, b)), Some((c, d))) => Some((a.min(c), b.max(d))),
            (x, y) => x.or(y),
        };
        self.lost_samples.extend(o.lost_samples.iter().cloned());
        self.trim_samples();
    }

    /// Keeps the first and the last silently lost signals, by when they
    /// were sent.
    fn trim_samples(&mut self) {
        let l = &mut self.lost_samples;
        if l.len() > LOST_SAMPLES {
            l.sort_by_key(|s| s.sent_at_us);
            l.drain(LOST_SAMPLES / 2..l.len() - LOST_SAMPLES / 2);
        }
    }

    /// Whether every signal had one right fate; `to_dead` for the signals
    /// towards the killed node's clients, whose senders may be told
    /// "perhaps not delivered" of some that were.
    fn ok(&self, to_dead: bool) -> bool {
        self.delivered > 0
            && self.silently_lost == 0
            && self.duplicates == 0
            && (to_dead || self.delivered_and_told == 0)
            && self.misrouted == 0
            && self.damaged == 0
    }
}

/// The signals of the streaming pairs, both ways.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Signals {
    /// Pairs that streamed.
    pub streaming_pairs: u64,
    /// From the clients on the killed node (and, once back, on another)
    /// to their partners.
    pub from_killed_node_clients: Tally,
    /// From the partners to them.
    pub to_killed_node_clients: Tally,
    /// Streamers that failed.
    pub failures: Vec<String>,
}

impl Signals {
    pub(super) fn add(&mut self, o: &Signals) {
        self.streaming_pairs += o.streaming_pairs;
        self.from_killed_node_clients
            .add(&o.from_killed_node_clients);
        self.to_killed_node_clients.add(&o.to_killed_node_clients);
        self.failures.extend(o.failures.iter().cloned());
    }

    fn ok(&self) -> bool {
        self.failures.is_empty()
            && self.from_killed_node_clients.ok(false)
            && self.to_killed_node_clients.ok(true)
    }
}

/// What a streaming pair hands back: its signals' fates and its clients.
pub(super) struct Streamed {
    pub(super) signals: Signals,
    pub(super) ends: [Option<Held>; 2],
}

/// Streams signals both ways between a pair (A on the killed node) from
/// the arming until the settling, bringing either member back when its
/// connection ends, then accounts for every signal.
pub(super) async fn streamer(
    [la, lb]: [Lite; 2],
    [sa, sb]: [Seat; 2],
    ctx: Arc<Ctx>,
    mut stage: watch::Receiver<Stage>,
    sdps: Arc<Sdps>,
) -> Streamed {
    let interval = ctx.storm.as_ref().map_or(Duration::from_millis(100), |p| {
        Duration::from_micros(p.signal_interval_us.max(1))
    });
    let (ida, idb) = (la.id(), lb.id());
    let mut a = End::new(la, sa, idb);
    let mut b = End::new(lb, sb, ida);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaming = false;
    let mut end_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            r = stage.changed(), if end_at.is_none() => {
                let now = r.map(|()| *stage.borrow()).unwrap_or(Stage::Settle);
                streaming = now == Stage::Armed;
                if now == Stage::Settle {
                    end_at = Some(tokio::time::Instant::now() + LINGER);
                }
            }
            _ = tick.tick(), if streaming => {
                a.signal(&sdps, &ctx).await;
                b.signal(&sdps, &ctx).await;
            }
            r = recv_into(&mut a.conn, &mut a.inbox) => {
                if r.is_err() {
                    a.lost(&ctx);
                }
                a.absorb(&mut b, &ctx.recovery);
            }
            r = recv_into(&mut b.conn, &mut b.inbox) => {
                if r.is_err() {
                    b.lost(&ctx);
                }
                b.absorb(&mut a, &ctx.recovery);
            }
            back = back_from(&mut a.back) => {
                a.returned(back);
                a.absorb(&mut b, &ctx.recovery);
            }
            back = back_from(&mut b.back) => {
                b.returned(back);
                b.absorb(&mut a, &ctx.recovery);
            }
            () = sleep_until(end_at) => break,
        }
    }
    let signals = Signals {
        streaming_pairs: 1,
        from_killed_node_clients: a.tally(&b),
        to_killed_node_clients: b.tally(&a),
        failures: Vec::new(),
    };
    let end = |e: End| e.conn.map(|c| (c, e.seat, e.partner));
    Streamed {
        signals,
        ends: [end(a), end(b)],
    }
}

/// Reads into `inbox`; never ready while there is no connection.
async fn recv_into(conn: &mut Option<Lite>, inbox: &mut Vec<Message>) -> Result<(), LoadError> {
    match conn {
        Some(c) => c.recv(|m| inbox.push(m)).await,
        None => std::future::pending().await,
    }
}

/// The client on its way back, once it is; never ready if none is.
async fn back_from(back: &mut Option<Pin<Box<dyn Future<Output = Back> + Send>>>) -> Back {
    match back {
        Some(f) => {
            let b = f.as_mut().await;
            *back = None;
            b
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------
// The parent.

/// What the storm measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The node killed (the first of `--nodes`).
    pub killed_node: String,
    /// Its process id.
    pub killed_pid: u32,
    /// Clients it held.
    pub clients_on_killed_node: u64,
    /// Clients whose connection ended after the kill (all of the above,
    /// and any other).
    pub went_down: u64,
    /// Of those, back in their room.
    pub came_back: u64,
    /// Not everyone was back within the storm's timeout.
    pub timed_out: bool,
    /// From the kill until the last client was back in its room.
    pub time_to_all_back_s: f64,
    /// Each client: from the kill until it was back in its room.
    pub back_after_kill: Latency,
    /// Each client: from the kill until it saw its connection end.
    pub noticed_after_kill: Latency,
    /// Reconnects, logins and joins on the way back.
    pub attempts: Attempts,
    /// What their partners saw.
    pub partners: Partners,
    /// Clients connected once everyone was back (all of the fleet's).
    pub open_after: u64,
    /// The first few failures on the way back.
    pub error_samples: Vec<String>,
    /// The signals in flight.
    pub signals: Signals,
    /// Everyone back, every partner told once of the leave and of the
    /// return, and no signal silently lost, duplicated or damaged.
    pub ok: bool,
}

/// Runs the storm, after the hold: arms the workers, kills the node, waits
/// until every client is back (or the timeout), settles the streaming
/// pairs and gathers what each worker saw.
pub(super) fn run(
    fleet_options: &super::Options,
    options: &Options,
    established: u64,
    phase: &dyn Fn(&str),
    fleet: &mut Fleet,
    rx: &mpsc::Receiver<(usize, Option<Event>)>,
    state: &mut [WorkerState],
) -> Result<Report, LoadError> {
    phase("arming");
    fleet.broadcast("arm")?;
    let by = Instant::now() + Duration::from_secs(30);
    while state.iter().any(|s| !s.armed) {
        let (w, e) = next_event(rx, by, "the workers to arm")?;
        state[w].apply(e)?;
    }
    // A second of streaming, so that signals are in flight at the kill.
    let by = Instant::now() + Duration::from_secs(1);
    while Instant::now() < by {
        take_event(rx, state, by.saturating_duration_since(Instant::now()))?;
    }

    phase("storm");
    let killed_at = unix_us();
    let kill = Instant::now();
    // SAFETY: kill(2) with a process id and a signal number; it touches no
    // memory of this process.
    if unsafe { libc::kill(options.kill_pid as libc::pid_t, libc::SIGKILL) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(LoadError::Unexpected(format!(
            "cannot kill node process {}: {e}",
            options.kill_pid
        )));
    }
    let expected = options.clients_on_killed as u64;
    let mut last_print = Instant::now();
    let timed_out = loop {
        let down: u64 = state.iter().map(|s| s.down).sum();
        let back: u64 = state.iter().map(|s| s.back).sum();
        let partners: u64 = state.iter().map(|s| s.partners_back).sum();
        if down >= expected && back == down && partners >= expected {
            break false;
        }
        if kill.elapsed() >= options.timeout {
            break true;
        }
        take_event(rx, state, Duration::from_millis(250))?;
        if fleet_options.progress && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "storm: {:>6.1} s  down {down}  back {back}  partners that saw them back {partners}/{expected}",
                kill.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
    };

    phase("settling");
    fleet.broadcast("settle")?;
    let by = Instant::now() + LINGER + Duration::from_secs(60);
    while state.iter().any(|s| s.stormed.is_none()) {
        let (w, e) = next_event(rx, by, "the storm's accounts")?;
        state[w].apply(e)?;
    }
    let seen: Vec<&Seen> = state.iter().filter_map(|s| s.stormed.as_deref()).collect();
    let mut back_after = long_histogram();
    let mut noticed = long_histogram();
    let mut last_back = killed_at;
    let (mut attempts, mut partners, mut signals) =
        (Attempts::default(), Partners::default(), Signals::default());
    let mut error_samples = Vec::new();
    for s in &seen {
        for &(down, back) in &s.times {
            back_after.saturating_record(back.saturating_sub(killed_at).max(1));
            noticed.saturating_record(down.saturating_sub(killed_at).max(1));
            last_back = last_back.max(back);
        }
        attempts.add(&s.attempts);
        partners.add(&s.partners);
        signals.add(&s.signals);
        error_samples.extend(
            s.samples
                .iter()
                .take(5 - error_samples.len().min(5))
                .cloned(),
        );
    }
    for t in [
        &mut signals.from_killed_node_clients,
        &mut signals.to_killed_node_clients,
    ] {
        let after_kill = |us: u64| (us as f64 - killed_at as f64) / 1000.0;
        for l in &mut t.lost_samples {
            l.sent_after_kill_ms = Some(after_kill(l.sent_at_us));
        }
        t.lost_sent_after_kill_ms = t
            .lost_sent_us
            .map(|(first, last)| (after_kill(first), after_kill(last)));
    }
    let went_down: u64 = seen.iter().map(|s| s.down).sum();
    let came_back: u64 = seen.iter().map(|s| s.back).sum();
    let open_after: u64 = seen.iter().map(|s| s.open).sum();
    let ok = !timed_out
        && went_down >= expected
        && came_back == went_down
        && partners.saw_back >= expected
        && partners.left_twice == 0
        && partners.stray_leaves == 0
        && partners.gone_at_the_end == 0
        && open_after == established
        && signals.ok();
    Ok(Report {
        killed_node: fleet_options.nodes[0].clone(),
        killed_pid: options.kill_pid,
        clients_on_killed_node: expected,
        went_down,
        came_back,
        timed_out,
        time_to_all_back_s: super::round3((last_back - killed_at) as f64 / 1e6),
        back_after_kill: Latency::of(&back_after),
        noticed_after_kill: Latency::of(&noticed),
        attempts,
        partners,
        open_after,
        error_samples,
        signals,
        ok,
    })
}

/// A histogram in microseconds up to an hour: a storm may outlast the
/// load generator's usual minute.
fn long_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Capabilities, LeaveReason, Member, PeerJoined, PeerLeft, RoomId};

    fn sent(delivered: u32, told: Option<ErrorCode>) -> Sent {
        Sent {
            at_us: 0,
            connection: 0,
            to: PeerId(2),
            after_leave: false,
            delivered,
            told,
        }
    }

    #[test]
    fn every_signal_gets_one_fate() {
        let unknown = Some(ErrorCode::UnknownPeer);
        let delivered = |extra, told| Fate::Delivered { extra, told };
        assert_eq!(fate(&sent(1, None), false), delivered(0, false));
        assert_eq!(fate(&sent(1, None), true), delivered(0, false));
        assert_eq!(fate(&sent(3, None), false), delivered(2, false));
        assert_eq!(fate(&sent(1, unknown), false), delivered(0, true));
        assert_eq!(
            fate(&sent(0, unknown), true),
            Fate::Told(ErrorCode::UnknownPeer)
        );
        assert_eq!(fate(&sent(0, None), true), Fate::LostWithConnection);
        assert_eq!(fate(&sent(0, None), false), Fate::SilentlyLost);
    }

    #[test]
    fn a_partner_counts_leaves_and_returns_by_id() {
        let room = RoomId::new("r").unwrap();
        let left = |id| {
            Message::PeerLeft(PeerLeft {
                room: room.clone(),
                peer_id: PeerId(id),
                reason: LeaveReason::Disconnected,
            })
        };
        let joined = |id| {
            Message::PeerJoined(PeerJoined {
                room: room.clone(),
                member: Member {
                    peer_id: PeerId(id),
                    display_name: String::new(),
                    user: None,
                    capabilities: Capabilities::empty(),
                },
                initiator: false,
            })
        };
        let r = Recovery::default();
        let mut p = Partner::new(PeerId(1));
        // Its first arrival, read in the hold: not counted.
        p.note(&joined(1), &r);
        // Leaves, comes back as 2, leaves twice, comes back as 3.
        for m in [left(1), joined(2), left(2), left(2), joined(3)] {
            p.note(&m, &r);
        }
        // Another pair's partner: back as 5 before 4 is announced gone.
        let mut q = Partner::new(PeerId(4));
        for m in [joined(5), left(4)] {
            q.note(&m, &r);
        }
        let seen = r.seen(Signals::default(), 0);
        let p = &seen.partners;
        assert_eq!((p.saw_left, p.saw_back, p.left_twice), (2, 2, 1));
        assert_eq!((p.back_before_leave, p.stray_leaves), (1, 1));
    }
}
