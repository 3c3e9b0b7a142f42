//! TURN credentials from `switchboard::turn` against a real coturn.
//!
//! Each test starts its own `turnserver` on a free loopback port with the
//! REST secret scheme (`--use-auth-secret`), then drives `turnutils_uclient`
//! with credentials this crate issued: valid ones allocate relays and carry
//! data through them; expired or forged ones are refused, and coturn's log
//! says it was the credentials it refused.
//!
//! The last test closes the loop: a running switchboard configured with
//! coturn's secret hands out credentials in Welcome, and those allocate.
//!
//! Both programs come from the Debian/Ubuntu package `coturn`. When they are
//! missing the tests fail rather than skip, so CI cannot pass without
//! exercising them.

mod common;

use std::io::Read;
use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use switchboard::turn::TurnConfig;

const INSTALL_HINT: &str = "install coturn: apt-get install coturn";
const REALM: &str = "switchboard.test";

/// A `turnserver` child process, killed when dropped.
struct Coturn {
    child: Child,
    port: u16,
    secret: String,
    log: Arc<Mutex<String>>,
    dir: PathBuf,
}

impl Coturn {
    /// Starts coturn on a free loopback port and waits until it answers a
    /// STUN binding request.
    fn start() -> Coturn {
        let secret: String = rand::random::<[u8; 16]>()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        // A port can be taken between our probe and coturn's bind; try again
        // on a fresh one if coturn does not come up.
        for _ in 0..3 {
            let port = free_udp_port();
            let dir = std::env::temp_dir()
                .join(format!("switchboard-coturn-{}-{port}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut child = Command::new("turnserver")
                // -n: ignore /etc/turnserver.conf.
                .arg("-n")
                .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
                .arg(format!("--listening-port={port}"))
                .arg("--use-auth-secret")
                .arg(format!("--static-auth-secret={secret}"))
                .arg(format!("--realm={REALM}"))
                // The uclient peers are relay addresses on 127.0.0.1.
                .arg("--allow-loopback-peers")
                .args(["--no-tls", "--no-dtls", "--no-cli"])
                .args(["--log-file=stdout", "--simple-log"])
                // Keep state out of /var so tests run unprivileged and in
                // parallel.
                .arg(format!(
                    "--pidfile={}",
                    dir.join("turnserver.pid").display()
                ))
                .arg(format!("--db={}", dir.join("turndb").display()))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| {
                    let _ = std::fs::remove_dir_all(&dir);
                    panic!("cannot run turnserver ({e}): {INSTALL_HINT}")
                });
            let log = Arc::new(Mutex::new(String::new()));
            collect(child.stdout.take().unwrap(), log.clone());
            collect(child.stderr.take().unwrap(), log.clone());
            let server = Coturn {
                child,
                port,
                secret: secret.clone(),
                log,
                dir,
            };
            if server.wait_until_listening(Duration::from_secs(5)) {
                return server;
            }
            eprintln!(
                "coturn did not come up on port {port}, retrying; its log:\n{}",
                server.log()
            );
        }
        panic!("coturn did not start listening on loopback");
    }

    fn wait_until_listening(&self, within: Duration) -> bool {
        let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        // STUN Binding Request (RFC 5389 §6): type 0x0001, length 0, magic
        // cookie, 12-byte transaction id.
        let mut request = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
        request.extend_from_slice(b"switchboard!");
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 512];
        while Instant::now() < deadline {
            socket
                .send_to(&request, (Ipv4Addr::LOCALHOST, self.port))
                .unwrap();
            if let Ok((n, _)) = socket.recv_from(&mut buf) {
                // Binding Success Response with our transaction id.
                if n >= 20 && buf[..2] == [0x01, 0x01] && buf[8..20] == request[8..20] {
                    return true;
                }
            }
        }
        false
    }

    fn turn_config(&self, secret: &str, ttl: Duration) -> TurnConfig {
        TurnConfig {
            secret: secret.as_bytes().to_vec(),
            urls: vec![format!("turn:127.0.0.1:{}?transport=udp", self.port)],
            ttl,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Waits until coturn has logged `needle`, for at most `within`.
    fn wait_for_log(&self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.log().contains(needle) {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Runs `turnutils_uclient` with one client pair (`-y`: the two clients
    /// relay to each other) sending one message each, without RTCP
    /// allocations (`-c`), verbose so allocations are reported.
    fn uclient(&self, username: &str, password: &str) -> (ExitStatus, String) {
        let mut child = Command::new("turnutils_uclient")
            .args(["-v", "-y", "-c", "-n", "1", "-m", "1"])
            .args(["-u", username, "-w", password])
            .args(["-p", &self.port.to_string()])
            .arg("127.0.0.1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run turnutils_uclient ({e}): {INSTALL_HINT}"));
        let output = Arc::new(Mutex::new(String::new()));
        let out = collect(child.stdout.take().unwrap(), output.clone());
        let err = collect(child.stderr.take().unwrap(), output.clone());
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "turnutils_uclient ran past 15 s; its output:\n{}\ncoturn log:\n{}",
                    output.lock().unwrap(),
                    self.log()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        out.join().unwrap();
        err.join().unwrap();
        let text = output.lock().unwrap().clone();
        (status, text)
    }

    /// Asserts that `username` was refused for its credentials.
    fn assert_refused(&self, username: &str, password: &str) {
        let (status, output) = self.uclient(username, password);
        assert!(
            !status.success() && output.contains("Cannot complete Allocation"),
            "allocation with {username} was not refused ({status}):\n{output}"
        );
        let reason = format!("check_stun_auth: Cannot find credentials of user <{username}>");
        assert!(
            self.wait_for_log(&reason, Duration::from_secs(2)),
            "coturn did not log {reason:?}; its log:\n{}",
            self.log()
        );
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Appends everything `from` produces to `into`, on a thread.
fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            into.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn issued_credentials_allocate_a_relay() {
    let coturn = Coturn::start();
    let server = coturn
        .turn_config(&coturn.secret, Duration::from_secs(600))
        .credentials("alice", SystemTime::now());
    let (status, output) = coturn.uclient(&server.username, &server.credential);
    assert!(
        status.success()
            && output.contains("Received relay addr: 127.0.0.1:")
            // Both clients' messages went through the relays and back.
            && output.contains("tot_send_msgs=2, tot_recv_msgs=2"),
        "allocation failed ({status}):\n{output}\ncoturn log:\n{}",
        coturn.log()
    );
}

#[test]
fn expired_credentials_are_refused() {
    let coturn = Coturn::start();
    // Issued two hours ago with a one-hour lifetime.
    let issued = SystemTime::now() - Duration::from_secs(2 * 3600);
    let server = coturn
        .turn_config(&coturn.secret, Duration::from_secs(3600))
        .credentials("alice", issued);
    coturn.assert_refused(&server.username, &server.credential);
}

#[test]
fn forged_credentials_are_refused() {
    let coturn = Coturn::start();
    let server = coturn
        .turn_config("not-the-shared-secret", Duration::from_secs(600))
        .credentials("mallory", SystemTime::now());
    coturn.assert_refused(&server.username, &server.credential);
}

#[test]
fn credentials_from_a_real_welcome_allocate_a_relay() {
    let coturn = Coturn::start();
    let url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ice = runtime.block_on(async {
        let server = common::start_server(switchboard::config::Config {
            turn_secret: Some(switchboard::config::Secret::new(coturn.secret.as_bytes())),
            turn_urls: vec![url.clone()],
            ..common::test_config()
        })
        .await;
        let client = common::connect(&server).await;
        let turn = client
            .welcome()
            .ice_servers
            .iter()
            .find(|s| s.urls.contains(&url))
            .expect("Welcome carries coturn")
            .clone();
        assert!(turn
            .username
            .ends_with(&format!(":{}", client.welcome().peer_id)));
        server.shutdown().await;
        turn
    });
    let (status, output) = coturn.uclient(&ice.username, &ice.credential);
    assert!(
        status.success()
            && output.contains("Received relay addr: 127.0.0.1:")
            && output.contains("tot_send_msgs=2, tot_recv_msgs=2"),
        "allocation with Welcome's credentials failed ({status}):\n{output}\ncoturn log:\n{}",
        coturn.log()
    );
}
