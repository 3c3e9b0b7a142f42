//! A lean WebSocket client for holding very many connections: the fleet's
//! connection.
//!
//! [`Lite`] speaks just enough RFC 6455 for switchboard: the client
//! handshake (the `101` is checked, the accept key is not), masked binary
//! messages out, unmasked frames in (binary, continuation, close, ping).
//! Incoming bytes are read into one buffer per thread, so an idle
//! connection owns no read buffer: a held connection is its socket, a
//! sequence number and three empty `Vec`s (about 120 bytes). Server
//! heartbeats (`Ping`) are answered with `Pong` as they are read, with a
//! non-blocking write; whatever does not fit waits in `pending` until the
//! socket is writable again.
//!
//! Every `await` in it waits only for readiness ([`TcpStream::readable`],
//! [`TcpStream::writable`]), and bytes are taken and written without
//! awaiting, so [`Lite::recv`] and [`Lite::flush`] may be cancelled (in a
//! `select!`) without losing or tearing a frame.

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpSocket, TcpStream};

use crate::protocol::frame::next_seq;
use crate::protocol::{self, encode_into, CodecLimits, Hello, Message, PeerId};
use crate::{bind_no_port, LoadError};

/// Pongs written by every [`Lite`] of this process (heartbeats answered).
pub static PONGS: AtomicU64 = AtomicU64::new(0);

/// Seeds of the masking keys, one per connection.
static MASKS: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// Where every connection of this thread reads into.
    static READ_BUF: RefCell<Vec<u8>> = RefCell::new(vec![0; 64 * 1024]);
}

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// One client connection.
pub struct Lite {
    stream: TcpStream,
    seq: u32,
    /// xorshift state for the masking keys.
    mask: u32,
    id: PeerId,
    /// Bytes of an incomplete frame, kept until the rest arrives.
    partial: Vec<u8>,
    /// The payload so far of a fragmented message.
    fragments: Vec<u8>,
    /// Framed bytes not yet written.
    pending: Vec<u8>,
}

impl Lite {
    /// Connects to `addr` (from `source`, if given), upgrades to a WebSocket
    /// at `path`, sends `hello` and waits for `Welcome`. No timeout: the
    /// caller bounds it.
    pub async fn connect(
        addr: SocketAddr,
        source: Option<IpAddr>,
        path: &str,
        hello: &Hello,
    ) -> Result<Lite, LoadError> {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            bind_no_port(&socket, ip)?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut lite = Lite {
            stream,
            seq: 0,
            mask: (MASKS.fetch_add(1, Ordering::Relaxed) as u32).wrapping_mul(0x9e37_79b9) | 1,
            id: PeerId(0),
            partial: Vec::new(),
            fragments: Vec::new(),
            pending: Vec::new(),
        };
        lite.upgrade(addr, path).await?;
        lite.send(std::slice::from_ref(&Message::Hello(hello.clone())))
            .await?;
        let id = lite
            .until(|m| match m {
                Message::Welcome(w) => Ok(Some(w.peer_id)),
                other => Err(LoadError::Unexpected(format!("hello: {other:?}"))),
            })
            .await?;
        lite.id = id;
        Ok(lite)
    }

    /// The id the server gave this connection.
    pub fn id(&self) -> PeerId {
        self.id
    }

    /// The sequence number of the last frame written (the one an `Error`
    /// about it names).
    pub fn last_seq(&self) -> u32 {
        self.seq
    }

    async fn upgrade(&mut self, addr: SocketAddr, path: &str) -> Result<(), LoadError> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        self.pending.extend_from_slice(request.as_bytes());
        self.flush().await?;
        let mut head = [0u8; 2048];
        let mut len = 0;
        loop {
            self.stream.readable().await?;
            match self.stream.try_read(&mut head[len..]) {
                Ok(0) => return Err(LoadError::Closed),
                Ok(n) => len += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
            if let Some(end) = head[..len].windows(4).position(|w| w == b"\r\n\r\n") {
                if !head.starts_with(b"HTTP/1.1 101") {
                    let line = String::from_utf8_lossy(&head[..len]);
                    let line = line.lines().next().unwrap_or_default().to_owned();
                    return Err(LoadError::Unexpected(format!("upgrade refused: {line}")));
                }
                // Bytes after the response already belong to the WebSocket.
                self.partial.extend_from_slice(&head[end + 4..len]);
                return Ok(());
            }
            if len == head.len() {
                return Err(LoadError::Unexpected("upgrade response too long".into()));
            }
        }
    }

    /// Frames `messages` as one masked binary WebSocket message and writes
    /// it (what does not fit at once waits for the socket).
    pub async fn send(&mut self, messages: &[Message]) -> Result<(), LoadError> {
        let mut payload = BytesMut::new();
        for m in messages {
            self.seq = next_seq(self.seq);
            encode_into(m, self.seq, &mut payload);
        }
        self.frame(OP_BINARY, &payload);
        self.flush().await
    }

    /// Appends one masked frame with `payload` to `pending`.
    fn frame(&mut self, opcode: u8, payload: &[u8]) {
        let out = &mut self.pending;
        out.push(0x80 | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= u16::MAX as usize {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        // xorshift32: masking keys need not be secret here, only present.
        let mut x = self.mask;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask = x;
        let key = x.to_be_bytes();
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i & 3]));
    }

    /// Writes what is pending without waiting; true if all of it went.
    fn try_flush(&mut self) -> Result<bool, LoadError> {
        while !self.pending.is_empty() {
            match self.stream.try_write(&self.pending) {
                Ok(0) => return Err(LoadError::Closed),
                Ok(n) if n == self.pending.len() => {
                    // Give back the buffer: an idle connection keeps none.
                    self.pending = Vec::new();
                }
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
        Ok(true)
    }

    /// Writes everything pending.
    pub async fn flush(&mut self) -> Result<(), LoadError> {
        while !self.try_flush()? {
            self.stream.writable().await?;
        }
        Ok(())
    }

    /// Waits for bytes, then hands each decoded message to `each`; server
    /// `Ping`s are answered and not handed over. Returns after one read
    /// (which may complete no message).
    pub async fn recv(&mut self, mut each: impl FnMut(Message)) -> Result<(), LoadError> {
        if !self.pending.is_empty() {
            self.flush().await?;
        }
        // Whole frames already here (read past the handshake) come first.
        if parse_header(&self.partial).is_some() {
            let carried = std::mem::take(&mut self.partial);
            self.take(&carried, &mut each)?;
            self.try_flush()?;
            return Ok(());
        }
        loop {
            self.stream.readable().await?;
            let read = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                match self.stream.try_read(&mut buf) {
                    Ok(0) => Err(LoadError::Closed),
                    Ok(n) => self.take(&buf[..n], &mut each).map(|()| true),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(false),
                    Err(e) => Err(e.into()),
                }
            })?;
            if read {
                self.try_flush()?;
                return Ok(());
            }
        }
    }

    /// Parses `bytes` (after whatever partial frame came before).
    fn take(&mut self, bytes: &[u8], each: &mut impl FnMut(Message)) -> Result<(), LoadError> {
        if self.partial.is_empty() {
            let used = self.frames(bytes, each)?;
            if used < bytes.len() {
                self.partial = bytes[used..].to_vec();
            }
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(bytes);
            let used = self.frames(&joined, each)?;
            if used < joined.len() {
                joined.drain(..used);
                self.partial = joined;
            }
        }
        Ok(())
    }

    /// Handles the complete frames at the start of `buf`; returns the bytes
    /// used.
    fn frames(&mut self, buf: &[u8], each: &mut impl FnMut(Message)) -> Result<usize, LoadError> {
        let mut at = 0;
        while let Some((fin, opcode, start, end)) = parse_header(&buf[at..]) {
            let payload = &buf[at + start..at + end];
            at += end;
            match opcode {
                OP_BINARY | OP_TEXT | OP_CONTINUATION => {
                    if fin && self.fragments.is_empty() {
                        self.message(payload, each)?;
                    } else {
                        self.fragments.extend_from_slice(payload);
                        if fin {
                            let whole = std::mem::take(&mut self.fragments);
                            self.message(&whole, each)?;
                        }
                    }
                }
                OP_PING => self.frame(OP_PONG, payload),
                OP_PONG => {}
                OP_CLOSE => return Err(LoadError::Closed),
                other => {
                    return Err(LoadError::Unexpected(format!(
                        "websocket opcode {other:#x}"
                    )))
                }
            }
        }
        Ok(at)
    }

    /// One binary WebSocket message: frames of the protocol.
    fn message(&mut self, payload: &[u8], each: &mut impl FnMut(Message)) -> Result<(), LoadError> {
        let limits = CodecLimits::default();
        let mut pongs = BytesMut::new();
        for item in protocol::decode_message(Bytes::copy_from_slice(payload), &limits) {
            match item? {
                (_, Message::Ping { nonce }) => {
                    self.seq = next_seq(self.seq);
                    encode_into(&Message::Pong { nonce }, self.seq, &mut pongs);
                    PONGS.fetch_add(1, Ordering::Relaxed);
                }
                (_, m) => each(m),
            }
        }
        if !pongs.is_empty() {
            self.frame(OP_BINARY, &pongs);
        }
        Ok(())
    }

    /// Reads until `step` returns `Ok(Some(_))` for a message (or fails).
    pub async fn until<T>(
        &mut self,
        mut step: impl FnMut(Message) -> Result<Option<T>, LoadError>,
    ) -> Result<T, LoadError> {
        loop {
            let mut found = None;
            let mut failed = None;
            self.recv(|m| {
                if found.is_some() || failed.is_some() {
                    return;
                }
                match step(m) {
                    Ok(Some(t)) => found = Some(t),
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            })
            .await?;
            if let Some(e) = failed {
                return Err(e);
            }
            if let Some(t) = found {
                return Ok(t);
            }
        }
    }
}

/// Parses a server frame's header: (fin, opcode, payload start, frame end)
/// once the whole frame is in `buf`.
fn parse_header(buf: &[u8]) -> Option<(bool, u8, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut header): (usize, usize) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    // A server never masks; if one did, the payload would be garbled and
    // fail to decode, which is reported.
    if masked {
        header += 4;
    }
    let end = header.checked_add(len)?;
    (buf.len() >= end).then_some((fin, opcode, header, end))
}

#[cfg(test)]
mod tests {
    use super::parse_header;

    #[test]
    fn headers_of_each_length_form() {
        assert_eq!(parse_header(&[0x82, 0x01, 0xaa]), Some((true, 2, 2, 3)));
        assert_eq!(parse_header(&[0x82, 0x02, 0xaa]), None);
        let mut mid = vec![0x02, 126, 0x01, 0x00];
        mid.resize(4 + 256, 0);
        assert_eq!(parse_header(&mid), Some((false, 2, 4, 260)));
        assert_eq!(parse_header(&mid[..100]), None);
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.resize(10 + 65536, 0);
        assert_eq!(parse_header(&long), Some((true, 2, 10, 65546)));
    }
}
