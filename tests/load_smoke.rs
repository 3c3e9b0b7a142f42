//! Each load scenario, briefly, against an in-process server: nothing lost,
//! nothing failed, something measured.

mod common;

use std::time::Duration;

use common::{start_server, test_config};
use switchboard::config::Config;
use switchboard::load::{churn, handshake, idle, relay, Common};

/// The test server with rate limits out of the way: the load generator
/// measures throughput, not the limiter.
fn fast_config() -> Config {
    Config {
        rate_per_second: 1_000_000,
        rate_burst: 1_000_000,
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
async fn relay_bounces_every_message() {
    let server = start_server(fast_config()).await;
    let report = relay::run(
        &common(server.url()),
        &relay::Options {
            pairs: 4,
            window: 4,
            duration: Duration::from_millis(800),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(report.relayed_per_second > 0, "{report:?}");
    assert!(report.round_trip.count > 0, "{report:?}");
    assert!(report.round_trip.p50_us <= report.round_trip.p99_us);
    assert!(report.cpu.server_cpu_percent.is_some());
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
    let server = start_server(fast_config()).await;
    let report = idle::run(
        &common(server.url()),
        &idle::Options {
            connections: 40,
            connect_concurrency: 8,
            hold: Duration::from_millis(100),
        },
    )
    .await
    .unwrap();
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.established, 40, "{report:?}");
    assert_eq!(report.open_after_hold, 40, "{report:?}");
    assert!(report.server_rss_after_kib.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_loops_without_errors() {
    let server = start_server(fast_config()).await;
    let report = churn::run(
        &common(server.url()),
        &churn::Options {
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
            workers: 1,
            duration: Duration::from_millis(10),
        },
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("ws://"), "{err}");
}
