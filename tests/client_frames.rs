//! `Connection` frame by frame (what the load generator runs on): frames
//! queued with `push`/`push_raw` leave as one WebSocket message on
//! `flush`, and `recv_frames` hands received frames over undecoded while
//! answering the server's heartbeat.

mod common;

use std::time::Duration;

use common::{connect, ice, join_ok, next, peer, start_server, test_config};
use switchboard::protocol::frame::next_seq;
use switchboard::protocol::{decode, encode, Address, CodecLimits, Message, MessageType, RoomMode};

#[tokio::test]
async fn queued_frames_leave_together_and_arrive_undecoded() {
    let server = start_server(test_config()).await;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    join_ok(&mut a, "frames", RoomMode::Pair).await;
    join_ok(&mut b, "frames", RoomMode::Pair).await;
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));

    let to = Address::Peer(peer(&b));
    let first = a.push(&ice(to.clone(), 1));
    // The payload encoded beforehand, as a relay that bounces one would.
    let second = a.push_raw(MessageType::Ice, &encode(&ice(to, 2)).payload);
    assert_eq!(second, next_seq(first));
    a.flush().await.unwrap();
    // Nothing queued: nothing sent.
    a.flush().await.unwrap();

    let mut got = Vec::new();
    while got.len() < 2 {
        tokio::time::timeout(
            Duration::from_secs(5),
            b.recv_frames(|f| got.push(decode(f, &CodecLimits::default()).unwrap())),
        )
        .await
        .expect("frames in time")
        .unwrap();
    }
    let ports: Vec<String> = got
        .iter()
        .map(|m| match m {
            Message::Ice(i) => {
                assert_eq!(i.peer, Address::Peer(peer(&a)), "the sender filled in");
                i.candidates[0].candidate.clone()
            }
            other => panic!("expected ICE, got {other:?}"),
        })
        .collect();
    assert!(ports[0].contains(" 50001 "), "{ports:?}");
    assert!(ports[1].contains(" 50002 "), "{ports:?}");
}

#[tokio::test]
async fn recv_frames_answers_the_heartbeat() {
    let config = switchboard::config::Config {
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let server = start_server(config).await;
    let mut c = connect(&server).await;
    // Pings come every 100 ms of silence; without Pongs the server would
    // close after 300 ms.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    let mut handed_over = 0;
    while tokio::time::Instant::now() < until {
        match tokio::time::timeout(
            Duration::from_millis(150),
            c.recv_frames(|_| handed_over += 1),
        )
        .await
        {
            Err(_) => {}
            Ok(r) => r.expect("still open"),
        }
    }
    assert_eq!(handed_over, 0, "pings are not handed over");
    // Still served: a request gets its answer.
    join_ok(&mut c, "after-pings", RoomMode::Pair).await;
}
