//! Hostile clients, each attack run while a well-behaved pair negotiates.
//!
//! Every test asserts three things: the attacker gets a clear error or close
//! code, the server's memory stays bounded (this process's resident set,
//! server included, grows by less than [`RSS_GROWTH_BOUND`]), and a pair of
//! ordinary clients completes offer/answer/ICE while the attack is under
//! way. The pair connects from 127.0.0.2 so that per-IP limits aimed at the
//! attacker (127.0.0.1) do not touch it.
//!
//! Some attacks are also covered, without a concurrent pair, in
//! `tests/server_limits.rs`.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use switchboard::client::{default_hello, Connection};
use switchboard::config::Config;
use switchboard::protocol::{
    sdp, Address, Capabilities, ErrorCode, Hello, Join, Message, RoomMode, Sdp, SessionDescription,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::MaybeTlsStream;

/// How much this process's resident memory may grow during one attack.
/// Every test runs in this process, in parallel, so this is coarse; what it
/// catches is an unbounded buffer (a deflate bomb inflated in full, 10,000
/// queued frames per message, a queue per flood message).
const RSS_GROWTH_BOUND_KIB: u64 = 96 * 1024;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

const PAIR_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A client whose TCP connection comes from `ip` (any 127/8 address works
/// on Linux loopback).
async fn connect_from(server: &TestServer, ip: IpAddr, hello: Hello) -> Connection {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(ip, 0)).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let (ws, _) = tokio_tungstenite::client_async(server.url(), MaybeTlsStream::Plain(tcp))
        .await
        .unwrap();
    Connection::handshake(ws, hello).await.unwrap()
}

/// Runs `rounds` full negotiations (join, offer, answer, ICE both ways,
/// end of candidates) between two fresh well-behaved clients.
async fn negotiate(server: &TestServer, tag: &str, rounds: usize) {
    for round in 0..rounds {
        let room_id = format!("calm-{tag}-{round}");
        let mut a = connect_from(server, PAIR_IP, default_hello()).await;
        let mut b = connect_from(server, PAIR_IP, default_hello()).await;
        join_ok(&mut a, &room_id, RoomMode::Pair).await;
        assert!(join_ok(&mut b, &room_id, RoomMode::Pair).await.initiator);
        assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
        let (a_id, b_id) = (peer(&a), peer(&b));
        b.send(&offer(Address::Peer(a_id), "v=0 offer"))
            .await
            .unwrap();
        match next(&mut a).await {
            Message::Offer(o) => assert_eq!(o.peer, Address::Peer(b_id)),
            other => panic!("pair: {other:?}"),
        }
        a.send(&answer(Address::Peer(b_id), "v=0 answer"))
            .await
            .unwrap();
        match next(&mut b).await {
            Message::Answer(o) => assert_eq!(o.peer, Address::Peer(a_id)),
            other => panic!("pair: {other:?}"),
        }
        for n in 0..3 {
            a.send(&ice(Address::Peer(b_id), n)).await.unwrap();
            b.send(&ice(Address::Peer(a_id), n)).await.unwrap();
        }
        for c in [&mut a, &mut b] {
            for _ in 0..3 {
                assert!(matches!(next(c).await, Message::Ice(_)));
            }
        }
        let _ = a.close().await;
        let _ = b.close().await;
    }
}

/// Runs `attack` on a task and negotiates beside it; returns the attack's
/// result after checking memory.
async fn while_attacking<T: Send + 'static>(
    server: &TestServer,
    tag: &str,
    attack: JoinHandle<T>,
) -> T {
    let before = rss_kib();
    negotiate(server, tag, 3).await;
    let result = tokio::time::timeout(Duration::from_secs(30), attack)
        .await
        .expect("attack finished")
        .expect("attack task");
    let after = rss_kib();
    assert!(
        after < before + RSS_GROWTH_BOUND_KIB,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    result
}

/// The test configuration, with a short shutdown grace.
fn attacker_config() -> Config {
    Config {
        shutdown_grace: Duration::from_millis(200),
        ..test_config()
    }
}

#[tokio::test]
async fn oversized_messages_close_with_1009() {
    let server = start_server(Config {
        max_message_bytes: 16 * 1024,
        ..attacker_config()
    })
    .await;
    let url = server.url();
    let attack = tokio::spawn(async move {
        let mut codes = Vec::new();
        for _ in 0..20 {
            let mut c = Connection::connect(&url, default_hello()).await.unwrap();
            // 1 MiB, 64 times the limit; the server stops reading at the
            // limit, so the send itself may fail.
            let _ = c.send_raw(Bytes::from(vec![0u8; 1 << 20])).await;
            codes.push(expect_closed(&mut c).await);
        }
        codes
    });
    let codes = while_attacking(&server, "oversized", attack).await;
    assert!(
        codes.iter().all(|&c| c == 1009 || c == 0),
        "message too big: {codes:?}"
    );
    assert!(codes.contains(&1009), "{codes:?}");
}

/// 4 MiB of one byte, deflated with the SDP dictionary: about 4 KiB on the
/// wire, far past the 64 KiB inflate cap.
fn bomb() -> Bytes {
    let data = sdp::deflate(&vec![b'a'; 4 << 20]);
    assert!(data.len() < 16 * 1024, "bomb is {} bytes", data.len());
    Bytes::from(data)
}

#[tokio::test]
async fn a_deflate_bomb_is_refused_or_relayed_compressed() {
    let server = start_server(attacker_config()).await;
    let bomb = bomb();
    let mut attacker = connect(&server).await;
    // One receiver inflates for itself; the other cannot, so the server
    // would inflate for it.
    let mut inflating = connect(&server).await;
    let mut plain = Connection::connect(
        &server.url(),
        Hello {
            capabilities: Capabilities::empty(),
            ..default_hello()
        },
    )
    .await
    .unwrap();
    for c in [&mut attacker, &mut inflating, &mut plain] {
        join_ok(c, "bombed", RoomMode::Mesh).await;
    }
    while !matches!(next(&mut attacker).await, Message::PeerJoined(p) if p.member.peer_id == peer(&plain))
    {
    }
    let (inflating_id, plain_id) = (peer(&inflating), peer(&plain));
    let attack = tokio::spawn(async move {
        let deflated = |to| {
            Message::Offer(SessionDescription {
                peer: Address::Peer(to),
                sdp: Sdp::Deflated(bomb.clone()),
                room: None,
                app_data: String::new(),
            })
        };
        for _ in 0..20 {
            attacker.send(&deflated(plain_id)).await.unwrap();
            // The server inflates for `plain` through its cap and refuses.
            let seq = expect_error(&mut attacker, ErrorCode::BadCompression).await;
            assert!(seq > 0);
            attacker.send(&deflated(inflating_id)).await.unwrap();
        }
        attacker
    });
    let _attacker = while_attacking(&server, "bomb", attack).await;
    // `inflating` got every bomb as sent, compressed; its own bounded
    // inflate refuses it.
    for _ in 0..20 {
        loop {
            match next(&mut inflating).await {
                Message::Offer(o) => {
                    let Sdp::Deflated(data) = o.sdp else {
                        panic!("relayed inflated")
                    };
                    assert!(sdp::inflate(&data, 64 * 1024).is_err());
                    break;
                }
                Message::PeerJoined(_) => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    // `plain` received nothing from the attacker.
    plain.send(&Message::Ping { nonce: 1 }).await.unwrap();
    loop {
        match next(&mut plain).await {
            Message::PeerJoined(_) => continue,
            m => {
                assert_eq!(m, Message::Pong { nonce: 1 });
                break;
            }
        }
    }
}

#[tokio::test]
async fn ten_thousand_frames_in_one_message_stop_at_max_frames() {
    let server = start_server(attacker_config()).await;
    let mut attacker = connect(&server).await;
    let attack = tokio::spawn(async move {
        for _ in 0..5 {
            // 10,000 × 12-byte Pings (nonce 0 has an empty payload): 120,000
            // bytes, inside the 128 KiB message limit.
            let pings = vec![Message::Ping { nonce: 0 }; 10_000];
            attacker.send_batch_as_one(&pings).await.unwrap();
            let mut pongs = 0;
            loop {
                match next(&mut attacker).await {
                    Message::Pong { nonce: 0 } => pongs += 1,
                    Message::Error(e) => {
                        assert_eq!(e.code, ErrorCode::TooLarge, "{e:?}");
                        break;
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(pongs, 64, "exactly max_frames frames are handled");
            // Nothing beyond the 64th frame runs: the next answer is ours.
            attacker.send(&Message::Ping { nonce: 7 }).await.unwrap();
            assert_eq!(next(&mut attacker).await, Message::Pong { nonce: 7 });
        }
    });
    while_attacking(&server, "frames", attack).await;
}

#[tokio::test]
async fn a_join_flood_hits_the_room_cap_and_the_rate_limit() {
    let server = start_server(attacker_config()).await;
    let mut attacker = connect(&server).await;
    let attack = tokio::spawn(async move {
        let joins: Vec<Message> = (0..800)
            .map(|n| join(&format!("flood-{n}"), RoomMode::Mesh))
            .collect();
        // The first join's sequence number; the others follow it.
        let first = attacker.send(&joins[0]).await.unwrap();
        for batch in joins[1..].chunks(64) {
            attacker.send_batch(batch).await.unwrap();
        }
        let last = first + 799;
        // Every join is answered on its own (Joined, TOO_MANY_ROOMS,
        // RATE_LIMITED) or covered by a later RATE_LIMITED whose
        // request_seq is at or after it: RATE_LIMITED replies are limited
        // themselves, and report what they do not answer one by one.
        let (mut joined, mut too_many, mut limited) = (0, 0, 0);
        let mut covered_up_to = 0;
        while covered_up_to < last {
            match next(&mut attacker).await {
                Message::Joined(_) => joined += 1,
                Message::Error(e) if e.code == ErrorCode::TooManyRooms => too_many += 1,
                Message::Error(e) if e.code == ErrorCode::RateLimited => {
                    limited += 1;
                    covered_up_to = covered_up_to.max(e.request_seq);
                }
                other => panic!("{other:?}"),
            }
        }
        (joined, too_many, limited)
    });
    let (joined, too_many, limited) = while_attacking(&server, "joins", attack).await;
    assert_eq!(joined, 16, "max_rooms_per_peer");
    assert!(too_many > 0 && limited > 0, "{too_many} / {limited}");
    assert!(
        limited <= 2 * switchboard::rate::REPLIES_PER_SECOND as usize + 2,
        "{limited} RATE_LIMITED replies: the replies are not limited"
    );
}

#[tokio::test]
async fn a_message_flood_is_rate_limited_then_closed_with_1008() {
    let server = start_server(Config {
        rate_per_second: 50,
        rate_burst: 50,
        rate_abuse_threshold: 300,
        ..attacker_config()
    })
    .await;
    let mut attacker = connect(&server).await;
    let attack = tokio::spawn(async move {
        let pings = vec![Message::Ping { nonce: 1 }; 64];
        for _ in 0..10 {
            if attacker.send_batch(&pings).await.is_err() {
                break;
            }
        }
        let mut limited = 0;
        let code = loop {
            match attacker.recv().await {
                Ok(Message::Error(e)) if e.code == ErrorCode::RateLimited => limited += 1,
                Ok(_) => {}
                Err(switchboard::client::ClientError::Closed { code, .. }) => break code,
                Err(e) => panic!("{e}"),
            }
        };
        (limited, code)
    });
    let (limited, code) = while_attacking(&server, "flood", attack).await;
    assert!(limited >= 1, "RATE_LIMITED before the close");
    assert_eq!(code, 1008, "policy violation");
}

async fn raw_get(server: &TestServer) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 512];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

#[tokio::test]
async fn connections_past_the_per_ip_cap_get_503() {
    let server = start_server(Config {
        max_connections_per_ip: 20,
        ..attacker_config()
    })
    .await;
    let url = server.url();
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(Connection::connect(&url, default_hello()).await.unwrap());
    }
    let addr = server.addr;
    let attack = tokio::spawn(async move {
        let probe = TestServerAddr(addr);
        let mut answers = Vec::new();
        for _ in 0..50 {
            answers.push(probe.get().await);
        }
        answers
    });
    let answers = while_attacking(&server, "per-ip", attack).await;
    assert!(
        answers.iter().all(|a| a.starts_with("HTTP/1.1 503")),
        "{:?}",
        answers.first()
    );
    // The held ones still work.
    held[0].send(&Message::Ping { nonce: 3 }).await.unwrap();
    assert_eq!(next(&mut held[0]).await, Message::Pong { nonce: 3 });
    // A full WebSocket upgrade request is refused the same way.
    assert!(raw_get(&server).await.starts_with("HTTP/1.1 503"));
}

/// Just the address, for tasks that outlive a borrow of the server.
struct TestServerAddr(SocketAddr);

impl TestServerAddr {
    async fn get(&self) -> String {
        let mut s = TcpStream::connect(self.0).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[tokio::test]
async fn slowloris_handshakes_are_dropped_after_the_handshake_timeout() {
    let server = start_server(Config {
        handshake_timeout: Duration::from_millis(400),
        ..attacker_config()
    })
    .await;
    let addr = server.addr;
    let attack = tokio::spawn(async move {
        // 50 clients drip the request line one byte every 50 ms; none may
        // hold its connection much past the timeout.
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let mut s = TcpStream::connect(addr).await.unwrap();
                    let request = b"GET /ws HTTP/1.1\r\nHost: slow\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
                    for byte in request.iter().cycle().take(400) {
                        if s.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        let mut probe = [0u8; 1];
                        let read =
                            tokio::time::timeout(Duration::from_millis(50), s.read(&mut probe))
                                .await;
                        if let Ok(Ok(0) | Err(_)) = read {
                            break;
                        }
                    }
                    started.elapsed()
                })
            })
            .collect();
        let mut held = Vec::new();
        for t in tasks {
            held.push(t.await.unwrap());
        }
        held
    });
    let held = while_attacking(&server, "slowloris", attack).await;
    let longest = held.iter().max().unwrap();
    assert!(
        *longest < Duration::from_secs(3),
        "a slowloris held its connection for {longest:?}"
    );
}

#[tokio::test]
async fn invalid_utf8_and_over_long_fields_get_typed_errors() {
    let server = start_server(attacker_config()).await;
    let mut attacker = connect(&server).await;
    let attack = tokio::spawn(async move {
        for _ in 0..20 {
            // A user name that is not UTF-8: field 1 of Login, bytes ff fe.
            let mut frame = bytes::BytesMut::new();
            switchboard::protocol::frame::write_frame(
                &mut frame,
                switchboard::protocol::MessageType::Login,
                Default::default(),
                1,
                b"\x0a\x02\xff\xfe",
            );
            attacker.send_raw(frame.freeze()).await.unwrap();
            expect_error(&mut attacker, ErrorCode::Malformed).await;
            // Over-long room id and name.
            let long = "x".repeat(65);
            attacker
                .send(&Message::Login {
                    name: switchboard::protocol::UserName::new("ok").unwrap(),
                })
                .await
                .unwrap();
            let _ = next(&mut attacker).await;
            attacker.send(&Message::Logout).await.unwrap();
            let mut login = bytes::BytesMut::new();
            let mut payload = vec![0x0a, long.len() as u8];
            payload.extend_from_slice(long.as_bytes());
            switchboard::protocol::frame::write_frame(
                &mut login,
                switchboard::protocol::MessageType::Login,
                Default::default(),
                2,
                &payload,
            );
            attacker.send_raw(login.freeze()).await.unwrap();
            // Over-long is TOO_LARGE for ids as for every other field.
            expect_error(&mut attacker, ErrorCode::TooLarge).await;
            // A display name past 128 bytes.
            attacker
                .send(&Message::Join(Join {
                    room: room("utf"),
                    mode: RoomMode::Mesh,
                    capacity: None,
                    display_name: "d".repeat(129),
                }))
                .await
                .unwrap();
            expect_error(&mut attacker, ErrorCode::TooLarge).await;
        }
    });
    while_attacking(&server, "utf8", attack).await;
}

#[tokio::test]
async fn spoofed_sender_ids_are_overwritten_by_the_server() {
    let server = start_server(attacker_config()).await;
    let mut alice = connect(&server).await;
    let mut bob = connect(&server).await;
    let mut mallory = connect(&server).await;
    for c in [&mut alice, &mut bob, &mut mallory] {
        join_ok(c, "spoof", RoomMode::Mesh).await;
    }
    let (alice_id, bob_id, mallory_id) = (peer(&alice), peer(&bob), peer(&mallory));
    for (c, name) in [(&mut alice, "alice"), (&mut mallory, "mallory")] {
        c.send(&Message::Login { name: user(name) }).await.unwrap();
    }
    let attack = tokio::spawn(async move {
        // Mallory addresses bob "as alice": the only address in a message is
        // the target's, and the server writes the sender itself.
        mallory
            .send(&offer(Address::Peer(bob_id), "pretend to be alice"))
            .await
            .unwrap();
        mallory.send(&ice(Address::Peer(bob_id), 1)).await.unwrap();
        // By name: alice sees mallory's name, not her own or bob's.
        mallory
            .send(&offer(Address::User(user("alice")), "by name"))
            .await
            .unwrap();
        mallory
    });
    let _mallory = while_attacking(&server, "spoof", attack).await;
    let mut seen = 0;
    while seen < 2 {
        match next(&mut bob).await {
            Message::Offer(o) => {
                assert_eq!(o.peer, Address::Peer(mallory_id));
                seen += 1;
            }
            Message::Ice(i) => {
                assert_eq!(i.peer, Address::Peer(mallory_id));
                seen += 1;
            }
            Message::PeerJoined(_) => {}
            other => panic!("{other:?}"),
        }
    }
    loop {
        match next(&mut alice).await {
            Message::Offer(o) => {
                assert_eq!(o.peer, Address::User(user("mallory")));
                break;
            }
            Message::PeerJoined(_) | Message::LoginResult(_) => {}
            other => panic!("{other:?}"),
        }
    }
    assert_ne!(alice_id, mallory_id);
}

#[tokio::test]
async fn peers_in_other_rooms_are_unknown() {
    let server = start_server(attacker_config()).await;
    let mut victim = connect(&server).await;
    let mut friend = connect(&server).await;
    join_ok(&mut victim, "private", RoomMode::Pair).await;
    join_ok(&mut friend, "private", RoomMode::Pair).await;
    let victim_id = peer(&victim);
    let mut attacker = connect(&server).await;
    join_ok(&mut attacker, "public", RoomMode::Mesh).await;
    let attack = tokio::spawn(async move {
        for _ in 0..20 {
            // A real peer in a room the attacker is not in, and one that
            // does not exist: the same answer, so membership does not leak.
            attacker
                .send(&offer(Address::Peer(victim_id), "x"))
                .await
                .unwrap();
            expect_error(&mut attacker, ErrorCode::UnknownPeer).await;
            attacker
                .send(&offer(
                    Address::Peer(switchboard::protocol::PeerId(victim_id.0 + 1_000_000)),
                    "x",
                ))
                .await
                .unwrap();
            expect_error(&mut attacker, ErrorCode::UnknownPeer).await;
            // Naming the victim's room as the hint does not help.
            attacker
                .send(&Message::Ice(switchboard::protocol::IceCandidates {
                    room: Some(room("private")),
                    ..match ice(Address::Peer(victim_id), 1) {
                        Message::Ice(i) => i,
                        _ => unreachable!(),
                    }
                }))
                .await
                .unwrap();
            expect_error(&mut attacker, ErrorCode::UnknownPeer).await;
            // Calling by name without logging in.
            attacker
                .send(&offer(Address::User(user("victim")), "x"))
                .await
                .unwrap();
            expect_error(&mut attacker, ErrorCode::NotLoggedIn).await;
        }
    });
    while_attacking(&server, "rooms", attack).await;
    // The victim heard nothing from the attacker.
    victim.send(&Message::Ping { nonce: 5 }).await.unwrap();
    loop {
        match next(&mut victim).await {
            Message::PeerJoined(_) => {}
            m => {
                assert_eq!(m, Message::Pong { nonce: 5 });
                break;
            }
        }
    }
}
