//! A throw-away `redis-server` for the cluster tests: on a unix socket in a
//! fresh directory, with no persistence, killed when dropped.
//!
//! It is the real Debian `redis-server` binary, so a test can pause it
//! (SIGSTOP), resume it (SIGCONT), or kill it and start an empty one on the
//! same socket path, as an operator's Redis would fail.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const NOT_FOUND: &str = "redis-server not found: install the Debian package redis-server \
                         (scripts/test.sh does this when run as root)";

/// Where a [`Redis`] listens.
#[derive(Clone, Debug)]
enum Endpoint {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

/// A `redis-server` child process.
pub struct Redis {
    child: Option<Child>,
    dir: PathBuf,
    endpoint: Endpoint,
    paused: bool,
}

impl Redis {
    /// Starts `redis-server` on a unix socket in a new temporary directory
    /// and waits until it answers PING.
    pub fn start() -> Redis {
        let dir = fresh_dir();
        let endpoint = Endpoint::Unix(dir.join("redis.sock"));
        let child = spawn(&dir, &endpoint);
        let mut redis = Redis {
            child: Some(child),
            dir,
            endpoint,
            paused: false,
        };
        redis.wait_ready();
        redis
    }

    /// Starts `n` switchboard nodes of cluster `cluster` on this Redis,
    /// each with `args` too.
    pub fn nodes(&self, cluster: &str, n: usize, args: &[&str]) -> Vec<super::child::Server> {
        let url = self.url();
        let mut all = vec!["--redis-url", &url, "--cluster", cluster];
        all.extend_from_slice(args);
        // SWITCHBOARD_NODE_LOG sets the nodes' RUST_LOG, to debug a test.
        let log = std::env::var("SWITCHBOARD_NODE_LOG").unwrap_or_else(|_| {
            "warn,switchboard::listen=info,switchboard::cluster=info".to_owned()
        });
        (0..n)
            .map(|_| super::child::Server::start_with(&all, None, &[("RUST_LOG", &log)]))
            .collect()
    }

    /// Starts `redis-server` on TCP at 127.0.0.1, on a port it finds free
    /// by trying: redis cannot be asked for an ephemeral port, so a port
    /// taken by someone else in between makes it exit and the next is tried.
    pub fn start_tcp() -> Redis {
        let base = 20_000 + (std::process::id() % 20_000) as u16;
        let mut last_log = String::new();
        for attempt in 0..50u16 {
            let port = base.wrapping_add(attempt.wrapping_mul(397)) % 40_000 + 20_000;
            let dir = fresh_dir();
            let endpoint = Endpoint::Tcp(([127, 0, 0, 1], port).into());
            let child = spawn(&dir, &endpoint);
            let mut redis = Redis {
                child: Some(child),
                dir,
                endpoint,
                paused: false,
            };
            if redis.try_wait_ready(Duration::from_secs(10)) {
                return redis;
            }
            last_log = redis.log_text();
            // Dropped: killed, its directory removed; try the next port.
        }
        panic!("redis-server did not start on any of 50 TCP ports; last log: {last_log}");
    }

    /// The URL a switchboard node takes in `--redis-url`:
    /// `unix:///path/redis.sock`, or `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Unix(path) => format!("unix://{}", path.display()),
            Endpoint::Tcp(addr) => format!("redis://{addr}"),
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis is running").id()
    }

    /// Stops the server with SIGSTOP: connections stay open, nothing is
    /// answered.
    pub fn pause(&mut self) {
        signal(self.pid(), "-STOP");
        self.paused = true;
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&mut self) {
        signal(self.pid(), "-CONT");
        self.paused = false;
    }

    /// Kills the server (SIGKILL) and starts an empty one at the same
    /// address; waits until it answers.
    pub fn restart_empty(&mut self) {
        self.kill();
        if let Endpoint::Unix(path) = &self.endpoint {
            let _ = std::fs::remove_file(path);
        }
        // Keep the old log for a post-mortem.
        let log = self.dir.join("redis.log");
        if log.exists() {
            let _ = std::fs::rename(&log, self.dir.join("redis.log.before-restart"));
        }
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
        self.child = Some(spawn(&self.dir, &self.endpoint));
        self.wait_ready();
    }

    /// Kills the server (SIGKILL) and waits for it to go.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            if self.paused {
                // SIGKILL works on a stopped process, but continue it anyway
                // so nothing lingers.
                signal(child.id(), "-CONT");
                self.paused = false;
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log_text(&self) -> String {
        let mut out = String::new();
        let before = self.dir.join("redis.log.before-restart");
        if let Ok(s) = std::fs::read_to_string(before) {
            out.push_str("--- before restart ---\n");
            out.push_str(&s);
            out.push_str("--- after restart ---\n");
        }
        out.push_str(&std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default());
        out
    }

    /// Sends one inline command and returns the first reply line, e.g.
    /// `command("DBSIZE")` -> `":3"`. For tests that look into Redis.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        let mut buf = [0u8; 4096];
        let n = match &self.endpoint {
            Endpoint::Unix(path) => {
                let mut s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(format!("{line}\r\n").as_bytes())?;
                s.read(&mut buf)?
            }
            Endpoint::Tcp(addr) => {
                let mut s = TcpStream::connect_timeout(addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                s.write_all(format!("{line}\r\n").as_bytes())?;
                s.read(&mut buf)?
            }
        };
        let text = String::from_utf8_lossy(&buf[..n]);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    fn wait_ready(&mut self) {
        if !self.try_wait_ready(Duration::from_secs(10)) {
            panic!(
                "redis-server did not answer PING within 10 s at {}; log: {}",
                self.url(),
                self.log_text()
            );
        }
    }

    /// Waits until the server answers `+PONG`; false if it exited or did not
    /// answer in time.
    fn try_wait_ready(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(_)) = child.try_wait() {
                    return false;
                }
            }
            // Our own server's log must say it is ready: on TCP, a PONG
            // could come from someone else's server on that port.
            let ready = std::fs::read_to_string(self.dir.join("redis.log")).is_ok_and(|log| {
                log.to_ascii_lowercase()
                    .contains("ready to accept connections")
            });
            if ready && self.command("PING").is_ok_and(|r| r.starts_with("+PONG")) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fresh_dir() -> PathBuf {
    static STARTS: AtomicU32 = AtomicU32::new(0);
    // Short: a unix socket path must fit in 108 bytes.
    let dir = std::env::temp_dir().join(format!(
        "sb-redis-{}-{}",
        std::process::id(),
        STARTS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spawn(dir: &Path, endpoint: &Endpoint) -> Child {
    let mut cmd = Command::new("redis-server");
    match endpoint {
        Endpoint::Unix(path) => {
            cmd.args(["--port", "0", "--unixsocket"])
                .arg(path)
                .args(["--unixsocketperm", "700"]);
        }
        Endpoint::Tcp(addr) => {
            cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1"]);
        }
    }
    cmd.args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!("{NOT_FOUND}"),
        Err(e) => panic!("could not start redis-server: {e}"),
    }
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {sig} {pid} failed: {status}");
}
