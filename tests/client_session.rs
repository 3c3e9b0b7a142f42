//! The high-level `Client` against an in-process server: negotiation with
//! compression, ICE batching, and reconnect after a server restart.

mod common;

use std::time::Duration;

use common::{connect, join_ok, next, room, start_server, test_config, user};
use switchboard::client::{backoff, Client, ClientConfig, Event};
use switchboard::protocol::{Address, IceCandidate, Message, RoomMode, Sdp};

const OFFER: &str = include_str!("data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("data/sdp/chrome-answer.sdp");

fn candidate(n: u32) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 192.0.2.7 {} typ host",
            50000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("EsAw".into()),
    }
}

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
        alice.send_ice(to_bob.clone(), candidate(n)).await.unwrap();
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
    assert_eq!(candidates, vec![candidate(0), candidate(1), candidate(2)]);
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
        client.send_ice(to.clone(), candidate(n)).await.unwrap();
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
