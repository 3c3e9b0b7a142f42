//! Regression tests for the hardening issue: each attack runs against the
//! real server binary in a child process, beside a bystander pair that must
//! complete a negotiation meanwhile, and the server's memory is read from
//! its own `/proc/PID/status` (the peak, `VmHWM`, so a flood that grows and
//! shrinks again is caught too).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::child::Server;
use common::{answer, ice, join, next, offer, peer};
use switchboard::client::{default_hello, ClientError, Connection};
use switchboard::protocol::{
    encode, Address, ErrorCode, Frames, Hello, LoginResult, Message, RoomMode, UserName,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::MaybeTlsStream;

/// The peak resident memory a flood may drive the server to. An idle debug
/// server peaks at about 10 MiB; before the fixes, a ping flood took it past
/// 1 GiB in seconds.
const PEAK_BOUND_KIB: u64 = 64 * 1024;

/// The bystanders connect from here, the attackers from 127.0.0.1.
const BYSTANDER_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

const SECRET: &str = "hardening-test-secret-0123456789abcdef";

/// The server binary with the test secret in its environment.
fn start(args: &[&str]) -> Server {
    Server::start_with(args, None, &[("SWITCHBOARD_JWT_SECRET", SECRET)])
}

fn assert_peak_under_bound(server: &Server, what: &str) {
    let peak = server.peak_kib();
    assert!(
        peak < PEAK_BOUND_KIB,
        "{what}: the server's resident memory peaked at {peak} KiB (bound {PEAK_BOUND_KIB} KiB)"
    );
}

fn token(sub: &str) -> String {
    common::token_granting_everything(SECRET, sub)
}

/// A client whose TCP connection comes from `ip`.
async fn connect_from(addr: SocketAddr, ip: IpAddr, hello: Hello) -> Connection {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let url = format!("ws://{addr}/ws");
    let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    Connection::handshake(ws, hello).await.unwrap()
}

fn hello_as(sub: Option<&str>) -> Hello {
    Hello {
        access_token: sub.map(token),
        ..default_hello()
    }
}

/// A bystander pair, connected from [`BYSTANDER_IP`] before the attack.
struct Bystanders {
    a: Connection,
    b: Connection,
}

impl Bystanders {
    async fn connect(server: &Server, tag: &str, auth: bool) -> Bystanders {
        let (ha, hb) = if auth {
            (
                hello_as(Some(&format!("{tag}-a"))),
                hello_as(Some(&format!("{tag}-b"))),
            )
        } else {
            (hello_as(None), hello_as(None))
        };
        let a = connect_from(server.addr, BYSTANDER_IP, ha).await;
        let b = connect_from(server.addr, BYSTANDER_IP, hb).await;
        Bystanders { a, b }
    }

    /// Join, offer, answer, ICE both ways; must finish within 10 s.
    async fn negotiate(&mut self, tag: &str) -> Duration {
        let started = Instant::now();
        let run = async {
            let room = format!("calm-{tag}");
            let (a, b) = (&mut self.a, &mut self.b);
            a.send(&join(&room, RoomMode::Pair)).await.unwrap();
            assert!(matches!(next(a).await, Message::Joined(_)));
            b.send(&join(&room, RoomMode::Pair)).await.unwrap();
            assert!(matches!(next(b).await, Message::Joined(_)));
            assert!(matches!(next(a).await, Message::PeerJoined(_)));
            let (a_id, b_id) = (peer(a), peer(b));
            b.send(&offer(Address::Peer(a_id), "v=0 offer"))
                .await
                .unwrap();
            assert!(matches!(next(a).await, Message::Offer(_)));
            a.send(&answer(Address::Peer(b_id), "v=0 answer"))
                .await
                .unwrap();
            assert!(matches!(next(b).await, Message::Answer(_)));
            for n in 0..3 {
                a.send(&ice(Address::Peer(b_id), n)).await.unwrap();
                b.send(&ice(Address::Peer(a_id), n)).await.unwrap();
            }
            for c in [a, b] {
                for _ in 0..3 {
                    assert!(matches!(next(c).await, Message::Ice(_)));
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the bystander pair did not finish its negotiation in 10 s");
        started.elapsed()
    }
}

// ---------------------------------------------------------------------------
// A raw WebSocket client, for what a library client will not send.

/// Upgrades a raw TCP connection to a WebSocket by hand.
async fn raw_ws(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = s.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "closed during the upgrade");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s
}

/// One client-to-server WebSocket frame: `first` is the first header byte
/// (FIN, RSV, opcode), masked unless `masked` is false.
fn ws_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        out.extend_from_slice(&key);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

const BINARY: u8 = 0x82;
const TEXT: u8 = 0x81;
const CLOSE: u8 = 0x88;
const PING: u8 = 0x89;
const PONG: u8 = 0x8a;

/// One protocol frame (header + payload) as bytes, sequence number `seq`.
fn protocol_frame(message: &Message, seq: u32) -> Bytes {
    let mut out = BytesMut::new();
    encode(message).write(seq, &mut out);
    out.freeze()
}

/// What a raw client read back from the server.
#[derive(Debug, Default)]
struct Heard {
    /// Decoded protocol messages from binary frames, in order.
    messages: Vec<Message>,
    /// Pongs.
    pongs: usize,
    /// The close frame's code, if one came (0 for a close frame without one).
    close: Option<u16>,
    /// When the close frame came, after the listening began.
    closed_after: Option<Duration>,
}

impl Heard {
    fn errors(&self, code: ErrorCode) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m, Message::Error(e) if e.code == code))
            .count()
    }
}

/// Reads server frames until the close frame, EOF or `within`.
async fn read_all<R: tokio::io::AsyncRead + Unpin>(s: &mut R, within: Duration) -> Heard {
    let mut heard = Heard::default();
    let mut buf = BytesMut::new();
    let started = tokio::time::Instant::now();
    let deadline = started + within;
    loop {
        // Parse what is buffered.
        loop {
            if buf.len() < 2 {
                break;
            }
            let (opcode, len7) = (buf[0] & 0x0f, (buf[1] & 0x7f) as usize);
            let (len, at) = match len7 {
                126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
                127 if buf.len() >= 10 => (
                    u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize,
                    10,
                ),
                126 | 127 => break,
                n => (n, 2),
            };
            if buf.len() < at + len {
                break;
            }
            let frame = buf.split_to(at + len).freeze().slice(at..);
            match opcode {
                0x2 => {
                    for f in Frames::new(frame, 1 << 20, 1 << 16) {
                        let f = f.expect("the server sends well-formed frames");
                        let codec = switchboard::protocol::CodecLimits::default();
                        heard
                            .messages
                            .push(switchboard::protocol::decode(&f, &codec).unwrap());
                    }
                }
                0x8 => {
                    heard.close = Some(if frame.len() >= 2 {
                        u16::from_be_bytes([frame[0], frame[1]])
                    } else {
                        0
                    });
                    heard.closed_after = Some(started.elapsed());
                    return heard;
                }
                0xa => heard.pongs += 1,
                _ => {}
            }
        }
        let mut chunk = [0u8; 65536];
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return heard,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends Hello on a raw WebSocket and reads back Welcome.
async fn raw_hello(s: &mut TcpStream, hello: Hello) {
    let frame = protocol_frame(&Message::Hello(hello), 1);
    s.write_all(&ws_frame(BINARY, &frame, true)).await.unwrap();
}

// ---------------------------------------------------------------------------
// 1. Pings: memory bounded, pings paid for.

/// Writes `frame` over and over for `duration` or until the server closes
/// the connection; returns how many were written and whether the server
/// cut the connection before `duration` was up.
async fn flood<W: tokio::io::AsyncWrite + Unpin>(
    s: &mut W,
    frame: &[u8],
    duration: Duration,
) -> (usize, bool) {
    let chunk: Vec<u8> = frame.repeat((64 * 1024 / frame.len()).max(1));
    let per_chunk = chunk.len() / frame.len();
    let deadline = tokio::time::Instant::now() + duration;
    let mut sent = 0;
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout_at(deadline, s.write_all(&chunk)).await {
            Ok(Ok(())) => sent += per_chunk,
            Ok(Err(_)) => return (sent, true),
            Err(_) => break,
        }
    }
    (sent, false)
}

/// Floods `frame` for up to `duration` while reading what the server says.
async fn flood_and_listen(
    s: TcpStream,
    frame: Vec<u8>,
    duration: Duration,
) -> (usize, bool, Heard) {
    let (mut r, mut w) = s.into_split();
    let listening =
        tokio::spawn(async move { read_all(&mut r, duration + Duration::from_secs(5)).await });
    let (sent, cut) = flood(&mut w, &frame, duration).await;
    drop(w);
    (sent, cut, listening.await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_before_hello_is_cut_off_with_memory_bounded() {
    let mut server = start(&["--auth", "token"]);
    let mut calm = Bystanders::connect(&server, "pings", true).await;
    let ping = ws_frame(PING, &[0x55; 125], true);
    // One attacker never reads; one reads (and so hears why it is closed).
    let mut deaf = raw_ws(server.addr).await;
    let deaf_flood = {
        let ping = ping.clone();
        tokio::spawn(async move { flood(&mut deaf, &ping, Duration::from_secs(4)).await })
    };
    let listening = raw_ws(server.addr).await;
    let listening_flood = tokio::spawn(flood_and_listen(listening, ping, Duration::from_secs(4)));
    calm.negotiate("pings").await;
    let (sent, cut) = deaf_flood.await.unwrap();
    let (heard_sent, heard_cut, heard) = listening_flood.await.unwrap();
    server.assert_alive();
    assert_peak_under_bound(&server, "ping floods before hello");
    assert!(
        sent > 1_000 && heard_sent > 1_000,
        "the floods wrote only {sent} / {heard_sent} pings"
    );
    assert!(cut, "a deaf ping flood was not cut off within 4 s");
    assert!(heard_cut, "a ping flood was not cut off within 4 s");
    assert_eq!(
        heard.close,
        Some(1008),
        "rate abuse closes with 1008: {heard:?}"
    );
    // tungstenite answers a ping before the server sees it, so the pongs
    // are those of the pings read before the abuse close: the burst of
    // 400, plus the 1,000 dropped ones the abuse rule waits for.
    assert!(
        heard.pongs <= 1_500,
        "{} pongs: pings are not paid for",
        heard.pongs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_pongs_are_bounded_by_the_write_buffer_even_without_a_rate_limit() {
    // A rate limit so high it never applies: only the write buffer's
    // bound stands between a ping flood and the server's memory.
    let mut server = start(&[
        "--rate-per-second",
        "100000000",
        "--rate-burst",
        "100000000",
    ]);
    let mut calm = Bystanders::connect(&server, "pongs", false).await;
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut s = raw_ws(server.addr).await;
        raw_hello(&mut s, default_hello()).await;
        attackers.push(s);
    }
    let ping = ws_frame(PING, &[0x55; 125], true);
    let floods: Vec<_> = attackers
        .into_iter()
        .map(|mut s| {
            let ping = ping.clone();
            tokio::spawn(async move { flood(&mut s, &ping, Duration::from_secs(4)).await.0 })
        })
        .collect();
    calm.negotiate("pongs").await;
    let mut sent = 0;
    for f in floods {
        sent += f.await.unwrap();
    }
    server.assert_alive();
    assert_peak_under_bound(&server, "4 connections flooding pings, never reading");
    assert!(sent > 20_000, "the floods wrote only {sent} pings");
}

// ---------------------------------------------------------------------------
// 2. Descriptors.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_ulimit_1024_the_server_answers_503_instead_of_hanging() {
    // The test holds a connection per server connection, and more.
    rlimit::increase_nofile_limit(u64::MAX).unwrap();
    let mut server = Server::start_with(&[], Some(1024), &[]);
    let mut calm = Bystanders::connect(&server, "fds", false).await;
    // Two attacking addresses, each under the per-IP cap of 1,000.
    let mut held = Vec::new();
    let mut refused = 0;
    for n in 0..1_100u32 {
        let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 1 + (n % 2) as u8));
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::new(ip, 0)).unwrap();
        let tcp = tokio::time::timeout(Duration::from_secs(5), socket.connect(server.addr))
            .await
            .expect("connect hangs: the listener is not accepting")
            .unwrap();
        let url = server.url();
        let upgrade = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(tcp));
        match tokio::time::timeout(Duration::from_secs(5), upgrade)
            .await
            .expect("the upgrade hangs instead of being answered")
        {
            Ok((ws, _)) => held.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(e) => panic!("connection {n}: {e}"),
        }
    }
    assert!(
        refused > 0,
        "all 1,100 connections were taken under 1,024 descriptors"
    );
    assert!(held.len() > 800, "only {} connections admitted", held.len());
    // Still answering while full: /healthz, and a 503 for one more client.
    let health = common::http_get(server.addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    let mut late = TcpStream::connect(server.addr).await.unwrap();
    late.write_all(
        b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 256];
    let n = tokio::time::timeout(Duration::from_secs(5), late.read(&mut answer))
        .await
        .expect("a client over the limit hangs")
        .unwrap();
    assert!(String::from_utf8_lossy(&answer[..n]).starts_with("HTTP/1.1 503"));
    calm.negotiate("fds").await;
    server.assert_alive();
    let log = server.log_text();
    assert!(
        log.contains("max_connections lowered to fit the open-files limit"),
        "no warning about the lowered cap in the log: {log}"
    );
}

// ---------------------------------------------------------------------------
// 3. No kind of flood escapes the rate limit.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_flood_is_rate_limited_and_closed() {
    let mut server = start(&[
        "--rate-per-second",
        "50",
        "--rate-burst",
        "100",
        "--rate-abuse-threshold",
        "200",
    ]);
    let mut calm = Bystanders::connect(&server, "kinds", false).await;
    let floods: [(&str, Vec<u8>); 6] = [
        ("empty binary", ws_frame(BINARY, &[], true)),
        ("ping", ws_frame(PING, b"x", true)),
        ("pong", ws_frame(PONG, b"x", true)),
        ("text", ws_frame(TEXT, b"{\"type\":\"join\"}", true)),
        (
            "undecodable binary",
            ws_frame(BINARY, &[9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9], true),
        ),
        (
            "fragmented binary",
            [
                ws_frame(
                    0x02,
                    &protocol_frame(&Message::Ping { nonce: 1 }, 2)[..6],
                    true,
                ),
                ws_frame(
                    0x80,
                    &protocol_frame(&Message::Ping { nonce: 1 }, 2)[6..],
                    true,
                ),
            ]
            .concat(),
        ),
    ];
    let mut attacks = Vec::new();
    for (kind, frame) in floods {
        let mut s = raw_ws(server.addr).await;
        raw_hello(&mut s, default_hello()).await;
        attacks.push(tokio::spawn(async move {
            let (sent, _, heard) = flood_and_listen(s, frame, Duration::from_secs(3)).await;
            (kind, sent, heard)
        }));
    }
    calm.negotiate("kinds").await;
    for attack in attacks {
        let (kind, sent, heard) = attack.await.unwrap();
        assert!(sent > 1_000, "{kind}: only {sent} sent");
        assert_eq!(
            heard.close,
            Some(1008),
            "{kind}: not closed for rate abuse: {heard:?}"
        );
        // What the limit lets through until the close: the burst (100)
        // and the refill (50/s) over however long the flood took to be
        // judged (longer on a loaded machine).
        let judged = heard.closed_after.expect("closed").as_secs_f64();
        let accepted = 100 + (50.0 * judged).ceil() as usize;
        // Welcome, an Error or a Pong for each accepted frame, and at most
        // a few RATE_LIMITED replies a second.
        let answers = heard.messages.len();
        assert!(
            answers <= 1 + accepted + 40,
            "{kind}: {answers} answers to a flood judged in {judged:.2} s"
        );
        // tungstenite answers each ping it reads before the server sees
        // it: the accepted ones, plus the dropped ones the abuse rule waits
        // for (more than 200, and more than were accepted).
        assert!(
            heard.pongs <= accepted + accepted.max(200) + 20,
            "{kind}: {} pongs to a flood judged in {judged:.2} s",
            heard.pongs
        );
    }
    server.assert_alive();
    assert_peak_under_bound(&server, "six kinds of flood");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_paced_at_64_times_the_limit_is_closed() {
    let mut server = start(&["--rate-per-second", "50", "--rate-burst", "100"]);
    let mut calm = Bystanders::connect(&server, "paced", false).await;
    let mut s = raw_ws(server.addr).await;
    raw_hello(&mut s, default_hello()).await;
    // 3,200 frames/s: one Ping frame every 312.5 µs, in 10 ms steps of 32.
    let attack = tokio::spawn(async move {
        let ping = ws_frame(
            BINARY,
            &protocol_frame(&Message::Ping { nonce: 7 }, 2),
            true,
        );
        let step = ping.repeat(32);
        let started = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(10));
        while started.elapsed() < Duration::from_secs(8) {
            ticker.tick().await;
            if s.write_all(&step).await.is_err() {
                break;
            }
        }
        let heard = read_all(&mut s, Duration::from_secs(5)).await;
        (started.elapsed(), heard)
    });
    calm.negotiate("paced").await;
    let (elapsed, heard) = attack.await.unwrap();
    assert_eq!(heard.close, Some(1008), "{heard:?}");
    assert!(
        elapsed < Duration::from_secs(8),
        "not closed while flooding"
    );
    assert!(heard.errors(ErrorCode::RateLimited) >= 1);
    server.assert_alive();
}

// ---------------------------------------------------------------------------
// 4 and 5. Names.

async fn login(c: &mut Connection, name: &str) -> LoginResult {
    c.send(&Message::Login {
        name: UserName::new(name).unwrap(),
    })
    .await
    .unwrap();
    loop {
        match next(c).await {
            Message::LoginResult(r) => return r,
            Message::PeerJoined(_) | Message::PeerLeft(_) => {}
            other => panic!("expected LoginResult, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_lists_show_the_current_name_after_a_logout() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "names", false).await;
    let url = server.url();
    let mut a = Connection::connect(&url, default_hello()).await.unwrap();
    let mut c = Connection::connect(&url, default_hello()).await.unwrap();
    let mut newcomer = Connection::connect(&url, default_hello()).await.unwrap();
    assert_eq!(login(&mut a, "carol").await.error, None);
    common::join_ok(&mut a, "stale", RoomMode::Mesh).await;
    a.send(&Message::Logout).await.unwrap();
    // Logout has no reply: a round trip makes sure it was handled.
    a.send(&Message::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(next(&mut a).await, Message::Pong { nonce: 1 });
    assert_eq!(login(&mut c, "carol").await.error, None);
    common::join_ok(&mut c, "stale", RoomMode::Mesh).await;
    let joined = common::join_ok(&mut newcomer, "stale", RoomMode::Mesh).await;
    let carols: Vec<_> = joined
        .members
        .iter()
        .filter(|m| m.user.as_ref().map(UserName::as_str) == Some("carol"))
        .map(|m| m.peer_id)
        .collect();
    assert_eq!(carols, vec![peer(&c)], "members: {:?}", joined.members);
    // And a login after joining shows up for later joiners too.
    assert_eq!(login(&mut a, "alice").await.error, None);
    let mut later = Connection::connect(&url, default_hello()).await.unwrap();
    let joined = common::join_ok(&mut later, "stale", RoomMode::Mesh).await;
    let a_member = joined
        .members
        .iter()
        .find(|m| m.peer_id == peer(&a))
        .unwrap();
    assert_eq!(a_member.user.as_ref().map(UserName::as_str), Some("alice"));
    calm.negotiate("names").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn look_alike_names_and_room_ids_are_refused() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "lookalike", false).await;
    let mut s = raw_ws(server.addr).await;
    raw_hello(&mut s, default_hello()).await;
    // Built as raw protobuf, since UserName::new refuses these names.
    let login = |name: &str, seq: u32| {
        let mut payload = vec![0x0a, name.len() as u8];
        payload.extend_from_slice(name.as_bytes());
        let mut out = BytesMut::new();
        switchboard::protocol::frame::write_frame(
            &mut out,
            switchboard::protocol::MessageType::Login,
            switchboard::protocol::Flags(0),
            seq,
            &payload,
        );
        ws_frame(BINARY, &out, true)
    };
    let names = [
        "car\u{202E}lo",
        "car\u{200B}ol",
        "\u{FEFF}carol",
        "jose\u{301}",
    ];
    for (i, name) in names.iter().enumerate() {
        s.write_all(&login(name, 2 + i as u32)).await.unwrap();
    }
    s.write_all(&ws_frame(CLOSE, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    let heard = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(
        heard.errors(ErrorCode::InvalidArgument),
        names.len(),
        "{heard:?}"
    );
    assert!(
        !heard
            .messages
            .iter()
            .any(|m| matches!(m, Message::LoginResult(_))),
        "a look-alike name was logged in: {heard:?}"
    );
    calm.negotiate("lookalike").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hang_up_reaches_only_a_call_partner() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "hangup", false).await;
    let url = server.url();
    let mut mallory = Connection::connect(&url, default_hello()).await.unwrap();
    let mut victim = Connection::connect(&url, default_hello()).await.unwrap();
    let mut caller = Connection::connect(&url, default_hello()).await.unwrap();
    login(&mut mallory, "mallory").await;
    login(&mut victim, "victim").await;
    login(&mut caller, "caller").await;
    let victim_name = Address::User(UserName::new("victim").unwrap());
    let caller_name = Address::User(UserName::new("caller").unwrap());
    // A cold hang-up: no call between mallory and the victim.
    let seq = mallory
        .send(&Message::HangUp {
            peer: victim_name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        common::expect_error(&mut mallory, ErrorCode::UnknownPeer).await,
        seq
    );
    // A real call: the callee may decline (hang up) before answering.
    caller
        .send(&offer(victim_name.clone(), "v=0 offer"))
        .await
        .unwrap();
    match next(&mut victim).await {
        Message::Offer(o) => assert_eq!(o.peer, caller_name),
        other => panic!("expected the offer, got {other:?} (a cold hang-up was delivered?)"),
    }
    victim
        .send(&Message::HangUp {
            peer: caller_name.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut caller).await,
        Message::HangUp {
            peer: victim_name.clone()
        }
    );
    // The call is over: a second hang-up is refused too.
    let seq = victim
        .send(&Message::HangUp { peer: caller_name })
        .await
        .unwrap();
    assert_eq!(
        common::expect_error(&mut victim, ErrorCode::UnknownPeer).await,
        seq
    );
    // A callee who disconnects while ringing: the caller hears of it.
    caller
        .send(&offer(victim_name.clone(), "v=0 again"))
        .await
        .unwrap();
    assert!(matches!(next(&mut victim).await, Message::Offer(_)));
    drop(victim);
    assert_eq!(
        next(&mut caller).await,
        Message::HangUp { peer: victim_name }
    );
    calm.negotiate("hangup").await;
}

// ---------------------------------------------------------------------------
// 6. Protocol hygiene.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_violations_get_the_rfc_6455_close_code() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "rfc", false).await;
    let cases: [(&str, Vec<u8>, u16); 7] = [
        (
            "bad close code",
            ws_frame(CLOSE, &999u16.to_be_bytes(), true),
            1002,
        ),
        ("one-byte close payload", ws_frame(CLOSE, &[3], true), 1002),
        ("unmasked frame", ws_frame(BINARY, b"abc", false), 1002),
        ("RSV1 set", ws_frame(BINARY | 0x40, b"abc", true), 1002),
        ("oversized ping", ws_frame(PING, &[0; 126], true), 1002),
        (
            "invalid UTF-8 text",
            ws_frame(TEXT, &[0xc3, 0x28], true),
            1007,
        ),
        (
            "normal close",
            ws_frame(CLOSE, &1000u16.to_be_bytes(), true),
            1000,
        ),
    ];
    for (what, frame, code) in cases {
        for before_hello in [true, false] {
            let mut s = raw_ws(server.addr).await;
            if !before_hello {
                raw_hello(&mut s, default_hello()).await;
            }
            s.write_all(&frame).await.unwrap();
            let heard = read_all(&mut s, Duration::from_secs(5)).await;
            assert_eq!(
                heard.close,
                Some(code),
                "{what} ({}): {heard:?}",
                if before_hello {
                    "before hello"
                } else {
                    "after hello"
                }
            );
        }
    }
    calm.negotiate("rfc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_errors_arrive_as_typed_errors_before_the_close() {
    let server = start(&["--auth", "token"]);
    let mut calm = Bystanders::connect(&server, "hello", true).await;
    // A 4.2 KB token is a refused token: UNAUTHENTICATED and 4017.
    let mut s = raw_ws(server.addr).await;
    raw_hello(
        &mut s,
        Hello {
            access_token: Some("x".repeat(4200)),
            ..default_hello()
        },
    )
    .await;
    let heard = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(heard.errors(ErrorCode::Unauthenticated), 1, "{heard:?}");
    assert_eq!(heard.close, Some(4017));
    // The proto3 default version 0: UNSUPPORTED_VERSION and 4005.
    let mut s = raw_ws(server.addr).await;
    raw_hello(
        &mut s,
        Hello {
            protocol_version: 0,
            ..hello_as(Some("v0"))
        },
    )
    .await;
    let heard = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(heard.errors(ErrorCode::UnsupportedVersion), 1, "{heard:?}");
    assert_eq!(heard.close, Some(4005));
    // A frame before Hello: HELLO_REQUIRED and 4006.
    let mut s = raw_ws(server.addr).await;
    let ping = protocol_frame(&Message::Ping { nonce: 1 }, 1);
    s.write_all(&ws_frame(BINARY, &ping, true)).await.unwrap();
    let heard = read_all(&mut s, Duration::from_secs(5)).await;
    assert_eq!(heard.errors(ErrorCode::HelloRequired), 1, "{heard:?}");
    assert_eq!(heard.close, Some(4006));
    calm.negotiate("hello").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_limits_are_exact_and_empty_messages_are_answered() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "frames", false).await;
    // Hello and 64 Pings in one message: Hello is one of the 64 frames.
    let mut s = raw_ws(server.addr).await;
    let mut message = BytesMut::new();
    message.extend_from_slice(&protocol_frame(&Message::Hello(default_hello()), 1));
    for n in 0..64u32 {
        message.extend_from_slice(&protocol_frame(&Message::Ping { nonce: n.into() }, n + 2));
    }
    s.write_all(&ws_frame(BINARY, &message, true))
        .await
        .unwrap();
    // And an empty binary message.
    s.write_all(&ws_frame(BINARY, &[], true)).await.unwrap();
    s.write_all(&ws_frame(CLOSE, &1000u16.to_be_bytes(), true))
        .await
        .unwrap();
    let heard = read_all(&mut s, Duration::from_secs(5)).await;
    let pongs = heard
        .messages
        .iter()
        .filter(|m| matches!(m, Message::Pong { .. }))
        .count();
    assert_eq!(pongs, 63, "{heard:?}");
    assert_eq!(heard.errors(ErrorCode::TooLarge), 1, "the 65th frame");
    assert_eq!(heard.errors(ErrorCode::Malformed), 1, "the empty message");
    assert_eq!(heard.close, Some(1000));
    calm.negotiate("frames").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_upgrade_keys_are_refused_and_healthz_says_only_alive() {
    let server = start(&[]);
    let mut calm = Bystanders::connect(&server, "keys", false).await;
    for key in [
        "",
        "c2hvcnQ=",
        "not base64 at all!!",
        "dGhlIHNhbXBsZSBub25jZSE=",
    ] {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(
            format!(
                "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut answer = vec![0u8; 256];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
            .await
            .unwrap()
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]);
        assert!(answer.starts_with("HTTP/1.1 400"), "key {key:?}: {answer}");
    }
    let health = common::http_get(server.addr, "/healthz").await;
    let body = health.split("\r\n\r\n").nth(1).unwrap_or_default();
    assert_eq!(body.trim(), r#"{"status":"ok"}"#, "{health}");
    calm.negotiate("keys").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_with_a_critical_extension_is_refused() {
    use base64::Engine;
    let server = start(&["--auth", "token"]);
    let mut calm = Bystanders::connect(&server, "crit", true).await;
    // A correctly signed token whose header marks an extension critical.
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    let claims = switchboard::auth::Claims::new(
        "crit",
        std::time::SystemTime::now(),
        Duration::from_secs(600),
    );
    let input = format!(
        "{}.{}",
        b64(r#"{"alg":"HS256","typ":"JWT","crit":["x-ext"],"x-ext":true}"#),
        b64(&serde_json::to_string(&claims).unwrap())
    );
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    let sig =
        jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256).unwrap();
    let hello = Hello {
        access_token: Some(format!("{input}.{sig}")),
        ..default_hello()
    };
    let err = Connection::connect(&server.url(), hello).await.err();
    match err {
        Some(ClientError::Closed { code, .. }) => assert_eq!(code, 4017),
        Some(ClientError::Refused(Some(e))) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        other => panic!("a token with crit was accepted: {other:?}"),
    }
    calm.negotiate("crit").await;
}
