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
            resume_on: Vec::new(),
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
            resume_on: Vec::new(),
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
            resume_on: Vec::new(),
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
        &SHORT_TEXT_RELAY,
    )
    .await
    .unwrap();
    assert_relayed(&report, "seed001");
}

/// A short relay in a JSON dialect.
const SHORT_TEXT_RELAY: switchboard_load::text_relay::Options =
    switchboard_load::text_relay::Options {
        pairs: 3,
        window: 2,
        duration: Duration::from_millis(500),
    };

/// A short relay in a JSON dialect relayed, lost nothing and timed round
/// trips.
fn assert_relayed(report: &relay::Report, scenario: &str) {
    assert_eq!(report.scenario, scenario);
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert!(report.relayed_messages > 100, "{report:?}");
    assert!(report.round_trip.count > 50, "{report:?}");
}

/// All of an idle run's `n` connections joined and held.
fn assert_held(report: &idle::Report, n: u64) {
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.established, n, "{report:?}");
    assert_eq!(report.open_after_hold, n, "{report:?}");
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
    assert_held(&report, 20);
}

/// matchbox_server (scripts/install-matchbox.sh installs it; `MATCHBOX_SERVER`
/// names another) in a child process on port 0, killed on drop.
struct Matchbox {
    child: std::process::Child,
    port: u16,
}

impl Matchbox {
    fn start() -> Matchbox {
        let binary = std::env::var("MATCHBOX_SERVER").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/target/compare-tools/bin/matchbox_server"
            )
            .into()
        });
        assert!(
            std::path::Path::new(&binary).is_file(),
            "`{binary}` not found: install matchbox_server with scripts/install-matchbox.sh \
             (scripts/test.sh does), or name it in MATCHBOX_SERVER"
        );
        let child = std::process::Command::new(&binary)
            .arg("127.0.0.1:0")
            .env("RUST_LOG", "error")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("start {binary}: {e}"));
        let mut server = Matchbox { child, port: 0 };
        // It does not say which port it got: find its listening socket.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while server.port == 0 {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("matchbox_server exited at start-up: {status}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "matchbox_server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
            server.port = listening_port(server.child.id()).unwrap_or(0);
        }
        server
    }

    fn common(&self) -> Common {
        Common {
            server_pid: Some(self.child.id()),
            ..Common::new(format!("ws://127.0.0.1:{}", self.port))
        }
    }
}

impl Drop for Matchbox {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The port of the TCP socket `pid` listens on over IPv4, from its open
/// sockets' inodes and /proc/net/tcp.
fn listening_port(pid: u32) -> Option<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|link| {
            let link = link.to_str()?;
            Some(
                link.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_string(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        // sl local_address rem_address st ... inode (the tenth field)
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A") && inodes.contains(*fields.get(9)?);
        let port = fields.get(1)?.rsplit(':').next()?;
        listening.then(|| u16::from_str_radix(port, 16).ok())?
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_matchbox_relay_and_idle_run_against_matchbox_server() {
    let server = Matchbox::start();
    let report = switchboard_load::matchbox_relay::run(&server.common(), &SHORT_TEXT_RELAY)
        .await
        .unwrap();
    assert_relayed(&report, "matchbox");
    assert!(report.server_us_per_message.is_some(), "{report:?}");

    let report = idle::run(
        &server.common(),
        &idle::Options {
            connections: 20,
            connect_concurrency: 8,
            hold: Duration::from_millis(100),
            dialect: idle::Dialect::Matchbox,
        },
    )
    .await
    .unwrap();
    assert_held(&report, 20);
    assert!(
        report.server_rss_per_connection_bytes.is_some(),
        "{report:?}"
    );
}
