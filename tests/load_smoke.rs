//! Each load scenario, briefly, against an in-process server: nothing lost,
//! nothing failed, something measured.

mod common;

use std::time::Duration;

use common::{start_server, test_config};
use switchboard::config::Config;
use switchboard_load::{churn, handshake, idle, relay, Common};

/// The test server with rate limits out of the way: the load generator
/// measures throughput, not the limiter.
fn fast_config() -> Config {
    Config {
        rate_per_second: 1_000_000,
        rate_burst: 1_000_000,
        rate_bytes_per_second: 1 << 30,
        rate_bytes_burst: 1 << 30,
        ..test_config()
    }
}

fn common(url: String) -> Common {
    Common {
        server_pid: Some(std::process::id()),
        ..Common::new(url)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_bounces_every_message_and_reports_the_servers_cpu() {
    // The server in a child process, so the CPU and memory the load
    // generator reports are the server's, not this test's.
    let server = common::child::Server::start(&[
        "--rate-per-second",
        "1000000",
        "--rate-burst",
        "1000000",
        "--rate-bytes-per-second",
        "1000000000",
        "--rate-bytes-burst",
        "1000000000",
    ]);
    let duration = Duration::from_millis(800);
    // What browsers send (one side, one frame per message), then what a
    // batching SDK sends from both sides.
    for pattern in [
        relay::Pattern::default(),
        relay::Pattern {
            both_sides: true,
            coalesce: true,
        },
    ] {
        let report = relay::run(
            &Common {
                server_pid: Some(server.child.id()),
                ..Common::new(server.url())
            },
            &relay::Options {
                pairs: 4,
                window: 4,
                duration,
                pattern,
                peer_url: None,
            },
        )
        .await
        .unwrap();
        assert_eq!(report.pattern, pattern.label());
        assert_eq!(report.errors, 0, "{report:?}");
        assert_eq!(report.lost, 0, "{report:?}");
        assert!(report.relayed_per_second > 100, "{report:?}");
        assert!(report.round_trip.count > 100, "{report:?}");
        // Round trips are timed in microseconds: none can outlast the run.
        let run_us = duration.as_micros() as u64;
        assert!(
            report.round_trip.p50_us > 0 && report.round_trip.p99_us < run_us,
            "{report:?}"
        );
        // The server relayed thousands of messages: it used CPU, and the
        // report says so (two worker threads at most, on this machine's
        // cores), split into user and kernel time per message.
        let cpu = report.cpu.server_cpu_percent.expect("server CPU measured");
        assert!(cpu > 1.0 && cpu < 250.0, "server CPU {cpu}%");
        let per = report.server_us_per_message.expect("per-message CPU");
        assert!(
            per.user >= 0.0 && per.kernel >= 0.0 && per.user + per.kernel > 0.0,
            "{per:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_completes_pair_and_mesh_rooms() {
    let server = start_server(fast_config()).await;
    for size in [2, 3] {
        let report = handshake::run(
            &common(server.url()),
            &handshake::Options {
                size,
                concurrency: 4,
                rooms: 0,
                reuse_connections: size == 3,
                duration: Duration::from_millis(600),
            },
        )
        .await
        .unwrap();
        assert_eq!(report.errors, 0, "{report:?}");
        assert!(report.rooms_completed > 0, "{report:?}");
        assert_eq!(
            report.negotiations,
            report.rooms_completed * (size * (size - 1) / 2) as u64
        );
        assert!(report.time_to_complete.p50_us > 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_stops_after_the_asked_rooms() {
    let server = start_server(fast_config()).await;
    let report = handshake::run(
        &common(server.url()),
        &handshake::Options {
            size: 2,
            concurrency: 3,
            rooms: 10,
            reuse_connections: false,
            duration: Duration::from_secs(20),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.rooms_completed, 10, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_log_in_join_and_hold() {
    // A child process, so the memory reported is the server's own.
    let server = common::child::Server::start(&[]);
    let report = idle::run(
        &Common {
            server_pid: Some(server.child.id()),
            ..Common::new(server.url())
        },
        &idle::Options {
            connections: 40,
            connect_concurrency: 8,
            hold: Duration::from_millis(100),
            dialect: idle::Dialect::Binary,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.established, 40, "{report:?}");
    assert_eq!(report.open_after_hold, 40, "{report:?}");
    let rss = report.server_rss_after_kib.expect("server memory measured");
    assert!(
        (1024..1024 * 1024).contains(&rss),
        "server RSS {rss} KiB for 40 connections"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_loops_without_errors() {
    let server = start_server(fast_config()).await;
    let report = churn::run(
        &common(server.url()),
        &churn::Options {
            resume: false,
            workers: 4,
            duration: Duration::from_millis(600),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.operations > 0, "{report:?}");
}

#[tokio::test]
async fn source_addresses_are_spread() {
    let server = start_server(fast_config()).await;
    let report = churn::run(
        &Common {
            source_ips: 3,
            ..Common::new(server.url())
        },
        &churn::Options {
            resume: false,
            workers: 3,
            duration: Duration::from_millis(300),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert!(report.operations > 0);
}

#[tokio::test]
async fn a_bad_url_is_refused() {
    let err = churn::run(
        &Common::new("http://127.0.0.1:1/ws"),
        &churn::Options {
            resume: false,
            workers: 1,
            duration: Duration::from_millis(10),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ws://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_001_relay_runs_against_the_compat_endpoint() {
    let server = start_server(fast_config()).await;
    let report = switchboard_load::seed_relay::run(
        &common(format!("ws://{}/compat/pair", server.addr)),
        &switchboard_load::seed_relay::Options {
            pairs: 3,
            window: 2,
            duration: Duration::from_millis(500),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.scenario, "seed001");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(report.relayed_messages > 100, "{report:?}");
    assert!(report.round_trip.count > 50, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_seed_001_connections_join_and_hold() {
    let server = start_server(fast_config()).await;
    let report = idle::run(
        &common(format!("ws://{}/compat/pair", server.addr)),
        &idle::Options {
            connections: 20,
            connect_concurrency: 8,
            hold: Duration::from_millis(100),
            dialect: idle::Dialect::Seed001,
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.established, 20, "{report:?}");
    assert_eq!(report.open_after_hold, 20, "{report:?}");
}
