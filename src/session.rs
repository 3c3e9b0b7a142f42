//! The session: the protocol state of one connection and its rules, sans
//! I/O.
//!
//! A [`Session`] takes inputs (a WebSocket message's bytes, a frameless
//! message, the timer, the end of the connection), each with `now` passed
//! in, and produces its effects: frames for its client, queued in its
//! [`Outbox`]; room, name and call changes and deliveries to other peers,
//! through the [`Directory`]; and, when the connection must end, the
//! [`Close`] to end it with. It knows nothing of tokio or sockets: the
//! connection task (`server::connection`) moves bytes between the socket
//! and the session, and the unit tests drive it with no socket at all. The
//! session can outlive its socket: it ends only when [`Session::teardown`]
//! is called.
//!
//! The rules: pair-room switching (a refused join keeps the call), rooms
//! per peer, login state, named calls, grants and token expiry, who may
//! negotiate with whom, the rate guard, the heartbeat, and who pays for a
//! full queue (the sender).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;

use crate::auth::Grant;
use crate::config::Config;
use crate::directory::Directory;
use crate::metrics::{self, Metrics};
use crate::outbox::{CloseReason, Origin, Outbox};
use crate::protocol::frame::next_seq;
use crate::protocol::{
    self, encode, relay, sdp, Address, Capabilities, CodecLimits, DecodeError, Encoded, ErrorCode,
    ErrorMessage, Frames, Join, LeaveReason, LoginResult, Member, Message, MessageType, PeerId,
    RoomId, RoomMode, Sdp, UserName, HEADER_LEN,
};
use crate::rate::{RateGuard, Verdict};
use crate::registry::{RouteError, Target};
use crate::resume::{Handoff, Resumption};
use crate::rooms::{JoinError, LoginError};

/// What every session of a server shares: its configuration, its codec
/// limits and its directory.
pub struct Context<D> {
    /// The configuration.
    pub config: Config,
    /// The decoder's limits (from `config`).
    pub codec: CodecLimits,
    /// Rooms, names and routes.
    pub directory: Arc<D>,
    /// What is counted for `/metrics`; `None` with metrics off.
    pub metrics: Option<Arc<Metrics>>,
}

/// Why a session ends, and what its client and its rooms are told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Close {
    /// The WebSocket close code.
    pub code: u16,
    /// The close reason.
    pub reason: &'static str,
    /// How the session's rooms hear of it.
    pub leave: LeaveReason,
}

impl Close {
    /// A close for a protocol reason: 4000 + the error code, so a client
    /// learns the exact reason even if the `Error` frame was lost.
    pub fn app(code: ErrorCode, reason: &'static str, leave: LeaveReason) -> Close {
        Close {
            code: 4000 + code as u16,
            reason,
            leave,
        }
    }

    /// The client persisted well above its rate limit: 1008.
    pub fn abuse() -> Close {
        Close {
            code: 1008,
            reason: "rate limit abused",
            leave: LeaveReason::Kicked,
        }
    }

    /// The node is shutting down or draining: 1001, going away.
    pub fn shutdown() -> Close {
        Close {
            code: 1001,
            reason: "server shutting down",
            leave: LeaveReason::ServerShutdown,
        }
    }

    /// The client did not read what was sent to it: 4021.
    pub fn slow_consumer() -> Close {
        Close::app(
            ErrorCode::SlowConsumer,
            "too slow reading messages",
            LeaveReason::Disconnected,
        )
    }
}

/// `PEER_BUSY` answers within one `rate_abuse_window` after which the sender
/// itself is disconnected.
const MAX_BUSY: u32 = 64;

/// The rarely needed part of a session's state.
#[derive(Default)]
struct Trouble {
    /// When drops past the reply budget are to be reported at the latest,
    /// and the last of them: a `RATE_LIMITED` reply with `request_seq` N
    /// reports frame N and every earlier one left unanswered.
    rate_report: Option<(Instant, u32)>,
    /// `PEER_BUSY` answers in the current window: its start and count.
    busy: Option<(Instant, u32)>,
    /// Set when a handler decides the connection must end.
    closing: Option<Close>,
}

/// The protocol state of one connection: its rooms, its name, its call
/// partners, its rate limiter. Dropping it leaves every room and frees the
/// name, so a connection that fails anywhere still cleans up.
pub struct Session<D> {
    ctx: Arc<Context<D>>,
    peer_id: PeerId,
    capabilities: Capabilities,
    outbox: Arc<Outbox>,
    /// The rooms this peer is in.
    rooms: Vec<RoomId>,
    /// Which of them is its pair room, if any (a peer has at most one).
    pair_room: Option<RoomId>,
    user: Option<UserName>,
    display_name: String,
    rate: RateGuard,
    /// The time of the input being handled, in nanoseconds since the rate
    /// guard was made ([`RateGuard::since`]: 8 bytes, not an `Instant`'s 16).
    now: u64,
    /// The wall-clock time when the rate guard was made (token expiry is
    /// wall-clock time; everything else is monotonic).
    started: SystemTime,
    /// When the client was last heard from (as `now`), and whether it has
    /// been pinged since.
    last_heard: u64,
    pinged: bool,
    /// What only a misbehaving or troubled connection needs (drop
    /// reports, `PEER_BUSY` counts, a decided close), allocated the first
    /// time: an idle connection keeps one pointer.
    trouble: Option<Box<Trouble>>,
    seq_out: u32,
    ping_nonce: u64,
    /// How the session's rooms hear of its end.
    pub leave_reason: LeaveReason,
    /// What the access token allows, with `auth = token`.
    grant: Option<Box<Grant>>,
    /// Session resume's state, when the client has `CAPABILITY_RESUME`.
    resume: Option<Box<Resumption>>,
}

impl<D: Directory> Session<D> {
    /// A session for a connection that said Hello at `now` (`wall` on the
    /// wall clock) and has been given `peer_id`. `rate` is the guard that
    /// judged what came before.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ctx: Arc<Context<D>>,
        peer_id: PeerId,
        capabilities: Capabilities,
        outbox: Arc<Outbox>,
        grant: Option<Box<Grant>>,
        rate: RateGuard,
        now: Instant,
        wall: SystemTime,
    ) -> Session<D> {
        let since = rate.since(now);
        Session {
            ctx,
            peer_id,
            capabilities,
            outbox,
            rooms: Vec::new(),
            pair_room: None,
            user: None,
            display_name: String::new(),
            rate,
            now: since,
            started: wall
                .checked_sub(Duration::from_nanos(since))
                .unwrap_or(wall),
            last_heard: since,
            pinged: false,
            trouble: None,
            seq_out: 0,
            ping_nonce: 0,
            leave_reason: LeaveReason::Disconnected,
            grant,
            resume: None,
        }
    }

    /// Makes the session resumable (the client has `CAPABILITY_RESUME` and
    /// the server resume on): from now on frames are held until
    /// acknowledged, and the client's are acknowledged.
    pub fn enable_resume(&mut self, limits: crate::protocol::ResumeLimits) {
        self.resume = Some(Box::new(Resumption::new(limits, self.node())));
    }

    /// The node this session is held on (its tokens name it).
    pub fn node(&self) -> u16 {
        self.ctx.directory.identity().map_or(0, |(node, _)| node)
    }

    /// The session as it goes to another node, with `queued`, what its
    /// outbox still held. It is not torn down: it lives on there. A
    /// session that is not resumable is given back.
    pub fn hand_off(
        mut self: Box<Self>,
        queued: Vec<(Encoded, Option<(PeerId, u32)>)>,
    ) -> Result<Handoff, Box<Self>> {
        let Some(resume) = self.resume.take() else {
            return Err(self);
        };
        let resume = *resume;
        let session = *self;
        Ok(Handoff {
            peer: session.peer_id,
            capabilities: session.capabilities,
            rooms: session.rooms,
            pair_room: session.pair_room,
            user: session.user,
            display_name: session.display_name,
            seq_out: session.seq_out,
            identity: session.grant.as_deref().map(|g| g.identity().clone()),
            resume,
            queued,
        })
    }

    /// A session another node handed over (its frames already in
    /// `outbox`), resumed by a client with `grant` at `now`.
    pub fn adopt(
        ctx: Arc<Context<D>>,
        handoff: Handoff,
        outbox: Arc<Outbox>,
        grant: Option<Box<Grant>>,
        rate: RateGuard,
        now: Instant,
        wall: SystemTime,
    ) -> Session<D> {
        let mut session = Session::new(
            ctx,
            handoff.peer,
            handoff.capabilities,
            outbox,
            grant,
            rate,
            now,
            wall,
        );
        session.rooms = handoff.rooms;
        session.pair_room = handoff.pair_room;
        session.user = handoff.user;
        session.display_name = handoff.display_name;
        session.seq_out = handoff.seq_out;
        session.resume = Some(Box::new(handoff.resume));
        session
    }

    /// Session resume's state, if resumable.
    pub fn resumption(&self) -> Option<&Resumption> {
        self.resume.as_deref()
    }

    /// Session resume's state, if resumable.
    pub fn resumption_mut(&mut self) -> Option<&mut Resumption> {
        self.resume.as_deref_mut()
    }

    /// The client came back at `now` on a new connection.
    pub fn reattached(&mut self, now: Instant) {
        self.now = self.rate.since(now);
        self.heard(now);
    }

    /// This session's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The identity of the access token the session was opened with.
    pub fn identity(&self) -> Option<&UserName> {
        self.grant.as_deref().map(|g| g.identity())
    }

    /// An `Ack` for the client frames processed since the last one, to go
    /// out with whatever is written next; `None` if nothing is new.
    pub fn take_ack(&mut self) -> Option<Encoded> {
        let seq = self.resume.as_mut()?.take_ack()?;
        Some(encode(&Message::Ack { seq }))
    }

    /// Queues a message for this connection.
    pub fn reply(&self, message: &Message) {
        // A full own outbox closes the connection as a slow consumer.
        let _ = self.outbox.push(encode(message));
    }

    /// Queues an `Error` for this connection.
    pub fn error(&self, code: ErrorCode, message: String, request_seq: u32) {
        self.reply(&Message::Error(ErrorMessage {
            code,
            message,
            request_seq,
        }));
    }

    /// Handles one WebSocket message; returns `Some` when the connection
    /// must close.
    pub async fn receive(&mut self, now: Instant, data: Bytes, max_frames: usize) -> Option<Close> {
        self.now = self.rate.since(now);
        self.heard(now);
        let codec = self.ctx.codec;
        if data.is_empty() {
            // Nothing to decode, but it was sent and it is paid for.
            return match self.admit(0, 0) {
                Err(close) => Some(close),
                Ok(accepted) => {
                    if accepted {
                        self.error(
                            ErrorCode::Malformed,
                            "empty message: a binary message holds one or more frames".into(),
                            0,
                        );
                    }
                    None
                }
            };
        }
        for frame in Frames::new(data, codec.max_payload, max_frames) {
            let (seq, bytes) = frame
                .as_ref()
                .map_or((0, 0), |f| (f.header.seq, HEADER_LEN + f.payload.len()));
            if let (Some(m), Ok(f)) = (&self.ctx.metrics, &frame) {
                m.received(f.header.kind, bytes);
            }
            match self.admit(seq, bytes) {
                Err(close) => return Some(close),
                Ok(true) => {}
                // The rest of a message whose frame layer failed is not
                // read on, limited or not.
                Ok(false) if frame.is_err() => return None,
                Ok(false) => continue,
            }
            let frame = match frame {
                Ok(frame) => frame,
                Err(e) => {
                    // The rest of this message cannot be trusted; the
                    // connection itself is still in sync (one WebSocket
                    // message is one unit), so it stays open.
                    self.error(e.code(), e.to_string(), 0);
                    return None;
                }
            };
            if let Some(resume) = self.resume.as_deref_mut() {
                // Anything from the client shows it got its Welcome.
                resume.confirm();
                // Sent again after a resume, and handled before the drop.
                if resume.is_duplicate(seq) {
                    continue;
                }
                resume.processing(seq, now);
            }
            let scanned = relay::scan(&frame, &codec);
            if let Some(signal) = &scanned {
                if let Some(m) = &self.ctx.metrics {
                    if signal.kind != MessageType::Ice {
                        m.sdp(signal.deflated(), signal.sdp_len);
                    }
                }
                if self.relay_in_place(seq, signal).await {
                    if let Some(close) = self.trouble.as_mut().and_then(|t| t.closing.take()) {
                        return Some(close);
                    }
                    continue;
                }
            }
            match protocol::decode(&frame, &codec) {
                Ok(message) => {
                    if let (Some(m), None, Message::Offer(d) | Message::Answer(d)) =
                        (&self.ctx.metrics, &scanned, &message)
                    {
                        let (Sdp::Plain(b) | Sdp::Deflated(b)) = &d.sdp;
                        m.sdp(matches!(d.sdp, Sdp::Deflated(_)), b.len());
                    }
                    self.handle(seq, message).await
                }
                Err(DecodeError::Compression(e)) => {
                    self.error(ErrorCode::BadCompression, e.to_string(), seq)
                }
                Err(e) => self.error(e.code(), e.to_string(), seq),
            }
            if let Some(close) = self.trouble.as_mut().and_then(|t| t.closing.take()) {
                return Some(close);
            }
        }
        None
    }

    /// Pays for one inbound unit (a frame, or a WebSocket message without
    /// one) out of the rate limit. `Ok(true)`: handle it; `Ok(false)`: it
    /// was dropped (and the client told, within the reply budget);
    /// `Err`: the client is an abuser and the connection must close.
    fn admit(&mut self, seq: u32, bytes: usize) -> Result<bool, Close> {
        let rate = self.ctx.config.rate_per_second;
        match self.rate.check_at(self.now, bytes) {
            Verdict::Accept { unreported } => {
                if unreported > 0 {
                    self.report_drops(unreported);
                }
                Ok(true)
            }
            Verdict::Drop { reply: Some(n) } => {
                if let Some(m) = &self.ctx.metrics {
                    m.dropped(metrics::DropReason::RateLimited);
                }
                let message = if n <= 1 {
                    format!("over {rate} messages/s; message dropped")
                } else {
                    format!(
                        "over {rate} messages/s; message dropped, and {} before it",
                        n - 1
                    )
                };
                self.error(ErrorCode::RateLimited, message, seq);
                if let Some(t) = self.trouble.as_mut() {
                    t.rate_report = None;
                }
                Ok(false)
            }
            Verdict::Drop { reply: None } => {
                if let Some(m) = &self.ctx.metrics {
                    m.dropped(metrics::DropReason::RateLimited);
                }
                let now = self.now();
                let due = self
                    .rate_report()
                    .map_or_else(|| now + Duration::from_secs(1), |(due, _)| due);
                self.trouble().rate_report = Some((due, seq));
                Ok(false)
            }
            Verdict::Abuse => {
                self.error(ErrorCode::RateLimited, "rate limit abused".into(), seq);
                Err(Close::abuse())
            }
        }
    }

    /// Reports drops that got no reply of their own (the reply budget was
    /// spent), covering them with the last one's sequence number.
    fn report_drops(&mut self, count: u32) {
        let last = self
            .trouble
            .as_mut()
            .and_then(|t| t.rate_report.take())
            .map_or(0, |(_, seq)| seq);
        if count == 0 {
            return;
        }
        self.error(
            ErrorCode::RateLimited,
            format!(
                "over {} messages/s: {count} more messages dropped, the last with this seq",
                self.ctx.config.rate_per_second
            ),
            last,
        );
    }

    /// A WebSocket message or control frame without protocol frames (a
    /// ping, a pong, a text message that is not a frame) arrived at `now`,
    /// `bytes` long; `error` is the answer it gets, if any. Paid for out of
    /// the rate limit like a frame.
    pub fn on_frameless(
        &mut self,
        now: Instant,
        bytes: usize,
        error: Option<ErrorMessage>,
    ) -> Option<Close> {
        self.now = self.rate.since(now);
        self.heard(now);
        match self.admit(0, bytes) {
            Err(close) => Some(close),
            Ok(accepted) => {
                if let (true, Some(error)) = (accepted, error) {
                    self.reply(&Message::Error(error));
                }
                None
            }
        }
    }

    fn heard(&mut self, now: Instant) {
        self.last_heard = self.rate.since(now);
        self.pinged = false;
    }

    /// When [`Session::on_timer`] must run next: the heartbeat (a ping
    /// after `heartbeat_interval` of silence, the close after
    /// `heartbeat_timeout`) or a pending drop report.
    pub fn deadline(&self) -> Instant {
        let config = &self.ctx.config;
        let heartbeat = if self.pinged {
            self.last_heard() + config.heartbeat_timeout
        } else {
            self.last_heard() + config.heartbeat_interval
        };
        let due = match self.rate_report() {
            Some((due, _)) => heartbeat.min(due),
            None => heartbeat,
        };
        match self.resume.as_deref().and_then(Resumption::ack_due) {
            Some(ack) => due.min(ack),
            None => due,
        }
    }

    /// Time has come to `now` (at or after [`Session::deadline`]): reports
    /// drops, pings a silent client, or says to close a client silent past
    /// the heartbeat timeout.
    pub fn on_timer(&mut self, now: Instant) -> Option<Close> {
        self.now = self.rate.since(now);
        if self
            .resume
            .as_deref()
            .and_then(Resumption::ack_due)
            .is_some_and(|due| due <= now)
        {
            if let Some(ack) = self.take_ack() {
                let _ = self.outbox.push(ack);
            }
        }
        if self.rate_report().is_some_and(|(due, _)| due <= now) {
            let count = self.rate.take_unreported();
            self.report_drops(count);
            return None;
        }
        let config = &self.ctx.config;
        if self.pinged {
            if now >= self.last_heard() + config.heartbeat_timeout {
                // Said in-band too (request_seq 0), like every other close
                // the server decides, for clients that read frames only.
                let silent = config.heartbeat_timeout.as_millis();
                self.error(
                    ErrorCode::HeartbeatTimeout,
                    format!("nothing heard for {silent} ms (not even a Pong)"),
                    0,
                );
                return Some(Close::app(
                    ErrorCode::HeartbeatTimeout,
                    "heartbeat timeout",
                    LeaveReason::TimedOut,
                ));
            }
        } else if now >= self.last_heard() + config.heartbeat_interval {
            self.pinged = true;
            self.ping_nonce += 1;
            self.reply(&Message::Ping {
                nonce: self.ping_nonce,
            });
        }
        None
    }

    fn trouble(&mut self) -> &mut Trouble {
        self.trouble.get_or_insert_with(Box::default)
    }

    /// When drops past the reply budget are to be reported at the latest,
    /// and the last of them.
    fn rate_report(&self) -> Option<(Instant, u32)> {
        self.trouble.as_ref().and_then(|t| t.rate_report)
    }

    /// The sequence number of the next frame written to the client.
    pub fn next_seq_out(&mut self) -> u32 {
        self.seq_out = next_seq(self.seq_out);
        self.seq_out
    }

    /// What a write needs at once: a numberer for the frames written (as
    /// [`Session::next_seq_out`]) and the metrics to count them in.
    ///
    /// A resumable session holds each frame until the client acknowledges
    /// it, and numbers its `Ack`s 0 (outside the count).
    pub fn writer(&mut self) -> (impl FnMut(&Encoded) -> u32 + '_, Option<&Metrics>) {
        let seq_out = &mut self.seq_out;
        let mut resume = self.resume.as_deref_mut();
        let number = move |frame: &Encoded| {
            let mut next = || {
                *seq_out = next_seq(*seq_out);
                *seq_out
            };
            match resume.as_deref_mut() {
                Some(resume) => resume.number(frame, next),
                None => next(),
            }
        };
        (number, self.ctx.metrics.as_deref())
    }

    /// Forgets rooms an operator removed this peer from (the directory has
    /// already removed it and told everyone), unless the peer has joined
    /// the room again since (a Leave and a Join racing the kick).
    pub async fn forget_rooms(&mut self, rooms: Vec<RoomId>) {
        for room in rooms {
            let rejoined = self
                .ctx
                .directory
                .rooms(Some(&room))
                .await
                .first()
                .is_some_and(|r| r.members.iter().any(|m| m.peer_id == self.peer_id));
            if rejoined {
                continue;
            }
            self.rooms.retain(|r| *r != room);
            if self.pair_room.as_ref() == Some(&room) {
                self.pair_room = None;
            }
            tracing::info!(peer = self.peer_id.0, %room, "removed by an operator");
        }
    }

    /// The name the session is logged in with.
    pub fn user(&self) -> Option<&UserName> {
        self.user.as_ref()
    }

    /// The wall-clock time of the input being handled.
    fn wall_now(&self) -> SystemTime {
        self.started + Duration::from_nanos(self.now)
    }

    /// The time of the input being handled.
    fn now(&self) -> Instant {
        self.rate.at(self.now)
    }

    /// When the client was last heard from.
    fn last_heard(&self) -> Instant {
        self.rate.at(self.last_heard)
    }

    async fn handle(&mut self, seq: u32, message: Message) {
        match message {
            Message::Ping { nonce } => self.reply(&Message::Pong { nonce }),
            Message::Pong { .. } => {}
            Message::Ack { seq } => {
                if let Some(resume) = self.resume.as_deref_mut() {
                    resume.acknowledged(seq);
                }
            }
            Message::Hello(_) => self.error(
                ErrorCode::HelloRequired,
                "hello was already sent".into(),
                seq,
            ),
            Message::Join(join) => self.join(seq, join).await,
            Message::Leave { room } => {
                if !self.leave(&room, LeaveReason::Left).await {
                    self.error(ErrorCode::NotJoined, format!("not in room {room}"), seq);
                    return;
                }
                self.reply(&Message::Left { room });
            }
            Message::Login { name } => self.login(seq, name).await,
            Message::Logout => match self.user.take() {
                Some(name) => {
                    tracing::info!(peer = self.peer_id.0, user = %name, "logged out");
                    let partners = self.ctx.directory.logout(&name, self.peer_id).await;
                    self.hang_up_partners(&name, partners).await;
                    // Member lists show the current name, or none.
                    self.ctx
                        .directory
                        .set_member_user(&self.rooms, self.peer_id, None)
                        .await;
                }
                None => self.error(ErrorCode::NotLoggedIn, "not logged in".into(), seq),
            },
            Message::HangUp { peer } => self.hang_up(seq, peer).await,
            Message::Offer(d) => self.relay_sdp(seq, d, true).await,
            Message::Answer(d) => self.relay_sdp(seq, d, false).await,
            Message::Ice(ice) => self.relay_ice(seq, ice).await,
            Message::Welcome(_)
            | Message::Joined(_)
            | Message::PeerJoined(_)
            | Message::PeerLeft(_)
            | Message::RoomFull { .. }
            | Message::Left { .. }
            | Message::LoginResult(_)
            | Message::Error(_) => self.error(
                ErrorCode::InvalidArgument,
                "that message is sent by the server only".into(),
                seq,
            ),
        }
    }

    /// With a token: the capacity to ask for and whether the room may be
    /// created; `None` when the join is refused (the error is sent).
    ///
    /// A token is checked in full at Hello. One that expires later keeps the
    /// connection and its rooms, so calls in progress go on, but buys no new
    /// joins or names: those get `UNAUTHENTICATED` until the client
    /// reconnects with a fresh token.
    fn join_rights(&self, seq: u32, join: &Join) -> Option<(Option<u32>, bool)> {
        let Some(grant) = self.grant.as_deref() else {
            return Some((join.capacity, true));
        };
        if self.wall_now() >= grant.expires_at() {
            self.error(
                ErrorCode::Unauthenticated,
                "access token expired; reconnect with a fresh one".into(),
                seq,
            );
            return None;
        }
        if !grant.may_join(&join.room, false) {
            self.error(
                ErrorCode::Forbidden,
                format!("your access token does not grant room {}", join.room),
                seq,
            );
            return None;
        }
        let mut capacity = join.capacity;
        if let (RoomMode::Mesh, Some(max)) = (join.mode, grant.max_capacity()) {
            match capacity {
                Some(asked) if asked > max => {
                    self.error(
                        ErrorCode::Forbidden,
                        format!("your access token allows rooms of at most {max} members"),
                        seq,
                    );
                    return None;
                }
                None if self.ctx.config.default_room_capacity > max => capacity = Some(max),
                _ => {}
            }
        }
        Some((capacity, grant.may_create_rooms()))
    }

    async fn join(&mut self, seq: u32, join: Join) {
        let Some((capacity, may_create)) = self.join_rights(seq, &join) else {
            return;
        };
        if self.rooms.contains(&join.room) {
            self.error(
                ErrorCode::InvalidArgument,
                format!("already in room {}", join.room),
                seq,
            );
            return;
        }
        // A pair room is a call: joining one leaves the previous pair room,
        // as in the seed's 1:1 server, but only once the new join has
        // succeeded, so a refused join (full, wrong mode, forbidden, too
        // many rooms) leaves the call in progress alone.
        let replaces = if join.mode == RoomMode::Mesh {
            None
        } else {
            self.pair_room.clone()
        };
        let rooms_after = self.rooms.len() + 1 - usize::from(replaces.is_some());
        if rooms_after > self.ctx.config.max_rooms_per_peer {
            self.error(
                ErrorCode::TooManyRooms,
                format!("at most {} rooms", self.ctx.config.max_rooms_per_peer),
                seq,
            );
            return;
        }
        if !join.display_name.is_empty() {
            self.display_name.clone_from(&join.display_name);
        }
        let member = Member {
            peer_id: self.peer_id,
            display_name: self.display_name.clone(),
            user: self.user.clone(),
            capabilities: self.capabilities,
        };
        let joined = self
            .ctx
            .directory
            .join(&join.room, join.mode, capacity, member, may_create)
            .await;
        match joined {
            Ok(joined) => {
                if let Some(old) = replaces {
                    self.leave(&old, LeaveReason::JoinedOtherRoom).await;
                    self.reply(&Message::Left { room: old });
                }
                if joined.mode == RoomMode::Pair {
                    self.pair_room = Some(join.room.clone());
                }
                tracing::info!(peer = self.peer_id.0, room = %join.room, mode = ?joined.mode, members = joined.members.len(), "joined");
                // Most peers are in one room: grow one at a time.
                self.rooms.reserve_exact(1);
                // The directory has queued Joined for us already, and told
                // the others.
                self.rooms.push(join.room);
            }
            Err(JoinError::Full { room, capacity }) => {
                self.reply(&Message::RoomFull { room, capacity })
            }
            Err(e @ JoinError::ModeMismatch { .. }) => {
                self.error(ErrorCode::ModeMismatch, e.to_string(), seq)
            }
            Err(e @ JoinError::NotAllowedToCreate { .. }) => {
                self.error(ErrorCode::Forbidden, e.to_string(), seq)
            }
            Err(e @ JoinError::Unavailable) => {
                self.error(ErrorCode::Unavailable, e.to_string(), seq)
            }
            Err(e) => self.error(ErrorCode::InvalidArgument, e.to_string(), seq),
        }
    }

    /// Leaves `room`; false if not a member.
    async fn leave(&mut self, room: &RoomId, reason: LeaveReason) -> bool {
        let Some(i) = self.rooms.iter().position(|r| r == room) else {
            return false;
        };
        self.rooms.swap_remove(i);
        if self.pair_room.as_ref() == Some(room) {
            self.pair_room = None;
        }
        self.ctx.directory.leave(room, self.peer_id, reason).await;
        tracing::info!(peer = self.peer_id.0, %room, ?reason, "left");
        true
    }

    async fn login(&mut self, seq: u32, name: UserName) {
        // With a token the only name is the token's user.
        if let Some(grant) = self.grant.as_deref() {
            let error = if self.wall_now() >= grant.expires_at() {
                Some(ErrorCode::Unauthenticated)
            } else if *grant.identity() != name {
                Some(ErrorCode::Forbidden)
            } else {
                None
            };
            if error.is_some() {
                self.reply(&Message::LoginResult(LoginResult { name, error }));
                return;
            }
        }
        if let Some(current) = &self.user {
            if *current != name {
                self.error(
                    ErrorCode::AlreadyLoggedIn,
                    format!("already logged in as {current}"),
                    seq,
                );
                return;
            }
        }
        let error = match self.ctx.directory.login(&name, self.peer_id).await {
            Ok(()) => {
                self.ctx
                    .directory
                    .set_member_user(&self.rooms, self.peer_id, Some(&name))
                    .await;
                tracing::info!(peer = self.peer_id.0, user = %name, "logged in");
                self.user = Some(name.clone());
                None
            }
            Err(LoginError::Taken) => Some(ErrorCode::NameTaken),
            Err(LoginError::Unavailable) => Some(ErrorCode::Unavailable),
        };
        self.reply(&Message::LoginResult(LoginResult { name, error }));
    }

    /// The address receivers see for this peer when it writes to `to`.
    fn own_address(&self, to: &Address) -> Address {
        match (to, &self.user) {
            (Address::User(_), Some(me)) => Address::User(me.clone()),
            _ => Address::Peer(self.peer_id),
        }
    }

    fn route_error(&self, seq: u32, e: RouteError) {
        self.error(e.code(), e.to_string(), seq);
    }

    fn may_negotiate(&self, seq: u32) -> bool {
        if self.rooms.is_empty() && self.user.is_none() {
            self.error(
                ErrorCode::NotJoined,
                "join a room or log in before negotiating".into(),
                seq,
            );
            return false;
        }
        true
    }

    /// Finds whom a negotiation message from this peer goes to, or tells
    /// the peer why it cannot be delivered.
    async fn target(&self, seq: u32, hint: Option<&RoomId>, to: &Address) -> Option<Target> {
        if !self.may_negotiate(seq) {
            return None;
        }
        self.ctx
            .directory
            .resolve(self.peer_id, self.user.as_ref(), &self.rooms, hint, to)
            .await
            .map_err(|e| self.route_error(seq, e))
            .ok()
    }

    /// Delivers to a resolved target, or tells the peer it was not. A
    /// sender that keeps filling a receiver that cannot keep up is the one
    /// disconnected (after [`MAX_BUSY`] `PEER_BUSY` in one rate window),
    /// never the receiver.
    fn send(&mut self, seq: u32, target: &Target, frame: Encoded) {
        let origin = Origin {
            peer: self.peer_id,
            seq,
            read_at: self.now(),
        };
        let Err(e) = self.ctx.directory.deliver(target, frame, origin) else {
            return;
        };
        self.route_error(seq, e.clone());
        if e == RouteError::PeerBusy {
            if let Some(m) = &self.ctx.metrics {
                m.dropped(metrics::DropReason::PeerBusy);
            }
            let now = self.now();
            let window = self.ctx.config.rate_abuse_window;
            let trouble = self.trouble();
            match &mut trouble.busy {
                Some((start, count)) if now.duration_since(*start) < window => *count += 1,
                busy => *busy = Some((now, 1)),
            }
            if trouble.busy.is_some_and(|(_, count)| count >= MAX_BUSY) {
                trouble.closing.get_or_insert(Close::app(
                    ErrorCode::PeerBusy,
                    "kept sending to a peer that is not keeping up",
                    LeaveReason::Kicked,
                ));
            }
        }
    }

    /// An offer or answer by name begins (or continues) a named call.
    async fn remember_partner(&self, to: &Address, target: &Target) {
        if let (Address::User(name), Some(me)) = (to, &self.user) {
            self.ctx
                .directory
                .open_call(me, self.peer_id, name, target.peer)
                .await;
        }
    }

    /// Relays a signal checked in place (the fast path). Returns false when
    /// it needs the full path: a deflated SDP for a receiver that cannot
    /// inflate it.
    async fn relay_in_place(&mut self, seq: u32, signal: &relay::Signal) -> bool {
        let Some(target) = self.target(seq, signal.room.as_ref(), &signal.target).await else {
            return true;
        };
        if signal.deflated() && !target.capabilities.contains(Capabilities::DEFLATE_SDP) {
            return false;
        }
        if signal.kind != MessageType::Ice {
            self.remember_partner(&signal.target, &target).await;
        }
        let frame = Encoded {
            kind: signal.kind,
            flags: signal.flags,
            payload: relay::readdress(signal, &self.own_address(&signal.target)),
        };
        self.send(seq, &target, frame);
        true
    }

    async fn relay_sdp(&mut self, seq: u32, mut d: protocol::SessionDescription, offer: bool) {
        let Some(target) = self.target(seq, d.room.as_ref(), &d.peer).await else {
            return;
        };
        if let Sdp::Deflated(data) = &d.sdp {
            if !target.capabilities.contains(Capabilities::DEFLATE_SDP) {
                // The receiver cannot inflate: do it for it, within the cap.
                match sdp::inflate(data, self.ctx.codec.max_sdp) {
                    Ok(plain) if std::str::from_utf8(&plain).is_ok() => {
                        d.sdp = Sdp::Plain(plain.into())
                    }
                    Ok(_) => {
                        return self.error(
                            ErrorCode::BadCompression,
                            "inflated sdp is not UTF-8".into(),
                            seq,
                        )
                    }
                    Err(e) => return self.error(ErrorCode::BadCompression, e.to_string(), seq),
                }
            }
        }
        self.remember_partner(&d.peer, &target).await;
        d.peer = self.own_address(&d.peer);
        let message = if offer {
            Message::Offer(d)
        } else {
            Message::Answer(d)
        };
        self.send(seq, &target, encode(&message));
    }

    async fn relay_ice(&mut self, seq: u32, mut ice: protocol::IceCandidates) {
        let Some(target) = self.target(seq, ice.room.as_ref(), &ice.peer).await else {
            return;
        };
        ice.peer = self.own_address(&ice.peer);
        self.send(seq, &target, encode(&Message::Ice(ice)));
    }

    async fn hang_up(&mut self, seq: u32, peer: Address) {
        let Some(target) = self.target(seq, None, &peer).await else {
            return;
        };
        if let (Address::User(name), Some(me)) = (&peer, &self.user) {
            // Only a call partner may hang up: no cold hang-ups by name.
            if !self.ctx.directory.in_call(me, name).await {
                return self.error(
                    ErrorCode::UnknownPeer,
                    format!("no call in progress with {name}"),
                    seq,
                );
            }
            self.ctx.directory.end_call(me, name).await;
        }
        let from = self.own_address(&peer);
        self.send(seq, &target, encode(&Message::HangUp { peer: from }));
    }

    /// Tells every named call partner that `me` is gone.
    async fn hang_up_partners(&self, me: &UserName, partners: Vec<UserName>) {
        if partners.is_empty() {
            return;
        }
        let frame = encode(&Message::HangUp {
            peer: Address::User(me.clone()),
        });
        for partner in partners {
            let to = Address::User(partner);
            let resolved = self
                .ctx
                .directory
                .resolve(self.peer_id, Some(me), &[], None, &to)
                .await;
            if let Ok(target) = resolved {
                self.ctx.directory.notify(target.peer, frame.clone());
            }
        }
    }

    /// Ends the session: leaves every room, frees the name (telling call
    /// partners), leaves the registry, and tells the sender of every signal
    /// still queued for this peer that it was not delivered. Explicit and
    /// asynchronous (the directory may be remote); the caller bounds it in
    /// time.
    pub async fn teardown(&mut self) {
        let reason = self.leave_reason;
        for room in std::mem::take(&mut self.rooms) {
            self.ctx.directory.leave(&room, self.peer_id, reason).await;
            tracing::info!(peer = self.peer_id.0, %room, ?reason, "left");
        }
        self.pair_room = None;
        if let Some(name) = self.user.take() {
            tracing::info!(peer = self.peer_id.0, user = %name, "logged out");
            let partners = self.ctx.directory.logout(&name, self.peer_id).await;
            self.hang_up_partners(&name, partners).await;
        }
        self.ctx.directory.registry().unregister(self.peer_id);
        self.ctx.directory.ended(self.peer_id);
        let cut_off = self.outbox.closed() == Some(CloseReason::SlowConsumer);
        for origin in self.outbox.take_undelivered(true) {
            let (code, why) = if cut_off {
                (ErrorCode::PeerBusy, "it was disconnected for not reading")
            } else {
                (ErrorCode::UnknownPeer, "it left first")
            };
            let error = encode(&Message::Error(ErrorMessage {
                code,
                message: format!("not delivered to {}: {why}", self.peer_id),
                request_seq: origin.seq,
            }));
            self.ctx.directory.notify(origin.peer, error);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules without a socket: each test drives sessions with inputs
    //! and times it chooses, and reads what they queued for their clients.
    //! The local directory never suspends, so every input completes at
    //! once (`now_or_never`).

    use std::time::Duration;

    use bytes::BytesMut;
    use futures_util::FutureExt;

    use super::*;
    use crate::outbox::OutboxLimits;
    use crate::registry::Registry;
    use crate::rooms::RoomPolicy;

    struct Peer {
        session: Session<LocalDirectory>,
        outbox: Arc<Outbox>,
        seq: u32,
    }

    use crate::directory::LocalDirectory;

    fn context(config: Config) -> Arc<Context<LocalDirectory>> {
        let directory = Arc::new(LocalDirectory::new(
            Arc::new(Registry::new(4)),
            4,
            RoomPolicy {
                default_capacity: config.default_room_capacity,
                max_capacity: config.max_room_capacity,
            },
        ));
        Arc::new(Context {
            codec: config.codec_limits(),
            config,
            directory,
            metrics: None,
        })
    }

    fn peer_with(
        ctx: &Arc<Context<LocalDirectory>>,
        id: u64,
        now: Instant,
        grant: Option<Grant>,
    ) -> Peer {
        let outbox = Arc::new(Outbox::new(OutboxLimits {
            frames: 64,
            bytes: 1 << 20,
        }));
        let caps = Capabilities::DEFLATE_SDP;
        ctx.directory
            .registry()
            .register(PeerId(id), caps, outbox.clone());
        let rate = RateGuard::new(ctx.config.rate_policy(), now);
        let session = Session::new(
            ctx.clone(),
            PeerId(id),
            caps,
            outbox.clone(),
            grant.map(Box::new),
            rate,
            now,
            SystemTime::now(),
        );
        Peer {
            session,
            outbox,
            seq: 1,
        }
    }

    fn peer(ctx: &Arc<Context<LocalDirectory>>, id: u64, now: Instant) -> Peer {
        peer_with(ctx, id, now, None)
    }

    impl Peer {
        /// Sends one message at `now`; returns its seq and the close, if any.
        fn send(&mut self, now: Instant, m: Message) -> (u32, Option<Close>) {
            self.seq += 1;
            let mut out = BytesMut::new();
            encode(&m).write(self.seq, &mut out);
            let close = self
                .session
                .receive(now, out.freeze(), 64)
                .now_or_never()
                .expect("the local directory never suspends");
            (self.seq, close)
        }

        /// What the session queued for its client since the last call.
        fn take(&self) -> Vec<Message> {
            let mut frames = Vec::new();
            self.outbox.drain(&mut frames, usize::MAX, usize::MAX);
            frames
                .iter()
                .map(|f| {
                    let mut out = BytesMut::new();
                    f.write(1, &mut out);
                    let limits = CodecLimits::default();
                    let mut all = protocol::decode_message(out.freeze(), &limits);
                    all.next().unwrap().unwrap().1
                })
                .collect()
        }

        fn teardown(&mut self) {
            self.session.teardown().now_or_never().unwrap();
        }
    }

    fn join(room: &str, mode: RoomMode) -> Message {
        Message::Join(Join {
            room: RoomId::new(room).unwrap(),
            mode,
            capacity: None,
            display_name: String::new(),
        })
    }

    fn offer(to: Address) -> Message {
        Message::Offer(protocol::SessionDescription {
            peer: to,
            sdp: Sdp::Plain(Bytes::from_static(b"v=0")),
            room: None,
            app_data: String::new(),
        })
    }

    fn name(s: &str) -> UserName {
        UserName::new(s).unwrap()
    }

    fn error_codes(messages: &[Message]) -> Vec<ErrorCode> {
        messages
            .iter()
            .filter_map(|m| match m {
                Message::Error(e) => Some(e.code),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn switching_pair_rooms_keeps_the_call_when_the_new_join_is_refused() {
        let t = Instant::now();
        let ctx = context(Config::default());
        let (mut a, mut b, mut c, mut d) = (
            peer(&ctx, 1, t),
            peer(&ctx, 2, t),
            peer(&ctx, 3, t),
            peer(&ctx, 4, t),
        );
        a.send(t, join("call", RoomMode::Pair));
        b.send(t, join("call", RoomMode::Pair));
        c.send(t, join("full", RoomMode::Pair));
        d.send(t, join("full", RoomMode::Pair));
        a.take();
        b.take();
        a.send(t, join("full", RoomMode::Pair));
        assert!(matches!(a.take()[..], [Message::RoomFull { .. }]));
        a.send(t, offer(Address::Peer(PeerId(2))));
        assert!(
            matches!(b.take()[..], [Message::Offer(_)]),
            "the call survived"
        );
        // A join that works replaces the pair room: Joined, then Left.
        a.send(t, join("next", RoomMode::Pair));
        let got = a.take();
        assert!(
            matches!(&got[..], [Message::Joined(j), Message::Left { room }]
            if j.room.as_str() == "next" && room.as_str() == "call")
        );
        assert!(matches!(&b.take()[..], [Message::PeerLeft(p)]
            if p.reason == LeaveReason::JoinedOtherRoom));
    }

    #[test]
    fn rooms_per_peer_are_limited() {
        let t = Instant::now();
        let ctx = context(Config {
            max_rooms_per_peer: 2,
            ..Config::default()
        });
        let mut a = peer(&ctx, 1, t);
        a.send(t, join("m1", RoomMode::Mesh));
        a.send(t, join("m2", RoomMode::Mesh));
        let (seq, _) = a.send(t, join("m3", RoomMode::Mesh));
        let got = a.take();
        assert_eq!(error_codes(&got), vec![ErrorCode::TooManyRooms]);
        assert!(matches!(got.last(), Some(Message::Error(e)) if e.request_seq == seq));
    }

    #[test]
    fn login_state_and_names() {
        let t = Instant::now();
        let ctx = context(Config::default());
        let (mut a, mut b) = (peer(&ctx, 1, t), peer(&ctx, 2, t));
        a.send(t, Message::Logout);
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::NotLoggedIn]);
        a.send(
            t,
            Message::Login {
                name: name("alice"),
            },
        );
        assert!(matches!(&a.take()[..], [Message::LoginResult(r)] if r.error.is_none()));
        a.send(
            t,
            Message::Login {
                name: name("alicia"),
            },
        );
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::AlreadyLoggedIn]);
        b.send(
            t,
            Message::Login {
                name: name("alice"),
            },
        );
        assert!(matches!(&b.take()[..], [Message::LoginResult(r)]
            if r.error == Some(ErrorCode::NameTaken)));
        a.send(t, Message::Logout);
        b.send(
            t,
            Message::Login {
                name: name("alice"),
            },
        );
        assert!(matches!(&b.take()[..], [Message::LoginResult(r)] if r.error.is_none()));
    }

    #[test]
    fn named_calls_begin_with_an_offer_and_end_with_a_hang_up_or_a_departure() {
        let t = Instant::now();
        let ctx = context(Config::default());
        let (mut caller, mut callee, mut mallory) =
            (peer(&ctx, 1, t), peer(&ctx, 2, t), peer(&ctx, 3, t));
        for (p, n) in [
            (&mut caller, "caller"),
            (&mut callee, "callee"),
            (&mut mallory, "m"),
        ] {
            p.send(t, Message::Login { name: name(n) });
            p.take();
        }
        let callee_name = Address::User(name("callee"));
        mallory.send(
            t,
            Message::HangUp {
                peer: callee_name.clone(),
            },
        );
        assert_eq!(error_codes(&mallory.take()), vec![ErrorCode::UnknownPeer]);
        assert!(callee.take().is_empty(), "a cold hang-up reaches no one");
        caller.send(t, offer(callee_name.clone()));
        assert!(matches!(&callee.take()[..], [Message::Offer(_)]));
        // The callee disconnects while it rings: the caller is told.
        callee.teardown();
        assert_eq!(caller.take(), vec![Message::HangUp { peer: callee_name }]);
    }

    #[test]
    fn negotiation_needs_a_room_or_a_name_and_stays_in_shared_rooms() {
        let t = Instant::now();
        let ctx = context(Config::default());
        let (mut a, mut b) = (peer(&ctx, 1, t), peer(&ctx, 2, t));
        a.send(t, offer(Address::Peer(PeerId(2))));
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::NotJoined]);
        a.send(t, join("a-room", RoomMode::Mesh));
        b.send(t, join("b-room", RoomMode::Mesh));
        a.take();
        a.send(t, offer(Address::Peer(PeerId(2))));
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::UnknownPeer]);
        assert!(b.take().iter().all(|m| !matches!(m, Message::Offer(_))));
        a.send(t, offer(Address::User(name("b"))));
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::NotLoggedIn]);
    }

    #[test]
    fn grants_limit_rooms_and_names_until_the_token_expires() {
        let t = Instant::now();
        let secret = b"0123456789abcdef0123456789abcdef";
        let token = crate::auth::mint_token(
            secret,
            "alice",
            vec!["lobby".into()],
            None,
            Duration::from_secs(120),
            true,
            None,
        )
        .unwrap();
        let grant = crate::auth::Authenticator::new(secret)
            .unwrap()
            .verify(&token, SystemTime::now())
            .unwrap();
        let ctx = context(Config::default());
        let mut a = peer_with(&ctx, 1, t, Some(grant));
        a.send(t, join("elsewhere", RoomMode::Mesh));
        assert_eq!(error_codes(&a.take()), vec![ErrorCode::Forbidden]);
        a.send(
            t,
            Message::Login {
                name: name("mallory"),
            },
        );
        assert!(matches!(&a.take()[..], [Message::LoginResult(r)]
            if r.error == Some(ErrorCode::Forbidden)));
        a.send(t, join("lobby", RoomMode::Mesh));
        assert!(matches!(&a.take()[..], [Message::Joined(_)]));
        // Past the token's expiry (plus the default leeway), no new rights.
        let later = t + Duration::from_secs(600);
        a.send(
            later,
            Message::Login {
                name: name("alice"),
            },
        );
        assert!(matches!(&a.take()[..], [Message::LoginResult(r)]
            if r.error == Some(ErrorCode::Unauthenticated)));
    }

    #[test]
    fn the_rate_limit_runs_on_the_time_passed_in() {
        let t = Instant::now();
        let ctx = context(Config {
            rate_per_second: 5,
            rate_burst: 5,
            rate_abuse_threshold: 20,
            ..Config::default()
        });
        let mut a = peer(&ctx, 1, t);
        for n in 0..8 {
            a.send(t, Message::Ping { nonce: n });
        }
        let got = a.take();
        let pongs = got
            .iter()
            .filter(|m| matches!(m, Message::Pong { .. }))
            .count();
        assert_eq!(pongs, 5, "the burst");
        assert_eq!(error_codes(&got).len(), 3);
        // A second later the bucket has refilled by the rate.
        let later = t + Duration::from_secs(1);
        for n in 0..5 {
            a.send(later, Message::Ping { nonce: n });
        }
        assert_eq!(a.take().len(), 5);
        // A flood well over the limit is closed (1008).
        let close = (0..100)
            .find_map(|n| a.send(later, Message::Ping { nonce: n }).1)
            .expect("closed");
        assert_eq!(close.code, 1008);
    }

    #[test]
    fn the_heartbeat_pings_a_silent_client_then_closes_it() {
        let t = Instant::now();
        let ctx = context(Config::default());
        let interval = ctx.config.heartbeat_interval;
        let timeout = ctx.config.heartbeat_timeout;
        let mut a = peer(&ctx, 1, t);
        assert_eq!(a.session.deadline(), t + interval);
        assert_eq!(a.session.on_timer(t + interval), None);
        assert_eq!(a.take(), vec![Message::Ping { nonce: 1 }]);
        assert_eq!(a.session.deadline(), t + timeout);
        // Hearing from the client starts the count again.
        a.send(t + interval, Message::Pong { nonce: 1 });
        assert_eq!(a.session.deadline(), t + interval + interval);
        let silent = t + interval + timeout;
        assert_eq!(a.session.on_timer(t + interval + interval), None);
        let close = a.session.on_timer(silent).expect("closed");
        assert_eq!(close.code, 4000 + ErrorCode::HeartbeatTimeout as u16);
    }
}
