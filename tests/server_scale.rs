//! Many clients at once: every negotiation completes and nothing is lost.

mod common;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;

use common::*;
use switchboard::directory::{Directory, LocalDirectory};
use switchboard::protocol::{Address, IceCandidates, Message, RoomMode};

const PAIRS: usize = 500;
const CANDIDATES: u32 = 4;

/// One pair: `b` (the initiator) offers, `a` answers, both trickle
/// candidates and end-of-candidates. Returns the messages each side got.
async fn negotiate(
    url: String,
    room_name: String,
    all_joined: Arc<Barrier>,
    directory: Arc<LocalDirectory>,
) -> (usize, usize) {
    let hello = switchboard::client::default_hello;
    let mut a = switchboard::client::Connection::connect(&url, hello())
        .await
        .unwrap();
    let mut b = switchboard::client::Connection::connect(&url, hello())
        .await
        .unwrap();
    let ja = join_ok(&mut a, &room_name, RoomMode::Pair).await;
    assert!(!ja.initiator);
    let jb = join_ok(&mut b, &room_name, RoomMode::Pair).await;
    assert!(jb.initiator);
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
    let (ida, idb) = (peer(&a), peer(&b));
    // Everyone is connected and joined before anyone negotiates.
    if all_joined.wait().await.is_leader() {
        assert_eq!(
            directory.registry().peer_count(),
            2 * PAIRS,
            "all connected at once"
        );
    }

    let mut to_a = vec![offer(Address::Peer(ida), "v=0 offer")];
    to_a.extend((0..CANDIDATES).map(|n| ice(Address::Peer(ida), n)));
    to_a.push(end_of_candidates(Address::Peer(ida)));
    b.send_batch(&to_a).await.unwrap();
    let mut got_a = 0;
    for _ in 0..to_a.len() {
        match next(&mut a).await {
            Message::Offer(d) | Message::Answer(d) => assert_eq!(d.peer, Address::Peer(idb)),
            Message::Ice(i) => assert_eq!(i.peer, Address::Peer(idb)),
            other => panic!("{other:?}"),
        }
        got_a += 1;
    }
    let mut to_b = vec![answer(Address::Peer(idb), "v=0 answer")];
    to_b.extend((0..CANDIDATES).map(|n| ice(Address::Peer(idb), n)));
    to_b.push(end_of_candidates(Address::Peer(idb)));
    a.send_batch(&to_b).await.unwrap();
    let mut got_b = 0;
    let mut ended = false;
    for _ in 0..to_b.len() {
        match next(&mut b).await {
            Message::Answer(d) => assert_eq!(d.peer, Address::Peer(ida)),
            Message::Ice(i) => {
                assert_eq!(i.peer, Address::Peer(ida));
                ended |= i.end_of_candidates;
            }
            other => panic!("{other:?}"),
        }
        got_b += 1;
    }
    assert!(ended);
    // Stay connected until every pair is done.
    all_joined.wait().await;
    (got_a, got_b)
}

fn end_of_candidates(to: Address) -> Message {
    Message::Ice(IceCandidates {
        peer: to,
        candidates: Vec::new(),
        end_of_candidates: true,
        room: None,
        app_data: String::new(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_in_500_rooms_all_complete_their_negotiation() {
    // 1,000 client sockets plus 1,000 server sockets in this one process.
    let (soft, hard) = rlimit::Resource::NOFILE.get().unwrap();
    if soft < 4096 {
        rlimit::Resource::NOFILE.set(hard.min(8192), hard).unwrap();
    }
    let (server, directory) = start_server_with_directory(switchboard::config::Config {
        max_connections_per_ip: 2 * PAIRS + 10,
        ..test_config()
    })
    .await;
    let url = server.url();
    let barrier = Arc::new(Barrier::new(PAIRS));
    let mut tasks = Vec::new();
    for pair in 0..PAIRS {
        tasks.push(tokio::spawn(negotiate(
            url.clone(),
            format!("room-{pair}"),
            barrier.clone(),
            directory.clone(),
        )));
    }
    let mut delivered = 0;
    for t in tasks {
        let (a, b) = tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("pairs finish in time")
            .unwrap();
        delivered += a + b;
    }
    let per_pair = 2 * (1 + CANDIDATES as usize + 1);
    assert_eq!(delivered, PAIRS * per_pair, "no message lost");
}
