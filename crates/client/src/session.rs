//! [`Client`]: a long-lived signaling session for applications.
//!
//! A background task owns the [`Connection`]. The [`Client`] handle talks to
//! it over two bounded channels: commands in (login, join, SDP, ICE) and
//! typed [`Event`]s out. The task
//!
//! - answers heartbeats (through [`Connection`]);
//! - remembers the members' capabilities from Joined/PeerJoined, so an SDP
//!   is deflated only when that saves bytes and the receiver can inflate it;
//! - gathers trickled candidates per target in an [`IceBatcher`] and sends a
//!   batch when it is full or its window ends;
//! - inflates received compressed SDP, so the application sees text;
//! - reconnects after a lost connection with exponential backoff and
//!   jitter, and resumes the session there (PROTOCOL.md §11a): nothing is
//!   lost either way, and no one saw it leave ([`Event::Resumed`]); where
//!   the server cannot resume it ([`Event::StartedFresh`], then
//!   [`Event::Reconnected`]) it logs in again and rejoins its rooms under a
//!   new peer id.
//!
//! Session resume is on by default ([`ClientConfig::resume`]). While
//! disconnected, commands take effect as if connected: their frames are
//! numbered and held, and go out when the session resumes (they are
//! dropped, but for login and joins, if it starts fresh). Past the
//! server's `resume_limits` (frames and bytes not acknowledged) the oldest
//! are dropped, and the next reconnect ends the old session (a resume and
//! a polite close, so its rooms hear of it at once) and starts fresh with
//! [`ResumeRefusal::ReplayLost`]. A connection lost
//! without the client's close keeps the session on the server for
//! `resume_limits.grace_ms`; [`Client::close`], and dropping the
//! [`Client`], close it politely, which ends it at once.
//!
//! Slow-consumer policy: when the application stops reading events the
//! event channel fills, the task stops reading the socket, and the server
//! eventually cuts the connection off as a slow consumer (after which the
//! client reconnects). Nothing is buffered without bound.

use std::collections::HashMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{default_hello, sleep_until_opt, ClientError, Connection, SessionResume};
use crate::protocol::ice::{BatchConfig, IceBatcher};
use crate::protocol::{
    sdp, Address, Capabilities, ErrorMessage, Hello, IceCandidate, Join, Joined, LoginResult,
    Message, PeerId, PeerJoined, PeerLeft, ResumeRefusal, RoomId, RoomMode, Sdp,
    SessionDescription, UserName,
};

/// How a [`Client`] connects and reconnects.
#[derive(Clone, Debug)]
pub struct ClientConfig {
    /// The Hello to send on every (re)connect (with `CAPABILITY_RESUME`
    /// added when `resume` is on).
    pub hello: Hello,
    /// Ask for session resume (`CAPABILITY_RESUME`) and resume the session
    /// after a lost connection where the server allows. On by default.
    pub resume: bool,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Give up after this many failed reconnects in a row (`None`: never).
    pub max_reconnect_attempts: Option<u32>,
    /// ICE batching window and size.
    pub ice_batch: BatchConfig,
    /// Capacity of the event channel.
    pub event_capacity: usize,
    /// Capacity of the command channel.
    pub command_capacity: usize,
}

impl Default for ClientConfig {
    fn default() -> ClientConfig {
        ClientConfig {
            hello: default_hello(),
            resume: true,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            max_reconnect_attempts: None,
            ice_batch: BatchConfig::default(),
            event_capacity: 256,
            command_capacity: 64,
        }
    }
}

/// Something that happened on the session.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Joined a room (also after a reconnect).
    Joined(Joined),
    /// Someone joined a room this client is in.
    PeerJoined(PeerJoined),
    /// Someone left a room this client is in.
    PeerLeft(PeerLeft),
    /// Left a room.
    Left {
        /// The room.
        room: RoomId,
    },
    /// A room was full.
    RoomFull {
        /// The room.
        room: RoomId,
        /// Its capacity.
        capacity: u32,
    },
    /// Answer to a login (also after a reconnect).
    LoginResult(LoginResult),
    /// An offer, inflated.
    Offer {
        /// The sender.
        from: Address,
        /// The room it names, if any.
        room: Option<RoomId>,
        /// The SDP text.
        sdp: String,
    },
    /// An answer, inflated.
    Answer {
        /// The sender.
        from: Address,
        /// The room it names, if any.
        room: Option<RoomId>,
        /// The SDP text.
        sdp: String,
    },
    /// Trickled candidates, possibly several in one batch.
    Ice {
        /// The sender.
        from: Address,
        /// The candidates.
        candidates: Vec<IceCandidate>,
        /// The sender has gathered all its candidates.
        end_of_candidates: bool,
    },
    /// The other end hung up.
    HangUp {
        /// Who.
        from: Address,
    },
    /// The server reported an error.
    Error(ErrorMessage),
    /// A frame from the server could not be decoded and was skipped (the
    /// connection goes on).
    Skipped {
        /// Why it could not be decoded.
        error: String,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The connection is back and the session resumed (PROTOCOL.md §11a):
    /// the same peer id, rooms, name and calls; the server sends again
    /// what this client missed (each frame once, in order) and this client
    /// what the server missed; the other members saw nothing. Follows a
    /// [`Event::Disconnected`].
    Resumed {
        /// The peer id, unchanged.
        peer_id: PeerId,
    },
    /// The connection is back but the session could not be resumed: this
    /// is a new session, and [`Event::Reconnected`] follows at once. What
    /// was sent to or by the old session while it was away is lost.
    StartedFresh {
        /// Why the server refused the resume (`Expired`: the grace period
        /// ran out, and the other members were told `PeerLeft{TIMED_OUT}`;
        /// `UnknownToken`: say, the server restarted; `Forbidden`: another
        /// identity; `ReplayLost`: frames one side had to hold were
        /// dropped past `resume_limits`, and the old session ended at once,
        /// its rooms told so: on the server's side, or on this client's,
        /// which then resumed only to close the old session politely).
        /// `None` when no resume was asked: resume is off in
        /// [`ClientConfig`], or the server did not grant it.
        refusal: Option<ResumeRefusal>,
    },
    /// The connection is back with a new session and peer id (after
    /// [`Event::StartedFresh`]); login and joins are being replayed.
    Reconnected {
        /// The new peer id.
        peer_id: PeerId,
    },
}

enum Command {
    Login(UserName),
    Logout,
    Join(Join),
    Leave(RoomId),
    Sdp {
        to: Address,
        offer: bool,
        text: String,
        room: Option<RoomId>,
    },
    Ice(Address, IceCandidate),
    IceEnd(Address),
    HangUp(Address),
    Close,
}

/// A signaling session with automatic reconnect. See the module docs.
pub struct Client {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    peer_id: watch::Receiver<PeerId>,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Connects to `url` (`ws://host:port/ws`; `wss://` once the crate is
    /// built with a TLS feature of tokio-tungstenite) and completes the
    /// Hello/Welcome exchange. Later losses are repaired in the background.
    pub async fn connect(url: &str, config: ClientConfig) -> Result<Client, ClientError> {
        let mut hello = config.hello.clone();
        if config.resume {
            hello.capabilities = hello.capabilities.union(Capabilities::RESUME);
        }
        hello.resume = None;
        let connection = Connection::connect(url, hello.clone()).await?;
        let (commands, command_rx) = mpsc::channel(config.command_capacity.max(1));
        let (event_tx, events) = mpsc::channel(config.event_capacity.max(1));
        let (peer_tx, peer_id) = watch::channel(connection.welcome().peer_id);
        let session = Session {
            url: url.to_owned(),
            hello,
            held: None,
            refusal: None,
            config,
            commands: command_rx,
            events: event_tx,
            peer_id: peer_tx,
            user: None,
            rooms: Vec::new(),
            capabilities: HashMap::new(),
            server_capabilities: connection.welcome().capabilities,
            max_sdp: connection.welcome().limits.max_sdp_bytes as usize,
            batchers: HashMap::new(),
        };
        let task = tokio::spawn(session.run(connection));
        Ok(Client {
            commands,
            events,
            peer_id,
            task: Some(task),
        })
    }

    /// The peer id of the session (it changes when a reconnect starts a
    /// fresh session, not when it resumes one).
    pub fn peer_id(&self) -> PeerId {
        *self.peer_id.borrow()
    }

    async fn command(&self, c: Command) -> Result<(), ClientError> {
        self.commands
            .send(c)
            .await
            .map_err(|_| ClientError::Closed {
                code: 0,
                reason: "client closed".into(),
            })
    }

    /// Logs in as `name`; the answer arrives as [`Event::LoginResult`]. The
    /// name is claimed again after a reconnect.
    pub async fn login(&self, name: UserName) -> Result<(), ClientError> {
        self.command(Command::Login(name)).await
    }

    /// Gives up the name.
    pub async fn logout(&self) -> Result<(), ClientError> {
        self.command(Command::Logout).await
    }

    /// Joins a room; the answer arrives as [`Event::Joined`] (or RoomFull,
    /// or Error). The room is rejoined after a reconnect.
    pub async fn join(&self, room: RoomId, mode: RoomMode) -> Result<(), ClientError> {
        self.command(Command::Join(Join {
            room,
            mode,
            capacity: None,
            display_name: String::new(),
        }))
        .await
    }

    /// Joins with every field of [`Join`] chosen by the caller.
    pub async fn join_with(&self, join: Join) -> Result<(), ClientError> {
        self.command(Command::Join(join)).await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: RoomId) -> Result<(), ClientError> {
        self.command(Command::Leave(room)).await
    }

    /// Sends an offer, deflated when that helps and `to` can inflate it.
    /// Signaling sent while disconnected is held for a resume, and dropped
    /// if the session starts fresh: peer ids do not survive that.
    pub async fn send_offer(&self, to: Address, sdp: impl Into<String>) -> Result<(), ClientError> {
        self.command(Command::Sdp {
            to,
            offer: true,
            text: sdp.into(),
            room: None,
        })
        .await
    }

    /// Sends an answer, like [`Client::send_offer`].
    pub async fn send_answer(
        &self,
        to: Address,
        sdp: impl Into<String>,
    ) -> Result<(), ClientError> {
        self.command(Command::Sdp {
            to,
            offer: false,
            text: sdp.into(),
            room: None,
        })
        .await
    }

    /// Queues a trickled candidate for `to`; it leaves in a batch.
    pub async fn send_ice(&self, to: Address, candidate: IceCandidate) -> Result<(), ClientError> {
        self.command(Command::Ice(to, candidate)).await
    }

    /// Gathering for `to` is complete: flushes its batch with the
    /// end-of-candidates marker.
    pub async fn end_of_candidates(&self, to: Address) -> Result<(), ClientError> {
        self.command(Command::IceEnd(to)).await
    }

    /// Ends a call.
    pub async fn hang_up(&self, to: Address) -> Result<(), ClientError> {
        self.command(Command::HangUp(to)).await
    }

    /// The next event; `None` once the session has ended (closed, or given
    /// up reconnecting).
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Closes the connection politely and ends the session.
    pub async fn close(mut self) {
        let _ = self.commands.send(Command::Close).await;
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Stream for Client {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }
}

impl Drop for Client {
    /// The task sees its channels closed and closes the connection politely
    /// in the background (an abrupt end would leave a resumable session
    /// waiting on the server for its grace period).
    fn drop(&mut self) {
        self.task.take();
    }
}

/// The background task's state.
struct Session {
    url: String,
    /// The Hello of every connection (with `CAPABILITY_RESUME` if asked).
    hello: Hello,
    /// While disconnected: the lost connection's resume state.
    held: Option<SessionResume>,
    /// Why the session could not be resumed, until `StartedFresh` says so
    /// (kept across failed attempts).
    refusal: Option<ResumeRefusal>,
    config: ClientConfig,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    peer_id: watch::Sender<PeerId>,
    /// The name to claim again after a reconnect.
    user: Option<UserName>,
    /// The rooms to rejoin after a reconnect.
    rooms: Vec<Join>,
    /// Capabilities of peers seen in rooms.
    capabilities: HashMap<PeerId, Capabilities>,
    server_capabilities: Capabilities,
    max_sdp: usize,
    batchers: HashMap<Address, IceBatcher>,
}

/// Why the connected loop ended.
enum End {
    /// The application closed the session.
    Closed,
    /// The connection was lost.
    Lost(String),
}

impl Session {
    async fn run(mut self, mut connection: Connection) {
        loop {
            match self.connected(&mut connection).await {
                End::Closed => {
                    let _ = connection.close().await;
                    return;
                }
                End::Lost(reason) => {
                    self.held = connection.take_resume();
                    if self
                        .events
                        .send(Event::Disconnected { reason })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
            match self.reconnect().await {
                Some(c) => connection = c,
                None => return,
            }
        }
    }

    /// Connects again with backoff and resumes the session, or else
    /// replays login and joins on a fresh one. `None` when the application
    /// closed the session or attempts ran out.
    async fn reconnect(&mut self) -> Option<Connection> {
        let mut attempt: u32 = 0;
        loop {
            let delay = backoff(&self.config, attempt);
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            // Keep taking commands while waiting, so the application never
            // blocks on a full command channel during an outage.
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    c = self.commands.recv() => match c {
                        None | Some(Command::Close) => return None,
                        Some(c) => self.offline(c),
                    },
                }
            }
            let attempted = match &self.held {
                Some(held) => Connection::resume(&self.url, self.hello.clone(), held).await,
                None => Connection::connect(&self.url, self.hello.clone()).await,
            };
            match attempted {
                Ok(mut c) => {
                    let welcome = c.welcome().clone();
                    self.server_capabilities = welcome.capabilities;
                    self.max_sdp = welcome.limits.max_sdp_bytes as usize;
                    let _ = self.peer_id.send(welcome.peer_id);
                    if c.resumed() {
                        self.held = None;
                        let event = Event::Resumed {
                            peer_id: welcome.peer_id,
                        };
                        if self.events.send(event).await.is_err() {
                            let _ = c.close().await;
                            return None;
                        }
                        return Some(c);
                    }
                    // A new session: peer ids, their capabilities and
                    // pending candidates belong to the old one.
                    self.held = None;
                    self.capabilities.clear();
                    self.batchers.clear();
                    if let Some(why) = welcome.resume.as_ref().and_then(|r| r.refusal) {
                        self.refusal = Some(why);
                    }
                    let mut replay = Vec::new();
                    if let Some(name) = &self.user {
                        replay.push(Message::Login { name: name.clone() });
                    }
                    replay.extend(self.rooms.iter().cloned().map(Message::Join));
                    if !replay.is_empty() && c.send_batch(&replay).await.is_err() {
                        attempt = attempt.saturating_add(1);
                        continue;
                    }
                    for event in [
                        Event::StartedFresh {
                            refusal: self.refusal.take(),
                        },
                        Event::Reconnected {
                            peer_id: welcome.peer_id,
                        },
                    ] {
                        if self.events.send(event).await.is_err() {
                            let _ = c.close().await;
                            return None;
                        }
                    }
                    return Some(c);
                }
                Err(ClientError::ResumeLost) => {
                    // The old session is over; the next attempt starts fresh.
                    self.held = None;
                    self.refusal = Some(ResumeRefusal::ReplayLost);
                }
                Err(e) => {
                    tracing::debug!("reconnect attempt {attempt} failed: {e}");
                    attempt = attempt.saturating_add(1);
                    if self
                        .config
                        .max_reconnect_attempts
                        .is_some_and(|max| attempt >= max)
                    {
                        return None;
                    }
                }
            }
        }
    }

    /// A command while disconnected. If the session may resume, it takes
    /// effect as if connected and its frames are held for the resume;
    /// otherwise state changes are kept for the replay on a fresh session
    /// and signaling is dropped.
    fn offline(&mut self, c: Command) {
        if self.held.as_ref().is_some_and(SessionResume::resumable) {
            let out = self.on_command(c).unwrap_or_default();
            if let Some(held) = &mut self.held {
                for m in &out {
                    held.queue(m);
                }
            }
            return;
        }
        match c {
            Command::Login(name) => self.user = Some(name),
            Command::Logout => self.user = None,
            Command::Join(j) => self.remember_join(j),
            Command::Leave(room) => self.rooms.retain(|j| j.room != room),
            Command::Sdp { .. }
            | Command::Ice(..)
            | Command::IceEnd(_)
            | Command::HangUp(_)
            | Command::Close => {}
        }
    }

    fn remember_join(&mut self, j: Join) {
        if j.mode == RoomMode::Pair {
            // Joining a pair room leaves the previous one (server rule).
            self.rooms.retain(|r| r.mode != RoomMode::Pair);
        }
        self.rooms.retain(|r| r.room != j.room);
        self.rooms.push(j);
    }

    async fn connected(&mut self, c: &mut Connection) -> End {
        loop {
            let deadline = self.batchers.values().filter_map(|b| b.deadline()).min();
            tokio::select! {
                r = c.recv() => match r {
                    Ok(m) => {
                        if let Some(event) = self.on_message(m) {
                            if self.events.send(event).await.is_err() {
                                return End::Closed;
                            }
                        }
                    }
                    // A frame this client cannot decode (a type or enum
                    // value from a newer server) is skipped, as PROTOCOL.md
                    // §5 says; the connection is fine.
                    Err(ClientError::Decode(e)) => {
                        tracing::debug!("skipped a frame from the server: {e}");
                        let skipped = Event::Skipped { error: e.to_string() };
                        if self.events.send(skipped).await.is_err() {
                            return End::Closed;
                        }
                    }
                    Err(e) => return End::Lost(e.to_string()),
                },
                cmd = self.commands.recv() => {
                    let Some(cmd) = cmd else { return End::Closed };
                    match self.on_command(cmd) {
                        Err(()) => return End::Closed,
                        Ok(out) if !out.is_empty() => {
                            if let Err(e) = c.send_batch(&out).await {
                                return End::Lost(e.to_string());
                            }
                        }
                        Ok(_) => {}
                    }
                }
                _ = sleep_until_opt(deadline) => {
                    let out = self.poll_batches(Instant::now());
                    if !out.is_empty() {
                        if let Err(e) = c.send_batch(&out).await {
                            return End::Lost(e.to_string());
                        }
                    }
                }
            }
        }
    }

    /// Messages to send for a command; `Err` for Close.
    fn on_command(&mut self, cmd: Command) -> Result<Vec<Message>, ()> {
        Ok(match cmd {
            Command::Close => return Err(()),
            Command::Login(name) => {
                self.user = Some(name.clone());
                vec![Message::Login { name }]
            }
            Command::Logout => {
                self.user = None;
                vec![Message::Logout]
            }
            Command::Join(j) => {
                self.remember_join(j.clone());
                vec![Message::Join(j)]
            }
            Command::Leave(room) => {
                self.rooms.retain(|j| j.room != room);
                vec![Message::Leave { room }]
            }
            Command::Sdp {
                to,
                offer,
                text,
                room,
            } => {
                let sdp = if self.can_inflate(&to) {
                    match sdp::deflate_if_smaller(text.as_bytes()) {
                        Some(d) => Sdp::Deflated(d.into()),
                        None => Sdp::Plain(text.into_bytes().into()),
                    }
                } else {
                    Sdp::Plain(text.into_bytes().into())
                };
                let d = SessionDescription {
                    peer: to,
                    sdp,
                    room,
                    app_data: String::new(),
                };
                vec![if offer {
                    Message::Offer(d)
                } else {
                    Message::Answer(d)
                }]
            }
            Command::Ice(to, candidate) => {
                let config = self.batch_config(&to);
                let batcher = self
                    .batchers
                    .entry(to.clone())
                    .or_insert_with(|| IceBatcher::new(config));
                match batcher.push(candidate, Instant::now()) {
                    Some(batch) => vec![Message::Ice(batch.into_message(to, None))],
                    None => Vec::new(),
                }
            }
            Command::IceEnd(to) => {
                let batch = match self.batchers.remove(&to) {
                    Some(mut b) => b.end_of_candidates(),
                    None => IceBatcher::new(self.batch_config(&to)).end_of_candidates(),
                };
                vec![Message::Ice(batch.into_message(to, None))]
            }
            Command::HangUp(peer) => vec![Message::HangUp { peer }],
        })
    }

    /// Whether `to` gets deflated SDP: a room member that announced
    /// DEFLATE_SDP, or a user behind a server that inflates for receivers
    /// that cannot.
    fn can_inflate(&self, to: &Address) -> bool {
        match to {
            Address::Peer(p) => self
                .capabilities
                .get(p)
                .is_some_and(|c| c.contains(Capabilities::DEFLATE_SDP)),
            Address::User(_) => self.server_capabilities.contains(Capabilities::DEFLATE_SDP),
        }
    }

    fn batch_config(&self, to: &Address) -> BatchConfig {
        let batches = match to {
            Address::Peer(p) => self
                .capabilities
                .get(p)
                .is_none_or(|c| c.contains(Capabilities::ICE_BATCH)),
            Address::User(_) => true,
        };
        if batches {
            self.config.ice_batch
        } else {
            BatchConfig {
                max: 1,
                ..self.config.ice_batch
            }
        }
    }

    fn poll_batches(&mut self, now: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        for (to, b) in &mut self.batchers {
            if let Some(batch) = b.poll(now) {
                out.push(Message::Ice(batch.into_message(to.clone(), None)));
            }
        }
        self.batchers.retain(|_, b| b.pending() > 0);
        out
    }

    /// Updates state from a server message and turns it into an event.
    fn on_message(&mut self, m: Message) -> Option<Event> {
        Some(match m {
            Message::Joined(j) => {
                for member in &j.members {
                    self.capabilities
                        .insert(member.peer_id, member.capabilities);
                }
                Event::Joined(j)
            }
            Message::PeerJoined(p) => {
                self.capabilities
                    .insert(p.member.peer_id, p.member.capabilities);
                Event::PeerJoined(p)
            }
            Message::PeerLeft(p) => {
                self.capabilities.remove(&p.peer_id);
                self.batchers.remove(&Address::Peer(p.peer_id));
                Event::PeerLeft(p)
            }
            Message::Left { room } => Event::Left { room },
            Message::RoomFull { room, capacity } => Event::RoomFull { room, capacity },
            Message::LoginResult(r) => {
                if r.error.is_some() && self.user.as_ref() == Some(&r.name) {
                    self.user = None;
                }
                Event::LoginResult(r)
            }
            Message::Offer(d) => {
                let (from, room, sdp) = self.inflate(d)?;
                Event::Offer { from, room, sdp }
            }
            Message::Answer(d) => {
                let (from, room, sdp) = self.inflate(d)?;
                Event::Answer { from, room, sdp }
            }
            Message::Ice(i) => Event::Ice {
                from: i.peer,
                candidates: i.candidates,
                end_of_candidates: i.end_of_candidates,
            },
            Message::HangUp { peer } => Event::HangUp { from: peer },
            Message::Error(e) => Event::Error(e),
            _ => return None,
        })
    }

    fn inflate(&self, d: SessionDescription) -> Option<(Address, Option<RoomId>, String)> {
        let bytes = match d.sdp {
            Sdp::Plain(b) => b.to_vec(),
            Sdp::Deflated(b) => match sdp::inflate(&b, self.max_sdp.max(1)) {
                Ok(v) => v,
                Err(e) => {
                    tracing::warn!("dropping an SDP that does not inflate: {e}");
                    return None;
                }
            },
        };
        match String::from_utf8(bytes) {
            Ok(s) => Some((d.peer, d.room, s)),
            Err(_) => {
                tracing::warn!("dropping an SDP that is not UTF-8");
                None
            }
        }
    }
}

/// The delay before reconnect attempt `attempt` (0-based): exponential from
/// `backoff_initial`, capped at `backoff_max`, with "equal jitter" (a random
/// point in the upper half), so clients cut off together do not return
/// together.
pub fn backoff(config: &ClientConfig, attempt: u32) -> Duration {
    let base = config
        .backoff_initial
        .saturating_mul(1u32 << attempt.min(16))
        .min(config.backoff_max);
    let half = base / 2;
    half + half.mul_f64(rand::random::<f64>())
}
