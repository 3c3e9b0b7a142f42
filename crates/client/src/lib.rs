//! An async client for the switchboard protocol, over `ws://` or `wss://`
//! (rustls). Depends on the protocol crate, re-exported as [`protocol`],
//! and on tokio; not on anything of the server's.
//!
//! # Layout
//!
//! - [`Client`] (in `session`): what an application uses. A background task
//!   keeps one session alive across reconnects (resuming it where the
//!   server allows), compresses SDP, batches ICE and hands out typed
//!   [`Event`]s.
//! - [`Connection`]: one WebSocket session, message by message: it sends
//!   Hello, waits for Welcome, then sends messages (coalescing a batch into
//!   one WebSocket message) and receives decoded messages, answering the
//!   server's Ping by itself. Tests use it to speak the protocol exactly.
//!   Frame by frame too: frames queued ([`Connection::push`], or already
//!   encoded, [`Connection::push_raw`]) leave as one WebSocket message on
//!   [`Connection::flush`], and [`Connection::recv_frames`] hands over
//!   received frames undecoded; the load generator runs on this.
//! - [`resume`]: session resume's bookkeeping, sans I/O: the frames the
//!   server has not acknowledged ([`resume::ReplayBuffer`]), what this
//!   client processed and owes an `Ack` for ([`resume::Inbound`]), and
//!   what a session carries from one connection to the next
//!   ([`resume::SessionResume`]).
//!
//! # Session resume
//!
//! With `CAPABILITY_RESUME` in its Hello ([`ClientConfig::resume`], on by
//! default for a [`Client`]; opt-in for a bare [`Connection`]) and a server
//! that grants it (docs/PROTOCOL.md, section 11a), a [`Connection`]:
//!
//! - numbers its frames on across the connections of one session, and
//!   keeps each frame it sends until the server's `Ack` covers it (at most
//!   the Welcome's `resume_limits.replay_frames` frames and `replay_bytes`
//!   payload bytes: past that the oldest is dropped, and the session cannot
//!   be resumed until the server has acknowledged what was dropped);
//! - acknowledges the server's frames as it hands them out: an `Ack`
//!   (header seq 0) goes out within `resume_limits.ack_delay_ms` (while
//!   the caller waits in [`Connection::recv`]), or sooner in the same
//!   WebSocket message as the next frames it sends;
//! - skips a server frame it has already processed (counted in
//!   [`resume::Inbound::duplicates`]).
//!
//! After a drop, [`Connection::take_resume`] hands out that state and
//! [`Connection::resume`] presents it on a new connection. If the server
//! resumes the session, the frames it has not processed are sent again
//! with their original numbers, and the server sends again what this
//! client missed; if not, the new connection is a fresh session. A
//! [`Client`] does this by itself and reports [`Event::Resumed`] or
//! [`Event::StartedFresh`].

pub mod resume;
mod session;

pub use resume::SessionResume;
pub use session::{backoff, Client, ClientConfig, Event};
#[doc(no_inline)]
pub use switchboard_protocol as protocol;

use std::collections::VecDeque;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::frame::{next_seq, write_frame};
use crate::protocol::{
    decode, encode_into, CodecLimits, DecodeError, Flags, Frames, Hello, Message, MessageType,
    RawFrame, Welcome, PROTOCOL_VERSION,
};
use crate::protocol::{Capabilities, ErrorMessage};

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The server sent bytes that do not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The server closed the connection.
    #[error("closed by server: {code} {reason}")]
    Closed {
        /// WebSocket close code (0 if none was given).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// The server answered Hello with something other than Welcome.
    #[error("handshake refused: {0:?}")]
    Refused(Option<ErrorMessage>),
    /// The server resumed the session, but frames it never processed were
    /// dropped from this client's replay buffer (past the server's
    /// `resume_limits`): going on would lose them, so the connection closed
    /// politely, which ended the session at once. Connect afresh.
    #[error("resume would lose frames the server never had; the session was ended")]
    ResumeLost,
}

/// The socket type of a client connection.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A Hello with this crate's protocol version and every capability.
pub fn default_hello() -> Hello {
    Hello {
        resume: None,
        protocol_version: PROTOCOL_VERSION,
        capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
        access_token: None,
        user_agent: concat!("switchboard-rs/", env!("CARGO_PKG_VERSION")).into(),
    }
}

/// One client session.
pub struct Connection {
    ws: Socket,
    seq: u32,
    limits: CodecLimits,
    welcome: Welcome,
    /// Frames not yet returned, with their sequence numbers (0 where the
    /// header itself was bad), decoded or not, in order: a bad frame is
    /// reported where it was, and the frames after it are still delivered.
    inbox: VecDeque<(u32, Result<Message, DecodeError>)>,
    out: BytesMut,
    /// Session resume's state, when the server granted `CAPABILITY_RESUME`.
    resume: Option<SessionResume>,
    /// Whether `Ack`s go out by themselves (see [`Connection::set_auto_ack`]).
    auto_ack: bool,
    /// Frames sent again when this connection resumed a session.
    resent: usize,
}

impl Connection {
    /// Connects to `url` (`ws://host:port/ws`), sends `hello` and waits for
    /// Welcome.
    pub async fn connect(url: &str, hello: Hello) -> Result<Connection, ClientError> {
        Connection::handshake(open(url).await?, hello).await
    }

    /// [`Connection::connect`] over `wss://` with a TLS configuration of
    /// the caller's (its own root certificates, say). `connect` itself
    /// accepts `wss://` URLs too, checked against the web PKI roots.
    pub async fn connect_with_tls(
        url: &str,
        hello: Hello,
        tls: std::sync::Arc<rustls::ClientConfig>,
    ) -> Result<Connection, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            url,
            Some(WebSocketConfig::default().read_buffer_size(16 * 1024)),
            true,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        )
        .await?;
        Connection::handshake(ws, hello).await
    }

    /// Connects to `url` and asks to resume `session` (from
    /// [`Connection::take_resume`] of the lost connection): `hello` goes
    /// out with `CAPABILITY_RESUME`, the session's token and the highest
    /// server frame processed.
    ///
    /// If the server resumes it ([`Connection::resumed`]), the frames it
    /// has not processed are sent again at once, with their original
    /// numbers, and the session goes on: the server's missed frames follow
    /// from [`Connection::recv`]. If not, this is a fresh session
    /// (`welcome().resume` says why) and `session` is of no further use.
    pub async fn resume(
        url: &str,
        hello: Hello,
        session: &SessionResume,
    ) -> Result<Connection, ClientError> {
        Connection::resume_handshake(open(url).await?, hello, session).await
    }

    /// Runs the Hello/Welcome exchange on an open WebSocket.
    pub async fn handshake(ws: Socket, hello: Hello) -> Result<Connection, ClientError> {
        Connection::start(ws, hello, None).await
    }

    /// [`Connection::resume`] on an open WebSocket.
    pub async fn resume_handshake(
        ws: Socket,
        hello: Hello,
        session: &SessionResume,
    ) -> Result<Connection, ClientError> {
        Connection::start(ws, hello, Some(session.clone())).await
    }

    async fn start(
        ws: Socket,
        mut hello: Hello,
        prior: Option<SessionResume>,
    ) -> Result<Connection, ClientError> {
        if let Some(session) = &prior {
            hello.capabilities = hello.capabilities.union(Capabilities::RESUME);
            hello.resume = Some(session.request());
        }
        let mut c = Connection {
            ws,
            seq: 0,
            limits: CodecLimits::default(),
            welcome: placeholder_welcome(),
            inbox: VecDeque::new(),
            out: BytesMut::new(),
            resume: None,
            auto_ack: true,
            resent: 0,
        };
        // The Hello is the connection's frame #1, resume or not; a resumed
        // session then goes on with its own numbering.
        c.send(&Message::Hello(hello)).await?;
        let (seq, welcome) = match c.recv_with_seq().await {
            Ok((seq, Message::Welcome(w))) => (seq, w),
            Ok((_, Message::Error(e))) => return Err(ClientError::Refused(Some(e))),
            Ok(_) => return Err(ClientError::Refused(None)),
            Err(e) => return Err(e),
        };
        c.adopt(&welcome.limits);
        let granted = welcome.resume.clone();
        c.welcome = welcome;
        let Some(granted) = granted else {
            return Ok(c);
        };
        match prior {
            Some(mut session) if granted.resumed => {
                if seq != 0 {
                    tracing::warn!("the server numbered a resumed Welcome {seq}, not 0");
                }
                session.resumed(granted.token, granted.limits, granted.last_seq);
                if !session.resumable() {
                    // End the session now (its rooms hear of it at once,
                    // not after the grace) rather than go on with a gap.
                    c.close_and_wait().await;
                    return Err(ClientError::ResumeLost);
                }
                c.seq = session.out_seq();
                let resend: Vec<Bytes> = session
                    .replay()
                    .after(granted.last_seq)
                    .map(|(_, frame)| frame.clone())
                    .collect();
                c.resume = Some(session);
                c.resent = resend.len();
                // A failure here shows on the next recv; the frames stay
                // held, and the connection carries the new token.
                if let Err(e) = c.write_frames(&resend).await {
                    tracing::debug!("sending held frames again failed: {e}");
                }
            }
            _ => {
                let mut session = SessionResume::new(granted.token, granted.limits, c.seq);
                // The Welcome itself is numbered, held and acknowledged.
                session.inbound_mut().receive(seq, Instant::now());
                c.resume = Some(session);
            }
        }
        Ok(c)
    }

    /// Takes the limits the server announced (0: not announced, keep the
    /// default) for what it sends us and what we send it.
    fn adopt(&mut self, limits: &protocol::Limits) {
        let set = |field: &mut usize, announced: u32| {
            if announced > 0 {
                *field = announced as usize;
            }
        };
        set(&mut self.limits.max_payload, limits.max_message_bytes);
        set(&mut self.limits.max_sdp, limits.max_sdp_bytes);
        set(&mut self.limits.max_frames, limits.max_frames_per_message);
    }

    /// Most frames and bytes in one WebSocket message to the server.
    fn send_limits(&self) -> (usize, usize) {
        let l = &self.welcome.limits;
        let frames = if l.max_frames_per_message > 0 {
            l.max_frames_per_message as usize
        } else {
            usize::MAX
        };
        let bytes = if l.max_message_bytes > 0 {
            l.max_message_bytes as usize
        } else {
            usize::MAX
        };
        (frames, bytes)
    }

    /// The server's Welcome.
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// Whether this connection resumed an earlier session (its Welcome
    /// says `resumed`).
    pub fn resumed(&self) -> bool {
        self.welcome.resume.as_ref().is_some_and(|r| r.resumed)
    }

    /// How many held frames went out again when this connection resumed a
    /// session.
    pub fn resent(&self) -> usize {
        self.resent
    }

    /// Session resume's state, when the server granted it.
    pub fn resume_state(&self) -> Option<&SessionResume> {
        self.resume.as_ref()
    }

    /// Takes session resume's state out of a lost connection, to resume
    /// the session with [`Connection::resume`]; `None` when resume was not
    /// granted. The connection acknowledges and holds nothing after this.
    pub fn take_resume(&mut self) -> Option<SessionResume> {
        self.resume.take()
    }

    /// Whether `Ack`s go out by themselves (the default): within the
    /// Welcome's `ack_delay` while the caller waits in
    /// [`Connection::recv`], or with the next frames sent. Off, only
    /// [`Connection::send_ack`] acknowledges (for tests that starve the
    /// server's replay buffer on purpose).
    pub fn set_auto_ack(&mut self, on: bool) {
        self.auto_ack = on;
    }

    /// Sends an `Ack` for the server frames processed since the last one,
    /// now, if there are any.
    pub async fn send_ack(&mut self) -> Result<(), ClientError> {
        let Some(seq) = self.resume.as_ref().and_then(|r| r.inbound().pending_ack()) else {
            return Ok(());
        };
        encode_into(&Message::Ack { seq }, 0, &mut self.out);
        let data = self.out.split().freeze();
        self.ws.send(WsMessage::Binary(data)).await?;
        if let Some(r) = &mut self.resume {
            r.inbound_mut().acked(seq);
        }
        Ok(())
    }

    /// Sends one message; returns its sequence number (0 for an `Ack`,
    /// which is outside the numbering).
    pub async fn send(&mut self, message: &Message) -> Result<u32, ClientError> {
        self.send_messages(std::slice::from_ref(message), true)
            .await
    }

    /// Sends several messages in as few WebSocket messages as the
    /// server's announced limits allow (frames per message, message size):
    /// usually one, with one flush.
    pub async fn send_batch(&mut self, messages: &[Message]) -> Result<(), ClientError> {
        self.send_messages(messages, false).await.map(|_| ())
    }

    /// Sends several messages as one WebSocket message whatever the
    /// server's limits (for tests of bad input: too many frames, too large).
    pub async fn send_batch_as_one(&mut self, messages: &[Message]) -> Result<(), ClientError> {
        self.send_messages(messages, true).await.map(|_| ())
    }

    /// Numbers and encodes `messages` (an `Ack` first when one is owed),
    /// holds them for a resume, and sends them: in one WebSocket message if
    /// `one`, else in as few as the limits allow. Returns the last number.
    async fn send_messages(&mut self, messages: &[Message], one: bool) -> Result<u32, ClientError> {
        let ack = if self.auto_ack {
            self.resume.as_ref().and_then(|r| r.inbound().pending_ack())
        } else {
            None
        };
        let mut ends = Vec::with_capacity(messages.len() + 1);
        let mut numbered = Vec::with_capacity(messages.len());
        if let Some(seq) = ack {
            encode_into(&Message::Ack { seq }, 0, &mut self.out);
            ends.push(self.out.len());
        }
        let mut last = 0;
        for m in messages {
            // Acks are numbered 0, outside the count (PROTOCOL.md §3).
            let seq = if matches!(m, Message::Ack { .. }) {
                0
            } else {
                self.seq = next_seq(self.seq);
                self.seq
            };
            let start = self.out.len();
            encode_into(m, seq, &mut self.out);
            ends.push(self.out.len());
            if seq != 0 {
                numbered.push((seq, start, self.out.len()));
            }
            last = seq;
        }
        let data = self.out.split().freeze();
        if let Some(r) = &mut self.resume {
            r.set_out_seq(self.seq);
            for &(seq, start, end) in &numbered {
                r.replay_mut().hold(seq, data.slice(start..end));
            }
        }
        self.write_split(data, &ends, one).await?;
        if let (Some(seq), Some(r)) = (ack, &mut self.resume) {
            r.inbound_mut().acked(seq);
        }
        Ok(last)
    }

    /// Sends frames encoded before (held ones, sent again on a resume).
    async fn write_frames(&mut self, frames: &[Bytes]) -> Result<(), ClientError> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut ends = Vec::with_capacity(frames.len());
        for f in frames {
            self.out.extend_from_slice(f);
            ends.push(self.out.len());
        }
        let data = self.out.split().freeze();
        self.write_split(data, &ends, false).await
    }

    /// Sends `data`, whose frames end at `ends`, as one WebSocket message
    /// if `one`, else cut at frame boundaries to fit the server's limits.
    async fn write_split(
        &mut self,
        data: Bytes,
        ends: &[usize],
        one: bool,
    ) -> Result<(), ClientError> {
        let (max_frames, max_bytes) = if one {
            (usize::MAX, usize::MAX)
        } else {
            self.send_limits()
        };
        let (mut start, mut end, mut frames) = (0, 0, 0);
        for &next in ends {
            if frames > 0 && (frames == max_frames || next - start > max_bytes) {
                // This frame starts the next message.
                self.ws
                    .feed(WsMessage::Binary(data.slice(start..end)))
                    .await?;
                start = end;
                frames = 0;
            }
            frames += 1;
            end = next;
        }
        self.ws
            .send(WsMessage::Binary(data.slice(start..end)))
            .await?;
        Ok(())
    }

    /// Sends raw bytes as one binary WebSocket message (for tests of bad input).
    pub async fn send_raw(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.ws.send(WsMessage::Binary(data)).await?;
        Ok(())
    }

    /// The next message from the server, with its sequence number. Server
    /// Pings are answered here and not returned. With session resume, an
    /// `Ack` from the server trims the held frames (and is returned), a
    /// frame processed before is skipped, and a pending `Ack` goes out
    /// when due while this waits.
    pub async fn recv_with_seq(&mut self) -> Result<(u32, Message), ClientError> {
        loop {
            if let Some((seq, m)) = self.inbox.pop_front() {
                if let Some(r) = &mut self.resume {
                    if !r.inbound_mut().receive(seq, Instant::now()) {
                        tracing::debug!("skipped server frame {seq}: processed before");
                        continue;
                    }
                }
                let m = m?;
                match m {
                    Message::Ping { nonce } => {
                        self.send(&Message::Pong { nonce }).await?;
                        continue;
                    }
                    Message::Ack { seq: acked } => {
                        if let Some(r) = &mut self.resume {
                            r.replay_mut().acknowledged(acked);
                        }
                    }
                    _ => {}
                }
                return Ok((seq, m));
            }
            let data = self.next_binary().await?;
            for frame in Frames::new(data, self.limits.max_payload, self.limits.max_frames) {
                self.inbox.push_back(match frame {
                    Ok(f) => (f.header.seq, decode(&f, &self.limits)),
                    Err(e) => (0, Err(e)),
                });
            }
        }
    }

    /// The next binary WebSocket message (others are skipped); with
    /// session resume, a pending `Ack` goes out when due while this waits.
    async fn next_binary(&mut self) -> Result<Bytes, ClientError> {
        loop {
            let due = if self.auto_ack {
                self.resume.as_ref().and_then(|r| r.inbound().due())
            } else {
                None
            };
            let next = match due {
                // No timer to race (the usual case, and the relay's path).
                None => self.ws.next().await,
                Some(due) => tokio::select! {
                    next = self.ws.next() => next,
                    () = tokio::time::sleep_until(due.into()) => {
                        self.send_ack().await?;
                        continue;
                    }
                },
            };
            match next {
                Some(Ok(WsMessage::Binary(data))) => return Ok(data),
                Some(Ok(WsMessage::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((0, String::new()));
                    return Err(ClientError::Closed { code, reason });
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
                None => {
                    return Err(ClientError::Closed {
                        code: 0,
                        reason: "connection closed".into(),
                    })
                }
            }
        }
    }

    /// The next message from the server.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        self.recv_with_seq().await.map(|(_, m)| m)
    }

    /// The underlying socket, for tests that misbehave on purpose.
    pub fn socket(&mut self) -> &mut Socket {
        &mut self.ws
    }

    /// Closes the connection politely (which ends a resumable session at
    /// once, PROTOCOL.md §11a).
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
    }

    /// Closes politely and waits (a second at most) for the server's
    /// close frame, which it sends once the session has left its rooms.
    async fn close_and_wait(&mut self) {
        if self.ws.close(None).await.is_err() {
            return;
        }
        let _ = tokio::time::timeout(std::time::Duration::from_secs(1), async {
            while let Some(Ok(m)) = self.ws.next().await {
                if m.is_close() {
                    break;
                }
            }
        })
        .await;
    }
}

/// Frame by frame, for a program that sends a great many signals (the load
/// generator): frames queued with [`Connection::push`] (or, already
/// encoded, [`Connection::push_raw`]) leave together on
/// [`Connection::flush`], one WebSocket message and one system call per
/// batch; [`Connection::recv_frames`] hands over the frames of a message
/// without decoding them. Numbering, holding for a resume and `Ack`s work
/// as with [`Connection::send`] and [`Connection::recv`].
impl Connection {
    /// Queues `message` for the next [`Connection::flush`]; returns its
    /// sequence number (0 for an `Ack`, which is outside the numbering).
    pub fn push(&mut self, message: &Message) -> u32 {
        let seq = if matches!(message, Message::Ack { .. }) {
            0
        } else {
            self.seq = next_seq(self.seq);
            self.seq
        };
        let start = self.out.len();
        encode_into(message, seq, &mut self.out);
        self.hold_queued(seq, start);
        seq
    }

    /// Queues a frame of type `kind` whose payload is already encoded (a
    /// received signal sent back, say); returns its sequence number.
    pub fn push_raw(&mut self, kind: MessageType, payload: &[u8]) -> u32 {
        self.seq = next_seq(self.seq);
        let start = self.out.len();
        write_frame(&mut self.out, kind, Flags::default(), self.seq, payload);
        self.hold_queued(self.seq, start);
        self.seq
    }

    /// With session resume, holds the frame queued from `start` until the
    /// server acknowledges it.
    fn hold_queued(&mut self, seq: u32, start: usize) {
        if let (Some(r), true) = (&mut self.resume, seq != 0) {
            r.set_out_seq(self.seq);
            let frame = Bytes::copy_from_slice(&self.out[start..]);
            r.replay_mut().hold(seq, frame);
        }
    }

    /// Sends what was queued as one WebSocket message (the caller keeps it
    /// within the Welcome's limits), with an `Ack` when one is owed;
    /// nothing when nothing is queued.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let ack = if self.auto_ack {
            self.resume.as_ref().and_then(|r| r.inbound().pending_ack())
        } else {
            None
        };
        if let Some(seq) = ack {
            encode_into(&Message::Ack { seq }, 0, &mut self.out);
        }
        let data = self.out.split().freeze();
        self.ws.send(WsMessage::Binary(data)).await?;
        if let (Some(seq), Some(r)) = (ack, &mut self.resume) {
            r.inbound_mut().acked(seq);
        }
        Ok(())
    }

    /// Reads the next WebSocket message and hands each of its frames to
    /// `each` undecoded. Server Pings are answered (the `Pong` goes out,
    /// with whatever else was queued, before this returns) and not handed
    /// over; with session resume, a frame processed before is skipped and
    /// an `Ack` trims the held frames (and is handed over). Messages that
    /// [`Connection::recv`] read ahead and has not returned yet stay for
    /// it. A frame that does not parse ends the read with its error.
    pub async fn recv_frames(
        &mut self,
        mut each: impl FnMut(&RawFrame),
    ) -> Result<(), ClientError> {
        let data = self.next_binary().await?;
        let mut pinged = false;
        for frame in Frames::new(data, self.limits.max_payload, self.limits.max_frames) {
            let frame = frame?;
            if let Some(r) = &mut self.resume {
                if !r.inbound_mut().receive(frame.header.seq, Instant::now()) {
                    continue;
                }
            }
            let kind = frame.header.kind;
            if kind == MessageType::Ping as u8 || kind == MessageType::Ack as u8 {
                match decode(&frame, &self.limits)? {
                    Message::Ping { nonce } => {
                        self.push(&Message::Pong { nonce });
                        pinged = true;
                        continue;
                    }
                    Message::Ack { seq } => {
                        if let Some(r) = &mut self.resume {
                            r.replay_mut().acknowledged(seq);
                        }
                    }
                    _ => {}
                }
            }
            each(&frame);
        }
        if pinged {
            self.flush().await?;
        }
        Ok(())
    }
}

/// Opens the WebSocket to `url`.
async fn open(url: &str) -> Result<Socket, ClientError> {
    let (ws, _) = tokio_tungstenite::connect_async_with_config(
        url,
        Some(WebSocketConfig::default().read_buffer_size(16 * 1024)),
        true,
    )
    .await?;
    Ok(ws)
}

/// Sleeps until `deadline`, or forever without one.
pub(crate) async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn placeholder_welcome() -> Welcome {
    Welcome {
        resume: None,
        peer_id: protocol::PeerId(0),
        protocol_version: 0,
        limits: protocol::Limits {
            max_message_bytes: 0,
            max_frames_per_message: 0,
            max_sdp_bytes: 0,
            rate_per_second: 0,
            rate_burst: 0,
            max_id_bytes: 0,
            max_room_capacity: 0,
            default_room_capacity: 0,
            max_payload_bytes: 0,
            max_candidates_per_batch: 0,
            rate_bytes_per_second: 0,
            rate_bytes_burst: 0,
            max_rooms_per_peer: 0,
        },
        heartbeat_interval: std::time::Duration::ZERO,
        heartbeat_timeout: std::time::Duration::ZERO,
        ice_servers: Vec::new(),
        capabilities: Capabilities::empty(),
        sdp_dictionary: 0,
    }
}
