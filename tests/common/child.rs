//! The switchboard binary in a child process, for tests that must see the
//! server's own memory (`/proc/PID/status`), CPU or open-files limit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Rate and per-address limits lifted, for tests where one process speaks
/// for hundreds or thousands of users, all from a few 127.0.0.x addresses.
pub const LIFTED: &[&str] = &[
    "--rate-per-second",
    "100000000",
    "--rate-burst",
    "100000000",
    "--rate-bytes-per-second",
    "2000000000",
    "--rate-bytes-burst",
    "2000000000",
    "--max-connections-per-ip",
    "1000000",
];

/// The switchboard binary running in a child process.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// Where `--metrics-listen` ended up, when given.
    pub metrics_addr: Option<SocketAddr>,
    log: PathBuf,
}

impl Server {
    pub fn start(args: &[&str]) -> Server {
        Server::start_with(args, None, &[])
    }

    /// Starts the server with `args` and `env`, under an open-files limit
    /// (soft and hard) of `nofile` if given, and waits until it listens.
    ///
    /// The server listens on port 0 and the test reads the port it got from
    /// its "listening" line: no port is picked here and freed for the server
    /// to take later, so tests running side by side cannot race for one.
    /// Pass `--metrics-listen 127.0.0.1:0` the same way; see `metrics_addr`.
    pub fn start_with(args: &[&str], nofile: Option<u64>, env: &[(&str, &str)]) -> Server {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let log = std::env::temp_dir().join(format!(
            "switchboard-child-{}-{}.log",
            std::process::id(),
            STARTS.fetch_add(1, Ordering::Relaxed)
        ));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        cmd.args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "warn,switchboard::listen=info")
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit());
        if let Some(limit) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe; nothing else runs
            // between fork and exec.
            unsafe {
                cmd.pre_exec(move || rlimit::setrlimit(rlimit::Resource::NOFILE, limit, limit));
            }
        }
        let child = cmd.spawn().expect("start the switchboard binary");
        let mut server = Server {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            metrics_addr: None,
            log,
        };
        server.wait_ready(args.contains(&"--metrics-listen"));
        server
    }

    /// Waits for the "listening" line (and "metrics listening" when asked
    /// for) and takes the addresses from it.
    fn wait_ready(&mut self, metrics: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "switchboard exited at start-up: {status}; log: {}",
                    self.log_text()
                );
            }
            let log = self.log_text();
            let main = listen_line(&log, "listening");
            let metrics_addr = listen_line(&log, "metrics listening");
            if let Some(addr) = main {
                if !metrics || metrics_addr.is_some() {
                    self.addr = addr;
                    self.metrics_addr = metrics_addr;
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "switchboard did not log that it listens within 20 s; log: {}",
            self.log_text()
        );
    }

    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A field of the server's `/proc/PID/status`, in KiB.
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in the server's status"))
    }

    /// The server's peak resident memory so far.
    pub fn peak_kib(&self) -> u64 {
        self.status_kib("VmHWM:")
    }

    /// What `GET /metrics` on the main port answers (the body).
    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(self.addr).expect("connect for /metrics");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text.split_once("\r\n\r\n")
            .map_or(text.clone(), |(_, b)| b.to_owned())
    }

    /// The value of the series `series` (name and labels, as printed) in
    /// `/metrics`, 0 if absent.
    pub fn metric(&self, series: &str) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "the server died; log: {}",
            self.log_text()
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // SWITCHBOARD_KEEP_LOGS=1 keeps them, to read after a failure.
        if std::env::var_os("SWITCHBOARD_KEEP_LOGS").is_none() {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The address on the `switchboard::listen` line whose message is exactly
/// `message`, in the text or the JSON log format.
fn listen_line(log: &str, message: &str) -> Option<SocketAddr> {
    log.lines()
        .filter(|l| l.contains("switchboard::listen"))
        .find(|l| {
            l.contains(&format!("\"message\":\"{message}\""))
                || l.contains(&format!("switchboard::listen: {message} "))
        })
        .and_then(|l| {
            let at = l
                .find("addr=")
                .map(|i| i + "addr=".len())
                .or_else(|| l.find("\"addr\":\"").map(|i| i + "\"addr\":\"".len()))?;
            let rest = &l[at..];
            let end = rest
                .find(|c: char| !(c.is_ascii_hexdigit() || ".:[]".contains(c)))
                .unwrap_or(rest.len());
            rest[..end].parse().ok()
        })
}
