//! Cluster mode over Redis: several switchboard binaries (child processes)
//! sharing one `redis-server`, with clients spread over them.
//!
//! Every scenario is what a user would see: across nodes the protocol
//! behaves as on one node (pair and mesh rooms, named calls, directed
//! signals, SDP compression, room capacity and unique names under races);
//! when a node dies its peers are announced gone within about a lease; when
//! Redis stalls or restarts empty, connected clients stay connected, what
//! needs Redis fails fast with UNAVAILABLE, and everything works again
//! afterwards without clients reconnecting.
//!
//! Needs `redis-server` on PATH (the Debian package redis-server;
//! scripts/test.sh installs it when run as root). Each test has its own
//! redis-server on a unix socket and its own cluster name.
//!
//! On a failure the logs of every node and of redis are printed.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::child::Server;
use common::redis::Redis;
use switchboard::client::{default_hello, Connection};
use switchboard::protocol::{
    sdp, Address, Capabilities, ErrorCode, Hello, IceCandidate, IceCandidates, Join, Joined,
    LeaveReason, Message, PeerId, RoomId, RoomMode, Sdp, SessionDescription, UserName,
};

/// `--lease-ms` of every node in these tests.
const LEASE_MS: u64 = 1500;
const LEASE: Duration = Duration::from_millis(LEASE_MS);
/// `ERROR_CODE_UNAVAILABLE`: what a node answers when Redis cannot be
/// reached in time.
const UNAVAILABLE: ErrorCode = ErrorCode::Unavailable;
/// How long one message may take to arrive.
const STEP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// The cluster: one redis-server, N switchboard nodes.

struct Cluster {
    name: String,
    redis: Redis,
    nodes: Vec<Server>,
}

impl Cluster {
    /// Starts a redis-server on a unix socket and `n` nodes on it, under a
    /// cluster name of this test's own.
    fn start(test: &str, n: usize) -> Cluster {
        Cluster::start_on(test, n, Redis::start())
    }

    fn start_on(test: &str, n: usize, redis: Redis) -> Cluster {
        let mut cluster = Cluster {
            name: format!("sbt-{test}-{}", std::process::id()),
            redis,
            nodes: Vec::new(),
        };
        for _ in 0..n {
            cluster.start_node();
        }
        cluster
    }

    /// Starts one more node; returns its index.
    fn start_node(&mut self) -> usize {
        let url = self.redis.url();
        let lease = LEASE_MS.to_string();
        let server = Server::start_with(
            &[
                "--redis-url",
                &url,
                "--cluster",
                &self.name,
                "--lease-ms",
                &lease,
            ],
            None,
            &[(
                "RUST_LOG",
                "warn,switchboard::listen=info,switchboard::cluster=info",
            )],
        );
        self.nodes.push(server);
        self.nodes.len() - 1
    }

    fn addr(&self, node: usize) -> SocketAddr {
        self.nodes[node].addr
    }

    async fn connect(&self, node: usize, who: &str) -> Client {
        self.connect_with(node, who, default_hello()).await
    }

    async fn connect_with(&self, node: usize, who: &str, hello: Hello) -> Client {
        let url = self.nodes[node].url();
        let conn = tokio::time::timeout(STEP, Connection::connect(&url, hello))
            .await
            .unwrap_or_else(|_| panic!("{who}: no Welcome from node {node} within {STEP:?}"))
            .unwrap_or_else(|e| panic!("{who}: connect to node {node}: {e}"));
        Client {
            conn,
            who: format!("{who}@n{node}"),
        }
    }

    /// Kills node `node` with SIGKILL (no goodbye to Redis or clients).
    fn kill_node(&mut self, node: usize) {
        let server = &mut self.nodes[node];
        server.child.kill().expect("kill -9 the node");
        server.child.wait().unwrap();
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        eprintln!("===== cluster {} =====", self.name);
        for (i, node) in self.nodes.iter().enumerate() {
            eprintln!(
                "----- node {i} ({}) log -----\n{}",
                node.addr,
                node.log_text()
            );
        }
        eprintln!(
            "----- redis ({}) log -----\n{}",
            self.redis.url(),
            self.redis.log_text()
        );
    }
}

// ---------------------------------------------------------------------------
// One client, with a label for failure messages.

struct Client {
    conn: Connection,
    who: String,
}

impl Client {
    fn id(&self) -> PeerId {
        self.conn.welcome().peer_id
    }

    async fn send(&mut self, m: &Message) -> u32 {
        self.conn
            .send(m)
            .await
            .unwrap_or_else(|e| panic!("{}: send {m:?}: {e}", self.who))
    }

    /// The next message within `within`; `None` if none came. Panics if the
    /// connection is closed.
    async fn recv_within(&mut self, within: Duration) -> Option<Message> {
        match tokio::time::timeout(within, self.conn.recv()).await {
            Err(_) => None,
            Ok(Ok(m)) => Some(m),
            Ok(Err(e)) => panic!("{}: connection lost: {e}", self.who),
        }
    }

    /// The next message; panics naming what was awaited if none comes.
    async fn recv(&mut self, waiting_for: &str) -> Message {
        self.recv_within(STEP).await.unwrap_or_else(|| {
            panic!(
                "{}: nothing received within {STEP:?} while waiting for {waiting_for}",
                self.who
            )
        })
    }

    /// Everything received within `within`.
    async fn drain_for(&mut self, within: Duration) -> Vec<Message> {
        let deadline = Instant::now() + within;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.recv_within(left).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// A Ping round trip: proves the connection is alive and that nothing
    /// else was waiting for it (after a short pause for cross-node
    /// messages still on their way).
    async fn quiet(&mut self) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        self.send(&Message::Ping { nonce: 4242 }).await;
        let mut stray = Vec::new();
        loop {
            match self.recv("Pong").await {
                Message::Pong { nonce: 4242 } => break,
                other => stray.push(other),
            }
        }
        assert!(
            stray.is_empty(),
            "{}: expected nothing, received {stray:?}",
            self.who
        );
    }

    /// A Ping round trip that tolerates other messages; returns them.
    async fn ping(&mut self) -> Vec<Message> {
        self.send(&Message::Ping { nonce: 77 }).await;
        let mut other = Vec::new();
        loop {
            match self.recv("Pong").await {
                Message::Pong { nonce: 77 } => return other,
                m => other.push(m),
            }
        }
    }

    async fn send_join(&mut self, r: &str, mode: RoomMode, capacity: Option<u32>) -> u32 {
        self.send(&Message::Join(Join {
            room: room(r),
            mode,
            capacity,
            display_name: self.who.clone(),
        }))
        .await
    }

    /// Joins and returns Joined; panics on any other answer.
    async fn join(&mut self, r: &str, mode: RoomMode, capacity: Option<u32>) -> Joined {
        self.send_join(r, mode, capacity).await;
        match self.recv(&format!("Joined {r}")).await {
            Message::Joined(j) => {
                assert_eq!(
                    j.room.as_str(),
                    r,
                    "{}: Joined names another room",
                    self.who
                );
                j
            }
            other => panic!("{}: expected Joined {r}, got {other:?}", self.who),
        }
    }

    /// Joins, retrying for up to `within` while the answer is UNAVAILABLE
    /// (Redis not there yet); returns the first other answer.
    async fn join_retrying(
        &mut self,
        r: &str,
        mode: RoomMode,
        capacity: Option<u32>,
        within: Duration,
    ) -> Message {
        let deadline = Instant::now() + within;
        loop {
            self.send_join(r, mode, capacity).await;
            let m = self.recv(&format!("an answer to Join {r}")).await;
            match &m {
                Message::Error(e) if e.code == UNAVAILABLE && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return m,
            }
        }
    }

    async fn login(&mut self, name: &str) -> Message {
        self.send(&Message::Login { name: user(name) }).await;
        self.recv(&format!("an answer to Login {name}")).await
    }

    async fn login_ok(&mut self, name: &str) {
        match self.login(name).await {
            Message::LoginResult(r) if r.error.is_none() => {}
            other => panic!("{}: login as {name} failed: {other:?}", self.who),
        }
    }

    /// Logs in, retrying while UNAVAILABLE for up to `within`.
    async fn login_retrying(&mut self, name: &str, within: Duration) -> Message {
        let deadline = Instant::now() + within;
        loop {
            let m = self.login(name).await;
            match &m {
                Message::LoginResult(r)
                    if r.error == Some(UNAVAILABLE) && Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                _ => return m,
            }
        }
    }

    /// The next message must be an Error with `code` answering `seq`.
    async fn expect_error(&mut self, code: ErrorCode, seq: u32, what: &str) {
        match self.recv(&format!("Error {code:?} for {what}")).await {
            Message::Error(e) => {
                assert_eq!(e.code, code, "{}: {what}: {e:?}", self.who);
                assert_eq!(e.request_seq, seq, "{}: {what}: {e:?}", self.who);
            }
            other => panic!(
                "{}: {what}: expected Error {code:?}, got {other:?}",
                self.who
            ),
        }
    }

    async fn expect_peer_joined(&mut self, r: &str, newcomer: PeerId) {
        match self.recv(&format!("PeerJoined {newcomer} in {r}")).await {
            Message::PeerJoined(p) => {
                assert_eq!(
                    (p.room.as_str(), p.member.peer_id),
                    (r, newcomer),
                    "{}: {p:?}",
                    self.who
                );
                assert!(!p.initiator, "{}: {p:?}", self.who);
            }
            other => panic!(
                "{}: expected PeerJoined {newcomer} in {r}, got {other:?}",
                self.who
            ),
        }
    }

    async fn expect_peer_left(&mut self, r: &str, gone: PeerId, reason: LeaveReason) {
        match self.recv(&format!("PeerLeft {gone} from {r}")).await {
            Message::PeerLeft(p) => assert_eq!(
                (p.room.as_str(), p.peer_id, p.reason),
                (r, gone, reason),
                "{}: {p:?}",
                self.who
            ),
            other => panic!(
                "{}: expected PeerLeft {gone} from {r} ({reason:?}), got {other:?}",
                self.who
            ),
        }
    }

    /// The next message must be an offer from `from` with plain `text`.
    async fn expect_offer(&mut self, from: &Address, text: &str) {
        match self.recv(&format!("Offer from {from:?}")).await {
            Message::Offer(d) => {
                assert_eq!(&d.peer, from, "{}: sender not filled in: {d:?}", self.who);
                assert_eq!(d.sdp, plain(text), "{}", self.who);
            }
            other => panic!("{}: expected Offer from {from:?}, got {other:?}", self.who),
        }
    }
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

fn plain(text: &str) -> Sdp {
    Sdp::Plain(text.as_bytes().to_vec().into())
}

fn sdp_message(offer: bool, to: Address, text: &str, r: Option<&str>) -> Message {
    let d = SessionDescription {
        peer: to,
        sdp: plain(text),
        room: r.map(room),
        app_data: String::new(),
    };
    if offer {
        Message::Offer(d)
    } else {
        Message::Answer(d)
    }
}

fn offer(to: Address, text: &str) -> Message {
    sdp_message(true, to, text, None)
}

fn answer(to: Address, text: &str) -> Message {
    sdp_message(false, to, text, None)
}

fn candidate(n: u32) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2113937151 192.0.2.{n} {} typ host",
            50000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("abcd".into()),
    }
}

fn ids(j: &Joined) -> Vec<PeerId> {
    j.members.iter().map(|m| m.peer_id).collect()
}

/// `/readyz`'s status code, or `None` if the node did not answer within 2 s.
async fn readyz(addr: SocketAddr) -> Option<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let get = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        out.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(2), get)
        .await
        .ok()
        .flatten()
}

/// Polls `/readyz` until it answers `want`; returns how long that took, or
/// panics with the last answer after `within`.
async fn wait_readyz(addr: SocketAddr, want: u16, within: Duration, what: &str) -> Duration {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < within {
        last = readyz(addr).await;
        if last == Some(want) {
            return start.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "{what}: /readyz of {addr} did not answer {want} within {within:?}; last answer: {}",
        last.map_or("none within 2 s".to_owned(), |s| s.to_string())
    );
}

/// Sends `message` from `from` until `to` receives a message `accept`
/// approves, for up to `within`. Errors answering the sender (the other
/// node not known yet) are retried; anything else `to` receives fails.
async fn deliver_eventually(
    from: &mut Client,
    to: &mut Client,
    message: &Message,
    accept: impl Fn(&Message) -> bool,
    within: Duration,
    what: &str,
) -> Duration {
    let start = Instant::now();
    let mut errors = Vec::new();
    let mut sent = 0;
    while start.elapsed() < within {
        from.send(message).await;
        sent += 1;
        if let Some(m) = to.recv_within(Duration::from_secs(1)).await {
            if accept(&m) {
                let took = start.elapsed();
                if sent > 1 {
                    // An earlier try may still arrive: let it, once.
                    let late = to.drain_for(Duration::from_secs(1)).await;
                    assert!(
                        late.len() < sent && late.iter().all(&accept),
                        "{what}: {} received after the delivery: {late:?}",
                        to.who
                    );
                    let _ = from.drain_for(Duration::from_millis(10)).await;
                }
                return took;
            }
            panic!("{what}: {} received {m:?} instead", to.who);
        }
        // Not delivered: the sender should have heard why.
        while let Some(m) = from.recv_within(Duration::from_millis(10)).await {
            match m {
                Message::Error(e) => errors.push(format!("{:?}: {}", e.code, e.message)),
                other => panic!("{what}: {} received {other:?} meanwhile", from.who),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{what}: not delivered from {} to {} within {within:?}; errors to the sender: {errors:?}",
        from.who, to.who
    );
}

// ---------------------------------------------------------------------------
// Node ids.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_claims_its_own_node_id_and_is_ready() {
    let cluster = Cluster::start("ids", 3);
    let mut by_node = BTreeMap::new();
    for node in 0..3 {
        assert_eq!(
            readyz(cluster.addr(node)).await,
            Some(200),
            "node {node} with Redis up is not ready"
        );
        let a = cluster.connect(node, "a").await;
        let b = cluster.connect(node, "b").await;
        assert_ne!(a.id(), b.id());
        assert_eq!(
            a.id().node(),
            b.id().node(),
            "two peers of node {node} carry different node ids: {} {}",
            a.id(),
            b.id()
        );
        by_node.insert(node, a.id().node());
    }
    let distinct: HashSet<_> = by_node.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "nodes of one cluster share a node id: {by_node:?}"
    );
}

// ---------------------------------------------------------------------------
// Pair rooms.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_room_across_two_nodes_negotiates_and_a_third_gets_room_full() {
    let cluster = Cluster::start("pair", 2);
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    let (ia, ib) = (a.id(), b.id());
    assert_ne!(ia.node(), ib.node(), "A and B should be on different nodes");

    let ja = a.join("call", RoomMode::Pair, None).await;
    assert!(!ja.initiator && ja.members.is_empty(), "A: {ja:?}");
    let jb = b.join("call", RoomMode::Pair, None).await;
    assert!(jb.initiator, "the later joiner initiates: {jb:?}");
    assert_eq!(jb.capacity, 2, "{jb:?}");
    assert_eq!(ids(&jb), vec![ia], "B's Joined must list A: {jb:?}");
    assert!(
        jb.members[0]
            .capabilities
            .contains(Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH)),
        "A's capabilities must cross nodes: {jb:?}"
    );
    assert_eq!(jb.members[0].display_name, "A@n0", "{jb:?}");
    a.expect_peer_joined("call", ib).await;

    // A third, on either node, finds the room full.
    for node in [0, 1] {
        let mut c = cluster.connect(node, "C").await;
        c.send_join("call", RoomMode::Pair, None).await;
        match c.recv("RoomFull").await {
            Message::RoomFull { room, capacity } => {
                assert_eq!((room.as_str(), capacity), ("call", 2));
            }
            other => panic!("C on node {node}: expected RoomFull, got {other:?}"),
        }
    }

    // Offer, answer, a batch of candidates, end of candidates.
    b.send(&offer(Address::Peer(ia), "v=0 offer from B")).await;
    a.expect_offer(&Address::Peer(ib), "v=0 offer from B").await;
    a.send(&answer(Address::Peer(ib), "v=0 answer from A"))
        .await;
    match b.recv("Answer").await {
        Message::Answer(d) => {
            assert_eq!(d.peer, Address::Peer(ia));
            assert_eq!(d.sdp, plain("v=0 answer from A"));
        }
        other => panic!("B: expected Answer, got {other:?}"),
    }
    let batch = IceCandidates {
        peer: Address::Peer(ib),
        candidates: (1..=3).map(candidate).collect(),
        end_of_candidates: true,
        room: Some(room("call")),
        app_data: "batch-1".into(),
    };
    a.send(&Message::Ice(batch.clone())).await;
    match b.recv("Ice batch").await {
        Message::Ice(i) => assert_eq!(
            i,
            IceCandidates {
                peer: Address::Peer(ia),
                ..batch
            },
            "the batch must arrive whole, from A"
        ),
        other => panic!("B: expected Ice, got {other:?}"),
    }
    b.send(&Message::Ice(IceCandidates {
        peer: Address::Peer(ia),
        candidates: Vec::new(),
        end_of_candidates: true,
        room: None,
        app_data: String::new(),
    }))
    .await;
    match a.recv("end-of-candidates").await {
        Message::Ice(i) => {
            assert_eq!(i.peer, Address::Peer(ib));
            assert!(i.candidates.is_empty() && i.end_of_candidates, "{i:?}");
        }
        other => panic!("A: expected Ice, got {other:?}"),
    }
    a.quiet().await;
    b.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_pair_rooms_across_nodes_tells_the_old_partner_and_frees_the_slot() {
    let cluster = Cluster::start("switch", 3);
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    let mut c = cluster.connect(2, "C").await;
    let (ia, ib, ic) = (a.id(), b.id(), c.id());
    a.join("first", RoomMode::Pair, None).await;
    b.join("first", RoomMode::Pair, None).await;
    a.expect_peer_joined("first", ib).await;
    c.join("second", RoomMode::Pair, None).await;

    // B moves to C's room: Joined for the new one, then Left for the old.
    let j = b.join("second", RoomMode::Pair, None).await;
    assert!(j.initiator, "{j:?}");
    assert_eq!(ids(&j), vec![ic], "{j:?}");
    match b.recv("Left first").await {
        Message::Left { room } => assert_eq!(room.as_str(), "first"),
        other => panic!("B: expected Left first, got {other:?}"),
    }
    a.expect_peer_left("first", ib, LeaveReason::JoinedOtherRoom)
        .await;
    c.expect_peer_joined("second", ib).await;

    // B's seat in the first room is free, from any node.
    let mut d = cluster.connect(2, "D").await;
    let j = d.join("first", RoomMode::Pair, None).await;
    assert_eq!(ids(&j), vec![ia], "{j:?}");
    assert!(j.initiator, "{j:?}");
    a.expect_peer_joined("first", d.id()).await;
    d.send(&offer(Address::Peer(ia), "v=0 from D")).await;
    a.expect_offer(&Address::Peer(d.id()), "v=0 from D").await;

    // B no longer shares a room with A.
    let seq = b.send(&offer(Address::Peer(ia), "v=0 stale")).await;
    b.expect_error(ErrorCode::UnknownPeer, seq, "offer to the old partner")
        .await;
    a.quiet().await;
    c.quiet().await;
}

// ---------------------------------------------------------------------------
// Mesh rooms.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_room_of_four_over_three_nodes() {
    let cluster = Cluster::start("mesh", 3);
    let nodes = [0, 1, 2, 1];
    let mut p = Vec::new();
    for (i, &node) in nodes.iter().enumerate() {
        p.push(cluster.connect(node, &format!("p{i}")).await);
    }
    let id: Vec<PeerId> = p.iter().map(Client::id).collect();
    for i in 0..4 {
        let j = p[i].join("mesh", RoomMode::Mesh, Some(4)).await;
        assert_eq!(j.capacity, 4, "{j:?}");
        assert!(!j.initiator, "{j:?}");
        assert_eq!(
            ids(&j),
            id[..i].to_vec(),
            "p{i}'s Joined must list every member cluster-wide in join order"
        );
        let names: Vec<_> = j.members.iter().map(|m| m.display_name.clone()).collect();
        let want: Vec<_> = (0..i).map(|k| format!("p{k}@n{}", nodes[k])).collect();
        assert_eq!(names, want, "display names must cross nodes");
        for earlier in p.iter_mut().take(i) {
            earlier.expect_peer_joined("mesh", id[i]).await;
        }
    }
    // Full, from every node.
    for node in 0..3 {
        let mut late = cluster.connect(node, "late").await;
        late.send_join("mesh", RoomMode::Mesh, None).await;
        match late.recv("RoomFull").await {
            Message::RoomFull { room, capacity } => {
                assert_eq!((room.as_str(), capacity), ("mesh", 4))
            }
            other => panic!("late joiner on node {node}: expected RoomFull, got {other:?}"),
        }
    }
    // Directed signals reach their target only.
    p[3].send(&offer(Address::Peer(id[0]), "v=0 3 to 0")).await;
    p[0].expect_offer(&Address::Peer(id[3]), "v=0 3 to 0").await;
    p[2].send(&Message::Ice(IceCandidates {
        peer: Address::Peer(id[1]),
        candidates: vec![candidate(7)],
        end_of_candidates: false,
        room: Some(room("mesh")),
        app_data: String::new(),
    }))
    .await;
    match p[1].recv("Ice from p2").await {
        Message::Ice(i) => {
            assert_eq!(i.peer, Address::Peer(id[2]));
            assert_eq!(i.candidates, vec![candidate(7)]);
        }
        other => panic!("p1: expected Ice, got {other:?}"),
    }
    for c in p.iter_mut() {
        c.quiet().await;
    }

    // A Leave and a disconnect are announced on every node.
    p[1].send(&Message::Leave { room: room("mesh") }).await;
    assert!(
        matches!(p[1].recv("Left").await, Message::Left { room } if room.as_str() == "mesh"),
        "p1 did not get Left"
    );
    for k in [0, 2, 3] {
        p[k].expect_peer_left("mesh", id[1], LeaveReason::Left)
            .await;
    }
    let gone = p.remove(2);
    drop(gone);
    // p is now [p0, p1, p3].
    for k in [0, 2] {
        p[k].expect_peer_left("mesh", id[2], LeaveReason::Disconnected)
            .await;
    }
    let mut newcomer = cluster.connect(2, "p4").await;
    let j = newcomer.join("mesh", RoomMode::Mesh, None).await;
    assert_eq!(ids(&j), vec![id[0], id[3]], "members after two left: {j:?}");
    for k in [0, 2] {
        p[k].expect_peer_joined("mesh", newcomer.id()).await;
    }
    p[1].quiet().await;
}

// ---------------------------------------------------------------------------
// Named users.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_users_call_each_other_across_nodes() {
    let cluster = Cluster::start("names", 3);
    let mut alice = cluster.connect(0, "alice").await;
    let mut bob = cluster.connect(1, "bob").await;
    let mut mallory = cluster.connect(2, "mallory").await;
    let mut eve = cluster.connect(0, "eve").await;
    alice.login_ok("alice").await;
    bob.login_ok("bob").await;
    for (c, name) in [(&mut mallory, "alice"), (&mut eve, "bob")] {
        match c.login(name).await {
            Message::LoginResult(r) => assert_eq!(
                r.error,
                Some(ErrorCode::NameTaken),
                "{}: {name} is taken on another node: {r:?}",
                c.who
            ),
            other => panic!("{}: expected LoginResult, got {other:?}", c.who),
        }
    }
    match mallory.login("bob").await {
        Message::LoginResult(r) => assert_eq!(r.error, Some(ErrorCode::NameTaken), "{r:?}"),
        other => panic!("mallory: expected LoginResult, got {other:?}"),
    }

    let (a_name, b_name) = (Address::User(user("alice")), Address::User(user("bob")));
    alice.send(&offer(b_name.clone(), "v=0 alice calls")).await;
    bob.expect_offer(&a_name, "v=0 alice calls").await;
    bob.send(&answer(a_name.clone(), "v=0 bob answers")).await;
    match alice.recv("Answer from bob").await {
        Message::Answer(d) => {
            assert_eq!(d.peer, b_name);
            assert_eq!(d.sdp, plain("v=0 bob answers"));
        }
        other => panic!("alice: expected Answer, got {other:?}"),
    }
    bob.send(&Message::Ice(IceCandidates {
        peer: a_name.clone(),
        candidates: vec![candidate(1), candidate(2)],
        end_of_candidates: true,
        room: None,
        app_data: String::new(),
    }))
    .await;
    match alice.recv("Ice from bob").await {
        Message::Ice(i) => {
            assert_eq!(i.peer, b_name);
            assert_eq!(i.candidates.len(), 2);
            assert!(i.end_of_candidates);
        }
        other => panic!("alice: expected Ice, got {other:?}"),
    }
    alice
        .send(&Message::HangUp {
            peer: b_name.clone(),
        })
        .await;
    assert_eq!(
        bob.recv("HangUp").await,
        Message::HangUp {
            peer: a_name.clone()
        }
    );
    let seq = alice
        .send(&offer(Address::User(user("nobody")), "v=0"))
        .await;
    alice
        .expect_error(ErrorCode::UnknownPeer, seq, "offer to an unknown name")
        .await;

    // Logout frees the name cluster-wide.
    alice.send(&Message::Logout).await;
    assert!(alice.ping().await.is_empty());
    mallory.login_ok("alice").await;
    // The new alice (node 2) calls bob (node 1), then disconnects: bob
    // hears the call ended, and the name is free again.
    mallory.send(&offer(b_name.clone(), "v=0 new alice")).await;
    bob.expect_offer(&a_name, "v=0 new alice").await;
    drop(mallory);
    assert_eq!(
        bob.recv("HangUp after the caller disconnected").await,
        Message::HangUp {
            peer: a_name.clone()
        }
    );
    let mut again = cluster.connect(1, "alice-again").await;
    match again.login_retrying("alice", Duration::ZERO).await {
        Message::LoginResult(r) => assert_eq!(r.error, None, "name not freed on disconnect: {r:?}"),
        other => panic!("expected LoginResult, got {other:?}"),
    }
    bob.quiet().await;
    eve.quiet().await;
}

// ---------------------------------------------------------------------------
// Isolation and SDP compression.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_delivered_across_rooms_between_nodes() {
    let cluster = Cluster::start("isolation", 2);
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    let mut c = cluster.connect(1, "C").await;
    // A and C share a room across the nodes; B, on C's node, is elsewhere.
    a.join("left-room", RoomMode::Mesh, None).await;
    c.join("left-room", RoomMode::Mesh, None).await;
    a.expect_peer_joined("left-room", c.id()).await;
    b.join("right-room", RoomMode::Mesh, None).await;
    let ib = b.id();

    let seq = a.send(&offer(Address::Peer(ib), "v=0 x")).await;
    a.expect_error(
        ErrorCode::UnknownPeer,
        seq,
        "offer to a peer in another room",
    )
    .await;
    let seq = a.send(&answer(Address::Peer(ib), "v=0 x")).await;
    a.expect_error(
        ErrorCode::UnknownPeer,
        seq,
        "answer to a peer in another room",
    )
    .await;
    let seq = a
        .send(&Message::Ice(IceCandidates {
            peer: Address::Peer(ib),
            candidates: vec![candidate(1)],
            end_of_candidates: false,
            room: None,
            app_data: String::new(),
        }))
        .await;
    a.expect_error(ErrorCode::UnknownPeer, seq, "ICE to a peer in another room")
        .await;
    // Naming B's room does not help: A is not in it.
    let seq = a
        .send(&sdp_message(
            true,
            Address::Peer(ib),
            "v=0 x",
            Some("right-room"),
        ))
        .await;
    let reply = a.recv("an answer to an offer naming a foreign room").await;
    assert!(
        matches!(&reply, Message::Error(e) if e.request_seq == seq
            && matches!(e.code, ErrorCode::UnknownPeer | ErrorCode::NotJoined)),
        "A: expected UNKNOWN_PEER or NOT_JOINED, got {reply:?}"
    );
    // A made-up peer of node 1.
    let ghost = PeerId(ib.0 ^ 0xffff);
    let seq = a.send(&offer(Address::Peer(ghost), "v=0 x")).await;
    a.expect_error(ErrorCode::UnknownPeer, seq, "offer to a made-up peer id")
        .await;
    // The room A does share still works.
    a.send(&offer(Address::Peer(c.id()), "v=0 to C")).await;
    c.expect_offer(&Address::Peer(a.id()), "v=0 to C").await;
    b.quiet().await;
    c.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deflated_sdp_is_inflated_across_nodes_only_for_receivers_that_cannot() {
    let cluster = Cluster::start("deflate", 3);
    let mut a = cluster.connect(0, "A").await;
    let mut hello = default_hello();
    hello.capabilities = Capabilities::empty();
    let mut bare = cluster.connect_with(1, "bare", hello).await;
    let mut able = cluster.connect(2, "able").await;
    a.join("z", RoomMode::Mesh, None).await;
    bare.join("z", RoomMode::Mesh, None).await;
    match a.recv("PeerJoined bare").await {
        Message::PeerJoined(p) => assert!(
            !p.member.capabilities.contains(Capabilities::DEFLATE_SDP),
            "bare's capabilities across nodes: {p:?}"
        ),
        other => panic!("A: expected PeerJoined, got {other:?}"),
    }
    let j = able.join("z", RoomMode::Mesh, None).await;
    assert_eq!(ids(&j), vec![a.id(), bare.id()]);
    assert!(
        j.members[0]
            .capabilities
            .contains(Capabilities::DEFLATE_SDP),
        "{j:?}"
    );
    assert!(
        !j.members[1]
            .capabilities
            .contains(Capabilities::DEFLATE_SDP),
        "{j:?}"
    );
    a.expect_peer_joined("z", able.id()).await;
    bare.expect_peer_joined("z", able.id()).await;

    let text = include_str!("data/sdp/chrome-offer.sdp");
    let packed = sdp::deflate(text.as_bytes());
    let deflated = |to: PeerId, data: Vec<u8>| {
        Message::Offer(SessionDescription {
            peer: Address::Peer(to),
            sdp: Sdp::Deflated(data.into()),
            room: Some(room("z")),
            app_data: String::new(),
        })
    };
    a.send(&deflated(bare.id(), packed.clone())).await;
    match bare.recv("the offer, inflated").await {
        Message::Offer(d) => {
            assert_eq!(d.peer, Address::Peer(a.id()));
            assert!(
                d.sdp == plain(text),
                "a receiver without DEFLATE_SDP on another node must get plain SDP, got {} bytes {}",
                d.sdp.wire_len(),
                if matches!(d.sdp, Sdp::Deflated(_)) { "deflated" } else { "of other text" }
            );
        }
        other => panic!("bare: expected Offer, got {other:?}"),
    }
    a.send(&deflated(able.id(), packed.clone())).await;
    match able.recv("the offer, as sent").await {
        Message::Offer(d) => {
            assert_eq!(d.peer, Address::Peer(a.id()));
            assert_eq!(
                d.sdp,
                Sdp::Deflated(packed.clone().into()),
                "a receiver with DEFLATE_SDP gets the deflated SDP as sent"
            );
        }
        other => panic!("able: expected Offer, got {other:?}"),
    }
    // A deflate bomb for the receiver that cannot inflate is refused.
    let bomb = sdp::deflate(&vec![b'a'; 10 << 20]);
    let seq = a.send(&deflated(bare.id(), bomb)).await;
    a.expect_error(
        ErrorCode::BadCompression,
        seq,
        "deflate bomb to another node",
    )
    .await;
    bare.quiet().await;
    able.quiet().await;
}

// ---------------------------------------------------------------------------
// Races for capacity and names.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_joiners_over_three_nodes_fill_a_room_of_four_exactly() {
    const JOINERS: usize = 50;
    let cluster = Cluster::start("capacity", 3);
    let mut clients = Vec::new();
    for i in 0..JOINERS {
        clients.push(cluster.connect(i % 3, &format!("j{i}")).await);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(JOINERS));
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                c.send_join("race", RoomMode::Mesh, Some(4)).await;
                let reply = c.recv_within(Duration::from_secs(10)).await;
                (c, reply)
            })
        })
        .collect();
    let mut joined = Vec::new();
    let mut full = Vec::new();
    let mut other = Vec::new();
    for t in tasks {
        let (c, reply) = t.await.unwrap();
        match reply {
            Some(Message::Joined(j)) => joined.push((c, j)),
            Some(Message::RoomFull { room, capacity }) => {
                assert_eq!((room.as_str(), capacity), ("race", 4), "{}", c.who);
                full.push(c);
            }
            r => other.push(format!("{}: {r:?}", c.who)),
        }
    }
    assert!(
        other.is_empty(),
        "answers other than Joined/RoomFull: {other:?}"
    );
    assert_eq!(
        (joined.len(), full.len()),
        (4, JOINERS - 4),
        "a capacity-4 room must take exactly 4 of {JOINERS} racing joiners; joined: {:?}",
        joined.iter().map(|(c, _)| &c.who).collect::<Vec<_>>()
    );
    // The four saw one consistent join order.
    joined.sort_by_key(|(_, j)| j.members.len());
    let order: Vec<PeerId> = joined.iter().map(|(c, _)| c.id()).collect();
    for (k, (c, j)) in joined.iter().enumerate() {
        assert_eq!(j.capacity, 4, "{}: {j:?}", c.who);
        assert_eq!(
            ids(j),
            order[..k].to_vec(),
            "{}: Joined lists members inconsistent with the others' (order {order:?})",
            c.who
        );
    }
    // Each heard of exactly those who came after it.
    for (k, (c, _)) in joined.iter_mut().enumerate() {
        for later in order.iter().skip(k + 1) {
            c.expect_peer_joined("race", *later).await;
        }
        c.quiet().await;
    }
    for c in full.iter_mut().take(6) {
        c.quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_of_one_name_on_three_nodes_let_exactly_one_in() {
    const PER_NODE: usize = 3;
    const ROUNDS: usize = 5;
    let cluster = Cluster::start("name-race", 3);
    let mut winners = Vec::new();
    let mut losers = Vec::new();
    for round in 0..ROUNDS {
        let name = format!("neo-{round}");
        let mut clients = Vec::new();
        for i in 0..3 * PER_NODE {
            clients.push(cluster.connect(i % 3, &format!("r{round}c{i}")).await);
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(clients.len()));
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let barrier = barrier.clone();
                let name = name.clone();
                tokio::spawn(async move {
                    barrier.wait().await;
                    c.send(&Message::Login { name: user(&name) }).await;
                    let reply = c.recv_within(Duration::from_secs(10)).await;
                    (c, reply)
                })
            })
            .collect();
        let mut ok = Vec::new();
        let mut taken = 0;
        let mut other = Vec::new();
        for t in tasks {
            let (c, reply) = t.await.unwrap();
            match &reply {
                Some(Message::LoginResult(r)) if r.error.is_none() => ok.push(c),
                Some(Message::LoginResult(r)) if r.error == Some(ErrorCode::NameTaken) => {
                    taken += 1;
                    losers.push(c);
                }
                _ => other.push(format!("{}: {reply:?}", c.who)),
            }
        }
        assert!(
            other.is_empty(),
            "round {round}: unexpected answers {other:?}"
        );
        assert_eq!(
            (ok.len(), taken),
            (1, 3 * PER_NODE - 1),
            "round {round}: exactly one of {} concurrent logins as {name} must win; winners: {:?}",
            3 * PER_NODE,
            ok.iter().map(|c| &c.who).collect::<Vec<_>>()
        );
        winners.push(ok.pop().unwrap());
    }
    // The name is really held: a call by name reaches the winner, wherever
    // the caller is; and after a logout a loser on another node gets it.
    let mut caller = cluster.connect(0, "caller").await;
    caller.login_ok("caller").await;
    caller
        .send(&offer(Address::User(user("neo-0")), "v=0 to neo"))
        .await;
    winners[0]
        .expect_offer(&Address::User(user("caller")), "v=0 to neo")
        .await;
    winners[0].send(&Message::Logout).await;
    assert!(winners[0].ping().await.is_empty());
    let winner_node = winners[0].who.rsplit('@').next().unwrap().to_owned();
    let heir = losers
        .iter_mut()
        .find(|c| !c.who.ends_with(&format!("@{winner_node}")))
        .unwrap();
    heir.login_ok("neo-0").await;
}

// ---------------------------------------------------------------------------
// Losing a node.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_announces_its_peers_gone_once_and_frees_their_names() {
    let mut cluster = Cluster::start("kill", 3);
    // Room "m": members on every node, two of them on the node to kill.
    let mut s0a = cluster.connect(0, "s0a").await;
    let mut v1 = cluster.connect(1, "v1").await;
    let mut s2 = cluster.connect(2, "s2").await;
    let mut v2 = cluster.connect(1, "v2").await;
    let mut s0b = cluster.connect(0, "s0b").await;
    // Pair room "p": one on node 2, one on node 1.
    let mut s2p = cluster.connect(2, "s2p").await;
    let mut v3 = cluster.connect(1, "v3").await;
    v1.login_ok("victim-one").await;
    v2.login_ok("victim-two").await;
    s0b.login_ok("watcher").await;
    {
        let mut members: Vec<&mut Client> = vec![&mut s0a, &mut v1, &mut s2, &mut v2, &mut s0b];
        for i in 0..members.len() {
            members[i].join("m", RoomMode::Mesh, None).await;
            let id = members[i].id();
            for earlier in members.iter_mut().take(i) {
                earlier.expect_peer_joined("m", id).await;
            }
        }
    }
    s2p.join("p", RoomMode::Pair, None).await;
    v3.join("p", RoomMode::Pair, None).await;
    s2p.expect_peer_joined("p", v3.id()).await;
    let dead: Vec<PeerId> = [&v1, &v2, &v3].iter().map(|c| c.id()).collect();
    let (iv1, iv2, iv3) = (dead[0], dead[1], dead[2]);

    cluster.kill_node(1);
    let killed_at = Instant::now();
    let deadline = 3 * LEASE;

    // Survivors: who must hear of whom.
    let mut survivors: Vec<(&mut Client, Vec<(&str, PeerId)>)> = vec![
        (&mut s0a, vec![("m", iv1), ("m", iv2)]),
        (&mut s2, vec![("m", iv1), ("m", iv2)]),
        (&mut s0b, vec![("m", iv1), ("m", iv2)]),
        (&mut s2p, vec![("p", iv3)]),
    ];
    // Listen on all at once, until 3 leases and one more second have
    // passed (so late duplicates show).
    let heard = futures_util::future::join_all(survivors.iter_mut().map(|(c, _)| async move {
        let mut got = Vec::new();
        let end = killed_at + deadline + Duration::from_secs(1);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match c.recv_within(left).await {
                Some(m) => got.push((killed_at.elapsed(), m)),
                None => break,
            }
        }
        got
    }))
    .await;
    for ((c, expected), got) in survivors.iter().zip(heard) {
        let mut left = Vec::new();
        let mut stray = Vec::new();
        for (at, m) in got {
            match m {
                Message::PeerLeft(p) => left.push((at, p)),
                other => stray.push(other),
            }
        }
        assert!(
            stray.is_empty(),
            "{}: unexpected after the kill: {stray:?}",
            c.who
        );
        for (r, gone) in expected {
            let hits: Vec<_> = left
                .iter()
                .filter(|(_, p)| p.room.as_str() == *r && p.peer_id == *gone)
                .collect();
            assert_eq!(
                hits.len(),
                1,
                "{}: PeerLeft for {gone} in {r} must come exactly once; all PeerLeft: {left:?}",
                c.who
            );
            let (at, p) = hits[0];
            eprintln!("{}: PeerLeft for {gone} {at:?} after the kill", c.who);
            assert_eq!(p.reason, LeaveReason::Disconnected, "{}: {p:?}", c.who);
            assert!(
                *at <= deadline,
                "{}: PeerLeft for {gone} came {at:?} after the kill (lease {LEASE:?}, allowed {deadline:?})",
                c.who
            );
        }
        assert_eq!(
            left.len(),
            expected.len(),
            "{}: PeerLeft for peers that did not die: {left:?}",
            c.who
        );
    }
    drop(survivors);

    // The dead are unreachable, by id and by name.
    let seq = s0a
        .send(&offer(Address::Peer(iv1), "v=0 to the dead"))
        .await;
    s0a.expect_error(ErrorCode::UnknownPeer, seq, "offer to a dead peer by id")
        .await;
    let seq = s0b
        .send(&offer(Address::User(user("victim-two")), "v=0 to the dead"))
        .await;
    s0b.expect_error(ErrorCode::UnknownPeer, seq, "offer to a dead peer by name")
        .await;
    // Their names are free again.
    s2.login_ok("victim-one").await;
    s0a.login_ok("victim-two").await;
    // The surviving nodes still talk to each other.
    s0a.send(&offer(Address::Peer(s2.id()), "v=0 still here"))
        .await;
    s2.expect_offer(&Address::Peer(s0a.id()), "v=0 still here")
        .await;
    // The pair room has a free seat again.
    let mut fresh = cluster.connect(0, "fresh").await;
    let j = fresh.join("p", RoomMode::Pair, None).await;
    assert_eq!(ids(&j), vec![s2p.id()], "{j:?}");
    // A replacement node gets a node id no live node holds, and sees the
    // room as it is now.
    let n3 = cluster.start_node();
    let mut newcomer = cluster.connect(n3, "newcomer").await;
    let live: HashSet<u16> = [s0a.id().node(), s2.id().node()].into();
    assert!(
        !live.contains(&newcomer.id().node()),
        "the new node took a live node's id {} (live: {live:?})",
        newcomer.id().node()
    );
    let j = newcomer.join("m", RoomMode::Mesh, None).await;
    assert_eq!(ids(&j), vec![s0a.id(), s2.id(), s0b.id()], "{j:?}");
}

// ---------------------------------------------------------------------------
// Redis trouble.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_paused_nodes_are_unready_relay_locally_and_fail_fast() {
    let mut cluster = Cluster::start("pause", 2);
    for node in 0..2 {
        wait_readyz(
            cluster.addr(node),
            200,
            Duration::from_secs(3),
            "with Redis up",
        )
        .await;
    }
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(0, "B").await;
    let mut e = cluster.connect(0, "E").await;
    let mut f = cluster.connect(1, "F").await;
    let mut g = cluster.connect(0, "G").await;
    let mut h = cluster.connect(1, "H").await;
    a.join("local", RoomMode::Pair, None).await;
    b.join("local", RoomMode::Pair, None).await;
    a.expect_peer_joined("local", b.id()).await;

    cluster.redis.pause();
    // Two clients of one node in one room still negotiate.
    b.send(&offer(Address::Peer(a.id()), "v=0 same node")).await;
    match a.recv_within(Duration::from_secs(2)).await {
        Some(Message::Offer(d)) => assert_eq!(d.peer, Address::Peer(b.id())),
        other => panic!("A: same-node offer with Redis paused: got {other:?} within 2 s"),
    }
    a.send(&answer(Address::Peer(b.id()), "v=0 same node"))
        .await;
    assert!(
        matches!(
            b.recv_within(Duration::from_secs(2)).await,
            Some(Message::Answer(_))
        ),
        "B: no answer within 2 s with Redis paused"
    );
    // What needs Redis fails fast with UNAVAILABLE: a Join with an Error
    // naming it, a Login in its LoginResult (PROTOCOL.md, "Errors").
    assert_eq!(UNAVAILABLE as i32, 26, "ERROR_CODE_UNAVAILABLE is 26");
    let start = Instant::now();
    let seq = e.send_join("during-pause", RoomMode::Pair, None).await;
    let reply = e.recv_within(Duration::from_secs(3)).await;
    let took = start.elapsed();
    match reply {
        Some(Message::Error(err)) => {
            assert_eq!(err.code, UNAVAILABLE, "E: join with Redis paused: {err:?}");
            assert_eq!(err.request_seq, seq, "E: {err:?}");
        }
        other => panic!(
            "E: join with Redis paused: expected Error UNAVAILABLE within ~2 s, got {other:?} after {took:?}"
        ),
    }
    assert!(
        took <= Duration::from_millis(2500),
        "E: UNAVAILABLE for a join took {took:?}"
    );
    let start = Instant::now();
    f.send(&Message::Login { name: user("zed") }).await;
    let reply = f.recv_within(Duration::from_secs(3)).await;
    let took = start.elapsed();
    match reply {
        Some(Message::LoginResult(r)) => assert_eq!(
            (r.name.as_str(), r.error),
            ("zed", Some(UNAVAILABLE)),
            "F: login with Redis paused: {r:?}"
        ),
        other => panic!(
            "F: login with Redis paused: expected LoginResult UNAVAILABLE within ~2 s, got {other:?} after {took:?}"
        ),
    }
    assert!(
        took <= Duration::from_millis(2500),
        "F: UNAVAILABLE for a login took {took:?}"
    );
    // The nodes say they are not ready.
    for node in 0..2 {
        wait_readyz(
            cluster.addr(node),
            503,
            3 * LEASE + Duration::from_secs(1),
            "with Redis paused",
        )
        .await;
    }
    // Nobody was disconnected (or told anything).
    for c in [&mut a, &mut b, &mut e, &mut f, &mut g, &mut h] {
        let other = c.ping().await;
        assert!(
            other.is_empty(),
            "{}: received {other:?} while Redis was paused",
            c.who
        );
    }

    cluster.redis.resume();
    for node in 0..2 {
        wait_readyz(
            cluster.addr(node),
            200,
            Duration::from_secs(5),
            "after Redis resumed",
        )
        .await;
    }
    // New cross-node calls work again.
    match g
        .join_retrying("after", RoomMode::Pair, None, Duration::from_secs(5))
        .await
    {
        Message::Joined(j) => assert!(j.members.is_empty(), "{j:?}"),
        other => panic!("G: join after resume: {other:?}"),
    }
    match h
        .join_retrying("after", RoomMode::Pair, None, Duration::from_secs(5))
        .await
    {
        Message::Joined(j) => assert_eq!(ids(&j), vec![g.id()], "{j:?}"),
        other => panic!("H: join after resume: {other:?}"),
    }
    g.expect_peer_joined("after", h.id()).await;
    h.send(&offer(Address::Peer(g.id()), "v=0 after resume"))
        .await;
    g.expect_offer(&Address::Peer(h.id()), "v=0 after resume")
        .await;
    match f.login_retrying("zed", Duration::from_secs(5)).await {
        Message::LoginResult(r) => assert_eq!(r.error, None, "{r:?}"),
        other => panic!("F: login after resume: {other:?}"),
    }
}

/// Beyond the letter of "new joins work after SIGCONT": a pause longer than
/// the lease lets every lease expire in Redis, yet no node died. A call in
/// progress across nodes must not be torn down for it (as it is not when
/// Redis restarts empty).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_node_call_survives_a_redis_pause_longer_than_the_lease() {
    let mut cluster = Cluster::start("pause-call", 2);
    let mut c = cluster.connect(0, "C").await;
    let mut d = cluster.connect(1, "D").await;
    c.login_ok("carl").await;
    d.login_ok("dora").await;
    c.join("cross", RoomMode::Pair, None).await;
    d.join("cross", RoomMode::Pair, None).await;
    c.expect_peer_joined("cross", d.id()).await;
    // Connected now: a node may refuse new connections while it cannot
    // reach Redis.
    let mut x = cluster.connect(1, "X").await;

    cluster.redis.pause();
    tokio::time::sleep(2 * LEASE).await;
    cluster.redis.resume();

    let (ic, id) = (c.id(), d.id());
    let took = deliver_eventually(
        &mut d,
        &mut c,
        &offer(Address::Peer(ic), "v=0 by id"),
        |m| matches!(m, Message::Offer(o) if o.peer == Address::Peer(id)),
        Duration::from_secs(6),
        "offer by peer id after the pause",
    )
    .await;
    eprintln!("cross-node offer by id delivered {took:?} after resume");
    deliver_eventually(
        &mut c,
        &mut d,
        &offer(Address::User(user("dora")), "v=0 by name"),
        |m| matches!(m, Message::Offer(o) if o.peer == Address::User(user("carl"))),
        Duration::from_secs(6),
        "offer by name after the pause",
    )
    .await;
    // The room is still a full pair room, and both names are still held.
    match x
        .join_retrying("cross", RoomMode::Pair, None, Duration::from_secs(5))
        .await
    {
        Message::RoomFull { capacity: 2, .. } => {}
        other => panic!("X: joining the call in progress after the pause: {other:?}"),
    }
    match x.login_retrying("carl", Duration::from_secs(5)).await {
        Message::LoginResult(r) => assert_eq!(r.error, Some(ErrorCode::NameTaken), "{r:?}"),
        other => panic!("X: login as carl after the pause: {other:?}"),
    }
    c.quiet().await;
    d.quiet().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_redis_restarts_empty_rooms_names_and_new_calls_work_without_reconnecting() {
    let mut cluster = Cluster::start("restart", 2);
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    let mut m0 = cluster.connect(0, "M0").await;
    let mut m1 = cluster.connect(1, "M1").await;
    a.login_ok("alice").await;
    b.login_ok("bob").await;
    a.join("call", RoomMode::Pair, None).await;
    b.join("call", RoomMode::Pair, None).await;
    a.expect_peer_joined("call", b.id()).await;
    m0.join("team", RoomMode::Mesh, Some(3)).await;
    m1.join("team", RoomMode::Mesh, None).await;
    m0.expect_peer_joined("team", m1.id()).await;
    let (ia, ib) = (a.id(), b.id());
    // Connected now: a node may refuse new connections while it cannot
    // reach Redis.
    let mut c = cluster.connect(0, "C").await;
    let mut d = cluster.connect(1, "D").await;
    let mut x = cluster.connect(1, "X").await;

    cluster.redis.restart_empty();
    let restarted = Instant::now();

    // Existing rooms keep working across the nodes.
    let took = deliver_eventually(
        &mut a,
        &mut b,
        &offer(Address::Peer(ib), "v=0 pair"),
        |m| matches!(m, Message::Offer(o) if o.peer == Address::Peer(ia)),
        Duration::from_secs(8),
        "offer in the pair room after the restart",
    )
    .await;
    eprintln!("pair room delivered {took:?} after the restart");
    let (i0, i1) = (m0.id(), m1.id());
    deliver_eventually(
        &mut m1,
        &mut m0,
        &offer(Address::Peer(i0), "v=0 mesh"),
        |m| matches!(m, Message::Offer(o) if o.peer == Address::Peer(i1)),
        Duration::from_secs(8),
        "offer in the mesh room after the restart",
    )
    .await;
    deliver_eventually(
        &mut b,
        &mut a,
        &offer(Address::User(user("alice")), "v=0 by name"),
        |m| matches!(m, Message::Offer(o) if o.peer == Address::User(user("bob"))),
        Duration::from_secs(8),
        "offer by name after the restart",
    )
    .await;
    // New cross-node calls succeed.
    match c
        .join_retrying("fresh", RoomMode::Pair, None, Duration::from_secs(8))
        .await
    {
        Message::Joined(j) => assert!(j.members.is_empty(), "{j:?}"),
        other => panic!("C: new room after the restart: {other:?}"),
    }
    match d
        .join_retrying("fresh", RoomMode::Pair, None, Duration::from_secs(8))
        .await
    {
        Message::Joined(j) => assert_eq!(ids(&j), vec![c.id()], "{j:?}"),
        other => panic!("D: new room after the restart: {other:?}"),
    }
    c.expect_peer_joined("fresh", d.id()).await;
    d.send(&offer(Address::Peer(c.id()), "v=0 fresh")).await;
    c.expect_offer(&Address::Peer(d.id()), "v=0 fresh").await;

    // What the cluster held before the restart still holds, once the nodes
    // had two leases to put it back: the pair room is full, the mesh room
    // lists both, the names are taken.
    if let Some(wait) = (2 * LEASE).checked_sub(restarted.elapsed()) {
        tokio::time::sleep(wait).await;
    }
    match x
        .join_retrying("call", RoomMode::Pair, None, Duration::from_secs(3))
        .await
    {
        Message::RoomFull { capacity: 2, .. } => {}
        other => panic!("X: a third joined a 1:1 call after Redis restarted: {other:?}"),
    }
    match x
        .join_retrying("team", RoomMode::Mesh, None, Duration::from_secs(3))
        .await
    {
        Message::Joined(j) => {
            assert_eq!(
                ids(&j),
                vec![i0, i1],
                "mesh members after the restart: {j:?}"
            );
            assert_eq!(j.capacity, 3, "{j:?}");
        }
        other => panic!("X: join team after the restart: {other:?}"),
    }
    m0.expect_peer_joined("team", x.id()).await;
    m1.expect_peer_joined("team", x.id()).await;
    for name in ["alice", "bob"] {
        match x.login_retrying(name, Duration::from_secs(3)).await {
            Message::LoginResult(r) => assert_eq!(
                r.error,
                Some(ErrorCode::NameTaken),
                "X: {name} was given out twice after Redis restarted: {r:?}"
            ),
            other => panic!("X: login as {name}: {other:?}"),
        }
    }
    // Both nodes are ready again, and a node started now does not take a
    // live node's id.
    for node in 0..2 {
        wait_readyz(
            cluster.addr(node),
            200,
            Duration::from_secs(5),
            "after the restart",
        )
        .await;
    }
    let n2 = cluster.start_node();
    let newcomer = cluster.connect(n2, "newcomer").await;
    let live: HashSet<u16> = [ia.node(), ib.node()].into();
    assert!(
        !live.contains(&newcomer.id().node()),
        "a node started after the restart took a live node's id {} (live: {live:?})",
        newcomer.id().node()
    );
    for client in [&mut a, &mut b, &mut m0, &mut m1] {
        client.quiet().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tcp_url_works_too() {
    let cluster = Cluster::start_on("tcp", 2, Redis::start_tcp());
    assert!(cluster.redis.url().starts_with("redis://127.0.0.1:"));
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    assert_ne!(a.id().node(), b.id().node());
    a.join("tcp", RoomMode::Pair, None).await;
    let j = b.join("tcp", RoomMode::Pair, None).await;
    assert_eq!(ids(&j), vec![a.id()], "{j:?}");
    a.expect_peer_joined("tcp", b.id()).await;
    b.send(&offer(Address::Peer(a.id()), "v=0 tcp")).await;
    a.expect_offer(&Address::Peer(b.id()), "v=0 tcp").await;
}

/// What `/metrics` says of rooms, members and users: the cluster's counts,
/// the same from every node, kept by the scripts (no scan of Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_rooms_members_and_users_cluster_wide() {
    let cluster = Cluster::start("metrics", 2);
    let mut a = cluster.connect(0, "A").await;
    let mut b = cluster.connect(1, "B").await;
    let mut c = cluster.connect(1, "C").await;
    a.login_ok("ann").await;
    a.join("m-pair", RoomMode::Pair, None).await;
    b.join("m-pair", RoomMode::Pair, None).await;
    a.expect_peer_joined("m-pair", b.id()).await;
    c.join("m-mesh", RoomMode::Mesh, None).await;
    a.join("m-mesh", RoomMode::Mesh, None).await;
    let scrape = |node: usize| {
        let addr = cluster.addr(node);
        async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        }
    };
    let want = [
        "switchboard_rooms{mode=\"pair\"} 1",
        "switchboard_rooms{mode=\"mesh\"} 1",
        "switchboard_room_members 4",
        "switchboard_users 1",
    ];
    for node in 0..2 {
        let text = scrape(node).await;
        for line in want {
            assert!(text.contains(line), "node {node} lacks {line:?}:\n{text}");
        }
    }
    // Leaving and disconnecting bring the counts down again.
    drop(c);
    b.send(&Message::Leave {
        room: room("m-pair"),
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = scrape(1).await;
        if text.contains("switchboard_rooms{mode=\"pair\"} 1")
            && text.contains("switchboard_room_members 2")
        {
            break;
        }
        assert!(Instant::now() < deadline, "counts did not follow:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
