//! `/metrics` read back the way operators read it: a real Prometheus
//! (Debian package `prometheus`) scrapes a real server process, and the
//! test asks Prometheus' HTTP API for the values after a known sequence of
//! joins, relays and errors; `promtool check metrics` checks the
//! exposition.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::child::Server;
use common::*;
use serde_json::Value;
use switchboard::client::{default_hello, Connection};
use switchboard::protocol::{Address, ErrorCode, Message, PeerId, RoomMode};

/// Fails with a clear message when a binary the test needs is missing.
fn need(binary: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {binary}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{binary}` not found: install the Debian package `{package}` (scripts/test.sh does, as root)"
    );
}

/// A Prometheus server scraping `target` every 200 ms, killed on drop.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus on port 0 and reads the port it got from its
    /// "Listening on" line, so no port is picked and freed for it to race
    /// for.
    fn start(target: SocketAddr) -> Prometheus {
        need("prometheus", "prometheus");
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "switchboard-prom-{}-{}",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n\
                 scrape_configs:\n  - job_name: switchboard\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let log = dir.join("log");
        let mut child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg("--web.listen-address=127.0.0.1:0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start prometheus");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let found = text
                .lines()
                .filter(|l| l.contains("msg=\"Listening on\""))
                .find_map(|l| {
                    l.split("address=")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                });
            if let Some(addr) = found {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("prometheus exited at start-up: {status}; its log:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not listen in 30 s; its log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Prometheus { child, addr, dir }
    }

    /// The value of an instant query with exactly one series, once the
    /// series exists.
    async fn value(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(query));
        let response = try_get(self.addr, &path).await?;
        let body = response.split("\r\n\r\n").nth(1)?;
        // A chunked body: the JSON object is the line that starts with '{'.
        let json = body.lines().find(|l| l.starts_with('{'))?;
        let v: Value = serde_json::from_str(json).ok()?;
        let result = v["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        result[0]["value"][1].as_str()?.parse().ok()
    }

    /// Waits (up to 30 s) until `query` reads `want`; panics with the last
    /// value read otherwise.
    async fn expect(&self, query: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut last = None;
        while Instant::now() < deadline {
            last = self.value(query).await;
            if last == Some(want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("log")).unwrap_or_default();
        let tail: String = log.lines().rev().take(10).collect::<Vec<_>>().join("\n");
        panic!("{query}: wanted {want}, Prometheus says {last:?}; its log ends:\n{tail}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP GET that may fail (Prometheus still starting).
async fn try_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    Some(out)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_reads_the_counts_of_a_known_sequence() {
    let server = Server::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics_addr = server.metrics_addr.unwrap();
    let prometheus = Prometheus::start(metrics_addr);
    // Served on its own address only.
    let main_port = http_get(server.addr, "/metrics").await;
    assert!(main_port.starts_with("HTTP/1.1 404"), "{main_port}");

    let url = server.url();
    let mut a = Connection::connect(&url, default_hello()).await.unwrap();
    let mut b = Connection::connect(&url, default_hello()).await.unwrap();
    join_ok(&mut a, "metrics-room", RoomMode::Pair).await;
    let joined = join_ok(&mut b, "metrics-room", RoomMode::Pair).await;
    let a_id = joined.members[0].peer_id;
    let b_id = b.welcome().peer_id;
    let _ = next(&mut a).await; // PeerJoined
    for _ in 0..3 {
        a.send(&offer(Address::Peer(b_id), "v=0\r\n"))
            .await
            .unwrap();
        assert!(matches!(next(&mut b).await, Message::Offer(_)));
    }
    b.send(&ice(Address::Peer(a_id), 1)).await.unwrap();
    assert!(matches!(next(&mut a).await, Message::Ice(_)));
    // An offer to no one: UNKNOWN_PEER.
    a.send(&offer(Address::Peer(PeerId(999)), "v=0\r\n"))
        .await
        .unwrap();
    let Message::Error(e) = next(&mut a).await else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::UnknownPeer);
    b.send(&Message::Login {
        name: user("bob-metrics"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut b).await, Message::LoginResult(_)));

    for (query, want) in [
        (r#"switchboard_frames_received_total{type="offer"}"#, 4.0),
        (r#"switchboard_frames_sent_total{type="offer"}"#, 3.0),
        (r#"switchboard_frames_received_total{type="ice"}"#, 1.0),
        (r#"switchboard_frames_received_total{type="join"}"#, 2.0),
        (r#"switchboard_frames_sent_total{type="welcome"}"#, 2.0),
        (r#"switchboard_errors_sent_total{code="unknown_peer"}"#, 1.0),
        (
            r#"switchboard_sdp_bytes_total{encoding="plain"}"#,
            4.0 * 5.0,
        ),
        (
            r#"switchboard_connection_attempts_total{outcome="accepted"}"#,
            2.0,
        ),
        ("switchboard_sessions", 2.0),
        (r#"switchboard_rooms{mode="pair"}"#, 1.0),
        ("switchboard_room_members", 2.0),
        ("switchboard_users", 1.0),
        // Three offers and one candidate batch went through the outbox.
        ("switchboard_relay_latency_seconds_count", 4.0),
    ] {
        prometheus.expect(query, want).await;
    }

    // A client cut off for an oversized message: close 1009, a drop.
    let mut big = Connection::connect(&url, default_hello()).await.unwrap();
    big.send_raw(bytes::Bytes::from(vec![0u8; 200 * 1024]))
        .await
        .unwrap();
    drop(big);
    prometheus
        .expect(r#"switchboard_closes_total{code="1009"}"#, 1.0)
        .await;
    prometheus
        .expect(r#"switchboard_drops_total{reason="oversized"}"#, 1.0)
        .await;
    drop(a);
    drop(b);
    prometheus.expect("switchboard_sessions", 0.0).await;
    prometheus.expect("switchboard_room_members", 0.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exposition_passes_promtool_and_metrics_can_be_off() {
    need("promtool", "prometheus");
    let server = Server::start(&[]);
    let mut a = Connection::connect(&server.url(), default_hello())
        .await
        .unwrap();
    join_ok(&mut a, "promtool", RoomMode::Mesh).await;
    let response = http_get(server.addr, "/metrics").await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    check
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        body.contains("switchboard_rooms{mode=\"mesh\"} 1"),
        "{body}"
    );

    let off = Server::start(&["--metrics", "false"]);
    let response = http_get(off.addr, "/metrics").await;
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
}
