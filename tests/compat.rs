//! The seed-compatible endpoints: each tutorial's message sequences, as its
//! document shows them, over real sockets, and calls across encodings.

mod common;

use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::protocol::{Address, Message, RoomMode, Sdp, SessionDescription};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::json::{self, Socket};

/// A tutorial's page: plain WebSocket, JSON messages.
struct Page {
    ws: Socket,
}

impl Page {
    async fn open(server: &TestServer, path: &str) -> Page {
        let url = format!("ws://{}{path}", server.addr);
        let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        Page { ws }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(WsMessage::text(v.to_string())).await.unwrap();
    }

    async fn recv(&mut self) -> Value {
        json::recv(&mut self.ws).await
    }

    /// Nothing arrives for a short while.
    async fn quiet(&mut self) {
        let got = tokio::time::timeout(Duration::from_millis(200), self.ws.next()).await;
        assert!(got.is_err(), "expected nothing, got {got:?}");
    }
}

#[tokio::test]
async fn seed_001_pair_rooms_as_the_document_shows() {
    let server = start_server(test_config()).await;
    let mut a = Page::open(&server, "/compat/pair").await;
    a.send(json!({"type": "offer", "x": 1})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "error", "message": "join a room first"})
    );
    a.send(json!({"type": "join"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "error", "message": "roomId is required"})
    );
    a.send(json!({"type": "join", "roomId": 0})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "error", "message": "roomId is required"})
    );
    a.send(json!({"type": "join", "roomId": " 1001 "})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "joined", "roomId": "1001", "peers": 0})
    );

    let mut b = Page::open(&server, "/compat/pair").await;
    b.send(json!({"type": "join", "roomId": 1001})).await;
    assert_eq!(
        b.recv().await,
        json!({"type": "joined", "roomId": "1001", "peers": 1})
    );
    assert_eq!(
        b.recv().await,
        json!({"type": "ready", "isInitiator": true})
    );
    assert_eq!(
        a.recv().await,
        json!({"type": "ready", "isInitiator": false})
    );

    let mut c = Page::open(&server, "/compat/pair").await;
    c.send(json!({"type": "join", "roomId": "1001"})).await;
    assert_eq!(c.recv().await, json!({"type": "full", "roomId": "1001"}));

    // The later joiner offers.
    b.send(json!({"type": "offer", "sdp": {"type": "offer", "sdp": "v=0\r\n"}}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "offer", "sdp": {"type": "offer", "sdp": "v=0\r\n"}})
    );
    a.send(json!({"type": "answer", "sdp": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "answer", "sdp": {"type": "answer", "sdp": "v=0\r\n"}})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 5000 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    a.send(json!({"type": "ice", "candidate": cand})).await;
    assert_eq!(b.recv().await, json!({"type": "ice", "candidate": cand}));

    b.send(json!({"type": "leave"})).await;
    assert_eq!(a.recv().await, json!({"type": "peer-left"}));
    assert_eq!(b.recv().await, json!({"type": "left"}));
    b.send(json!({"type": "leave"})).await;
    assert_eq!(
        b.recv().await,
        json!({"type": "error", "message": "join a room first"})
    );

    // A disconnect is a departure too.
    c.send(json!({"type": "join", "roomId": "1001"})).await;
    assert_eq!(
        c.recv().await,
        json!({"type": "joined", "roomId": "1001", "peers": 1})
    );
    assert_eq!(
        c.recv().await,
        json!({"type": "ready", "isInitiator": true})
    );
    assert_eq!(
        a.recv().await,
        json!({"type": "ready", "isInitiator": false})
    );
    drop(c);
    assert_eq!(a.recv().await, json!({"type": "peer-left"}));
    // Junk and `null` are survived.
    a.send(json!(null)).await;
    a.ws.send(WsMessage::text("not json")).await.unwrap();
    a.quiet().await;
}

#[tokio::test]
async fn a_seed_001_page_and_an_sdk_client_negotiate_in_one_room() {
    let server = start_server(test_config()).await;
    let mut page = Page::open(&server, "/compat/pair").await;
    page.send(json!({"type": "join", "roomId": "call"})).await;
    assert_eq!(page.recv().await["type"], "joined");

    let mut sdk = connect(&server).await;
    let j = join_ok(&mut sdk, "call", RoomMode::Pair).await;
    assert!(j.initiator);
    let page_id = j.members[0].peer_id;
    assert_eq!(
        page.recv().await,
        json!({"type": "ready", "isInitiator": false})
    );

    sdk.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(page_id),
        sdp: Sdp::Plain("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n".into()),
        room: None,
        app_data: String::new(),
    }))
    .await
    .unwrap();
    assert_eq!(
        page.recv().await,
        json!({"type": "offer", "sdp": {"type": "offer", "sdp": "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\n"}})
    );
    page.send(json!({"type": "answer", "sdp": {"type": "answer", "sdp": "v=0\r\n"}}))
        .await;
    let Message::Answer(a) = next(&mut sdk).await else {
        panic!()
    };
    assert_eq!(a.peer, Address::Peer(page_id));
    assert_eq!(a.sdp, Sdp::Plain("v=0\r\n".into()));
    page.send(json!({"type": "ice", "candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0}})).await;
    let Message::Ice(i) = next(&mut sdk).await else {
        panic!()
    };
    assert_eq!(i.candidates[0].sdp_mid.as_deref(), Some("0"));
}

#[tokio::test]
async fn seed_002_named_users_as_the_document_shows_and_across_encodings() {
    let server = start_server(test_config()).await;
    let mut alice = Page::open(&server, "/compat/users").await;
    alice.ws.send(WsMessage::text("not json")).await.unwrap();
    assert_eq!(
        alice.recv().await,
        json!({"type": "error", "message": "Unrecognized command: undefined"})
    );
    alice.send(json!({"type": "login", "name": "alice"})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "login", "success": true})
    );
    let mut dup = Page::open(&server, "/compat/users").await;
    dup.send(json!({"type": "login", "name": "alice"})).await;
    assert_eq!(dup.recv().await, json!({"type": "login", "success": false}));
    alice.send(json!({"type": "foo"})).await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "error", "message": "Unrecognized command: foo"})
    );

    let mut bob = Page::open(&server, "/compat/users").await;
    bob.send(json!({"type": "login", "name": "bob"})).await;
    assert_eq!(bob.recv().await, json!({"type": "login", "success": true}));
    let offer = json!({"type": "offer", "sdp": "v=0"});
    alice
        .send(json!({"type": "offer", "name": "bob", "offer": offer, "x": 1}))
        .await;
    assert_eq!(
        bob.recv().await,
        json!({"type": "offer", "offer": offer, "name": "alice"})
    );
    let answer = json!({"type": "answer", "sdp": "v=0"});
    bob.send(json!({"type": "answer", "name": "alice", "answer": answer}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "answer", "answer": answer})
    );
    let cand = json!({"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    bob.send(json!({"type": "candidate", "name": "alice", "candidate": cand}))
        .await;
    assert_eq!(
        alice.recv().await,
        json!({"type": "candidate", "candidate": cand})
    );
    alice.send(json!({"type": "leave", "name": "bob"})).await;
    assert_eq!(bob.recv().await, json!({"type": "leave"}));

    // A seed-002 user calls an SDK user by name; the SDK user hangs up by
    // disconnecting, and the page hears `leave`.
    let mut carol = connect(&server).await;
    carol
        .send(&Message::Login {
            name: user("carol"),
        })
        .await
        .unwrap();
    assert!(matches!(next(&mut carol).await, Message::LoginResult(r) if r.error.is_none()));
    alice
        .send(json!({"type": "offer", "name": "carol", "offer": offer}))
        .await;
    let Message::Offer(o) = next(&mut carol).await else {
        panic!()
    };
    assert_eq!(o.peer, Address::User(user("alice")));
    assert_eq!(o.sdp, Sdp::Plain("v=0".into()));
    carol
        .send(&Message::Answer(SessionDescription {
            peer: Address::User(user("alice")),
            sdp: Sdp::Plain("v=0".into()),
            room: None,
            app_data: String::new(),
        }))
        .await
        .unwrap();
    assert_eq!(
        alice.recv().await,
        json!({"type": "answer", "answer": answer})
    );
    drop(carol);
    assert_eq!(alice.recv().await, json!({"type": "leave"}));

    // A name is freed on disconnect.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bob2 = Page::open(&server, "/compat/users").await;
    bob2.send(json!({"type": "login", "name": "bob"})).await;
    assert_eq!(bob2.recv().await, json!({"type": "login", "success": true}));
}

#[tokio::test]
async fn seed_000_mesh_rooms_as_the_document_shows() {
    let server = start_server(test_config()).await;
    let mut a = Page::open(&server, "/compat/mesh").await;
    a.send(json!({"type": "join", "roomId": "r1"})).await;
    assert_eq!(
        a.recv().await,
        json!({"type": "joined", "roomId": "r1", "peers": []})
    );
    let mut b = Page::open(&server, "/compat/mesh").await;
    b.send(json!({"type": "join", "roomId": "r1"})).await;
    let new_peer = a.recv().await;
    assert_eq!(new_peer["type"], "new-peer");
    let b_id = new_peer["peerId"].as_str().unwrap().to_owned();
    let joined = b.recv().await;
    assert_eq!(joined["type"], "joined");
    assert_eq!(joined["peers"].as_array().unwrap().len(), 1);
    let a_id = joined["peers"][0].as_str().unwrap().to_owned();

    let offer = json!({"type": "offer", "sdp": "v=0\r\n"});
    b.send(json!({"type": "offer", "peerId": a_id, "offer": offer, "seq": 3}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "offer", "peerId": b_id, "offer": offer, "seq": 3})
    );
    let answer = json!({"type": "answer", "sdp": "v=0\r\n"});
    a.send(json!({"type": "answer", "peerId": b_id, "answer": answer}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "answer", "peerId": a_id, "answer": answer})
    );
    let c1 = json!({"candidate": "candidate:1 1 udp 1 127.0.0.1 5 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    let c2 = json!({"candidate": "candidate:2 1 udp 1 127.0.0.1 6 typ host", "sdpMid": "0", "sdpMLineIndex": 0});
    a.send(json!({"type": "ice-candidates", "peerId": b_id, "candidates": [c1, c2], "seq": 7, "timestamp": 1625097600000u64}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "candidate", "peerId": a_id, "candidate": c1, "seq": 7, "timestamp": 1625097600000u64})
    );
    assert_eq!(
        b.recv().await,
        json!({"type": "candidate", "peerId": a_id, "candidate": c2, "seq": 7, "timestamp": 1625097600000u64})
    );
    drop(b);
    assert_eq!(
        a.recv().await,
        json!({"type": "peer-disconnected", "peerId": b_id})
    );
}

#[tokio::test]
async fn compat_clients_keep_the_protections() {
    let server = start_server(test_config()).await;
    let mut a = Page::open(&server, "/compat/pair").await;
    let big = json!({"type": "join", "roomId": "x".repeat(200 * 1024)});
    let _ = a.ws.send(WsMessage::text(big.to_string())).await;
    assert_eq!(json::close_code(&mut a.ws).await, 1009);
    let mut b = Page::open(&server, "/compat/pair").await;
    b.send(json!({"type": "join", "roomId": "a/b\u{0}"})).await;
    let got = b.recv().await;
    assert_eq!(got["type"], "error", "{got}");
}

/// These clients send no Ping frames: the server pings at the WebSocket
/// level, a client that answers (every browser does) stays, one that never
/// reads is closed as timed out.
#[tokio::test]
async fn compat_heartbeats_are_websocket_pings() {
    let config = switchboard::config::Config {
        heartbeat_interval: Duration::from_millis(200),
        heartbeat_timeout: Duration::from_millis(600),
        ..test_config()
    };
    let server = start_server(config).await;
    let mut alive = Page::open(&server, "/compat/users").await;
    let mut silent = Page::open(&server, "/compat/users").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while tokio::time::Instant::now() < until {
        // Reading lets tungstenite answer each ping with a pong.
        if let Ok(Some(Ok(WsMessage::Ping(_)))) =
            tokio::time::timeout(Duration::from_millis(100), alive.ws.next()).await
        {
            pings += 1;
        }
    }
    assert!(pings >= 2, "{pings} pings in 1.5 s");
    alive
        .send(json!({"type": "login", "name": "still-here"}))
        .await;
    assert_eq!(
        alive.recv().await,
        json!({"type": "login", "success": true})
    );

    // Nothing read for longer than the heartbeat timeout.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(json::close_code(&mut silent.ws).await, 4022);
}

#[tokio::test]
async fn seed_000_seq_and_timestamp_reach_sdk_clients_and_come_back() {
    let server = start_server(test_config()).await;
    let mut page = Page::open(&server, "/compat/mesh").await;
    page.send(json!({"type": "join", "roomId": "m"})).await;
    assert_eq!(page.recv().await["type"], "joined");
    let mut sdk = connect(&server).await;
    let j = join_ok(&mut sdk, "m", RoomMode::Mesh).await;
    let page_id = j.members[0].peer_id;
    let sdk_id = page.recv().await["peerId"].as_str().unwrap().to_owned();

    page.send(json!({"type": "offer", "peerId": sdk_id, "offer": {"type": "offer", "sdp": "v=0\r\n"}, "seq": 1, "timestamp": 1625097600000u64}))
        .await;
    let Message::Offer(o) = next(&mut sdk).await else {
        panic!()
    };
    let app: Value = serde_json::from_str(&o.app_data).unwrap();
    assert_eq!(app, json!({"seq": 1, "timestamp": 1625097600000u64}));

    sdk.send(&Message::Answer(SessionDescription {
        peer: Address::Peer(page_id),
        sdp: Sdp::Plain("v=0\r\n".into()),
        room: None,
        app_data: json!({"seq": 2, "version": "1.0"}).to_string(),
    }))
    .await
    .unwrap();
    // Only the tutorial's fields are written into its message.
    assert_eq!(
        page.recv().await,
        json!({"type": "answer", "peerId": sdk_id, "answer": {"type": "answer", "sdp": "v=0\r\n"}, "seq": 2})
    );

    // More than the protocol's 1,024 bytes of them is refused, with a reason,
    // and the page stays connected.
    let long = "x".repeat(1100);
    page.send(json!({"type": "offer", "peerId": sdk_id, "offer": {"type": "offer", "sdp": "v=0\r\n"}, "seq": long}))
        .await;
    let refused = page.recv().await;
    assert_eq!(refused["type"], "error");
    assert!(
        refused["message"].as_str().unwrap().contains("app_data"),
        "{refused}"
    );
    page.send(
        json!({"type": "offer", "peerId": sdk_id, "offer": {"type": "offer", "sdp": "v=0\r\n"}}),
    )
    .await;
    let Message::Offer(o) = next(&mut sdk).await else {
        panic!()
    };
    assert_eq!(o.app_data, "");
}
