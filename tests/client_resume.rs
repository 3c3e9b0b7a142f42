//! The Rust `Client`'s session resume (docs/PROTOCOL.md, section 11a)
//! against the real binary, through a TCP proxy the test can cut: what a
//! user sees when the network drops under a call.

mod common;

use std::time::Duration;

use common::child::Server;
use common::proxy::Proxy;
use common::redis::Redis;
use common::{host_candidate, room};
use switchboard::client::{Client, ClientConfig, Event};
use switchboard::protocol::{
    Address, IceCandidate, LeaveReason, PeerId, ResumeRefusal, RoomMode, UserName,
};

const OFFER: &str = include_str!("data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("data/sdp/chrome-answer.sdp");

fn quick() -> ClientConfig {
    ClientConfig {
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(100),
        ..ClientConfig::default()
    }
}

/// The next event within 5 s.
#[track_caller]
fn event(c: &mut Client) -> impl std::future::Future<Output = Event> + '_ {
    let caller = std::panic::Location::caller();
    async move {
        tokio::time::timeout(Duration::from_secs(5), c.next_event())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for an event at {caller}"))
            .expect("session ended")
    }
}

/// Skips events until `want` matches one (within 5 s each).
#[track_caller]
fn until<'a, T>(
    c: &'a mut Client,
    mut want: impl FnMut(Event) -> Option<T> + 'a,
) -> impl std::future::Future<Output = T> + 'a {
    let caller = std::panic::Location::caller();
    async move {
        loop {
            let e = tokio::time::timeout(Duration::from_secs(5), c.next_event())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for an event at {caller}"))
                .expect("session ended");
            if let Some(t) = want(e) {
                return t;
            }
        }
    }
}

/// Every event within `window`.
async fn drain(c: &mut Client, window: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    let end = tokio::time::Instant::now() + window;
    while let Ok(Some(e)) = tokio::time::timeout_at(end, c.next_event()).await {
        events.push(e);
    }
    events
}

/// Alice (through `proxy`) and Bob (direct) in pair room `r`, all events
/// of the joins read.
async fn pair(bob_url: &str, proxy: &Proxy, r: &str, config: ClientConfig) -> (Client, Client) {
    two_in(bob_url, proxy, r, RoomMode::Pair, config).await
}

/// [`pair`] in a room of mode `mode`.
async fn two_in(
    bob_url: &str,
    proxy: &Proxy,
    r: &str,
    mode: RoomMode,
    config: ClientConfig,
) -> (Client, Client) {
    let mut alice = Client::connect(&proxy.url(), config.clone()).await.unwrap();
    let mut bob = Client::connect(bob_url, config).await.unwrap();
    alice.join(room(r), mode).await.unwrap();
    until(&mut alice, |e| matches!(e, Event::Joined(_)).then_some(())).await;
    bob.join(room(r), mode).await.unwrap();
    until(&mut bob, |e| matches!(e, Event::Joined(_)).then_some(())).await;
    let joined = until(&mut alice, |e| match e {
        Event::PeerJoined(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(joined.member.peer_id, bob.peer_id());
    (alice, bob)
}

/// The candidates of Ice events from `from`, in order, and whether the
/// last one ended gathering.
fn candidates_from(events: &[Event], from: &Address) -> (Vec<IceCandidate>, bool) {
    let mut all = Vec::new();
    let mut end = false;
    for e in events {
        if let Event::Ice {
            from: f,
            candidates,
            end_of_candidates,
        } = e
        {
            assert_eq!(f, from);
            assert!(!end, "candidates after the end: {events:?}");
            all.extend(candidates.iter().cloned());
            end = *end_of_candidates;
        }
    }
    (all, end)
}

/// Cuts `client`'s connection (through `proxy`) and checks that it
/// resumes its session when the network is back.
async fn cut_and_resume(proxy: &Proxy, client: &mut Client) {
    let id = client.peer_id();
    proxy.cut();
    until(client, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    proxy.restore();
    assert_eq!(event(client).await, Event::Resumed { peer_id: id });
}

fn departures(events: &[Event]) -> Vec<&Event> {
    events
        .iter()
        .filter(|e| matches!(e, Event::PeerLeft(_) | Event::PeerJoined(_)))
        .collect()
}

#[tokio::test]
async fn a_client_cut_off_mid_call_resumes_and_misses_nothing() {
    let server = Server::start(&RESUME_ARGS);
    let proxy = Proxy::start(server.addr).await;
    cut_off_mid_call(&proxy, &server.url()).await;
}

const RESUME_ARGS: [&str; 4] = ["--resume-grace-ms", "10000", "--ack-delay-ms", "20"];

/// The same in a cluster of three nodes: Alice starts on node 0 and the
/// load balancer sends her reconnection to node 1; Bob is on node 2. The
/// session moves with her (docs/PROTOCOL.md, section 11a, "Across nodes").
#[tokio::test]
async fn a_client_that_comes_back_on_another_node_resumes_there() {
    let redis = Redis::start();
    let mut nodes = redis.nodes(&format!("resume-{}", std::process::id()), 3, &RESUME_ARGS);
    let proxy = Proxy::start_many(vec![nodes[0].addr, nodes[1].addr]).await;
    cut_off_mid_call(&proxy, &nodes[2].url()).await;
    for node in &mut nodes {
        node.assert_alive();
    }
    assert!(
        nodes[1].log_text().contains("session moved here"),
        "node 1 took the session over from node 0:\n{}",
        nodes[1].log_text()
    );
    // And the operators see it.
    let resumes = |node: &Server, outcome: &str| {
        node.metric(&format!(
            "switchboard_resumes_total{{outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(resumes(&nodes[0], "handed_on"), 1.0);
    assert_eq!(resumes(&nodes[1], "moved_here"), 1.0);
    assert_eq!(resumes(&nodes[1], "resumed"), 0.0);
}

/// Alice (through `proxy`) and Bob in a call; the network drops under
/// Alice while both send; she resumes and neither misses anything.
async fn cut_off_mid_call(proxy: &Proxy, bob_url: &str) {
    let (mut alice, mut bob) = pair(bob_url, proxy, "resume-call", quick()).await;
    let alice_id = alice.peer_id();
    let (to_alice, to_bob) = (Address::Peer(alice_id), Address::Peer(bob.peer_id()));

    // The path goes dead: what either side sends now is lost in flight
    // (the server's frames to Alice, Alice's answer to the server); then
    // the connection resets.
    proxy.blackhole();
    tokio::time::sleep(Duration::from_millis(50)).await;
    bob.send_offer(to_alice.clone(), OFFER).await.unwrap();
    alice.send_answer(to_bob.clone(), ANSWER).await.unwrap();
    for n in 0..2 {
        bob.send_ice(to_alice.clone(), host_candidate(n))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.cut();
    until(&mut alice, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;

    // While Alice is away: more from Bob (queued for her parked session)
    // and from Alice (held by her client for the resume).
    for n in 2..5 {
        bob.send_ice(to_alice.clone(), host_candidate(n))
            .await
            .unwrap();
    }
    bob.end_of_candidates(to_alice.clone()).await.unwrap();
    alice
        .send_ice(to_bob.clone(), host_candidate(7))
        .await
        .unwrap();
    alice.end_of_candidates(to_bob.clone()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    proxy.restore();
    let first = event(&mut alice).await;
    assert_eq!(first, Event::Resumed { peer_id: alice_id });
    assert_eq!(alice.peer_id(), alice_id, "same peer id");

    // Alice: the offer, then every candidate, each once and in order.
    let mut got = vec![event(&mut alice).await];
    while !matches!(
        got.last(),
        Some(Event::Ice {
            end_of_candidates: true,
            ..
        })
    ) {
        got.push(event(&mut alice).await);
    }
    got.extend(drain(&mut alice, Duration::from_millis(500)).await);
    match &got[0] {
        Event::Offer { from, sdp, .. } => {
            assert_eq!((from, sdp.as_str()), (&to_bob, OFFER));
        }
        other => panic!("expected the offer first, got {other:?}; all: {got:?}"),
    }
    assert!(
        got[1..].iter().all(|e| matches!(e, Event::Ice { .. })),
        "only candidates after the offer, nothing twice: {got:?}"
    );
    assert_eq!(
        candidates_from(&got, &to_bob),
        ((0..5).map(host_candidate).collect(), true)
    );

    // Bob: the answer and Alice's candidates, once; no departure.
    let mut seen = Vec::new();
    while !matches!(
        seen.last(),
        Some(Event::Ice {
            end_of_candidates: true,
            ..
        })
    ) {
        seen.push(event(&mut bob).await);
    }
    seen.extend(drain(&mut bob, Duration::from_millis(500)).await);
    let answers: Vec<_> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Answer { from, sdp, .. } => Some((from.clone(), sdp.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(answers, [(to_alice.clone(), ANSWER.to_owned())], "{seen:?}");
    assert_eq!(
        candidates_from(&seen, &to_alice),
        (vec![host_candidate(7)], true)
    );
    assert!(departures(&seen).is_empty(), "Bob saw Alice go: {seen:?}");

    // The call goes on over the new connection, both ways.
    bob.hang_up(to_alice.clone()).await.unwrap();
    let from = until(&mut alice, |e| match e {
        Event::HangUp { from } => Some(from),
        _ => None,
    })
    .await;
    assert_eq!(from, to_bob);
    alice.close().await;
    let after = drain(&mut bob, Duration::from_millis(300)).await;
    assert!(
        after
            .iter()
            .any(|e| matches!(e, Event::PeerLeft(p) if p.peer_id == alice_id)),
        "a close ends the session at once: {after:?}"
    );
    bob.close().await;
}

#[tokio::test]
async fn a_resume_after_the_grace_starts_fresh_and_the_room_heard_timed_out_once() {
    let server = Server::start(&["--resume-grace-ms", "300", "--ack-delay-ms", "20"]);
    let proxy = Proxy::start(server.addr).await;
    let (mut alice, mut bob) = pair(&server.url(), &proxy, "expire-call", quick()).await;
    let alice_id = alice.peer_id();

    proxy.cut();
    until(&mut alice, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    let left = until(&mut bob, |e| match e {
        Event::PeerLeft(p) => Some(p),
        _ => None,
    })
    .await;
    assert_eq!(
        (left.peer_id, left.reason),
        (alice_id, LeaveReason::TimedOut)
    );
    tokio::time::sleep(Duration::from_millis(200)).await;

    proxy.restore();
    assert_eq!(
        event(&mut alice).await,
        Event::StartedFresh {
            refusal: Some(ResumeRefusal::Expired)
        }
    );
    let new_id = match event(&mut alice).await {
        Event::Reconnected { peer_id } => peer_id,
        other => panic!("expected Reconnected, got {other:?}"),
    };
    assert_ne!(new_id, alice_id);
    assert_eq!(alice.peer_id(), new_id);
    let joined = until(&mut alice, |e| match e {
        Event::Joined(j) => Some(j),
        _ => None,
    })
    .await;
    assert_eq!(joined.room, room("expire-call"), "rejoined");
    assert_eq!(joined.members.len(), 1);

    let seen = drain(&mut bob, Duration::from_millis(500)).await;
    let ids: Vec<(PeerId, bool)> = departures(&seen)
        .iter()
        .map(|e| match e {
            Event::PeerLeft(p) => (p.peer_id, false),
            Event::PeerJoined(p) => (p.member.peer_id, true),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(ids, [(new_id, true)], "one PeerLeft in all: {seen:?}");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn acknowledgements_keep_a_small_server_buffer_resumable() {
    // 8 frames of room on the server: Alice's client must acknowledge
    // as it goes, or the resume below is refused as REPLAY_LOST.
    let server = Server::start(&[
        "--resume-grace-ms",
        "10000",
        "--replay-frames",
        "8",
        "--ack-delay-ms",
        "20",
    ]);
    let proxy = Proxy::start(server.addr).await;
    let (mut alice, bob) = pair(&server.url(), &proxy, "ack-call", quick()).await;
    let alice_id = alice.peer_id();
    let to_alice = Address::Peer(alice_id);
    for round in 0..10 {
        for n in 0..4 {
            bob.send_ice(to_alice.clone(), host_candidate(round * 4 + n))
                .await
                .unwrap();
            bob.end_of_candidates(to_alice.clone()).await.unwrap();
        }
        let mut batches = 0;
        while batches < 4 {
            if let Event::Ice { .. } = event(&mut alice).await {
                batches += 1;
            }
        }
        // Past the ack delay: the server has forgotten them.
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    cut_and_resume(&proxy, &mut alice).await;
    let seen = drain(&mut alice, Duration::from_millis(300)).await;
    assert!(seen.is_empty(), "nothing replayed twice: {seen:?}");
    alice.close().await;
    bob.close().await;
}

#[tokio::test]
async fn a_client_that_had_to_drop_frames_ends_the_old_session_and_starts_fresh() {
    // Alice sends more while away than the server lets her hold: going on
    // would lose some, so she resumes only to close the old session (the
    // room hears of it now, not after the grace) and starts afresh.
    let server = Server::start(&[
        "--resume-grace-ms",
        "10000",
        "--replay-frames",
        "4",
        "--ack-delay-ms",
        "20",
    ]);
    let proxy = Proxy::start(server.addr).await;
    let (mut alice, mut bob) = pair(&server.url(), &proxy, "overflow-call", quick()).await;
    let alice_id = alice.peer_id();
    let to_bob = Address::Peer(bob.peer_id());
    proxy.cut();
    until(&mut alice, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    for n in 0..6 {
        alice
            .send_ice(to_bob.clone(), host_candidate(n))
            .await
            .unwrap();
        alice.end_of_candidates(to_bob.clone()).await.unwrap();
    }
    proxy.restore();
    assert_eq!(
        event(&mut alice).await,
        Event::StartedFresh {
            refusal: Some(ResumeRefusal::ReplayLost)
        }
    );
    let new_id = match event(&mut alice).await {
        Event::Reconnected { peer_id } => peer_id,
        other => panic!("expected Reconnected, got {other:?}"),
    };
    let joined = until(&mut alice, |e| match e {
        Event::Joined(j) => Some(j),
        _ => None,
    })
    .await;
    assert_eq!(joined.members.len(), 1, "the old session left the room");
    let seen = drain(&mut bob, Duration::from_millis(500)).await;
    let departures: Vec<_> = departures(&seen)
        .into_iter()
        .map(|e| match e {
            Event::PeerLeft(p) => (p.peer_id, Some(p.reason)),
            Event::PeerJoined(p) => (p.member.peer_id, None),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        departures,
        [(alice_id, Some(LeaveReason::Disconnected)), (new_id, None)],
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Ice { .. })),
        "signaling for the old session is dropped: {seen:?}"
    );
    alice.close().await;
    bob.close().await;
}

/// Three nodes with a short lease, so a dead node is cleaned up quickly.
fn three_nodes(redis: &Redis, test: &str) -> Vec<Server> {
    more_nodes(redis, test, 3)
}

/// `n` nodes of the cluster of test `test` (more can join later).
fn more_nodes(redis: &Redis, test: &str, n: usize) -> Vec<Server> {
    let args = [&RESUME_ARGS[..], &["--lease-ms", "1500"][..]].concat();
    redis.nodes(&format!("{test}-{}", std::process::id()), n, &args)
}

/// Three nodes of cluster `test`; Alice through a proxy that sends her
/// first connection to node 0 and the next to node 1, Bob on node 2, in
/// room `r` of mode `mode`.
async fn call_across(
    test: &str,
    r: &str,
    mode: RoomMode,
) -> (Redis, Vec<Server>, Proxy, Client, Client) {
    let redis = Redis::start();
    let nodes = three_nodes(&redis, test);
    let proxy = Proxy::start_many(vec![nodes[0].addr, nodes[1].addr]).await;
    let (alice, bob) = two_in(&nodes[2].url(), &proxy, r, mode, quick()).await;
    (redis, nodes, proxy, alice, bob)
}

/// Bob's room notices about Alice (`old`, `new`): `(peer, joined)` each.
fn comings_and_goings(seen: &[Event]) -> Vec<(PeerId, bool)> {
    departures(seen)
        .iter()
        .map(|e| match e {
            Event::PeerLeft(p) => (p.peer_id, false),
            Event::PeerJoined(p) => (p.member.peer_id, true),
            _ => unreachable!(),
        })
        .collect()
}

/// The node holding Alice's session dies; her reconnection lands on
/// another node, which cannot bring the session from a dead node: she
/// starts fresh (`EXPIRED`) and rejoins, and Bob hears her old self leave
/// once (the dead node's clean-up) and her new self join. (A mesh room:
/// in a pair room her old self holds the second place until the clean-up,
/// so her client's rejoin at once would be told `ROOM_FULL`.)
#[tokio::test]
async fn a_session_whose_node_died_cannot_resume_elsewhere_and_starts_fresh() {
    let (_redis, mut nodes, _proxy, mut alice, mut bob) =
        call_across("dead-resume", "dead-node", RoomMode::Mesh).await;
    let alice_id = alice.peer_id();

    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    assert_eq!(
        until(&mut alice, |e| match e {
            Event::StartedFresh { refusal } => Some(refusal),
            _ => None,
        })
        .await,
        Some(ResumeRefusal::Expired)
    );
    let new_id = alice.peer_id();
    assert_ne!(new_id, alice_id);
    let joined = until(&mut alice, |e| match e {
        Event::Joined(j) => Some(j),
        _ => None,
    })
    .await;
    assert_eq!(joined.room, room("dead-node"), "rejoined");

    // The dead node's lease runs out (1.5 s) and a survivor cleans up.
    let seen = drain(&mut bob, Duration::from_secs(5)).await;
    let mut notices = comings_and_goings(&seen);
    notices.sort_by_key(|(_, joined)| *joined);
    assert_eq!(
        notices,
        [(alice_id, false), (new_id, true)],
        "Alice's old self left once, her new self joined: {seen:?}"
    );
    nodes[1].assert_alive();
    nodes[2].assert_alive();
}

/// Alice's session moves from node 0 to node 1; then node 0 dies. Her
/// session lives on node 1: its clean-up does not touch her, and signals
/// reach her both ways, routed to where she is now.
#[tokio::test]
async fn a_session_that_moved_outlives_the_node_it_left() {
    let (redis, mut nodes, proxy, mut alice, mut bob) =
        call_across("moved-resume", "left-node", RoomMode::Pair).await;
    let alice_id = alice.peer_id();
    let (to_alice, to_bob) = (Address::Peer(alice_id), Address::Peer(bob.peer_id()));
    alice.login(UserName::new("alice").unwrap()).await.unwrap();
    until(&mut alice, |e| {
        matches!(e, Event::LoginResult(_)).then_some(())
    })
    .await;

    cut_and_resume(&proxy, &mut alice).await;
    assert!(nodes[1].log_text().contains("session moved here"));

    nodes[0].child.kill().unwrap();
    nodes[0].child.wait().unwrap();
    // Past the lease (1.5 s): the dead node is cleaned up meanwhile.
    let seen = drain(&mut bob, Duration::from_secs(4)).await;
    assert!(departures(&seen).is_empty(), "Bob saw Alice go: {seen:?}");

    bob.send_offer(to_alice.clone(), OFFER).await.unwrap();
    let offer = until(&mut alice, |e| match e {
        Event::Offer { from, sdp, .. } => Some((from, sdp)),
        _ => None,
    })
    .await;
    assert_eq!(offer, (to_bob.clone(), OFFER.to_owned()));
    alice.send_answer(to_bob.clone(), ANSWER).await.unwrap();
    let answer = until(&mut bob, |e| match e {
        Event::Answer { from, sdp, .. } => Some((from, sdp)),
        _ => None,
    })
    .await;
    assert_eq!(answer, (to_alice.clone(), ANSWER.to_owned()));

    // A node that starts after the move finds her where she is now: Carol
    // on it calls her by name.
    let late = more_nodes(&redis, "moved-resume", 1);
    let mut carol = Client::connect(&late[0].url(), quick()).await.unwrap();
    carol.login(UserName::new("carol").unwrap()).await.unwrap();
    until(&mut carol, |e| {
        matches!(e, Event::LoginResult(_)).then_some(())
    })
    .await;
    carol
        .send_offer(Address::User(UserName::new("alice").unwrap()), OFFER)
        .await
        .unwrap();
    let from = until(&mut alice, |e| match e {
        Event::Offer { from, .. } => Some(from),
        _ => None,
    })
    .await;
    assert_eq!(from, Address::User(UserName::new("carol").unwrap()));

    alice.close().await;
    let after = drain(&mut bob, Duration::from_millis(500)).await;
    assert_eq!(
        comings_and_goings(&after),
        [(alice_id, false)],
        "her close is announced once: {after:?}"
    );
}

/// A rolling restart: node 0 drains (SIGTERM) while Alice is in a call on
/// it. Her client is told the server is going away, reconnects, lands on
/// node 1 and resumes there: the drained node handed her session over
/// instead of ending it, so Bob sees no departure and the call goes on.
/// Node 0 exits once nobody's session is left on it.
#[tokio::test]
async fn a_draining_node_hands_its_sessions_to_the_node_their_clients_come_back_to() {
    let (_redis, mut nodes, _proxy, mut alice, mut bob) =
        call_across("drain-resume", "drained", RoomMode::Pair).await;
    let alice_id = alice.peer_id();
    let (to_alice, to_bob) = (Address::Peer(alice_id), Address::Peer(bob.peer_id()));

    let term = std::process::Command::new("kill")
        .args(["-TERM", &nodes[0].pid().to_string()])
        .status()
        .expect("run kill");
    assert!(term.success());
    // Sent as the node drains: it reaches Alice wherever she resumes.
    bob.send_ice(to_alice.clone(), host_candidate(1))
        .await
        .unwrap();
    until(&mut alice, |e| {
        matches!(e, Event::Disconnected { .. }).then_some(())
    })
    .await;
    assert_eq!(
        until(&mut alice, |e| match e {
            Event::Resumed { peer_id } => Some(peer_id),
            Event::StartedFresh { .. } => panic!("started fresh: {e:?}"),
            _ => None,
        })
        .await,
        alice_id
    );
    assert!(nodes[1].log_text().contains("session moved here"));

    bob.send_offer(to_alice.clone(), OFFER).await.unwrap();
    let mut got = Vec::new();
    let offer = until(&mut alice, |e| match e {
        Event::Offer { from, sdp, .. } => Some((from, sdp)),
        other => {
            got.push(other);
            None
        }
    })
    .await;
    assert_eq!(offer, (to_bob.clone(), OFFER.to_owned()));
    assert_eq!(
        candidates_from(&got, &to_bob).0,
        [host_candidate(1)],
        "the candidate sent during the drain, once, before the offer: {got:?}"
    );
    alice.send_answer(to_bob.clone(), ANSWER).await.unwrap();
    let seen = drain(&mut bob, Duration::from_millis(500)).await;
    assert!(departures(&seen).is_empty(), "Bob saw Alice go: {seen:?}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Answer { from, .. } if *from == to_alice)),
        "the answer arrived: {seen:?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::Error { .. })),
        "Bob was told nothing failed: {seen:?}"
    );

    // The drained node is gone well within its grace (5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    while nodes[0].child.try_wait().unwrap().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the drained node still runs: {}",
            nodes[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
