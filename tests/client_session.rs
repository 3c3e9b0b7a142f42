//! The high-level `Client` against an in-process server: negotiation with
//! compression, ICE batching, and reconnect after a server restart.

mod common;

use std::time::Duration;

use common::{connect, host_candidate, join_ok, next, room, start_server, test_config, user};
use switchboard::client::{backoff, Client, ClientConfig, Event};
use switchboard::protocol::{Address, IceCandidate, Message, RoomMode, Sdp};

const OFFER: &str = include_str!("data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("data/sdp/chrome-answer.sdp");

/// The next event within 5 s.
async fn event(c: &mut Client) -> Event {
    tokio::time::timeout(Duration::from_secs(5), c.next_event())
        .await
        .expect("timed out waiting for an event")
        .expect("session ended")
}

/// Skips events until `want` matches one.
async fn until<T>(c: &mut Client, mut want: impl FnMut(Event) -> Option<T>) -> T {
    loop {
        if let Some(t) = want(event(c).await) {
            return t;
        }
    }
}

fn quick_reconnect() -> ClientConfig {
    ClientConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ..ClientConfig::default()
    }
}

#[tokio::test]
async fn two_clients_negotiate_a_call() {
    let server = start_server(test_config()).await;
    let mut alice = Client::connect(&server.url(), ClientConfig::default())
        .await
        .unwrap();
    let mut bob = Client::connect(&server.url(), ClientConfig::default())
        .await
        .unwrap();

    alice.join(room("call"), RoomMode::Pair).await.unwrap();
    until(&mut alice, |e| matches!(e, Event::Joined(_)).then_some(())).await;
    bob.join(room("call"), RoomMode::Pair).await.unwrap();
    let joined = until(&mut bob, |e| match e {
        Event::Joined(j) => Some(j),
        _ => None,
    })
    .await;
    assert!(joined.initiator);
    assert_eq!(joined.members[0].peer_id, alice.peer_id());
    until(&mut alice, |e| {
        matches!(e, Event::PeerJoined(_)).then_some(())
    })
    .await;

    let to_alice = Address::Peer(alice.peer_id());
    let to_bob = Address::Peer(bob.peer_id());
    bob.send_offer(to_alice.clone(), OFFER).await.unwrap();
    let (from, sdp) = until(&mut alice, |e| match e {
        Event::Offer { from, sdp, .. } => Some((from, sdp)),
        _ => None,
    })
    .await;
    assert_eq!(from, to_bob);
    assert_eq!(sdp, OFFER, "the offer arrives inflated, byte for byte");

    alice.send_answer(to_bob.clone(), ANSWER).await.unwrap();
    for n in 0..3 {
        alice
            .send_ice(to_bob.clone(), host_candidate(n))
            .await
            .unwrap();
    }
    alice.end_of_candidates(to_bob.clone()).await.unwrap();
    let sdp = until(&mut bob, |e| match e {
        Event::Answer { sdp, .. } => Some(sdp),
        _ => None,
    })
    .await;
    assert_eq!(sdp, ANSWER);
    let (candidates, end) = until(&mut bob, |e| match e {
        Event::Ice {
            candidates,
            end_of_candidates,
            ..
        } => Some((candidates, end_of_candidates)),
        _ => None,
    })
    .await;
    assert_eq!(
        candidates,
        vec![host_candidate(0), host_candidate(1), host_candidate(2)]
    );
    assert!(end, "end of candidates rides along with the last batch");

    bob.hang_up(to_alice).await.unwrap();
    let from = until(&mut alice, |e| match e {
        Event::HangUp { from } => Some(from),
        _ => None,
    })
    .await;
    assert_eq!(from, to_bob);
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn sdp_is_deflated_and_candidates_are_batched_on_the_wire() {
    let server = start_server(test_config()).await;
    let mut raw = connect(&server).await;
    join_ok(&mut raw, "wire", RoomMode::Pair).await;
    let mut client = Client::connect(&server.url(), ClientConfig::default())
        .await
        .unwrap();
    client.join(room("wire"), RoomMode::Pair).await.unwrap();
    until(&mut client, |e| matches!(e, Event::Joined(_)).then_some(())).await;
    assert!(matches!(next(&mut raw).await, Message::PeerJoined(_)));
    let to = Address::Peer(raw.welcome().peer_id);

    client.send_offer(to.clone(), OFFER).await.unwrap();
    match next(&mut raw).await {
        Message::Offer(d) => match d.sdp {
            Sdp::Deflated(b) => assert!(b.len() < OFFER.len() / 2, "{} bytes", b.len()),
            Sdp::Plain(_) => panic!("the receiver announced DEFLATE_SDP; expected deflate"),
        },
        other => panic!("expected an offer, got {other:?}"),
    }
    // A short SDP that does not shrink goes out plain.
    client.send_offer(to.clone(), "Q").await.unwrap();
    match next(&mut raw).await {
        Message::Offer(d) => assert_eq!(d.sdp, Sdp::Plain("Q".into())),
        other => panic!("expected an offer, got {other:?}"),
    }

    for n in 0..5 {
        client
            .send_ice(to.clone(), host_candidate(n))
            .await
            .unwrap();
    }
    match next(&mut raw).await {
        Message::Ice(ice) => {
            assert_eq!(ice.candidates.len(), 5, "one batch after the window");
            assert!(!ice.end_of_candidates);
        }
        other => panic!("expected ICE, got {other:?}"),
    }
    client.end_of_candidates(to).await.unwrap();
    match next(&mut raw).await {
        Message::Ice(ice) => {
            assert!(ice.candidates.is_empty());
            assert!(ice.end_of_candidates);
        }
        other => panic!("expected ICE, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnects_after_a_restart_and_rejoins() {
    let server = start_server(test_config()).await;
    let addr = server.addr;
    let mut client = Client::connect(&server.url(), quick_reconnect())
        .await
        .unwrap();
    client.login(user("carol")).await.unwrap();
    client.join(room("lobby"), RoomMode::Mesh).await.unwrap();
    let r = until(&mut client, |e| match e {
        Event::LoginResult(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!(r.error, None);
    until(&mut client, |e| matches!(e, Event::Joined(_)).then_some(())).await;

    server.shutdown().await;
    let server = start_server(switchboard::config::Config {
        listen: addr,
        ..test_config()
    })
    .await;
    until(&mut client, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    let new_id = until(&mut client, |e| match e {
        Event::Reconnected { peer_id } => Some(peer_id),
        _ => None,
    })
    .await;
    assert_eq!(client.peer_id(), new_id);
    let r = until(&mut client, |e| match e {
        Event::LoginResult(r) => Some(r),
        _ => None,
    })
    .await;
    assert_eq!((r.name, r.error), (user("carol"), None));
    let joined = until(&mut client, |e| match e {
        Event::Joined(j) => Some(j),
        _ => None,
    })
    .await;
    assert_eq!(joined.room, room("lobby"));
    // The new server knows carol by name again.
    let mut other = connect(&server).await;
    other
        .send(&Message::Login {
            name: user("carol"),
        })
        .await
        .unwrap();
    match next(&mut other).await {
        Message::LoginResult(r) => assert!(r.error.is_some(), "carol is taken: {r:?}"),
        m => panic!("expected LoginResult, got {m:?}"),
    }
    client.close().await;
}

#[test]
fn backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
    let config = ClientConfig {
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        ..ClientConfig::default()
    };
    for _ in 0..100 {
        let d0 = backoff(&config, 0);
        assert!(d0 >= Duration::from_millis(50) && d0 <= Duration::from_millis(100));
        let d2 = backoff(&config, 2);
        assert!(d2 >= Duration::from_millis(200) && d2 <= Duration::from_millis(400));
        let d9 = backoff(&config, 9);
        assert!(d9 >= Duration::from_millis(500) && d9 <= Duration::from_secs(1));
        assert!(backoff(&config, u32::MAX) <= Duration::from_secs(1));
    }
}

/// A one-connection fake server: sends Welcome with `limits`, then hands
/// the socket to the test.
async fn fake_server(
    limits: switchboard::protocol::Limits,
) -> (
    String,
    tokio::task::JoinHandle<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>>,
) {
    use futures_util::{SinkExt, StreamExt};
    use switchboard::protocol::{Capabilities, PeerId, Welcome, PROTOCOL_VERSION};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = ws.next().await.unwrap().unwrap();
        assert!(hello.is_binary());
        let welcome = Message::Welcome(Welcome {
            resume: None,
            peer_id: PeerId(7),
            protocol_version: PROTOCOL_VERSION,
            limits,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            ice_servers: Vec::new(),
            capabilities: Capabilities::empty(),
            sdp_dictionary: 1,
        });
        let mut out = bytes::BytesMut::new();
        switchboard::protocol::encode(&welcome).write(1, &mut out);
        ws.send(tokio_tungstenite::tungstenite::Message::Binary(
            out.freeze(),
        ))
        .await
        .unwrap();
        ws
    });
    (url, task)
}

fn limits(max_frames: u32, max_bytes: u32) -> switchboard::protocol::Limits {
    switchboard::protocol::Limits {
        max_message_bytes: max_bytes,
        max_frames_per_message: max_frames,
        max_sdp_bytes: 65536,
        rate_per_second: 200,
        rate_burst: 400,
        max_id_bytes: 64,
        max_room_capacity: 64,
        default_room_capacity: 8,
        max_payload_bytes: 131_060,
        max_candidates_per_batch: 64,
        rate_bytes_per_second: 262_144,
        rate_bytes_burst: 1_048_576,
        max_rooms_per_peer: 16,
    }
}

/// A frame of a type this client does not know (from a newer server) is
/// skipped: the frames after it arrive and the client does not reconnect.
#[tokio::test]
async fn a_frame_the_client_cannot_decode_is_skipped_not_a_reconnect() {
    use futures_util::SinkExt;
    let (url, server) = fake_server(limits(64, 131072)).await;
    let mut client = Client::connect(&url, quick_reconnect()).await.unwrap();
    let mut ws = server.await.unwrap();
    let mut message = bytes::BytesMut::new();
    // Type 0x7f with some payload, then an unknown enum value in a known
    // message (PeerLeft with reason 99), then a HangUp the client knows.
    message.extend_from_slice(&[1, 0x7f, 0, 0, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]);
    let peer_left = [0x0a, 0x01, b'r', 0x10, 0x05, 0x18, 99];
    message.extend_from_slice(&[1, 0x84, 0, 0, 0, 0, 0, 3, 0, 0, 0, peer_left.len() as u8]);
    message.extend_from_slice(&peer_left);
    let hang_up = Message::HangUp {
        peer: Address::User(user("bob")),
    };
    switchboard::protocol::encode(&hang_up).write(4, &mut message);
    ws.send(tokio_tungstenite::tungstenite::Message::Binary(
        message.freeze(),
    ))
    .await
    .unwrap();
    let mut skipped = 0;
    loop {
        match event(&mut client).await {
            Event::Skipped { .. } => skipped += 1,
            Event::HangUp { from } => {
                assert_eq!(from, Address::User(user("bob")));
                break;
            }
            Event::Disconnected { reason } => panic!("reconnected over a bad frame: {reason}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(skipped, 2, "both undecodable frames are reported");
}

/// A batch is split to the server's announced frames-per-message and
/// message-size limits.
#[tokio::test]
async fn batches_follow_the_announced_limits() {
    use futures_util::StreamExt;
    let (url, server) = fake_server(limits(2, 100)).await;
    let mut c =
        switchboard::client::Connection::connect(&url, switchboard::client::default_hello())
            .await
            .unwrap();
    let mut ws = server.await.unwrap();
    // Five Pings (2 frames per message at most), then three 40-byte ICE
    // frames (two would exceed 100 bytes).
    let pings: Vec<Message> = (0..5).map(|n| Message::Ping { nonce: n }).collect();
    c.send_batch(&pings).await.unwrap();
    let ice: Vec<Message> = (0..3)
        .map(|_| {
            Message::Ice(switchboard::protocol::IceCandidates {
                peer: Address::User(user("b")),
                candidates: vec![IceCandidate {
                    candidate: "c".repeat(30),
                    sdp_mid: None,
                    sdp_m_line_index: None,
                    username_fragment: None,
                }],
                end_of_candidates: false,
                room: None,
                app_data: String::new(),
            })
        })
        .collect();
    c.send_batch(&ice).await.unwrap();
    let mut frames_per_message = Vec::new();
    let mut sizes = Vec::new();
    while frames_per_message.iter().sum::<usize>() < 8 {
        let data = ws.next().await.unwrap().unwrap().into_data();
        sizes.push(data.len());
        frames_per_message.push(switchboard::protocol::Frames::new(data, 1 << 20, 1 << 10).count());
    }
    assert_eq!(
        &frames_per_message[..3],
        &[2, 2, 1],
        "{frames_per_message:?}"
    );
    assert!(sizes.iter().all(|&n| n <= 100), "{sizes:?}");
    assert_eq!(frames_per_message.iter().sum::<usize>(), 8);
}
