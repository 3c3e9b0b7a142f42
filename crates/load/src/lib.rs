//! The load generator behind `switchboard-load`.
//!
//! Each scenario is a module with an options struct and an async
//! `run(&Common, &Options) -> Result<Report, LoadError>`, so the binary and
//! the smoke tests drive the same code:
//!
//! - [`relay`]: pairs in 1:1 rooms bounce ICE-sized messages with a window
//!   in flight; relayed messages/s and round-trip percentiles.
//! - [`handshake`]: rooms of K peers run offer/answer/ICE with real SDP;
//!   negotiations/s and time to complete.
//! - [`idle`]: many logged-in, joined connections; server RSS per connection.
//! - [`churn`]: connect/join/leave/disconnect loops; operations/s.
//! - [`directory`]: login/join/leave/logout loops on open connections; the
//!   latency of each request a cluster node decides in its shared directory.
//! - [`seed_relay`] and [`matchbox_relay`]: the relay in other servers' JSON
//!   dialects (seed 001's, matchbox's), over [`text_relay`], for
//!   comparisons with them (`benches/compare.sh`).
//!
//! The load generator speaks the protocol through the client crate's
//! [`Connection`] (frame by frame: frames queued and flushed as one
//! WebSocket message, received frames handed over undecoded on the relay
//! path), not through [`crate::client::Client`]: it coalesces its replies
//! and never inflates SDP, so that it stays cheaper than the server it
//! measures. [`PeerExt`] adds what the scenarios need on top (the peer id,
//! waiting for one answer). [`CpuProbe`] and [`sample_process`] read the
//! server's CPU time and RSS from `/proc`, so a report shows whether the
//! server was the bottleneck.

pub mod churn;
pub mod directory;
pub mod fleet;
pub mod handshake;
#[doc(no_inline)]
pub use switchboard_client as client;
#[doc(no_inline)]
pub use switchboard_protocol as protocol;
pub mod idle;
pub mod lite;
pub mod matchbox_relay;
pub mod relay;
pub mod seed_relay;
pub mod text_relay;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub use crate::client::Connection;
use crate::client::{default_hello, ClientError};
use crate::protocol::{Capabilities, DecodeError, Message, PeerId};

/// Why a load run failed before it could report.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL is not `ws://host:port/path`.
    #[error("bad url {url}: {why}")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] tungstenite::Error),
    /// The server sent bytes that do not decode.
    #[error("decode: {0}")]
    Decode(#[from] DecodeError),
    /// The server closed the connection.
    #[error("closed by the server")]
    Closed,
    /// The server answered with something the scenario did not expect.
    #[error("unexpected answer: {0}")]
    Unexpected(String),
    /// A setup step did not finish in time.
    #[error("timed out during {0}")]
    Timeout(&'static str),
}

impl From<ClientError> for LoadError {
    fn from(e: ClientError) -> LoadError {
        match e {
            ClientError::WebSocket(e) => LoadError::WebSocket(e),
            ClientError::Decode(e) => LoadError::Decode(e),
            ClientError::Closed { .. } => LoadError::Closed,
            other => LoadError::Unexpected(other.to_string()),
        }
    }
}

/// Options every scenario shares.
#[derive(Clone, Debug)]
pub struct Common {
    /// The server's WebSocket URL, `ws://host:port/path`.
    pub url: String,
    /// Spread client sockets over 127.0.0.1..=127.0.0.N; 1 (or 0) leaves the
    /// source address to the kernel.
    pub source_ips: u8,
    /// The server's process id, for CPU share and RSS.
    pub server_pid: Option<u32>,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Ask for session resume (acknowledgements and replay buffers on
    /// both sides), to measure what it costs.
    pub resume: bool,
}

impl Common {
    /// Options for `url` with no source spreading, no probe and no bar.
    pub fn new(url: impl Into<String>) -> Common {
        Common {
            url: url.into(),
            source_ips: 1,
            server_pid: None,
            progress: false,
            resume: false,
        }
    }
}

/// Where to connect: the resolved address and the URL for the handshake.
#[derive(Clone, Debug)]
pub struct Target {
    addr: SocketAddr,
    url: String,
    source_ips: u8,
    next_source: Arc<AtomicUsize>,
    resume: bool,
}

impl Target {
    /// Resolves the host of `common.url` once, up front.
    pub async fn resolve(common: &Common) -> Result<Target, LoadError> {
        let url = common.url.clone();
        let bad = |why| LoadError::BadUrl {
            url: url.clone(),
            why,
        };
        // Only ws:// for now: wss:// needs a TLS connector between the TCP
        // socket and the WebSocket handshake.
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| bad("only ws:// is supported"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        if authority.is_empty() {
            return Err(bad("no host"));
        }
        let host_port = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = tokio::net::lookup_host(host_port)
            .await?
            .next()
            .ok_or_else(|| bad("host does not resolve"))?;
        Ok(Target {
            addr,
            url,
            source_ips: common.source_ips,
            next_source: Arc::new(AtomicUsize::new(0)),
            resume: common.resume,
        })
    }

    /// Opens a TCP connection, bound round-robin to one of the source
    /// addresses, and runs the WebSocket client handshake over it.
    pub async fn open(&self) -> Result<WebSocketStream<TcpStream>, LoadError> {
        self.open_url(&self.url).await
    }

    /// Like [`Target::open`], at `<url>/<room>`: for servers whose room is
    /// the URL's path (matchbox).
    pub async fn open_room(&self, room: &str) -> Result<WebSocketStream<TcpStream>, LoadError> {
        self.open_url(&format!("{}/{room}", self.url.trim_end_matches('/')))
            .await
    }

    async fn open_url(&self, url: &str) -> Result<WebSocketStream<TcpStream>, LoadError> {
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(url, self.tcp().await?, Some(ws_config()))
                .await?;
        Ok(ws)
    }

    /// Opens a connection and completes Hello/Welcome, through the client
    /// crate's [`Connection`].
    pub async fn peer(&self) -> Result<Connection, LoadError> {
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            MaybeTlsStream::Plain(self.tcp().await?),
            Some(ws_config()),
        )
        .await?;
        let mut hello = default_hello();
        if self.resume {
            hello.capabilities = hello.capabilities.union(Capabilities::RESUME);
        }
        Ok(Connection::handshake(ws, hello).await?)
    }

    /// Resumes the session `held` names on a new connection (the old one
    /// dropped); whether the server resumed it is
    /// [`Connection::resumed`].
    pub async fn resume(
        &self,
        held: &crate::client::SessionResume,
    ) -> Result<Connection, LoadError> {
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            self.url.as_str(),
            MaybeTlsStream::Plain(self.tcp().await?),
            Some(ws_config()),
        )
        .await?;
        Ok(Connection::resume_handshake(ws, default_hello(), held).await?)
    }

    /// A TCP connection to the target, bound round-robin to one of the
    /// source addresses, without Nagle.
    async fn tcp(&self) -> Result<TcpStream, LoadError> {
        let socket = if self.addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if self.source_ips > 1 && self.addr.is_ipv4() {
            let n = self.next_source.fetch_add(1, Ordering::Relaxed) % self.source_ips as usize;
            let ip = Ipv4Addr::new(127, 0, 0, 1 + n as u8);
            bind_no_port(&socket, IpAddr::V4(ip))?;
        }
        let stream = socket.connect(self.addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

/// Small buffers: an idle run holds tens of thousands of connections.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

/// Binds `socket` to `ip` with IP_BIND_ADDRESS_NO_PORT, so the kernel picks
/// the port at connect time per (source, destination) pair and 127.0.0.x
/// addresses each get a full ephemeral-port range.
pub(crate) fn bind_no_port(socket: &TcpSocket, ip: IpAddr) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid fd and a pointer to a c_int of the given length.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket.bind(SocketAddr::new(ip, 0))
}

/// What the scenarios ask of a [`Connection`] besides what the client
/// crate offers.
#[allow(async_fn_in_trait)]
pub trait PeerExt {
    /// The id the server gave this connection.
    fn id(&self) -> PeerId;

    /// Reads until a message matching `want` arrives (others are dropped;
    /// an `Error` fails the step), within 10 seconds. For setup steps.
    async fn expect<T>(
        &mut self,
        step: &'static str,
        want: impl FnMut(Message) -> Option<T>,
    ) -> Result<T, LoadError>;
}

impl PeerExt for Connection {
    fn id(&self) -> PeerId {
        self.welcome().peer_id
    }

    async fn expect<T>(
        &mut self,
        step: &'static str,
        mut want: impl FnMut(Message) -> Option<T>,
    ) -> Result<T, LoadError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = tokio::time::timeout_at(deadline, self.recv())
                .await
                .map_err(|_| LoadError::Timeout(step))??;
            if let Message::Error(e) = &m {
                return Err(LoadError::Unexpected(format!("{step}: {e:?}")));
            }
            if let Some(t) = want(m) {
                return Ok(t);
            }
        }
    }
}

/// CPU time and memory of a process, from `/proc`.
#[derive(Clone, Copy, Debug)]
pub struct ProcSample {
    /// utime + stime, in seconds.
    pub cpu_seconds: f64,
    /// utime alone, in seconds.
    pub user_seconds: f64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
    /// When it was taken.
    pub at: Instant,
}

/// Reads CPU time and RSS of a process (`None` for the load generator itself).
pub fn sample_process(pid: Option<u32>) -> Option<ProcSample> {
    let dir = match pid {
        Some(p) => format!("/proc/{p}"),
        None => "/proc/self".to_string(),
    };
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    // The command name may hold spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let ticks: u64 = utime + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    Some(ProcSample {
        cpu_seconds: ticks as f64 / hz,
        user_seconds: utime as f64 / hz,
        rss_kib,
        at: Instant::now(),
    })
}

/// CPU shares of the server and of the load generator over one interval.
#[derive(Clone, Copy, Debug)]
pub struct CpuProbe {
    server: Option<ProcSample>,
    server_pid: Option<u32>,
    own: Option<ProcSample>,
}

/// What a [`CpuProbe`] measured.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct CpuShare {
    /// Server CPU time / wall time, in percent of one core (None without
    /// `--server-pid`).
    pub server_cpu_percent: Option<f64>,
    /// This load generator's CPU time / wall time, in percent of one core.
    pub loadgen_cpu_percent: Option<f64>,
    /// The server's user and kernel CPU seconds over the interval.
    #[serde(skip)]
    pub server_split: Option<(f64, f64)>,
}

impl CpuProbe {
    /// Starts measuring.
    pub fn start(server_pid: Option<u32>) -> CpuProbe {
        CpuProbe {
            server: server_pid.and_then(|p| sample_process(Some(p))),
            server_pid,
            own: sample_process(None),
        }
    }

    /// CPU shares since [`CpuProbe::start`].
    pub fn finish(&self) -> CpuShare {
        let share = |a: Option<ProcSample>, b: Option<ProcSample>| {
            let (a, b) = (a?, b?);
            let wall = b.at.duration_since(a.at).as_secs_f64();
            (wall > 0.0).then(|| round1(100.0 * (b.cpu_seconds - a.cpu_seconds) / wall))
        };
        let server_now = self.server_pid.and_then(|p| sample_process(Some(p)));
        let server_split = self.server.zip(server_now).map(|(a, b)| {
            let user = b.user_seconds - a.user_seconds;
            (user, b.cpu_seconds - a.cpu_seconds - user)
        });
        CpuShare {
            server_cpu_percent: share(self.server, server_now),
            loadgen_cpu_percent: share(self.own, sample_process(None)),
            server_split,
        }
    }
}

/// Raises this process's soft RLIMIT_NOFILE to the hard limit; returns the
/// new soft limit.
pub fn raise_fd_limit() -> std::io::Result<libc::rlim_t> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill in and then read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// A latency histogram in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Largest sample.
    pub max_us: u64,
}

impl Latency {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Latency {
        Latency {
            count: h.len(),
            p50_us: h.value_at_quantile(0.5),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// A progress bar on stderr, or a hidden one.
pub fn progress_bar(show: bool, len: u64, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar
}

/// Shows elapsed seconds of a timed run, with `status()` as the message,
/// until `duration` has passed.
pub async fn timed_run(show: bool, duration: Duration, status: impl Fn() -> String) {
    let bar = progress_bar(
        show,
        duration.as_millis() as u64,
        "{spinner} [{elapsed_precise}] {wide_bar} {msg}",
    );
    let start = tokio::time::Instant::now();
    let end = start + duration;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => break,
            _ = tick.tick() => {
                bar.set_position(start.elapsed().as_millis() as u64);
                bar.set_message(status());
            }
        }
    }
    bar.finish_and_clear();
}

/// Turns a report into `key  value` lines, nested objects flattened with
/// dots, for humans.
pub fn table(report: &impl Serialize) -> String {
    fn walk(prefix: &str, v: &serde_json::Value, rows: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, rows);
                }
            }
            serde_json::Value::Null => rows.push((prefix.to_string(), "-".into())),
            serde_json::Value::String(s) => rows.push((prefix.to_string(), s.clone())),
            other => rows.push((prefix.to_string(), other.to_string())),
        }
    }
    let value = serde_json::to_value(report).unwrap_or(serde_json::Value::Null);
    let mut rows = Vec::new();
    walk("", &value, &mut rows);
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{k:<width$}  {v}\n"));
    }
    out
}

/// A name unique to this process run, to keep room ids and user names of
/// runs against the same server apart.
pub fn run_tag() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}", std::process::id(), nanos)
}
