//! One task per WebSocket connection: the I/O around a [`Session`].
//!
//! The task owns the socket. It reads WebSocket messages and hands them to
//! its session with the time; it writes what the session queued in its
//! [`Outbox`], draining it in one go into one WebSocket message with one
//! flush; it arms one timer at the session's deadline. The rules live in
//! `crate::session`; nothing here decides anything but how bytes move and
//! how the socket is closed.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use super::http::HeaderToken;
use super::{park, Admission, Shared};
use crate::auth::Grant;
use crate::compat::{Dialect, Outbound, Translator};
use crate::directory::Directory;
use crate::metrics::{Metrics, Outcome, ResumeOutcome};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{
    self, encode, sdp, Capabilities, DecodeError, Encoded, ErrorCode, ErrorMessage, FieldError,
    LeaveReason, Message, ResumeRefusal, Welcome, PROTOCOL_VERSION,
};
use crate::rate::{RateGuard, Verdict};
use crate::session::{Close, Session};

/// How long the end of a session may take (leaving rooms, freeing the name,
/// telling senders of undelivered signals): with a remote directory it is a
/// few round trips, which must not hold the connection slot forever.
const TEARDOWN_LIMIT: Duration = Duration::from_secs(5);

/// How to end a connection whose WebSocket layer failed: the RFC 6455 code
/// for a protocol violation, invalid UTF-8 or an oversized message; `None`
/// when the socket itself is gone (nothing can be sent).
fn ws_error_close(e: &tungstenite::Error) -> Option<Close> {
    let (code, reason) = match e {
        tungstenite::Error::Capacity(_) => (CloseCode::Size, "message too large"),
        // The TCP connection ended without a close frame: nothing to send
        // it, and no violation to count.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => return None,
        tungstenite::Error::Protocol(_) => (CloseCode::Protocol, "websocket protocol violation"),
        tungstenite::Error::Utf8(_) => (CloseCode::Invalid, "text message is not UTF-8"),
        tungstenite::Error::WriteBufferFull(_) => return Some(Close::slow_consumer()),
        _ => return None,
    };
    Some(Close {
        code: code.into(),
        reason,
        leave: LeaveReason::Disconnected,
    })
}

/// How a client's frames travel: binary frames (the protocol proper) or
/// JSON text frames (`protocol::text`), chosen by the form of the client's
/// Hello, the server answering in the same form; or, on a compat endpoint,
/// a tutorial's dialect (`crate::compat`).
#[derive(Debug)]
enum Encoding {
    Binary,
    Json,
    Compat(Box<Translator>),
}

/// Runs one connection to its end.
///
/// The connection's long-lived state is boxed and the future borrows it:
/// an `async fn` taking the socket by value would store it twice (as the
/// argument and as the local it is moved into), and this future lives as
/// long as the connection.
pub(super) fn run<S, D: Directory>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared<D>>,
    admission: Admission,
    header_token: HeaderToken,
    dialect: Option<Dialect>,
) -> impl std::future::Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let header_token = match header_token {
        Ok(None) => None,
        other => Some(Box::new(other)),
    };
    let mut conn = Box::new(Conn {
        ws,
        shared,
        admission,
    });
    // Only the handshake needs these: they are its arguments, not part of
    // the state every idle connection keeps.
    async move { conn.run(header_token, dialect).await }
}

struct Conn<S, D> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared<D>>,
    admission: Admission,
}

impl Encoding {
    fn name(&self) -> &'static str {
        match self {
            Encoding::Binary => "binary",
            Encoding::Json => "json",
            Encoding::Compat(_) => "compat",
        }
    }
}

impl<S, D: Directory> Conn<S, D>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Reads the Hello, checks the token, starts or resumes the session
    /// (its Welcome queued or sent) and runs the frames that came behind
    /// the Hello; `None` when the connection ended meanwhile.
    /// `header_token` is what `Sec-WebSocket-Protocol` carried (boxed so
    /// that the common case, none, costs one word); `dialect` is set on a
    /// compat endpoint, where no Hello comes and the server assumes one.
    async fn start(
        &mut self,
        header_token: Option<Box<HeaderToken>>,
        dialect: Option<Dialect>,
    ) -> Option<Started<D>> {
        let ws = &mut self.ws;
        let shared = &self.shared;
        let config = &shared.ctx.config;
        let deadline = Instant::now() + config.handshake_timeout;
        // Counts from the first byte: pings and junk before Hello too.
        let mut rate = RateGuard::sharing(&shared.rate, Instant::now().into_std());
        // The handshake and closing phases are boxed: they run once, and their
        // state would otherwise stay in every idle connection's task.
        let hello = match dialect {
            Some(dialect) => Ok(Ok((
                protocol::Hello {
                    resume: None,
                    protocol_version: PROTOCOL_VERSION,
                    capabilities: Capabilities::default(),
                    access_token: None,
                    user_agent: format!("compat/{dialect:?}"),
                },
                Bytes::new(),
                Encoding::Compat(Box::new(Translator::new(dialect))),
            ))),
            None => {
                let hello = Box::pin(tokio::time::timeout_at(
                    deadline,
                    read_hello(ws, shared, &mut rate),
                ));
                tokio::select! {
                    hello = hello => hello,
                    // A drain does not wait for a Hello that may never come.
                    () = shared.drain_started() => Ok(Err(Refusal::Error(
                        ErrorCode::ServerShuttingDown,
                        "server is draining; connect again (to another node)".to_owned(),
                        Encoding::Binary,
                    ))),
                }
            }
        };
        let metrics = shared.ctx.metrics.as_deref();
        let (hello, after_hello, mut encoding) = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(Refusal::Close(close))) => {
                if let Some(m) = metrics {
                    m.attempt(Outcome::HelloFailed);
                }
                Box::pin(close_within(ws, close, metrics)).await;
                return None;
            }
            Ok(Err(Refusal::ClientClosed)) => {
                if let Some(m) = metrics {
                    m.attempt(Outcome::HelloFailed);
                }
                Box::pin(finish_client_close(ws)).await;
                return None;
            }
            Ok(Err(Refusal::Error(code, message, mut encoding))) => {
                Box::pin(refuse_within(ws, &mut encoding, code, message, metrics)).await;
                return None;
            }
            Err(_) => {
                let message = "no hello before the handshake timeout".to_owned();
                Box::pin(refuse_within(
                    ws,
                    &mut Encoding::Binary,
                    ErrorCode::HelloRequired,
                    message,
                    metrics,
                ))
                .await;
                return None;
            }
        };
        let grant = match authenticate(shared, header_token, &hello) {
            Ok(grant) => grant,
            Err(message) => {
                debug!(%message, "unauthenticated");
                Box::pin(refuse_within(
                    ws,
                    &mut encoding,
                    ErrorCode::Unauthenticated,
                    message,
                    metrics,
                ))
                .await;
                return None;
            }
        };
        // Session resume: granted to a client that asks, on a server with
        // it on (not on the compat endpoints: their clients send no Hello).
        let resume_limits = config.resume_limits().filter(|_| {
            hello.capabilities.contains(Capabilities::RESUME)
                && !matches!(encoding, Encoding::Compat(_))
        });
        let mut offered = Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH);
        if resume_limits.is_some() {
            offered = offered.union(Capabilities::RESUME);
        }
        let capabilities = hello.capabilities.intersection(offered);
        let mut refusal = None;
        let mut resumed = None;
        let mut moved_here = false;
        if let (Some(_), Some(asked)) = (resume_limits, &hello.resume) {
            let identity = grant.as_deref().map(Grant::identity);
            let taken = match Box::pin(park::take(shared, &asked.token, identity)).await {
                // Held by another node of the cluster: brought here.
                Err(ResumeRefusal::UnknownToken) if park::elsewhere(shared, &asked.token) => {
                    moved_here = true;
                    Box::pin(park::fetch(shared, &asked.token, grant.clone())).await
                }
                taken => taken,
            };
            match taken {
                Ok((session, outbox)) => {
                    let replay = session.resumption().map(|r| r.replay_after(asked.last_seq));
                    match replay {
                        Some(Ok(frames)) => resumed = Some((session, outbox, frames)),
                        _ => {
                            refusal = Some(ResumeRefusal::ReplayLost);
                            park::unmark(shared, &asked.token);
                            let mut session = session;
                            park::forget(shared, &mut session);
                            tokio::spawn(park::end(session, LeaveReason::TimedOut));
                        }
                    }
                }
                Err(why) => refusal = Some(why),
            }
        }
        if let (Some(m), Some(why)) = (metrics, refusal) {
            m.resume(ResumeOutcome::refused(why));
        }
        let (mut session, outbox) = match resumed {
            Some((mut session, outbox, frames)) => {
                let now = Instant::now().into_std();
                session.reattached(now);
                let peer_id = session.peer_id();
                let presented = hello
                    .resume
                    .as_ref()
                    .and_then(|r| crate::resume::Token::try_from(&r.token[..]).ok())
                    .expect("a session is taken by a well-formed token");
                park::rotate(shared, &mut session, presented);
                let resume = session.resumption_mut().expect("a resumable session");
                resume.resumed(hello.resume.as_ref().map_or(0, |r| r.last_seq));
                let welcome = Welcome {
                    peer_id,
                    protocol_version: PROTOCOL_VERSION,
                    limits: config.wire_limits(),
                    heartbeat_interval: config.heartbeat_interval,
                    heartbeat_timeout: config.heartbeat_timeout,
                    ice_servers: ice_servers(shared, grant.as_deref(), peer_id),
                    capabilities,
                    sdp_dictionary: sdp::DICTIONARY_ID,
                    resume: Some(protocol::Resume {
                        token: resume.token_bytes(),
                        resumed: true,
                        refusal: None,
                        last_seq: resume.client_seq(),
                        limits: resume.limits(),
                    }),
                };
                // Welcome outside the numbering (seq 0), then every frame
                // the client missed with its own number, then the rest.
                let (numbers, frames): (Vec<u32>, Vec<Encoded>) = frames.into_iter().unzip();
                let mut seqs = std::iter::once(0).chain(numbers);
                let mut out: Vec<Encoded> = std::iter::once(encode(&Message::Welcome(welcome)))
                    .chain(frames)
                    .collect();
                let replayed = out.len() - 1;
                let sent = send_frames(
                    ws,
                    &mut encoding,
                    &mut out,
                    |_| seqs.next().unwrap_or(0),
                    metrics,
                );
                if tokio::time::timeout(config.heartbeat_timeout, sent)
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    // Gone again at once: it may try again within the grace.
                    park::park(shared, session, outbox);
                    return None;
                }
                if let Some(m) = metrics {
                    m.resume(if moved_here {
                        ResumeOutcome::MovedHere
                    } else {
                        ResumeOutcome::Resumed
                    });
                }
                tracing::info!(
                    conn = self.admission.id,
                    addr = %self.admission.addr,
                    peer = session.peer_id().0,
                    replayed,
                    moved_here,
                    "session resumed"
                );
                (session, outbox)
            }
            None => {
                let peer_id = shared.next_peer_id();
                // Decimal, as in the JSON mapping, the compat endpoints and the admin API.
                tracing::Span::current().record("peer", peer_id.0);
                let outbox = Arc::new(Outbox::new(shared.outbox));
                shared
                    .ctx
                    .directory
                    .registry()
                    .register(peer_id, capabilities, outbox.clone());
                let ice_servers = ice_servers(shared, grant.as_deref(), peer_id);
                let mut session = Box::new(Session::new(
                    shared.ctx.clone(),
                    peer_id,
                    capabilities,
                    outbox.clone(),
                    grant,
                    rate,
                    Instant::now().into_std(),
                    SystemTime::now(),
                ));
                let resume = resume_limits.map(|limits| {
                    session.enable_resume(limits);
                    let r = session.resumption().expect("just enabled");
                    protocol::Resume {
                        token: r.token_bytes(),
                        resumed: false,
                        refusal,
                        last_seq: 0,
                        limits,
                    }
                });
                session.reply(&Message::Welcome(Welcome {
                    peer_id,
                    protocol_version: PROTOCOL_VERSION,
                    limits: config.wire_limits(),
                    heartbeat_interval: config.heartbeat_interval,
                    heartbeat_timeout: config.heartbeat_timeout,
                    ice_servers,
                    capabilities,
                    sdp_dictionary: sdp::DICTIONARY_ID,
                    resume,
                }));
                tracing::info!(
                    conn = self.admission.id,
                    addr = %self.admission.addr,
                    peer = peer_id.0,
                    encoding = encoding.name(),
                    // Debug: a client's text must not forge log lines.
                    user_agent = ?hello.user_agent,
                    "session started"
                );
                (session, outbox)
            }
        };
        let peer_id = session.peer_id();
        let takeover = park::live(shared, &session);
        if let Some(m) = metrics {
            m.attempt(Outcome::Accepted);
            m.session_open(1);
            m.handshake_duration
                .observe_duration(self.admission.accepted_at.elapsed());
        }
        // Frames the client sent right behind its Hello (Hello + Join in
        // one message) run now, after Welcome is queued.
        // Hello counts as one of the message's frames.
        let early = if after_hello.is_empty() {
            None
        } else {
            let budget = shared.ctx.codec.max_frames.saturating_sub(1);
            let now = Instant::now().into_std();
            Box::pin(session.receive(now, after_hello, budget))
                .await
                .map(Ending::Close)
        };
        // What the client sends from now on was sent after it got this
        // Welcome (the frames behind its Hello were not).
        if let Some(resume) = session.resumption_mut() {
            resume.arm();
        }
        Some((session, encoding, outbox, peer_id, takeover, early))
    }

    async fn run(&mut self, header_token: Option<Box<HeaderToken>>, dialect: Option<Dialect>) {
        // Boxed: the handshake's state (the Hello, the Welcome's parts, a
        // resume's replay) would otherwise stay in every idle connection's
        // task.
        let Some((mut session, mut encoding, outbox, peer_id, takeover, early)) =
            Box::pin(self.start(header_token, dialect)).await
        else {
            return;
        };
        let ws = &mut self.ws;
        let shared = &self.shared;
        let ending = match early {
            Some(ending) => ending,
            None => {
                serve(
                    ws,
                    &mut encoding,
                    &mut session,
                    &outbox,
                    shared,
                    takeover.as_deref(),
                )
                .await
            }
        };
        // Boxed too: the end's state would otherwise widen every idle
        // connection's task.
        Box::pin(self.end(session, outbox, peer_id, ending)).await;
    }

    /// Ends the session as `ending` says: keeps it for a resume, or tears
    /// it down; then closes the socket.
    async fn end(
        &mut self,
        mut session: Box<Session<D>>,
        outbox: Arc<Outbox>,
        peer_id: protocol::PeerId,
        ending: Ending,
    ) {
        let ws = &mut self.ws;
        let shared = &self.shared;
        let metrics = shared.ctx.metrics.as_deref();
        let ending_was_client_close = matches!(ending, Ending::ClientClosed);
        let taken_over = matches!(ending, Ending::TakenOver);
        let close = match ending {
            Ending::Close(close) => Some(close),
            Ending::TakenOver => Some(Close {
                code: 1000,
                reason: "resumed on another connection",
                leave: LeaveReason::Disconnected,
            }),
            Ending::ClientClosed | Ending::SocketGone => None,
        };
        if let Some(m) = metrics {
            m.session_open(-1);
        }
        // A drop (no close frame from the client, nothing the server
        // decided but a heartbeat timeout) keeps a resumable session for
        // its client to come back to.
        let dropped = match (&close, ending_was_client_close) {
            (None, false) => true,
            (Some(c), _) => taken_over || c.code == 4000 + ErrorCode::HeartbeatTimeout as u16,
            (None, true) => false,
        };
        // A session whose replay buffer overflowed is kept too: a client
        // that saw the dropped frames can still resume it, and one that did
        // not is told REPLAY_LOST (and the session ends as timed out).
        // A node of a cluster that drains keeps its sessions too, for
        // their clients to resume on another node.
        let handed_on = shared.draining()
            && shared.hands_over()
            && close.is_some_and(|c| c.leave == LeaveReason::ServerShutdown);
        if (dropped && !shared.draining() || handed_on) && session.resumption().is_some() {
            tracing::info!(
                conn = self.admission.id,
                addr = %self.admission.addr,
                peer = peer_id.0,
                close_code = close.map(|c| c.code),
                "connection dropped; session kept for a resume"
            );
            if handed_on {
                // Closed by the drain: what reaches it now goes along.
                outbox.reopen();
            }
            park::park(shared, session, outbox);
            if let Some(close) = close {
                Box::pin(close_within(ws, close, metrics)).await;
            }
            return;
        }
        park::forget(shared, &mut session);
        let user = session.user().cloned();
        session.leave_reason = close
            .as_ref()
            .map_or(LeaveReason::Disconnected, |c| c.leave);
        // Leave rooms and names first, so the rest of the room hears of it even
        // if the close handshake below stalls.
        let teardown = tokio::time::timeout(TEARDOWN_LIMIT, session.teardown());
        if Box::pin(teardown).await.is_err() {
            tracing::warn!(peer = peer_id.0, "session teardown timed out");
        }
        tracing::info!(
            conn = self.admission.id,
            addr = %self.admission.addr,
            peer = peer_id.0,
            ended_by = match (&close, ending_was_client_close) {
                (Some(_), _) => "server",
                (None, true) => "client",
                (None, false) => "socket gone",
            },
            close_code = close.map(|c| c.code),
            close_reason = close.map(|c| c.reason),
            user = user.as_ref().map(tracing::field::display),
            duration_ms = self.admission.accepted_at.elapsed().as_millis() as u64,
            "session ended"
        );
        match (close, ending_was_client_close) {
            (Some(close), _) => Box::pin(close_within(ws, close, metrics)).await,
            (None, true) => Box::pin(finish_client_close(ws)).await,
            (None, false) => {}
        }
    }
}

/// The STUN/TURN servers for a session: the configured ones, and TURN
/// credentials labelled with the token's user when there is one (so
/// coturn's logs and quotas tell users apart), else with the peer id.
fn ice_servers<D>(
    shared: &Shared<D>,
    grant: Option<&Grant>,
    peer_id: protocol::PeerId,
) -> Vec<protocol::IceServer> {
    let mut servers: Vec<protocol::IceServer> = shared
        .ctx
        .config
        .ice_servers
        .iter()
        .map(|url| protocol::IceServer {
            urls: vec![url.clone()],
            username: String::new(),
            credential: String::new(),
        })
        .collect();
    if let Some(turn) = &shared.turn {
        let identity = grant.map_or_else(|| peer_id.to_string(), |g| g.identity().to_string());
        servers.push(turn.credentials(&identity, SystemTime::now()));
    }
    servers
}

/// Checks the access token when `auth = token`; `Ok(None)` without auth.
///
/// The token comes from `Sec-WebSocket-Protocol` (browsers) or from Hello;
/// both may be given only if they are the same token. The error is the
/// message of the `UNAUTHENTICATED` error: it says which check failed
/// (expired, bad signature...), which helps whoever debugs a client and
/// tells an attacker nothing a forged token would not.
fn authenticate<D>(
    shared: &Shared<D>,
    header: Option<Box<HeaderToken>>,
    hello: &protocol::Hello,
) -> Result<Option<Box<Grant>>, String> {
    let Some(auth) = &shared.auth else {
        return Ok(None);
    };
    let header = match header.map(|h| *h) {
        Some(Err(e)) => return Err(format!("bad Sec-WebSocket-Protocol header: {e}")),
        Some(Ok(token)) => token,
        None => None,
    };
    let token = match (header.as_deref(), hello.access_token.as_deref()) {
        (Some(a), Some(b)) if a != b => {
            return Err("two different access tokens in the handshake and in hello".into())
        }
        (Some(token), _) | (None, Some(token)) => token,
        (None, None) => {
            return Err(
                "an access token is required: send it in hello.access_token or as \
                 Sec-WebSocket-Protocol: switchboard.v1, access_token.<jwt>"
                    .into(),
            )
        }
    };
    auth.verify(token, SystemTime::now())
        .map(|grant| Some(Box::new(grant)))
        .map_err(|e| format!("access token refused: {e}"))
}

/// A started session, its encoding, its outbox, its peer id, what wakes it
/// when a resume takes it over, and how it ended if the frames behind its
/// Hello ended it.
type Started<D> = (
    Box<Session<D>>,
    Encoding,
    Arc<Outbox>,
    protocol::PeerId,
    Option<Arc<tokio::sync::Notify>>,
    Option<Ending>,
);

/// Why no session starts.
enum Refusal {
    /// Tell the client in an `Error` frame, then close with 4000 + the code.
    Error(ErrorCode, String, Encoding),
    /// Close with this code only (a WebSocket-level failure or abuse).
    Close(Close),
    /// The client closed first: answer its close frame.
    ClientClosed,
}

/// How the main loop ended.
enum Ending {
    /// The server ends the connection, with this close.
    Close(Close),
    /// The client sent a close frame; tungstenite has queued the answer.
    ClientClosed,
    /// The socket failed or reached EOF: nothing more can be sent.
    SocketGone,
    /// The client resumed the session on another connection.
    TakenOver,
}

/// Tells the client why it is refused, in an `Error` frame (sequence
/// number 1, the first the server sends), then closes with 4000 + `code`;
/// gives up after a second.
async fn refuse_within<S>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    code: ErrorCode,
    message: String,
    metrics: Option<&Metrics>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refuse = async {
        let error = encode(&Message::Error(ErrorMessage {
            code,
            message,
            request_seq: 0,
        }));
        if let Some(m) = metrics {
            m.attempt(match code {
                ErrorCode::ServerShuttingDown => Outcome::RefusedShuttingDown,
                _ => Outcome::HelloFailed,
            });
        }
        send_frames(ws, encoding, &mut vec![error], |_| 1, metrics).await?;
        let reason = match code {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::HelloRequired => "hello required",
            ErrorCode::RateLimited => "rate limited",
            _ => "protocol error",
        };
        let close = match code {
            // As a session's end in a shutdown: "going away".
            ErrorCode::ServerShuttingDown => Close::shutdown(),
            _ => Close::app(code, reason, LeaveReason::Disconnected),
        };
        close_with(ws, close, metrics).await?;
        // As in `close_within`: the client's close frame, then TCP.
        while let Some(Ok(_)) = ws.next().await {}
        Ok::<(), tungstenite::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), refuse).await;
}

/// Sends the close frame tungstenite queued in answer to the client's, so
/// the client sees a clean close (RFC 6455 §5.5.1), within a second.
async fn finish_client_close<S>(ws: &mut WebSocketStream<S>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.flush()).await;
}

/// Waits for the client's Hello; any other first frame is an error. Pings
/// and pongs before it count against the rate limit.
async fn read_hello<S, D>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared<D>,
    rate: &mut RateGuard,
) -> Result<(protocol::Hello, Bytes, Encoding), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let closed_before_hello = || {
        Close::app(
            ErrorCode::HelloRequired,
            "closed before hello",
            LeaveReason::Disconnected,
        )
    };
    loop {
        let incoming = ws.next().await;
        let (data, encoding) = match incoming {
            Some(Ok(WsMessage::Binary(data))) => (data, Encoding::Binary),
            Some(Ok(WsMessage::Text(text))) => match protocol::text::to_frame(&text) {
                Ok(frame) => (frame, Encoding::Json),
                Err(e) => {
                    return Err(Refusal::Error(
                        e.code(),
                        format!("malformed hello: {e}"),
                        Encoding::Json,
                    ))
                }
            },
            // The only messages that do not end this phase: paid for like
            // everything after Hello (Hello itself, once per connection,
            // is free). Before Hello there is no session to queue replies
            // in, so a limited ping is just dropped.
            Some(Ok(WsMessage::Ping(data) | WsMessage::Pong(data))) => {
                if rate.check(Instant::now().into_std(), data.len()) == Verdict::Abuse {
                    return Err(Refusal::Close(Close::abuse()));
                }
                continue;
            }
            Some(Ok(WsMessage::Close(_))) => return Err(Refusal::ClientClosed),
            Some(Ok(_)) => {
                return Err(Refusal::Error(
                    ErrorCode::Malformed,
                    "protocol frames expected (binary, or JSON text)".to_owned(),
                    Encoding::Binary,
                ))
            }
            // The socket failed or ended: a WebSocket error has its RFC
            // code; anything else closes as a missing Hello.
            Some(Err(e)) => {
                return Err(Refusal::Close(
                    ws_error_close(&e).unwrap_or_else(closed_before_hello),
                ))
            }
            None => return Err(Refusal::Close(closed_before_hello())),
        };
        // The frames after Hello in the same message are handled once the
        // session exists.
        let mut rest = data;
        let frame = match protocol::frame::split_frame(&mut rest, shared.ctx.codec.max_payload) {
            Ok(frame) => {
                if let Some(m) = &shared.ctx.metrics {
                    m.received(
                        frame.header.kind,
                        protocol::HEADER_LEN + frame.payload.len(),
                    );
                }
                frame
            }
            Err(e) => {
                return Err(Refusal::Error(
                    e.code(),
                    format!("malformed hello: {e}"),
                    encoding,
                ))
            }
        };
        return match protocol::decode(&frame, &shared.ctx.codec) {
            Ok(Message::Hello(hello)) if hello.protocol_version >= PROTOCOL_VERSION => {
                Ok((hello, rest, encoding))
            }
            Ok(Message::Hello(hello)) => Err(Refusal::Error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; send protocol_version {PROTOCOL_VERSION} \
                     (0 is the proto3 default: a field left unset)",
                    hello.protocol_version
                ),
                encoding,
            )),
            Ok(_) => Err(Refusal::Error(
                ErrorCode::HelloRequired,
                "the first frame must be hello".to_owned(),
                encoding,
            )),
            // An over-long token is a refused token, whatever its length.
            Err(DecodeError::Field(e @ FieldError::TooLong {
                field: "access_token",
                ..
            })) => Err(Refusal::Error(
                ErrorCode::Unauthenticated,
                format!("access token refused: {e}"),
                encoding,
            )),
            Err(e) => Err(Refusal::Error(e.code(), format!("malformed hello: {e}"), encoding)),
        };
    }
}

/// The main loop: returns how the connection should be closed, or `None`
/// when the client went away by itself.
async fn serve<S, D: Directory>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    session: &mut Session<D>,
    outbox: &Outbox,
    shared: &Shared<D>,
    takeover: Option<&tokio::sync::Notify>,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = &shared.ctx.config;
    let timeout = config.heartbeat_timeout;
    let max_frames = config.max_frames_per_message;
    let max_bytes = config.max_message_bytes;
    let mut pending: Vec<Encoded> = Vec::new();
    let mut yield_to_input = false;
    // One timer serves the session's deadline and the write-stall deadline.
    let timer = tokio::time::sleep_until(Instant::from_std(session.deadline()));
    tokio::pin!(timer);
    loop {
        let deadline = Instant::from_std(session.deadline());
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        // Output first, so replies leave before the next input is read (and
        // before a close from the client ends the connection). But a turn
        // of output writes a bounded amount, and a turn that had to stop
        // with frames left gives the socket and the timers a look before
        // output comes first again: a connection receiving a sustained
        // stream still reads its own socket and runs its timers.
        tokio::select! {
            biased;
            () = outbox.ready(), if !yield_to_input => {
                let kicks = outbox.take_kicks();
                if !kicks.is_empty() {
                    // Boxed: rare, and it would otherwise widen every idle task.
                    Box::pin(session.forget_rooms(kicks)).await;
                }
                // Drain and write, one WebSocket message (within the
                // announced limits) per write, until the outbox is empty or
                // MAX_WRITES_PER_TURN messages went out.
                for _ in 0..MAX_WRITES_PER_TURN {
                    let closed = match shared.ctx.metrics.as_deref() {
                        None => outbox.drain(&mut pending, max_frames, max_bytes),
                        Some(m) => {
                            let now = std::time::Instant::now();
                            let closed = outbox.drain_timed(&mut pending, max_frames, max_bytes, |read_at| {
                                m.relay_latency.observe_duration(now.saturating_duration_since(read_at));
                            });
                            if !pending.is_empty() {
                                m.outbox_depth.observe(pending.len() as u64);
                            }
                            closed
                        }
                    };
                    if let Some(reason) = closed {
                        return Ending::Close(Box::pin(closing(ws, encoding, session, &mut pending, reason)).await);
                    }
                    if pending.is_empty() {
                        break;
                    }
                    // A resumable client's frames are acknowledged with
                    // whatever goes out anyway.
                    if pending.len() < max_frames {
                        pending.extend(session.take_ack());
                    }
                    let stalled = Instant::now() + timeout;
                    // Boxed: the write's state would otherwise widen every
                    // idle connection's task by its size (an allocation per
                    // write is far cheaper than the system call it makes).
                    let write = write_bounded(ws, encoding, session, &mut pending, outbox, timer.as_mut(), stalled);
                    match Box::pin(write).await {
                        Ok(()) => {}
                        Err(Some(close)) => return Ending::Close(close),
                        Err(None) => return Ending::SocketGone,
                    }
                }
                yield_to_input = outbox.has_pending();
            }
            incoming = ws.next() => {
                let now = Instant::now().into_std();
                let data = match incoming {
                    Some(Ok(WsMessage::Binary(data))) => data,
                    Some(Ok(WsMessage::Close(_))) => return Ending::ClientClosed,
                    None => return Ending::SocketGone,
                    Some(Ok(WsMessage::Ping(data) | WsMessage::Pong(data))) => {
                        // tungstenite has queued the pong already; its write
                        // buffer is bounded, and the ping is paid for here.
                        if let Some(close) = session.on_frameless(now, data.len(), None) {
                            return Ending::Close(close);
                        }
                        continue;
                    }
                    Some(Ok(WsMessage::Text(text))) if matches!(encoding, Encoding::Compat(_)) => {
                        let Encoding::Compat(translator) = &mut *encoding else { unreachable!() };
                        let inbound = translator.inbound(&text);
                        if inbound.messages.is_empty() {
                            if let Some(close) = session.on_frameless(now, text.len(), None) {
                                return Ending::Close(close);
                            }
                        }
                        // The dialect's own answers do not pass the outbox, but
                        // obey its writer's rule: a client that stops reading
                        // for the heartbeat timeout is cut off.
                        for reply in inbound.replies {
                            let send = tokio::time::timeout(timeout, ws.send(WsMessage::text(reply)));
                            // Boxed: rare, and it would otherwise widen every idle task.
                            match Box::pin(send).await {
                                Ok(Ok(())) => {}
                                Ok(Err(_)) => return Ending::SocketGone,
                                Err(_) => return Ending::Close(Close::slow_consumer()),
                            }
                        }
                        let mut frames = BytesMut::new();
                        for message in &inbound.messages {
                            protocol::encode_into(message, 0, &mut frames);
                        }
                        if frames.is_empty() {
                            continue;
                        }
                        frames.freeze()
                    }
                    Some(Ok(WsMessage::Text(text))) => match protocol::text::to_frame(&text) {
                        Ok(frame) => frame,
                        Err(e) => {
                            let error = ErrorMessage {
                                code: e.code(),
                                message: e.to_string(),
                                request_seq: protocol::text::claimed_seq(&text),
                            };
                            if let Some(close) = session.on_frameless(now, text.len(), Some(error)) {
                                return Ending::Close(close);
                            }
                            continue;
                        }
                    },
                    Some(Ok(other @ WsMessage::Frame(_))) => {
                        if let Some(close) = session.on_frameless(now, other.len(), None) {
                            return Ending::Close(close);
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read failed");
                        return match ws_error_close(&e) {
                            Some(close) => Ending::Close(close),
                            None => Ending::SocketGone,
                        };
                    }
                };
                // Boxed: its state would otherwise widen every idle
                // connection's task.
                let received = Box::pin(session.receive(now, data, shared.ctx.codec.max_frames)).await;
                if let Some(close) = received {
                    return Ending::Close(Box::pin(flush_then(close, ws, encoding, session, outbox, &mut pending, (max_frames, max_bytes))).await);
                }
            }
            () = &mut timer => {
                if let Some(close) = session.on_timer(Instant::now().into_std()) {
                    return Ending::Close(Box::pin(flush_then(close, ws, encoding, session, outbox, &mut pending, (max_frames, max_bytes))).await);
                }
            }
            // Input and timers had their look; output comes first again.
            () = tokio::task::yield_now(), if yield_to_input => yield_to_input = false,
            // A resume of this session arrived on another connection.
            () = async { if let Some(t) = takeover { t.notified().await } }, if takeover.is_some() => {
                return Ending::TakenOver;
            }
        }
    }
}

/// Before a close the session decided: writes what is queued (the `Error`
/// explaining it), for a second at most, since a client being closed may
/// not be reading; then `close`.
async fn flush_then<S, D: Directory>(
    close: Close,
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    session: &mut Session<D>,
    outbox: &Outbox,
    pending: &mut Vec<Encoded>,
    (max_frames, max_bytes): (usize, usize),
) -> Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _ = outbox.drain(pending, max_frames, max_bytes);
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        write(ws, encoding, session, pending),
    )
    .await;
    close
}

/// How to end a connection whose outbox was closed.
async fn closing<S, D: Directory>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    session: &mut Session<D>,
    pending: &mut Vec<Encoded>,
    reason: CloseReason,
) -> Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match reason {
        CloseReason::SlowConsumer => Close::slow_consumer(),
        CloseReason::Shutdown => {
            // Say goodbye in-band too, then close as "going away".
            pending.push(encode(&Message::Error(ErrorMessage {
                code: ErrorCode::ServerShuttingDown,
                message: "server is shutting down".into(),
                request_seq: 0,
            })));
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                write(ws, encoding, session, pending),
            )
            .await;
            Close::shutdown()
        }
    }
}

/// Writes pending frames, but gives up on a client that stops reading: when
/// its outbox overflows meanwhile, or the write is still stuck at `stalled`
/// (measured on the caller's `timer`, which the caller resets afterwards).
/// `Err(None)`: the socket failed; `Err(Some)`: cut the client off.
async fn write_bounded<S, D: Directory>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    session: &mut Session<D>,
    pending: &mut Vec<Encoded>,
    outbox: &Outbox,
    mut timer: Pin<&mut Sleep>,
    stalled: Instant,
) -> Result<(), Option<Close>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = write(ws, encoding, session, pending);
    tokio::pin!(send);
    // Most writes complete at once: only arm the timer when one does not.
    if let Some(result) = futures_util::FutureExt::now_or_never(&mut send) {
        return result.map_err(|_| None);
    }
    timer.as_mut().reset(stalled);
    loop {
        tokio::select! {
            result = &mut send => return result.map_err(|_| None),
            () = outbox.changed() => {
                // More frames or a shutdown are picked up by the caller's
                // next drain; only an overflow ends the write early.
                if outbox.closed() == Some(CloseReason::SlowConsumer) {
                    return Err(Some(Close::slow_consumer()));
                }
            }
            () = &mut timer => return Err(Some(Close::slow_consumer())),
        }
    }
}

/// Writes every pending frame with one flush.
async fn write<S, D: Directory>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    session: &mut Session<D>,
    pending: &mut Vec<Encoded>,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (seq, metrics) = session.writer();
    let sent = send_frames(ws, encoding, pending, seq, metrics).await;
    // An idle connection keeps no frame list.
    *pending = Vec::new();
    sent
}

/// Sends `frames`, numbered by `seq`, with one flush: as one binary
/// WebSocket message holding them all, or as one JSON text message each.
async fn send_frames<S>(
    ws: &mut WebSocketStream<S>,
    encoding: &mut Encoding,
    frames: &mut Vec<Encoded>,
    mut seq: impl FnMut(&Encoded) -> u32,
    metrics: Option<&Metrics>,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if frames.is_empty() {
        return Ok(());
    }
    if let Some(m) = metrics {
        for f in frames.iter() {
            m.sent(f.kind, f.frame_len());
            // Every Error the server sends passes here, whoever queued it
            // (session, directory, shutdown): counted by its code.
            if f.kind == protocol::MessageType::Error {
                if let Some(Message::Error(e)) = f.decode() {
                    m.error(e.code);
                }
            }
        }
    }
    match encoding {
        Encoding::Binary => {
            let total: usize = frames.iter().map(Encoded::frame_len).sum();
            // A fresh buffer each time: one kept between writes would hold
            // on to the largest message ever sent by this connection.
            let mut out = BytesMut::with_capacity(total);
            for frame in frames.drain(..) {
                frame.write(seq(&frame), &mut out);
            }
            ws.send(WsMessage::Binary(out.freeze())).await
        }
        Encoding::Compat(translator) => {
            for frame in frames.drain(..) {
                seq(&frame);
                let Some(message) = frame.decode() else {
                    continue;
                };
                for out in translator.outbound(&message) {
                    ws.feed(match out {
                        Outbound::Text(t) => WsMessage::text(t),
                        Outbound::Ping(p) => WsMessage::Ping(p),
                    })
                    .await?;
                }
            }
            ws.flush().await
        }
        Encoding::Json => {
            for frame in frames.drain(..) {
                let seq = seq(&frame);
                let text = protocol::text::to_text(frame.kind, frame.flags, seq, &frame.payload)
                    .unwrap_or_else(|e| {
                        // Only a relayed payload the relay check let through
                        // can fail here: say so instead of dropping it.
                        tracing::warn!(error = %e, "frame not shown as json");
                        let error = encode(&Message::Error(ErrorMessage {
                            code: ErrorCode::Malformed,
                            message: format!(
                                "a {:?} frame could not be shown as json: {e}",
                                frame.kind
                            ),
                            request_seq: 0,
                        }));
                        protocol::text::to_text(error.kind, error.flags, seq, &error.payload)
                            .unwrap_or_default()
                    });
                ws.feed(WsMessage::text(text)).await?;
            }
            ws.flush().await
        }
    }
}

async fn close_with<S>(
    ws: &mut WebSocketStream<S>,
    close: Close,
    metrics: Option<&Metrics>,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if let Some(m) = metrics {
        m.close(close.code);
    }
    ws.close(Some(CloseFrame {
        code: CloseCode::from(close.code),
        reason: close.reason.into(),
    }))
    .await
}

/// [`close_with`], then waits for the client's close frame (RFC 6455
/// §7.1.1: the server closes TCP once the handshake is done), discarding
/// what arrives meanwhile; closing TCP on unread data would reset the
/// connection and could destroy the close frame before the client reads
/// it. Gives up after a second: a peer that does not read must not hold
/// its connection slot by never taking the close frame.
async fn close_within<S>(ws: &mut WebSocketStream<S>, close: Close, metrics: Option<&Metrics>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        if close_with(ws, close, metrics).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), handshake).await;
}

/// WebSocket messages written per turn of the main loop before the socket
/// is read again.
const MAX_WRITES_PER_TURN: usize = 4;
