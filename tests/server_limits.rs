//! Limits, bad input and misbehaving clients, over real sockets.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use futures_util::SinkExt;
use switchboard::client::{default_hello, Connection};
use switchboard::config::Config;
use switchboard::protocol::frame::write_frame;
use switchboard::protocol::{
    Address, ErrorCode, Flags, LeaveReason, Message, MessageType, RoomMode, Sdp, SessionDescription,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn silent_clients_are_reaped_and_their_rooms_told() {
    let server = start_server(Config {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(600),
        ..test_config()
    })
    .await;
    let mut quiet = connect(&server).await;
    let mut awake = connect(&server).await;
    join_ok(&mut quiet, "hb", RoomMode::Pair).await;
    join_ok(&mut awake, "hb", RoomMode::Pair).await;
    let quiet_id = peer(&quiet);
    // `quiet` never reads again, so it never answers the server's Ping;
    // `awake` answers them inside `next`.
    let started = tokio::time::Instant::now();
    match next(&mut awake).await {
        Message::PeerLeft(p) => {
            assert_eq!(p.peer_id, quiet_id);
            assert_eq!(p.reason, LeaveReason::TimedOut);
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    // The answering client is still connected well past the timeout.
    for nonce in 0..5 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        awake.send(&Message::Ping { nonce }).await.unwrap();
        assert_eq!(next(&mut awake).await, Message::Pong { nonce });
    }
    // What `quiet` was sent meanwhile: the Ping, then the reason in-band,
    // then the close.
    let mut said = Vec::new();
    let code = loop {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message as WsMessage;
        match tokio::time::timeout(Duration::from_secs(5), quiet.socket().next()).await {
            Ok(Some(Ok(WsMessage::Binary(data)))) => {
                for f in switchboard::protocol::Frames::new(data, 1 << 20, 64) {
                    let codec = switchboard::protocol::CodecLimits::default();
                    said.push(switchboard::protocol::decode(&f.unwrap(), &codec).unwrap());
                }
            }
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => break u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            other => panic!("not closed: {other:?}"),
        }
    };
    assert_eq!(code, 4000 + ErrorCode::HeartbeatTimeout as u16);
    assert!(
        said.iter().any(|m| matches!(m, Message::Error(e)
            if e.code == ErrorCode::HeartbeatTimeout && e.request_seq == 0)),
        "no Error{{HEARTBEAT_TIMEOUT}} before the close: {said:?}"
    );
}

#[tokio::test]
async fn the_rate_limit_engages_and_sustained_abuse_is_disconnected() {
    let server = start_server(Config {
        rate_per_second: 5,
        rate_burst: 5,
        rate_abuse_threshold: 40,
        ..test_config()
    })
    .await;
    let mut c = connect(&server).await;
    let pings: Vec<Message> = (0..20).map(|n| Message::Ping { nonce: n }).collect();
    let first = c.send(&pings[0]).await.unwrap();
    c.send_batch(&pings[1..]).await.unwrap();
    let last = first + 19;
    // Every dropped frame is reported: on its own while the reply budget
    // lasts, then by one RATE_LIMITED whose request_seq is the last dropped
    // (covering every unanswered frame before it), within a second or so.
    let (mut pongs, mut limited, mut covered) = (0, 0, 0);
    while covered < last {
        match next(&mut c).await {
            Message::Pong { .. } => pongs += 1,
            Message::Error(e) if e.code == ErrorCode::RateLimited => {
                assert!(e.request_seq > 0, "the error names the dropped frame");
                covered = covered.max(e.request_seq);
                limited += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert!((5..=7).contains(&pongs), "burst of 5 passes, got {pongs}");
    assert!(
        limited <= switchboard::rate::REPLIES_PER_SECOND as usize + 1,
        "{limited} replies to 15 drops: RATE_LIMITED replies are limited"
    );

    let flood: Vec<Message> = (0..60).map(|n| Message::Ping { nonce: n }).collect();
    c.send_batch(&flood).await.unwrap();
    assert_eq!(expect_closed(&mut c).await, 1008, "policy violation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_that_fills_a_queue_is_cut_off_not_the_receiver() {
    let server = start_server(Config {
        outbox_frames: 16,
        outbox_bytes: 1 << 20,
        rate_per_second: 10_000,
        rate_burst: 10_000,
        rate_bytes_per_second: 1 << 30,
        rate_bytes_burst: 1 << 30,
        ..test_config()
    })
    .await;
    let mut sender = connect(&server).await;
    let mut late = connect(&server).await;
    join_ok(&mut sender, "late", RoomMode::Pair).await;
    join_ok(&mut late, "late", RoomMode::Pair).await;
    assert!(matches!(next(&mut sender).await, Message::PeerJoined(_)));
    let late_id = peer(&late);
    // A healthy pair elsewhere.
    let mut c = connect(&server).await;
    let mut d = connect(&server).await;
    join_ok(&mut c, "healthy", RoomMode::Pair).await;
    join_ok(&mut d, "healthy", RoomMode::Pair).await;
    assert!(matches!(next(&mut c).await, Message::PeerJoined(_)));

    // `late` does not read for now. 60 KiB offers fill the kernel buffers,
    // then its outbox: the sender is told PEER_BUSY for each refused one
    // and, as it keeps going, is disconnected itself (4016).
    let big = "a".repeat(60 * 1024);
    let mut busy = 0;
    let started = std::time::Instant::now();
    let sender_close = loop {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the sender was never stopped"
        );
        match sender.send(&offer(Address::Peer(late_id), &big)).await {
            Ok(_) => {}
            Err(_) => break expect_closed(&mut sender).await,
        }
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), sender.recv()).await {
            match r {
                Ok(Message::Error(e)) if e.code == ErrorCode::PeerBusy => busy += 1,
                Ok(other) => panic!("{other:?}"),
                Err(switchboard::client::ClientError::Closed { code, .. }) => break code,
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(
        sender_close, 4016,
        "the flooding sender is closed with PEER_BUSY"
    );
    assert!(
        busy >= 1,
        "the sender is told which messages were not delivered"
    );
    // The receiver was not punished: reading now, it gets what was queued
    // for it, then hears that the sender left.
    let mut offers = 0;
    loop {
        match next(&mut late).await {
            Message::Offer(_) => offers += 1,
            Message::PeerLeft(p) => {
                assert_eq!(p.room.as_str(), "late");
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(
        offers > 16,
        "only {offers} offers were kept for the late reader"
    );
    // The healthy pair still completes a negotiation.
    d.send(&offer(Address::Peer(peer(&c)), "o")).await.unwrap();
    assert!(matches!(next(&mut c).await, Message::Offer(_)));
    c.send(&answer(Address::Peer(peer(&d)), "a")).await.unwrap();
    assert!(matches!(next(&mut d).await, Message::Answer(_)));
}

/// Flooding a user by name with 60 KiB offers no longer gets the victim
/// disconnected: the byte rate stops the sender first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_cannot_get_a_reading_victim_disconnected() {
    let server = start_server(test_config()).await;
    let mut attacker = connect(&server).await;
    let mut victim = connect(&server).await;
    let mut friend = connect(&server).await;
    for (c, name) in [
        (&mut attacker, "mallory"),
        (&mut victim, "victim"),
        (&mut friend, "friend"),
    ] {
        c.send(&Message::Login { name: user(name) }).await.unwrap();
        assert!(matches!(next(c).await, Message::LoginResult(r) if r.error.is_none()));
    }
    // The victim reads at a normal pace: everything, as it comes.
    let reading = tokio::spawn(async move {
        let mut offers = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(3), victim.recv()).await {
                Ok(Ok(Message::Offer(o))) if o.peer == Address::User(user("friend")) => {
                    return (offers, victim)
                }
                Ok(Ok(_)) => offers += 1,
                Ok(Err(e)) => panic!("the victim was disconnected: {e}"),
                Err(_) => panic!("the friend's offer never came"),
            }
        }
    });
    let big = "a".repeat(60 * 1024);
    let started = std::time::Instant::now();
    let close = loop {
        if attacker
            .send(&offer(Address::User(user("victim")), &big))
            .await
            .is_err()
        {
            break expect_closed(&mut attacker).await;
        }
        if let Ok(Err(switchboard::client::ClientError::Closed { code, .. })) =
            tokio::time::timeout(Duration::from_millis(1), attacker.recv()).await
        {
            break code;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the flood was never stopped"
        );
    };
    assert!(
        close == 1008 || close == 4016,
        "attacker closed with {close}"
    );
    friend
        .send(&offer(Address::User(user("victim")), "v=0 hello"))
        .await
        .unwrap();
    let (offers, _victim) = reading.await.unwrap();
    // 256 KiB/s and a 1 MiB burst: a few dozen 60 KiB offers at most.
    assert!(offers < 200, "{offers} flood offers reached the victim");
}

fn raw(kind: u8, flags: u8, seq: u32, payload: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    out.extend_from_slice(&[1, kind, flags, 0]);
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

async fn still_usable(c: &mut Connection) {
    c.send(&Message::Ping { nonce: 42 }).await.unwrap();
    assert_eq!(next(c).await, Message::Pong { nonce: 42 });
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_the_connection_stays_usable() {
    let server = start_server(test_config()).await;
    let mut c = connect(&server).await;

    c.send_raw(Bytes::from_static(b"\x01\x02garbage"))
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;
    still_usable(&mut c).await;

    // An unknown type is skipped; the next frame of the same message runs.
    let mut m = raw(0x7f, 0, 77, b"\x08\x01");
    let mut ping = BytesMut::new();
    write_frame(
        &mut ping,
        MessageType::Ping,
        Flags::default(),
        78,
        b"\x08\x05",
    );
    m.extend_from_slice(&ping);
    c.send_raw(m.freeze()).await.unwrap();
    assert_eq!(expect_error(&mut c, ErrorCode::UnknownType).await, 77);
    assert_eq!(next(&mut c).await, Message::Pong { nonce: 5 });

    // Unknown flag bits, and DEFLATE_SDP on a Ping.
    c.send_raw(raw(MessageType::Ping as u8, 0x80, 3, b"").freeze())
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;
    c.send_raw(raw(MessageType::Ping as u8, 0x01, 4, b"").freeze())
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;

    // Negotiation before joining or logging in.
    c.send(&offer(Address::Peer(switchboard::protocol::PeerId(1)), "x"))
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::NotJoined).await;

    // Over-long room id and user name; invalid UTF-8 in a room id.
    let long = "r".repeat(65);
    let mut join_payload = vec![0x0a, long.len() as u8];
    join_payload.extend_from_slice(long.as_bytes());
    c.send_raw(raw(MessageType::Join as u8, 0, 5, &join_payload).freeze())
        .await
        .unwrap();
    assert_eq!(expect_error(&mut c, ErrorCode::TooLarge).await, 5);
    let mut login_payload = vec![0x0a, long.len() as u8];
    login_payload.extend_from_slice(long.as_bytes());
    c.send_raw(raw(MessageType::Login as u8, 0, 6, &login_payload).freeze())
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::TooLarge).await;
    // An empty one is invalid, not large.
    c.send_raw(raw(MessageType::Join as u8, 0, 8, b"\x0a\x00").freeze())
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::InvalidArgument).await;
    c.send_raw(raw(MessageType::Join as u8, 0, 7, b"\x0a\x02\xff\xfe").freeze())
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;

    // Invalid UTF-8 in a plain SDP.
    join_ok(&mut c, "bad", RoomMode::Pair).await;
    c.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(switchboard::protocol::PeerId(1)),
        sdp: Sdp::Plain(Bytes::from_static(b"\xff\xfe")),
        room: None,
        app_data: String::new(),
    }))
    .await
    .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;

    // Unknown target, server-only messages, a second hello, text that is
    // not a JSON frame.
    c.send(&ice(
        Address::Peer(switchboard::protocol::PeerId(999_999)),
        1,
    ))
    .await
    .unwrap();
    expect_error(&mut c, ErrorCode::UnknownPeer).await;
    c.send(&Message::Left { room: room("bad") }).await.unwrap();
    expect_error(&mut c, ErrorCode::InvalidArgument).await;
    c.send(&Message::Hello(default_hello())).await.unwrap();
    expect_error(&mut c, ErrorCode::HelloRequired).await;
    c.socket()
        .send(WsMessage::Text("{\"type\":\"join\"".into()))
        .await
        .unwrap();
    expect_error(&mut c, ErrorCode::Malformed).await;
    c.send(&Message::Leave {
        room: room("never-joined"),
    })
    .await
    .unwrap();
    expect_error(&mut c, ErrorCode::NotJoined).await;

    // Too many frames in one message.
    let pings: Vec<Message> = (0..65).map(|n| Message::Ping { nonce: n }).collect();
    c.send_batch_as_one(&pings).await.unwrap();
    let mut saw_too_large = false;
    for _ in 0..65 {
        match next(&mut c).await {
            Message::Pong { .. } => {}
            Message::Error(e) => {
                assert_eq!(e.code, ErrorCode::TooLarge);
                saw_too_large = true;
                break;
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(saw_too_large);
    still_usable(&mut c).await;
}

#[tokio::test]
async fn oversized_messages_close_the_connection_with_1009() {
    let server = start_server(Config {
        max_message_bytes: 16 * 1024,
        outbox_bytes: 1 << 20,
        ..test_config()
    })
    .await;
    let mut c = connect(&server).await;
    c.send_raw(Bytes::from(vec![0u8; 64 * 1024])).await.unwrap();
    assert_eq!(expect_closed(&mut c).await, 1009);
    // Others can still connect.
    let mut d = connect(&server).await;
    still_usable(&mut d).await;
}

#[tokio::test]
async fn the_first_frame_must_be_hello_within_the_handshake_timeout() {
    let server = start_server(Config {
        handshake_timeout: Duration::from_millis(300),
        ..test_config()
    })
    .await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let code = wait_close(&mut ws).await;
    assert_eq!(code, 4000 + ErrorCode::HelloRequired as u16);

    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let mut ping = BytesMut::new();
    write_frame(&mut ping, MessageType::Ping, Flags::default(), 1, b"");
    ws.send(WsMessage::Binary(ping.freeze())).await.unwrap();
    assert_eq!(
        wait_close(&mut ws).await,
        4000 + ErrorCode::HelloRequired as u16
    );

    // A slowloris that never finishes its HTTP headers is dropped too.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("slow handshake dropped within the timeout");
    assert!(n.is_ok());
}

#[tokio::test]
async fn connections_per_ip_and_overall_are_capped() {
    let server = start_server(Config {
        max_connections_per_ip: 3,
        ..test_config()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect(&server).await);
    }
    let refused = Connection::connect(&server.url(), default_hello()).await;
    assert!(refused.is_err(), "fourth connection from one IP is refused");
    drop(held.pop());
    // The slot comes back once the server has seen the close.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(c) = Connection::connect(&server.url(), default_hello()).await {
            ok = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok.is_some());

    let server = start_server(Config {
        max_connections: 2,
        ..test_config()
    })
    .await;
    let _a = connect(&server).await;
    let _b = connect(&server).await;
    assert!(Connection::connect(&server.url(), default_hello())
        .await
        .is_err());
}

#[tokio::test]
async fn deflate_flag_is_only_valid_on_sdp_messages() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "df", RoomMode::Pair).await;
    join_ok(&mut b, "df", RoomMode::Pair).await;
    // Corrupt deflate data to a receiver that inflates for itself is
    // relayed as is (the receiver caps its own inflation); to a receiver
    // without the capability the server inflates and refuses it.
    a.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(peer(&b)),
        sdp: Sdp::Deflated(Bytes::from_static(b"\x00\x01garbage")),
        room: None,
        app_data: String::new(),
    }))
    .await
    .unwrap();
    match next(&mut b).await {
        Message::Offer(d) => assert!(matches!(d.sdp, Sdp::Deflated(_))),
        other => panic!("{other:?}"),
    }
}

/// A receiver under a sustained stream from several senders still gets its
/// own socket read: output does not starve input. What it sends reaches an
/// idle member at once, though its own outbox holds a backlog (so its own
/// Pong, queued behind that backlog, would measure the backlog instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_under_a_sustained_stream_is_still_heard() {
    use futures_util::StreamExt;
    use switchboard::protocol::{encode, Frames};

    let server = start_server(Config {
        rate_per_second: 100_000_000,
        rate_burst: 100_000_000,
        rate_bytes_per_second: 1_000_000_000,
        rate_bytes_burst: 1_000_000_000,
        outbox_frames: 1 << 20,
        outbox_bytes: 1 << 30,
        ..test_config()
    })
    .await;
    // The receiver, on a raw socket so that it can read and write at once.
    let (ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let (mut sink, mut stream) = ws.split();
    let frame = |m: &Message, seq: u32| {
        let mut out = BytesMut::new();
        encode(m).write(seq, &mut out);
        WsMessage::Binary(out.freeze())
    };
    sink.send(frame(
        &Message::Hello(switchboard::client::default_hello()),
        1,
    ))
    .await
    .unwrap();
    sink.send(frame(&join("stream", RoomMode::Mesh), 2))
        .await
        .unwrap();
    // Read (and drop) everything, as fast as headers can be split; say when
    // the receiver's Joined came.
    let (joined_tx, joined_rx) = tokio::sync::oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut joined_tx = Some(joined_tx);
        while let Some(Ok(msg)) = stream.next().await {
            if let WsMessage::Binary(data) = msg {
                for f in Frames::new(data, 1 << 20, 1 << 16).flatten() {
                    if f.header.kind == switchboard::protocol::MessageType::Joined as u8 {
                        if let Some(tx) = joined_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
        }
    });
    joined_rx.await.expect("the receiver joined");
    // The probe joins after the receiver and stays idle; four senders stream.
    let mut probe = connect(&server).await;
    let joined = join_ok(&mut probe, "stream", RoomMode::Mesh).await;
    let target = joined.members[0].peer_id;
    let probe_id = probe.welcome().peer_id;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let mut s = connect(&server).await;
        join_ok(&mut s, "stream", RoomMode::Mesh).await;
        let stop = stop.clone();
        senders.push(tokio::spawn(async move {
            let batch: Vec<Message> = (0..64).map(|n| ice(Address::Peer(target), n)).collect();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.send_batch(&batch).await.is_err() {
                    break;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.send(frame(&offer(Address::Peer(probe_id), "v=0\r\n"), 3))
        .await
        .unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match next(&mut probe).await {
                Message::Offer(d) => break d,
                // The senders' PeerJoined notices.
                Message::PeerJoined(_) => continue,
                other => panic!("{other:?}"),
            }
        }
    })
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        let _ = s.await;
    }
    reader.abort();
    let heard =
        heard.expect("the receiver's offer was not relayed within 5 s of a sustained stream");
    assert_eq!(heard.peer, Address::Peer(target));
}
