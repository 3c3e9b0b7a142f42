//! An async client for the switchboard protocol, over `ws://` or `wss://`
//! (rustls). Depends on the protocol crate, re-exported as [`protocol`],
//! and on tokio; not on anything of the server's.
//!
//! # Layout
//!
//! - [`Client`] (in `session`): what an application uses. A background task
//!   keeps one session alive across reconnects, compresses SDP, batches ICE
//!   and hands out typed [`Event`]s.
//! - [`Connection`]: one WebSocket session, message by message: it sends
//!   Hello, waits for Welcome, then sends messages (coalescing a batch into
//!   one WebSocket message) and receives decoded messages, answering the
//!   server's Ping by itself. Tests use it to speak the protocol exactly.

mod session;

pub use session::{backoff, Client, ClientConfig, Event};
#[doc(no_inline)]
pub use switchboard_protocol as protocol;

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::protocol::frame::next_seq;
use crate::protocol::{
    encode_into, CodecLimits, DecodeError, Hello, Message, Welcome, PROTOCOL_VERSION,
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
    /// Decoded frames not yet returned, and the frames that failed to
    /// decode, in order: a bad frame is reported where it was, and the
    /// frames after it are still delivered.
    inbox: VecDeque<Result<(u32, Message), DecodeError>>,
    out: BytesMut,
}

impl Connection {
    /// Connects to `url` (`ws://host:port/ws`), sends `hello` and waits for
    /// Welcome.
    pub async fn connect(url: &str, hello: Hello) -> Result<Connection, ClientError> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(
            url,
            Some(WebSocketConfig::default().read_buffer_size(16 * 1024)),
            true,
        )
        .await?;
        Connection::handshake(ws, hello).await
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

    /// Runs the Hello/Welcome exchange on an open WebSocket.
    pub async fn handshake(ws: Socket, hello: Hello) -> Result<Connection, ClientError> {
        let mut c = Connection {
            ws,
            seq: 0,
            limits: CodecLimits::default(),
            welcome: placeholder_welcome(),
            inbox: VecDeque::new(),
            out: BytesMut::new(),
        };
        c.send(&Message::Hello(hello)).await?;
        match c.recv().await {
            Ok(Message::Welcome(w)) => {
                c.adopt(&w.limits);
                c.welcome = w;
                Ok(c)
            }
            Ok(Message::Error(e)) => Err(ClientError::Refused(Some(e))),
            Ok(_) => Err(ClientError::Refused(None)),
            Err(e) => Err(e),
        }
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

    /// Sends one message; returns its sequence number.
    pub async fn send(&mut self, message: &Message) -> Result<u32, ClientError> {
        self.seq = next_seq(self.seq);
        encode_into(message, self.seq, &mut self.out);
        let data = self.out.split().freeze();
        self.ws.send(WsMessage::Binary(data)).await?;
        Ok(self.seq)
    }

    /// Sends several messages in as few WebSocket messages as the
    /// server's announced limits allow (frames per message, message size):
    /// usually one, with one flush.
    pub async fn send_batch(&mut self, messages: &[Message]) -> Result<(), ClientError> {
        let (max_frames, max_bytes) = self.send_limits();
        let mut frames = 0;
        for m in messages {
            let start = self.out.len();
            self.seq = next_seq(self.seq);
            encode_into(m, self.seq, &mut self.out);
            if frames > 0 && (frames == max_frames || self.out.len() > max_bytes) {
                // This frame starts the next message.
                let this = self.out.split_off(start);
                let data = self.out.split().freeze();
                self.ws.feed(WsMessage::Binary(data)).await?;
                self.out.unsplit(this);
                frames = 0;
            }
            frames += 1;
        }
        let data = self.out.split().freeze();
        self.ws.send(WsMessage::Binary(data)).await?;
        Ok(())
    }

    /// Sends several messages as one WebSocket message whatever the
    /// server's limits (for tests of bad input: too many frames, too large).
    pub async fn send_batch_as_one(&mut self, messages: &[Message]) -> Result<(), ClientError> {
        for m in messages {
            self.seq = next_seq(self.seq);
            encode_into(m, self.seq, &mut self.out);
        }
        let data = self.out.split().freeze();
        self.ws.send(WsMessage::Binary(data)).await?;
        Ok(())
    }

    /// Sends raw bytes as one binary WebSocket message (for tests of bad input).
    pub async fn send_raw(&mut self, data: Bytes) -> Result<(), ClientError> {
        self.ws.send(WsMessage::Binary(data)).await?;
        Ok(())
    }

    /// The next message from the server, with its sequence number. Server
    /// Pings are answered here and not returned.
    pub async fn recv_with_seq(&mut self) -> Result<(u32, Message), ClientError> {
        loop {
            if let Some(m) = self.inbox.pop_front() {
                let m = m?;
                if let Message::Ping { nonce } = m.1 {
                    self.send(&Message::Pong { nonce }).await?;
                    continue;
                }
                return Ok(m);
            }
            match self.ws.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    self.inbox
                        .extend(protocol::decode_message(data, &self.limits));
                }
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

    /// Closes the connection politely.
    pub async fn close(mut self) -> Result<(), ClientError> {
        self.ws.close(None).await?;
        Ok(())
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
