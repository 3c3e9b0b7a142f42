//! One task per WebSocket connection.
//!
//! The task owns the socket. It reads WebSocket messages, cuts them into
//! frames, and hands each decoded message to its [`Session`], which applies
//! the room, name and routing rules without awaiting. Everything addressed to
//! this connection (replies, relayed signals, notices) goes through its
//! [`Outbox`]; the task drains the outbox in one go and writes one WebSocket
//! message with one flush.

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
use tracing::{debug, info_span};

use super::http::HeaderToken;
use super::{Admission, Shared};
use crate::auth::Grant;
use crate::protocol::frame::next_seq;
use crate::protocol::{
    self, encode, relay, sdp, Address, Capabilities, DecodeError, Encoded, ErrorCode, ErrorMessage,
    FieldError, Frames, Join, LeaveReason, LoginResult, Member, Message, MessageType, PeerId,
    RoomId, RoomMode, Sdp, UserName, Welcome, HEADER_LEN, PROTOCOL_VERSION,
};
use crate::rate::{RateGuard, Verdict};
use crate::rooms::{JoinError, LoginError};
use crate::routing::{CloseReason, Origin, Outbox, RouteError, Router, Target};

/// Why the connection ends, and what the client is told.
#[derive(Debug)]
struct Close {
    code: CloseCode,
    reason: &'static str,
    leave: LeaveReason,
}

impl Close {
    /// The client persisted well above its rate limit.
    fn abuse() -> Close {
        Close {
            code: CloseCode::Policy,
            reason: "rate limit abused",
            leave: LeaveReason::Kicked,
        }
    }

    /// How to end a connection whose WebSocket layer failed: the RFC 6455
    /// code for a protocol violation, invalid UTF-8 or an oversized message;
    /// `None` when the socket itself is gone (nothing can be sent).
    fn for_ws_error(e: &tungstenite::Error) -> Option<Close> {
        let (code, reason) = match e {
            tungstenite::Error::Capacity(_) => (CloseCode::Size, "message too large"),
            tungstenite::Error::Protocol(_) => {
                (CloseCode::Protocol, "websocket protocol violation")
            }
            tungstenite::Error::Utf8(_) => (CloseCode::Invalid, "text message is not UTF-8"),
            tungstenite::Error::WriteBufferFull(_) => return Some(slow_consumer()),
            _ => return None,
        };
        Some(Close {
            code,
            reason,
            leave: LeaveReason::Disconnected,
        })
    }

    fn app(code: ErrorCode, reason: &'static str, leave: LeaveReason) -> Close {
        // Application close codes are 4000 + the protocol error code, so a
        // client learns the exact reason even if the Error frame was lost.
        Close {
            code: CloseCode::from(4000 + code as u16),
            reason,
            leave,
        }
    }
}

/// Runs one connection to its end.
///
/// The connection's long-lived state is boxed and the future borrows it:
/// an `async fn` taking the socket by value would store it twice (as the
/// argument and as the local it is moved into), and this future lives as
/// long as the connection.
pub(super) fn run<S>(
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    admission: Admission,
    header_token: HeaderToken,
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
        _admission: admission,
        header_token,
    });
    async move { conn.run().await }
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    shared: Arc<Shared>,
    _admission: Admission,
    /// What `Sec-WebSocket-Protocol` carried; taken at Hello. Boxed so that
    /// the common case (no header token) costs one word.
    header_token: Option<Box<HeaderToken>>,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) {
        let ws = &mut self.ws;
        let shared = &self.shared;
        let deadline = Instant::now() + shared.config.handshake_timeout;
        // Counts from the first byte: pings and junk before Hello too.
        let mut rate = RateGuard::new(shared.config.rate_policy(), shared.clock.clone());
        // The handshake and closing phases are boxed: they run once, and their
        // state would otherwise stay in every idle connection's task.
        let hello = Box::pin(tokio::time::timeout_at(
            deadline,
            read_hello(ws, shared, &mut rate),
        ))
        .await;
        let (hello, after_hello) = match hello {
            Ok(Ok(hello)) => hello,
            Ok(Err(Refusal::Close(close))) => {
                Box::pin(close_within(ws, close)).await;
                return;
            }
            Ok(Err(Refusal::ClientClosed)) => {
                Box::pin(finish_client_close(ws)).await;
                return;
            }
            Ok(Err(Refusal::Error(code, message))) => {
                Box::pin(refuse_within(ws, code, message)).await;
                return;
            }
            Err(_) => {
                let message = "no hello before the handshake timeout".to_owned();
                Box::pin(refuse_within(ws, ErrorCode::HelloRequired, message)).await;
                return;
            }
        };
        let grant = match authenticate(shared, self.header_token.take(), &hello) {
            Ok(grant) => grant,
            Err(message) => {
                debug!(%message, "unauthenticated");
                Box::pin(refuse_within(ws, ErrorCode::Unauthenticated, message)).await;
                return;
            }
        };
        let peer_id = shared.next_peer_id();
        tracing::Span::current().record("peer", tracing::field::display(peer_id));
        let capabilities = hello
            .capabilities
            .intersection(Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH));
        let outbox = Arc::new(Outbox::new(shared.outbox));
        shared
            .router
            .register(peer_id, capabilities, outbox.clone());
        let mut ice_servers: Vec<protocol::IceServer> = shared
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
            // Labelled with the token's user when there is one, so coturn's
            // logs and quotas tell users apart; else with the peer id.
            let identity = grant
                .as_ref()
                .map_or_else(|| peer_id.to_string(), |g| g.identity().to_string());
            ice_servers.push(turn.credentials(&identity, SystemTime::now()));
        }
        let mut session = Session::new(
            shared.clone(),
            peer_id,
            capabilities,
            outbox.clone(),
            grant,
            rate,
        );
        session.reply(&Message::Welcome(Welcome {
            peer_id,
            protocol_version: PROTOCOL_VERSION,
            limits: shared.config.wire_limits(),
            heartbeat_interval: shared.config.heartbeat_interval,
            heartbeat_timeout: shared.config.heartbeat_timeout,
            ice_servers,
            capabilities,
            sdp_dictionary: sdp::DICTIONARY_ID,
        }));
        // Frames the client sent right behind its Hello (Hello + Join in
        // one message) run now, after Welcome is queued.
        // Hello counts as one of the message's frames.
        let early = if after_hello.is_empty() {
            None
        } else {
            let budget = shared.codec.max_frames.saturating_sub(1);
            session.receive(after_hello, budget).map(Ending::Close)
        };
        let ending = match early {
            Some(ending) => ending,
            None => serve(ws, &mut session, &outbox, shared).await,
        };
        let ending_was_client_close = matches!(ending, Ending::ClientClosed);
        let close = match ending {
            Ending::Close(close) => Some(close),
            Ending::ClientClosed | Ending::SocketGone => None,
        };
        debug!(?close, "connection ending");
        session.leave_reason = close
            .as_ref()
            .map_or(LeaveReason::Disconnected, |c| c.leave);
        // Leave rooms and names first, so the rest of the room hears of it even
        // if the close handshake below stalls.
        drop(session);
        match (close, ending_was_client_close) {
            (Some(close), _) => Box::pin(close_within(ws, close)).await,
            (None, true) => Box::pin(finish_client_close(ws)).await,
            (None, false) => {}
        }
    }
}

/// Checks the access token when `auth = token`; `Ok(None)` without auth.
///
/// The token comes from `Sec-WebSocket-Protocol` (browsers) or from Hello;
/// both may be given only if they are the same token. The error is the
/// message of the `UNAUTHENTICATED` error: it says which check failed
/// (expired, bad signature...), which helps whoever debugs a client and
/// tells an attacker nothing a forged token would not.
fn authenticate(
    shared: &Shared,
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

/// Why no session starts.
enum Refusal {
    /// Tell the client in an `Error` frame, then close with 4000 + the code.
    Error(ErrorCode, String),
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
}

/// Tells the client why it is refused, in an `Error` frame (sequence
/// number 1, the first the server sends), then closes with 4000 + `code`;
/// gives up after a second.
async fn refuse_within<S>(ws: &mut WebSocketStream<S>, code: ErrorCode, message: String)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refuse = async {
        let mut out = BytesMut::new();
        encode(&Message::Error(ErrorMessage {
            code,
            message,
            request_seq: 0,
        }))
        .write(1, &mut out);
        ws.send(WsMessage::Binary(out.freeze())).await?;
        let reason = match code {
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::UnsupportedVersion => "unsupported protocol version",
            ErrorCode::HelloRequired => "hello required",
            ErrorCode::RateLimited => "rate limited",
            _ => "protocol error",
        };
        close_with(ws, Close::app(code, reason, LeaveReason::Disconnected)).await?;
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
async fn read_hello<S>(
    ws: &mut WebSocketStream<S>,
    shared: &Shared,
    rate: &mut RateGuard,
) -> Result<(protocol::Hello, Bytes), Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refuse = |code, reason: &str| Refusal::Error(code, reason.to_owned());
    loop {
        let incoming = ws.next().await;
        let data = match incoming {
            Some(Ok(WsMessage::Binary(data))) => data,
            // The only messages that do not end this phase: paid for like
            // everything after Hello (Hello itself, once per connection,
            // is free). Before Hello there is no session to queue replies
            // in, so a limited ping is just dropped.
            Some(Ok(WsMessage::Ping(data) | WsMessage::Pong(data))) => {
                if rate.check(data.len()) == Verdict::Abuse {
                    return Err(Refusal::Close(Close::abuse()));
                }
                continue;
            }
            Some(Ok(WsMessage::Close(_))) => return Err(Refusal::ClientClosed),
            Some(Ok(_)) => {
                return Err(refuse(
                    ErrorCode::Malformed,
                    "binary protocol frames expected",
                ))
            }
            Some(Err(e)) => {
                return Err(match Close::for_ws_error(&e) {
                    Some(close) => Refusal::Close(close),
                    None => Refusal::Close(Close::app(
                        ErrorCode::HelloRequired,
                        "closed before hello",
                        LeaveReason::Disconnected,
                    )),
                })
            }
            None => {
                return Err(Refusal::Close(Close::app(
                    ErrorCode::HelloRequired,
                    "closed before hello",
                    LeaveReason::Disconnected,
                )))
            }
        };
        // The frames after Hello in the same message are handled once the
        // session exists.
        let mut rest = data;
        let frame = match protocol::frame::split_frame(&mut rest, shared.codec.max_payload) {
            Ok(frame) => frame,
            Err(e) => return Err(Refusal::Error(e.code(), format!("malformed hello: {e}"))),
        };
        return match protocol::decode(&frame, &shared.codec) {
            Ok(Message::Hello(hello)) if hello.protocol_version >= PROTOCOL_VERSION => {
                Ok((hello, rest))
            }
            Ok(Message::Hello(hello)) => Err(Refusal::Error(
                ErrorCode::UnsupportedVersion,
                format!(
                    "protocol version {} is not supported; send protocol_version {PROTOCOL_VERSION} \
                     (0 is the proto3 default: a field left unset)",
                    hello.protocol_version
                ),
            )),
            Ok(_) => Err(refuse(
                ErrorCode::HelloRequired,
                "the first frame must be hello",
            )),
            // An over-long token is a refused token, whatever its length.
            Err(DecodeError::Field(e @ FieldError::TooLong {
                field: "access_token",
                ..
            })) => Err(Refusal::Error(
                ErrorCode::Unauthenticated,
                format!("access token refused: {e}"),
            )),
            Err(e) => Err(Refusal::Error(e.code(), format!("malformed hello: {e}"))),
        };
    }
}

/// The main loop: returns how the connection should be closed, or `None`
/// when the client went away by itself.
async fn serve<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    outbox: &Outbox,
    shared: &Shared,
) -> Ending
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let interval = shared.config.heartbeat_interval;
    let timeout = shared.config.heartbeat_timeout;
    let mut last_heard = Instant::now();
    let mut pinged = false;
    let max_frames = shared.config.max_frames_per_message;
    let max_bytes = shared.config.max_message_bytes;
    let mut pending: Vec<Encoded> = Vec::new();
    let mut yield_to_input = false;
    // One timer serves the heartbeat and the write-stall deadline.
    let timer = tokio::time::sleep_until(last_heard + interval);
    tokio::pin!(timer);
    loop {
        let mut check_at = if pinged {
            last_heard + timeout
        } else {
            last_heard + interval
        };
        if let Some((due, _)) = session.rate_report {
            check_at = check_at.min(due);
        }
        if timer.deadline() != check_at {
            timer.as_mut().reset(check_at);
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
                // Drain and write, one WebSocket message (within the
                // announced limits) per write, until the outbox is empty or
                // MAX_WRITES_PER_TURN messages went out.
                for _ in 0..MAX_WRITES_PER_TURN {
                    let closed = outbox.drain(&mut pending, max_frames, max_bytes);
                    if let Some(reason) = closed {
                        return Ending::Close(Box::pin(closing(ws, session, &mut pending, reason)).await);
                    }
                    if pending.is_empty() {
                        break;
                    }
                    let stalled = Instant::now() + timeout;
                    // Boxed: the write's state would otherwise widen every
                    // idle connection's task by its size (an allocation per
                    // write is far cheaper than the system call it makes).
                    let write = write_bounded(ws, session, &mut pending, outbox, timer.as_mut(), stalled);
                    match Box::pin(write).await {
                        Ok(()) => {}
                        Err(Some(close)) => return Ending::Close(close),
                        Err(None) => return Ending::SocketGone,
                    }
                }
                yield_to_input = outbox.has_pending();
            }
            incoming = ws.next() => {
                let data = match incoming {
                    Some(Ok(WsMessage::Binary(data))) => data,
                    Some(Ok(WsMessage::Close(_))) => return Ending::ClientClosed,
                    None => return Ending::SocketGone,
                    Some(Ok(WsMessage::Ping(data) | WsMessage::Pong(data))) => {
                        // tungstenite has queued the pong already; its write
                        // buffer is bounded, and the ping is paid for here.
                        if let Err(close) = session.admit(0, data.len()) {
                            return Ending::Close(close);
                        }
                        last_heard = Instant::now();
                        pinged = false;
                        continue;
                    }
                    Some(Ok(other @ (WsMessage::Text(_) | WsMessage::Frame(_)))) => {
                        last_heard = Instant::now();
                        match session.admit(0, other.len()) {
                            Err(close) => return Ending::Close(close),
                            Ok(true) => session.error(
                                ErrorCode::Malformed,
                                "binary protocol frames expected".into(),
                                0,
                            ),
                            Ok(false) => {}
                        }
                        continue;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read failed");
                        return match Close::for_ws_error(&e) {
                            Some(close) => Ending::Close(close),
                            None => Ending::SocketGone,
                        };
                    }
                };
                last_heard = Instant::now();
                pinged = false;
                if let Some(close) = session.receive(data, shared.codec.max_frames) {
                    // Flush what is queued (the error explaining the close).
                    let _ = outbox.drain(&mut pending, max_frames, max_bytes);
                    let flush = tokio::time::timeout(Duration::from_secs(1), write(ws, session, &mut pending));
                    let _ = Box::pin(flush).await;
                    return Ending::Close(close);
                }
            }
            () = &mut timer => {
                let now = Instant::now();
                if session.rate_report.is_some_and(|(due, _)| due <= now) {
                    session.report_drops_due(now);
                    continue;
                }
                if pinged {
                    return Ending::Close(Close::app(
                        ErrorCode::HeartbeatTimeout,
                        "heartbeat timeout",
                        LeaveReason::TimedOut,
                    ));
                }
                pinged = true;
                session.ping_nonce += 1;
                session.reply(&Message::Ping { nonce: session.ping_nonce });
            }
            // Input and timers had their look; output comes first again.
            () = tokio::task::yield_now(), if yield_to_input => yield_to_input = false,
        }
    }
}

fn slow_consumer() -> Close {
    Close::app(
        ErrorCode::SlowConsumer,
        "too slow reading messages",
        LeaveReason::Disconnected,
    )
}

/// How to end a connection whose outbox was closed.
async fn closing<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    pending: &mut Vec<Encoded>,
    reason: CloseReason,
) -> Close
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match reason {
        CloseReason::SlowConsumer => slow_consumer(),
        CloseReason::Shutdown => {
            // Say goodbye in-band too, then close as "going away".
            pending.push(encode(&Message::Error(ErrorMessage {
                code: ErrorCode::ServerShuttingDown,
                message: "server is shutting down".into(),
                request_seq: 0,
            })));
            let _ = tokio::time::timeout(Duration::from_secs(1), write(ws, session, pending)).await;
            Close {
                code: CloseCode::Away,
                reason: "server shutting down",
                leave: LeaveReason::ServerShutdown,
            }
        }
    }
}

/// Writes pending frames, but gives up on a client that stops reading: when
/// its outbox overflows meanwhile, or the write is still stuck at `stalled`
/// (measured on the caller's `timer`, which the caller resets afterwards).
/// `Err(None)`: the socket failed; `Err(Some)`: cut the client off.
async fn write_bounded<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    pending: &mut Vec<Encoded>,
    outbox: &Outbox,
    mut timer: Pin<&mut Sleep>,
    stalled: Instant,
) -> Result<(), Option<Close>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let send = write(ws, session, pending);
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
                    return Err(Some(slow_consumer()));
                }
            }
            () = &mut timer => return Err(Some(slow_consumer())),
        }
    }
}

/// Writes every pending frame as one WebSocket message with one flush.
async fn write<S>(
    ws: &mut WebSocketStream<S>,
    session: &mut Session,
    pending: &mut Vec<Encoded>,
) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if pending.is_empty() {
        return Ok(());
    }
    let total: usize = pending.iter().map(Encoded::frame_len).sum();
    // A fresh buffer each time: one kept between writes would hold on to
    // the largest message ever sent by this connection.
    let mut out = BytesMut::with_capacity(total);
    for frame in pending.drain(..) {
        session.seq_out = next_seq(session.seq_out);
        frame.write(session.seq_out, &mut out);
    }
    // An idle connection keeps no frame list.
    *pending = Vec::new();
    let message: Bytes = out.freeze();
    ws.send(WsMessage::Binary(message)).await
}

async fn close_with<S>(ws: &mut WebSocketStream<S>, close: Close) -> Result<(), tungstenite::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.close(Some(CloseFrame {
        code: close.code,
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
async fn close_within<S>(ws: &mut WebSocketStream<S>, close: Close)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let handshake = async {
        if close_with(ws, close).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), handshake).await;
}

/// WebSocket messages written per turn of the main loop before the socket
/// is read again.
const MAX_WRITES_PER_TURN: usize = 4;

/// `PEER_BUSY` answers within one `rate_abuse_window` after which the sender
/// itself is disconnected.
const MAX_BUSY: u32 = 64;

/// The protocol state of one connection: its rooms, its name, its call
/// partners, its rate limiter. Dropping it leaves every room and frees the
/// name, so a connection that fails anywhere still cleans up.
struct Session {
    shared: Arc<Shared>,
    router: Arc<dyn Router>,
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
    /// When drops past the reply budget are to be reported at the latest,
    /// and the last of them: a `RATE_LIMITED` reply with `request_seq` N
    /// reports frame N and every earlier one left unanswered.
    rate_report: Option<(Instant, u32)>,
    /// `PEER_BUSY` answers in the current window: its start and count.
    busy: Option<(Instant, u32)>,
    /// Set when a handler decides the connection must end.
    closing: Option<Close>,
    seq_out: u32,
    ping_nonce: u64,
    leave_reason: LeaveReason,
    /// What the access token allows, with `auth = token`.
    grant: Option<Box<Grant>>,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        peer_id: PeerId,
        capabilities: Capabilities,
        outbox: Arc<Outbox>,
        grant: Option<Box<Grant>>,
        rate: RateGuard,
    ) -> Session {
        Session {
            router: shared.router.clone(),
            shared,
            peer_id,
            capabilities,
            outbox,
            rooms: Vec::new(),
            pair_room: None,
            user: None,
            display_name: String::new(),
            rate,
            rate_report: None,
            busy: None,
            closing: None,
            seq_out: 0,
            ping_nonce: 0,
            leave_reason: LeaveReason::Disconnected,
            grant,
        }
    }

    /// Queues a message for this connection.
    fn reply(&self, message: &Message) {
        // A full own outbox closes the connection as a slow consumer.
        let _ = self.outbox.push(encode(message));
    }

    fn error(&self, code: ErrorCode, message: String, request_seq: u32) {
        self.reply(&Message::Error(ErrorMessage {
            code,
            message,
            request_seq,
        }));
    }

    /// Handles one WebSocket message; returns `Some` when the connection
    /// must close.
    fn receive(&mut self, data: Bytes, max_frames: usize) -> Option<Close> {
        let codec = self.shared.codec;
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
            if let Some(signal) = relay::scan(&frame, &codec) {
                if self.relay_in_place(seq, &signal) {
                    if let Some(close) = self.closing.take() {
                        return Some(close);
                    }
                    continue;
                }
            }
            match protocol::decode(&frame, &codec) {
                Ok(message) => self.handle(seq, message),
                Err(DecodeError::Compression(e)) => {
                    self.error(ErrorCode::BadCompression, e.to_string(), seq)
                }
                Err(e) => self.error(e.code(), e.to_string(), seq),
            }
            if let Some(close) = self.closing.take() {
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
        let rate = self.shared.config.rate_per_second;
        match self.rate.check(bytes) {
            Verdict::Accept { unreported } => {
                if unreported > 0 {
                    self.report_drops(unreported);
                }
                Ok(true)
            }
            Verdict::Drop { reply: Some(n) } => {
                let message = if n <= 1 {
                    format!("over {rate} messages/s; message dropped")
                } else {
                    format!(
                        "over {rate} messages/s; message dropped, and {} before it",
                        n - 1
                    )
                };
                self.error(ErrorCode::RateLimited, message, seq);
                self.rate_report = None;
                Ok(false)
            }
            Verdict::Drop { reply: None } => {
                let due = self
                    .rate_report
                    .map_or_else(|| Instant::now() + Duration::from_secs(1), |(due, _)| due);
                self.rate_report = Some((due, seq));
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
        let last = self.rate_report.take().map_or(0, |(_, seq)| seq);
        if count == 0 {
            return;
        }
        self.error(
            ErrorCode::RateLimited,
            format!(
                "over {} messages/s: {count} more messages dropped, the last with this seq",
                self.shared.config.rate_per_second
            ),
            last,
        );
    }

    /// Sends the drop report if its time has come.
    fn report_drops_due(&mut self, now: Instant) {
        if self.rate_report.is_some_and(|(due, _)| due <= now) {
            let count = self.rate.take_unreported();
            self.report_drops(count);
        }
    }

    fn handle(&mut self, seq: u32, message: Message) {
        match message {
            Message::Ping { nonce } => self.reply(&Message::Pong { nonce }),
            Message::Pong { .. } | Message::Ack { .. } => {}
            Message::Hello(_) => self.error(
                ErrorCode::HelloRequired,
                "hello was already sent".into(),
                seq,
            ),
            Message::Join(join) => self.join(seq, join),
            Message::Leave { room } => {
                if !self.leave(&room, LeaveReason::Left) {
                    self.error(ErrorCode::NotJoined, format!("not in room {room}"), seq);
                    return;
                }
                self.reply(&Message::Left { room });
            }
            Message::Login { name } => self.login(seq, name),
            Message::Logout => match self.user.take() {
                Some(name) => {
                    let partners = self.router.logout(&name, self.peer_id);
                    self.hang_up_partners(&name, partners);
                    // Member lists show the current name, or none.
                    self.router.set_member_user(&self.rooms, self.peer_id, None);
                }
                None => self.error(ErrorCode::NotLoggedIn, "not logged in".into(), seq),
            },
            Message::HangUp { peer } => self.hang_up(seq, peer),
            Message::Offer(d) => self.relay_sdp(seq, d, true),
            Message::Answer(d) => self.relay_sdp(seq, d, false),
            Message::Ice(ice) => self.relay_ice(seq, ice),
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
        if SystemTime::now() >= grant.expires_at() {
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
                None if self.shared.config.default_room_capacity > max => capacity = Some(max),
                _ => {}
            }
        }
        Some((capacity, grant.may_create_rooms()))
    }

    fn join(&mut self, seq: u32, join: Join) {
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
        if rooms_after > self.shared.config.max_rooms_per_peer {
            self.error(
                ErrorCode::TooManyRooms,
                format!("at most {} rooms", self.shared.config.max_rooms_per_peer),
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
        match self
            .router
            .join_or_create(&join.room, join.mode, capacity, member, may_create)
        {
            Ok(outcome) => {
                if let Some(old) = replaces {
                    self.leave(&old, LeaveReason::JoinedOtherRoom);
                    self.reply(&Message::Left { room: old });
                }
                if outcome.joined.mode == RoomMode::Pair {
                    self.pair_room = Some(join.room.clone());
                }
                // Most peers are in one room: grow one at a time.
                self.rooms.reserve_exact(1);
                self.rooms.push(join.room);
                // The router has queued Joined for us already.
                if let Some(notice) = outcome.notice {
                    self.router.broadcast(notice);
                }
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
            Err(e) => self.error(ErrorCode::InvalidArgument, e.to_string(), seq),
        }
    }

    /// Leaves `room`; false if not a member.
    fn leave(&mut self, room: &RoomId, reason: LeaveReason) -> bool {
        let Some(i) = self.rooms.iter().position(|r| r == room) else {
            return false;
        };
        self.rooms.swap_remove(i);
        if self.pair_room.as_ref() == Some(room) {
            self.pair_room = None;
        }
        self.router.leave(room, self.peer_id, reason);
        true
    }

    fn login(&mut self, seq: u32, name: UserName) {
        // With a token the only name is the token's user.
        if let Some(grant) = self.grant.as_deref() {
            let error = if SystemTime::now() >= grant.expires_at() {
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
        let error = match self.router.login(&name, self.peer_id) {
            Ok(()) => {
                self.router
                    .set_member_user(&self.rooms, self.peer_id, Some(&name));
                self.user = Some(name.clone());
                None
            }
            Err(LoginError::Taken) => Some(ErrorCode::NameTaken),
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
    fn target(&self, seq: u32, hint: Option<&RoomId>, to: &Address) -> Option<Target> {
        if !self.may_negotiate(seq) {
            return None;
        }
        self.router
            .resolve(self.peer_id, self.user.as_ref(), &self.rooms, hint, to)
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
        };
        let Err(e) = self.router.deliver(target, frame, origin) else {
            return;
        };
        self.route_error(seq, e.clone());
        if e == RouteError::PeerBusy {
            let now = Instant::now();
            let window = self.shared.config.rate_abuse_window;
            match &mut self.busy {
                Some((start, count)) if now.duration_since(*start) < window => *count += 1,
                busy => *busy = Some((now, 1)),
            }
            if self.busy.is_some_and(|(_, count)| count >= MAX_BUSY) {
                self.closing.get_or_insert(Close::app(
                    ErrorCode::PeerBusy,
                    "kept sending to a peer that is not keeping up",
                    LeaveReason::Kicked,
                ));
            }
        }
    }

    /// An offer or answer by name begins (or continues) a named call.
    fn remember_partner(&self, to: &Address, target: &Target) {
        if let (Address::User(name), Some(me)) = (to, &self.user) {
            self.router.open_call(me, self.peer_id, name, target.peer);
        }
    }

    /// Relays a signal checked in place (the fast path). Returns false when
    /// it needs the full path: a deflated SDP for a receiver that cannot
    /// inflate it.
    fn relay_in_place(&mut self, seq: u32, signal: &relay::Signal) -> bool {
        let Some(target) = self.target(seq, signal.room.as_ref(), &signal.target) else {
            return true;
        };
        if signal.deflated() && !target.capabilities.contains(Capabilities::DEFLATE_SDP) {
            return false;
        }
        if signal.kind != MessageType::Ice {
            self.remember_partner(&signal.target, &target);
        }
        let frame = Encoded {
            kind: signal.kind,
            flags: signal.flags,
            payload: relay::readdress(signal, &self.own_address(&signal.target)),
        };
        self.send(seq, &target, frame);
        true
    }

    fn relay_sdp(&mut self, seq: u32, mut d: protocol::SessionDescription, offer: bool) {
        let Some(target) = self.target(seq, d.room.as_ref(), &d.peer) else {
            return;
        };
        if let Sdp::Deflated(data) = &d.sdp {
            if !target.capabilities.contains(Capabilities::DEFLATE_SDP) {
                // The receiver cannot inflate: do it for it, within the cap.
                match sdp::inflate(data, self.shared.codec.max_sdp) {
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
        self.remember_partner(&d.peer, &target);
        d.peer = self.own_address(&d.peer);
        let message = if offer {
            Message::Offer(d)
        } else {
            Message::Answer(d)
        };
        self.send(seq, &target, encode(&message));
    }

    fn relay_ice(&mut self, seq: u32, mut ice: protocol::IceCandidates) {
        let Some(target) = self.target(seq, ice.room.as_ref(), &ice.peer) else {
            return;
        };
        ice.peer = self.own_address(&ice.peer);
        self.send(seq, &target, encode(&Message::Ice(ice)));
    }

    fn hang_up(&mut self, seq: u32, peer: Address) {
        let Some(target) = self.target(seq, None, &peer) else {
            return;
        };
        if let (Address::User(name), Some(me)) = (&peer, &self.user) {
            // Only a call partner may hang up: no cold hang-ups by name.
            if !self.router.in_call(me, name) {
                return self.error(
                    ErrorCode::UnknownPeer,
                    format!("no call in progress with {name}"),
                    seq,
                );
            }
            self.router.end_call(me, name);
        }
        let from = self.own_address(&peer);
        self.send(seq, &target, encode(&Message::HangUp { peer: from }));
    }

    /// Tells every named call partner that `me` is gone.
    fn hang_up_partners(&self, me: &UserName, partners: Vec<UserName>) {
        if partners.is_empty() {
            return;
        }
        let frame = encode(&Message::HangUp {
            peer: Address::User(me.clone()),
        });
        for partner in partners {
            if let Ok(target) =
                self.router
                    .resolve(self.peer_id, Some(me), &[], None, &Address::User(partner))
            {
                self.router.notify(target.peer, frame.clone());
            }
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _span = info_span!("cleanup", peer = %self.peer_id).entered();
        let reason = self.leave_reason;
        for room in std::mem::take(&mut self.rooms) {
            self.router.leave(&room, self.peer_id, reason);
        }
        if let Some(name) = self.user.take() {
            let partners = self.router.logout(&name, self.peer_id);
            self.hang_up_partners(&name, partners);
        }
        self.router.unregister(self.peer_id);
        // Whoever sent this peer a signal it never got is told so.
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
            self.router.notify(origin.peer, error);
        }
    }
}
