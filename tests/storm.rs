//! The reconnect storm, small: three real nodes (the switchboard binary)
//! on one real Redis, and a fleet whose pairs each have a member on the
//! first node. After the hold the first node is killed (SIGKILL); each of
//! its clients notices, reconnects to one of the other two with backoff and
//! jitter, logs in under its old name (NAME_TAKEN until the dead node's
//! lease is reaped) and rejoins its room, while its partner sees it leave
//! and come back. Pairs stream signals both ways through all of it, and
//! every signal must be delivered, or answered with an error to its sender,
//! or have gone with the sender's own cut connection; none may vanish
//! silently, not even those published to the node as it dies (their
//! senders are told once the node is found dead).
//! `benches/storm.sh` runs the same storm with 19,000 clients on the
//! killed node.

mod common;

use std::time::{Duration, Instant};

use common::child::Server;
use common::redis::Redis;
use switchboard_load::fleet;

/// 4,000 clients: 1,400 on the node that dies (each with its partner on
/// one of the two others) and the rest spread over the two others, in one
/// worker process. Connecting takes a few seconds in a debug build here;
/// the storm itself the nodes' default lease (3 s) and the reap, plus the
/// clients' backoff (at most 1 s here): the test takes 15 to 25 s.
const CONNECTIONS: usize = 4_000;
const ON_KILLED: usize = 1_400;
const NODES: usize = 3;
const STREAMING: usize = 40;
const NEGOTIATE: usize = 50;

/// Not a test on its own: the fleet's worker (see `common::fleet`).
#[test]
fn fleet_worker() {
    common::fleet::worker_entry();
}

#[test]
fn a_dead_nodes_clients_come_back_on_the_others_and_every_signal_is_accounted_for() {
    let redis = Redis::start();
    let nodes = common::fleet::start_nodes(&redis, NODES, "storm", &[]);
    let storm = fleet::storm::Options {
        stream_pairs: STREAMING,
        signal_interval: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
        timeout: Duration::from_secs(40),
        ..fleet::storm::Options::new(nodes[0].pid(), ON_KILLED)
    };
    let options = fleet::Options {
        workers: 1,
        hold: Duration::from_secs(1),
        negotiate: NEGOTIATE,
        source_ips: 4,
        seed: 5,
        progress: true,
        storm: Some(storm),
        ..fleet::Options::new(nodes.iter().map(Server::url).collect(), CONNECTIONS)
    };
    let started = Instant::now();
    let report = fleet::run(&options, &common::fleet::worker_command).expect("the fleet runs");
    eprintln!(
        "storm over {NODES} nodes in {:.1} s:\n{}",
        started.elapsed().as_secs_f64(),
        switchboard_load::table(&report)
    );

    assert_eq!(report.established, CONNECTIONS as u64, "{report:#?}");
    assert_eq!(report.dropped_during_hold, 0, "{report:#?}");
    let s = report.storm.as_ref().expect("the storm's report");
    assert!(!s.timed_out, "not everyone came back in time: {s:#?}");
    assert_eq!(
        s.went_down, ON_KILLED as u64,
        "the killed node's clients, and no other, lost their connection: {s:#?}"
    );
    assert_eq!(s.came_back, s.went_down, "{s:#?}");
    assert_eq!(s.open_after, CONNECTIONS as u64, "{s:#?}");
    assert_eq!(
        (
            s.partners.saw_left,
            s.partners.saw_back,
            s.partners.left_twice
        ),
        (ON_KILLED as u64, ON_KILLED as u64, 0),
        "each partner saw its partner leave once and come back: {s:#?}"
    );
    let signals = &s.signals;
    assert_eq!(signals.streaming_pairs, STREAMING as u64, "{signals:#?}");
    assert!(signals.failures.is_empty(), "{signals:#?}");
    for (way, t) in [
        (
            "from the killed node's clients",
            &signals.from_killed_node_clients,
        ),
        ("to them", &signals.to_killed_node_clients),
    ] {
        assert_eq!(
            (t.duplicates, t.misrouted, t.damaged, t.silently_lost),
            (0, 0, 0, 0),
            "signals {way}: {t:#?}"
        );
        assert_eq!(
            t.sent,
            t.delivered + t.told_undelivered + t.lost_with_senders_connection + t.silently_lost,
            "every signal {way} has one fate: {t:#?}"
        );
        assert!(t.delivered > 0, "signals {way} flowed: {t:#?}");
    }
    // The senders of signals to the killed node's clients that were
    // published as it died (Redis still counted its subscription) are told
    // "perhaps not delivered" once the node is found dead: so are some
    // that its clients had got, but never one from them.
    let from = &signals.from_killed_node_clients;
    assert_eq!(from.delivered_and_told, 0, "{from:#?}");
    let n = &report.negotiations;
    assert_eq!(n.completed, NEGOTIATE as u64, "{report:#?}");
    // Everything the report checks holds.
    assert!(s.ok, "{s:#?}");
    assert_eq!(report.ok, s.ok, "{report:#?}");
    for node in &nodes[1..] {
        assert!(
            node.log_text().lines().all(|l| !l.contains("ERROR")),
            "{}",
            node.log_text()
        );
    }
    drop(nodes);
    drop(redis);
}
