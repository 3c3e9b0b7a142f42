//! The signaling flows of the seed documents, over real sockets.

mod common;

use std::time::Duration;

use common::*;
use switchboard::config::Config;
use switchboard::protocol::{
    Address, ErrorCode, Join, LeaveReason, Message, RoomMode, Sdp, SessionDescription,
};

#[tokio::test]
async fn healthz_answers_on_the_websocket_port() {
    let server = start_server(test_config()).await;
    let body = http_get(server.addr, "/healthz").await;
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let body = http_get(server.addr, "/nope").await;
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
}

#[tokio::test]
async fn welcome_announces_peer_id_heartbeat_and_limits() {
    let server = start_server(test_config()).await;
    let a = connect(&server).await;
    let b = connect(&server).await;
    assert_ne!(peer(&a), peer(&b));
    let w = a.welcome();
    assert_eq!(w.heartbeat_interval, Duration::from_secs(15));
    assert_eq!(w.limits.max_room_capacity, 64);
    assert_eq!(w.sdp_dictionary, 1);
}

#[tokio::test]
async fn pair_room_later_joiner_initiates_and_third_gets_full() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;

    let ja = join_ok(&mut a, "1001", RoomMode::Pair).await;
    assert!(!ja.initiator && ja.members.is_empty());
    let jb = join_ok(&mut b, "1001", RoomMode::Pair).await;
    assert!(jb.initiator, "the later joiner is the initiator");
    assert_eq!(jb.members.len(), 1);
    assert_eq!(jb.members[0].peer_id, peer(&a));
    match next(&mut a).await {
        Message::PeerJoined(p) => {
            assert_eq!(p.member.peer_id, peer(&b));
            assert!(!p.initiator);
        }
        other => panic!("{other:?}"),
    }

    c.send(&join("1001", RoomMode::Pair)).await.unwrap();
    match next(&mut c).await {
        Message::RoomFull { room, capacity } => {
            assert_eq!(room.as_str(), "1001");
            assert_eq!(capacity, 2);
        }
        other => panic!("expected RoomFull, got {other:?}"),
    }

    // The initiator offers, the other answers, both trickle ICE.
    b.send(&offer(Address::Peer(peer(&a)), "v=0 offer"))
        .await
        .unwrap();
    match next(&mut a).await {
        Message::Offer(d) => {
            assert_eq!(
                d.peer,
                Address::Peer(peer(&b)),
                "sender filled in by server"
            );
            assert_eq!(d.sdp, Sdp::Plain("v=0 offer".into()));
        }
        other => panic!("{other:?}"),
    }
    a.send(&answer(Address::Peer(peer(&b)), "v=0 answer"))
        .await
        .unwrap();
    assert!(matches!(next(&mut b).await, Message::Answer(_)));
    a.send(&ice(Address::Peer(peer(&b)), 1)).await.unwrap();
    match next(&mut b).await {
        Message::Ice(i) => {
            assert_eq!(i.peer, Address::Peer(peer(&a)));
            assert_eq!(i.candidates.len(), 1);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn leaving_or_joining_elsewhere_tells_the_other() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "r1", RoomMode::Pair).await;
    join_ok(&mut b, "r1", RoomMode::Pair).await;
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));

    // Joining another pair room leaves the first one, once the join worked.
    b.send(&join("r2", RoomMode::Pair)).await.unwrap();
    assert!(matches!(next(&mut b).await, Message::Joined(j) if j.room.as_str() == "r2"));
    assert!(matches!(next(&mut b).await, Message::Left { room } if room.as_str() == "r1"));
    match next(&mut a).await {
        Message::PeerLeft(p) => {
            assert_eq!(p.peer_id, peer(&b));
            assert_eq!(p.reason, LeaveReason::JoinedOtherRoom);
        }
        other => panic!("{other:?}"),
    }

    // Leave, then the room is empty and can be joined again.
    a.send(&Message::Leave { room: room("r1") }).await.unwrap();
    assert!(matches!(next(&mut a).await, Message::Left { .. }));
    let j = join_ok(&mut a, "r1", RoomMode::Pair).await;
    assert!(j.members.is_empty());
}

#[tokio::test]
async fn a_refused_pair_join_keeps_the_call_in_progress() {
    let server = start_server(Config {
        max_rooms_per_peer: 2,
        ..test_config()
    })
    .await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "call", RoomMode::Pair).await;
    join_ok(&mut b, "call", RoomMode::Pair).await;
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
    // A full pair room elsewhere.
    let mut c = connect(&server).await;
    let mut d = connect(&server).await;
    join_ok(&mut c, "full", RoomMode::Pair).await;
    join_ok(&mut d, "full", RoomMode::Pair).await;
    // A mesh room, which a pair join cannot enter.
    let mut e = connect(&server).await;
    join_ok(&mut e, "meshy", RoomMode::Mesh).await;
    b.send(&join("full", RoomMode::Pair)).await.unwrap();
    assert!(matches!(next(&mut b).await, Message::RoomFull { .. }));
    b.send(&join("meshy", RoomMode::Pair)).await.unwrap();
    expect_error(&mut b, ErrorCode::ModeMismatch).await;
    // At the rooms-per-peer limit, switching pair rooms is still allowed
    // (the old one is left), but a third room is not.
    join_ok(&mut b, "mesh-2", RoomMode::Mesh).await;
    b.send(&join("mesh-3", RoomMode::Mesh)).await.unwrap();
    expect_error(&mut b, ErrorCode::TooManyRooms).await;
    // The call is intact: the offer goes through, and A heard of no leave.
    b.send(&offer(Address::Peer(peer(&a)), "v=0 still here"))
        .await
        .unwrap();
    match next(&mut a).await {
        Message::Offer(o) => assert_eq!(o.peer, Address::Peer(peer(&b))),
        other => panic!("the call was dropped by a refused join: {other:?}"),
    }
    // And a pair join that succeeds at the limit replaces the old room.
    b.send(&join("next-call", RoomMode::Pair)).await.unwrap();
    assert!(matches!(next(&mut b).await, Message::Joined(j) if j.room.as_str() == "next-call"));
    assert!(matches!(next(&mut b).await, Message::Left { room } if room.as_str() == "call"));
}

#[tokio::test]
async fn abrupt_tcp_close_is_announced_as_peer_left() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "abrupt", RoomMode::Pair).await;
    join_ok(&mut b, "abrupt", RoomMode::Pair).await;
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
    let b_id = peer(&b);
    // Drop the socket without a close handshake.
    drop(b);
    match next(&mut a).await {
        Message::PeerLeft(p) => {
            assert_eq!(p.peer_id, b_id);
            assert_eq!(p.reason, LeaveReason::Disconnected);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn mesh_room_lists_members_and_directs_signals_to_one_peer() {
    let server = start_server(test_config()).await;
    let mut peers = Vec::new();
    for _ in 0..4 {
        peers.push(connect(&server).await);
    }
    for i in 0..4 {
        let j = join_ok(&mut peers[i], "mesh", RoomMode::Mesh).await;
        assert_eq!(j.members.len(), i, "joined lists everyone already there");
        assert!(!j.initiator);
        for p in peers.iter_mut().take(i) {
            assert!(matches!(next(p).await, Message::PeerJoined(_)));
        }
    }
    let ids: Vec<_> = peers.iter().map(peer).collect();
    // Peer 3 offers to peer 1 only.
    peers[3]
        .send(&offer(Address::Peer(ids[1]), "to one"))
        .await
        .unwrap();
    match next(&mut peers[1]).await {
        Message::Offer(d) => assert_eq!(d.peer, Address::Peer(ids[3])),
        other => panic!("{other:?}"),
    }
    // Nobody else got it: a ping round trip proves their queues are empty.
    for i in [0, 2] {
        peers[i].send(&Message::Ping { nonce: 7 }).await.unwrap();
        assert_eq!(next(&mut peers[i]).await, Message::Pong { nonce: 7 });
    }
    // A leaving member is announced to the rest.
    let gone = peers.remove(0);
    drop(gone);
    for p in &mut peers {
        assert!(matches!(next(p).await, Message::PeerLeft(l) if l.peer_id == ids[0]));
    }
}

#[tokio::test]
async fn mesh_capacity_is_asked_by_the_creator_and_enforced() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;
    a.send(&Message::Join(Join {
        room: room("small"),
        mode: RoomMode::Mesh,
        capacity: Some(2),
        display_name: "A".into(),
    }))
    .await
    .unwrap();
    assert!(matches!(next(&mut a).await, Message::Joined(j) if j.capacity == 2));
    let j = join_ok(&mut b, "small", RoomMode::Mesh).await;
    assert_eq!(j.members[0].display_name, "A");
    c.send(&join("small", RoomMode::Mesh)).await.unwrap();
    assert!(matches!(
        next(&mut c).await,
        Message::RoomFull { capacity: 2, .. }
    ));
    // Too large a capacity, and the wrong mode, are typed errors.
    c.send(&Message::Join(Join {
        room: room("huge"),
        mode: RoomMode::Mesh,
        capacity: Some(1000),
        display_name: String::new(),
    }))
    .await
    .unwrap();
    expect_error(&mut c, ErrorCode::InvalidArgument).await;
    c.send(&join("small", RoomMode::Pair)).await.unwrap();
    expect_error(&mut c, ErrorCode::ModeMismatch).await;
}

#[tokio::test]
async fn nothing_leaks_across_rooms() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "left-room", RoomMode::Mesh).await;
    join_ok(&mut b, "right-room", RoomMode::Mesh).await;
    let seq = a.send(&offer(Address::Peer(peer(&b)), "x")).await.unwrap();
    assert_eq!(expect_error(&mut a, ErrorCode::UnknownPeer).await, seq);
    a.send(&ice(Address::Peer(peer(&b)), 1)).await.unwrap();
    expect_error(&mut a, ErrorCode::UnknownPeer).await;
    // b received nothing.
    b.send(&Message::Ping { nonce: 1 }).await.unwrap();
    assert_eq!(next(&mut b).await, Message::Pong { nonce: 1 });
}

#[tokio::test]
async fn named_users_call_each_other_and_hang_up() {
    let server = start_server(test_config()).await;
    let mut alice = connect(&server).await;
    let mut bob = connect(&server).await;
    let mut mallory = connect(&server).await;
    for (c, name) in [(&mut alice, "alice"), (&mut bob, "bob")] {
        c.send(&Message::Login { name: user(name) }).await.unwrap();
        match next(c).await {
            Message::LoginResult(r) => assert_eq!(r.error, None),
            other => panic!("{other:?}"),
        }
    }
    mallory
        .send(&Message::Login {
            name: user("alice"),
        })
        .await
        .unwrap();
    match next(&mut mallory).await {
        Message::LoginResult(r) => assert_eq!(r.error, Some(ErrorCode::NameTaken)),
        other => panic!("{other:?}"),
    }
    // Calling by name needs a name of one's own.
    mallory
        .send(&offer(Address::User(user("bob")), "x"))
        .await
        .unwrap();
    expect_error(&mut mallory, ErrorCode::NotJoined).await;

    alice
        .send(&offer(Address::User(user("bob")), "o"))
        .await
        .unwrap();
    match next(&mut bob).await {
        Message::Offer(d) => assert_eq!(d.peer, Address::User(user("alice"))),
        other => panic!("{other:?}"),
    }
    bob.send(&answer(Address::User(user("alice")), "a"))
        .await
        .unwrap();
    assert!(
        matches!(next(&mut alice).await, Message::Answer(d) if d.peer == Address::User(user("bob")))
    );
    bob.send(&ice(Address::User(user("alice")), 3))
        .await
        .unwrap();
    assert!(matches!(next(&mut alice).await, Message::Ice(_)));
    alice
        .send(&Message::HangUp {
            peer: Address::User(user("bob")),
        })
        .await
        .unwrap();
    assert_eq!(
        next(&mut bob).await,
        Message::HangUp {
            peer: Address::User(user("alice"))
        }
    );
    // Unknown names are a typed error.
    alice
        .send(&offer(Address::User(user("nobody")), "o"))
        .await
        .unwrap();
    expect_error(&mut alice, ErrorCode::UnknownPeer).await;
}

#[tokio::test]
async fn a_name_is_freed_on_logout_and_disconnect_and_partners_hear_of_it() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    a.send(&Message::Login {
        name: user("carol"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut a).await, Message::LoginResult(r) if r.error.is_none()));
    b.send(&Message::Login { name: user("dave") })
        .await
        .unwrap();
    assert!(matches!(next(&mut b).await, Message::LoginResult(r) if r.error.is_none()));
    a.send(&offer(Address::User(user("dave")), "o"))
        .await
        .unwrap();
    assert!(matches!(next(&mut b).await, Message::Offer(_)));
    // Disconnect: dave hears the call ended, and the name is free again.
    drop(a);
    assert_eq!(
        next(&mut b).await,
        Message::HangUp {
            peer: Address::User(user("carol"))
        }
    );
    let mut c = connect(&server).await;
    c.send(&Message::Login {
        name: user("carol"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut c).await, Message::LoginResult(r) if r.error.is_none()));
    c.send(&Message::Logout).await.unwrap();
    b.send(&Message::Logout).await.unwrap();
    b.send(&Message::Login {
        name: user("carol"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut b).await, Message::LoginResult(r) if r.error.is_none()));
}

#[tokio::test]
async fn a_client_may_be_named_and_in_rooms_at_once() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    a.send(&Message::Login { name: user("erin") })
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Message::LoginResult(_)));
    join_ok(&mut a, "both", RoomMode::Mesh).await;
    let j = join_ok(&mut b, "both", RoomMode::Mesh).await;
    assert_eq!(
        j.members[0].user,
        Some(user("erin")),
        "members show their names"
    );
    b.send(&offer(Address::Peer(peer(&a)), "by id"))
        .await
        .unwrap();
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
    assert!(matches!(next(&mut a).await, Message::Offer(d) if d.peer == Address::Peer(peer(&b))));
}

#[tokio::test]
async fn deflated_sdp_is_inflated_for_receivers_without_the_capability() {
    use switchboard::client::Connection;
    use switchboard::protocol::{sdp, Capabilities};
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut hello = switchboard::client::default_hello();
    hello.capabilities = Capabilities::empty();
    let mut plain = Connection::connect(&server.url(), hello).await.unwrap();
    join_ok(&mut a, "z", RoomMode::Pair).await;
    join_ok(&mut plain, "z", RoomMode::Pair).await;
    assert!(
        matches!(next(&mut a).await, Message::PeerJoined(p) if !p.member.capabilities.contains(Capabilities::DEFLATE_SDP))
    );
    let text = include_str!("data/sdp/chrome-offer.sdp");
    let packed = sdp::deflate(text.as_bytes());
    a.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(peer(&plain)),
        sdp: Sdp::Deflated(packed.into()),
        room: Some(room("z")),
        app_data: String::new(),
    }))
    .await
    .unwrap();
    match next(&mut plain).await {
        Message::Offer(d) => assert_eq!(d.sdp, Sdp::Plain(text.as_bytes().to_vec().into())),
        other => panic!("{other:?}"),
    }
    // A deflate bomb is refused with a typed error, not relayed.
    let bomb = sdp::deflate(&vec![b'a'; 10 << 20]);
    a.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(peer(&plain)),
        sdp: Sdp::Deflated(bomb.into()),
        room: None,
        app_data: String::new(),
    }))
    .await
    .unwrap();
    expect_error(&mut a, ErrorCode::BadCompression).await;
}

#[tokio::test]
async fn graceful_shutdown_tells_clients_and_closes_them() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    join_ok(&mut a, "bye", RoomMode::Pair).await;
    let shutdown = tokio::spawn(server.shutdown());
    expect_error(&mut a, ErrorCode::ServerShuttingDown).await;
    assert_eq!(expect_closed(&mut a).await, 1001, "going away");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("server stops within its grace period")
        .unwrap();
}

#[tokio::test]
async fn frames_sent_with_hello_in_one_message_are_handled() {
    use bytes::BytesMut;
    use futures_util::{SinkExt, StreamExt};
    use switchboard::protocol::{decode_message, encode_into, CodecLimits};
    use tokio_tungstenite::tungstenite::Message as WsMessage;

    let server = start_server(test_config()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let mut out = BytesMut::new();
    encode_into(
        &Message::Hello(switchboard::client::default_hello()),
        1,
        &mut out,
    );
    encode_into(&join("with-hello", RoomMode::Pair), 2, &mut out);
    ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("answer in time")
            .unwrap()
            .unwrap();
        if let WsMessage::Binary(data) = msg {
            for item in decode_message(data, &CodecLimits::default()) {
                seen.push(item.unwrap().1);
            }
        }
    }
    assert!(matches!(seen[0], Message::Welcome(_)), "{seen:?}");
    assert!(
        matches!(&seen[1], Message::Joined(j) if j.room.as_str() == "with-hello"),
        "{seen:?}"
    );
}
