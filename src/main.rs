//! The `switchboard` binary: parses options and runs the server, or mints
//! an access token (`switchboard token`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Parser;
use switchboard::config::{AuthMode, Config, Secret};
use tracing_subscriber::EnvFilter;

/// jemalloc returns freed pages to the system and packs small allocations
/// tightly, which keeps resident memory per idle connection low after the
/// bursts of short-lived buffers that connection set-up allocates
/// (BENCHMARKS.md compares it with glibc malloc and mimalloc).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// A WebRTC signaling relay: 1:1 rooms, mesh rooms and calls by name.
///
/// Settings come from the defaults, then --config FILE (TOML, same keys as
/// the long options with '_' for '-', durations in milliseconds), then these
/// options or their environment variables.
///
/// Secrets (the JWT and TURN secrets) are read from files or the
/// environment, never from option values, which `ps` would show.
#[derive(Parser, Debug)]
#[command(version, about, long_about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text (for people) or JSON (one object per line, for log
    /// pipelines).
    #[arg(long, env = "SWITCHBOARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Least severe level logged (error, warn, info, debug, trace);
    /// RUST_LOG, when set, overrides it with per-module directives.
    #[arg(long, env = "SWITCHBOARD_LOG_LEVEL", default_value = "info")]
    log_level: String,
    /// Address to listen on.
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Count and serve Prometheus metrics (true or false).
    #[arg(long, env = "SWITCHBOARD_METRICS")]
    metrics: Option<bool>,
    /// Path of the metrics endpoint.
    #[arg(long, env = "SWITCHBOARD_METRICS_PATH")]
    metrics_path: Option<String>,
    /// Serve metrics on this address only (not on --listen), e.g. a
    /// private interface.
    #[arg(long, env = "SWITCHBOARD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Node id in a multi-node routing space (high 16 bits of peer ids).
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<u16>,
    /// Most connections at once.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most connections at once from one IP address.
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Milliseconds a client has to upgrade and send Hello.
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// Milliseconds of silence before the server pings.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Milliseconds of silence before a connection is closed.
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// Milliseconds clients get to close on shutdown.
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Most frames in one WebSocket message.
    #[arg(long, env = "SWITCHBOARD_MAX_FRAMES_PER_MESSAGE")]
    max_frames_per_message: Option<usize>,
    /// Largest SDP, compressed or inflated, in bytes.
    #[arg(long, env = "SWITCHBOARD_MAX_SDP_BYTES")]
    max_sdp_bytes: Option<usize>,
    /// Most ICE candidates in one IceCandidates batch.
    #[arg(long, env = "SWITCHBOARD_MAX_CANDIDATES_PER_BATCH")]
    max_candidates_per_batch: Option<usize>,
    /// Sustained frames (and frameless WebSocket messages, pings included) per second per client.
    #[arg(long, env = "SWITCHBOARD_RATE_PER_SECOND")]
    rate_per_second: Option<u32>,
    /// Burst of frames above the sustained rate.
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Sustained bytes per second per client.
    #[arg(long, env = "SWITCHBOARD_RATE_BYTES_PER_SECOND")]
    rate_bytes_per_second: Option<u32>,
    /// Burst of bytes above the sustained byte rate (at least --max-message-bytes).
    #[arg(long, env = "SWITCHBOARD_RATE_BYTES_BURST")]
    rate_bytes_burst: Option<u32>,
    /// Rate-limited frames within one abuse window, more than were accepted, before the client is disconnected.
    #[arg(long, env = "SWITCHBOARD_RATE_ABUSE_THRESHOLD")]
    rate_abuse_threshold: Option<u32>,
    /// The window of the abuse rule, in milliseconds.
    #[arg(long, env = "SWITCHBOARD_RATE_ABUSE_WINDOW_MS")]
    rate_abuse_window_ms: Option<u64>,
    /// Capacity of a mesh room created without asking.
    #[arg(long, env = "SWITCHBOARD_DEFAULT_ROOM_CAPACITY")]
    default_room_capacity: Option<u32>,
    /// Largest mesh room capacity a client may ask for.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOM_CAPACITY")]
    max_room_capacity: Option<u32>,
    /// Most rooms one connection may be in.
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS_PER_PEER")]
    max_rooms_per_peer: Option<usize>,
    /// Frames queued for one client before it is cut off as slow.
    #[arg(long, env = "SWITCHBOARD_OUTBOX_FRAMES")]
    outbox_frames: Option<usize>,
    /// Bytes queued for one client before it is cut off as slow.
    #[arg(long, env = "SWITCHBOARD_OUTBOX_BYTES")]
    outbox_bytes: Option<usize>,
    /// Read buffer per WebSocket connection, in bytes.
    #[arg(long, env = "SWITCHBOARD_READ_BUFFER_BYTES")]
    read_buffer_bytes: Option<usize>,
    /// STUN/TURN URL handed to clients; repeat for several.
    #[arg(
        long = "ice-server",
        env = "SWITCHBOARD_ICE_SERVERS",
        value_delimiter = ','
    )]
    ice_servers: Option<Vec<String>>,
    /// Routing-table shards.
    #[arg(long, env = "SWITCHBOARD_SHARDS")]
    shards: Option<usize>,
    /// Client authentication: none (anyone, for development) or token
    /// (HS256 JWTs; see SECURITY.md).
    #[arg(long, env = "SWITCHBOARD_AUTH")]
    auth: Option<AuthMode>,
    /// File holding the JWT secret (at least 32 bytes; trailing whitespace is
    /// ignored). Alternatively set SWITCHBOARD_JWT_SECRET to the secret.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    /// URL webhook events are POSTed to; repeat (or comma-separate) for
    /// several.
    #[arg(
        long = "webhook-url",
        env = "SWITCHBOARD_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    webhook_urls: Option<Vec<String>>,
    /// Redis shared by the nodes of a cluster (redis://HOST:PORT,
    /// rediss://... with TLS, unix:///PATH); without it the node keeps its
    /// rooms and names in memory.
    #[arg(long, env = "SWITCHBOARD_REDIS_URL")]
    redis_url: Option<String>,
    /// Name of the cluster to join with --redis-url (the prefix of its keys
    /// and channels).
    #[arg(long, env = "SWITCHBOARD_CLUSTER")]
    cluster: Option<String>,
    /// Milliseconds a node's lease lasts without renewal; a node silent for
    /// longer is taken for dead and its peers removed.
    #[arg(long, env = "SWITCHBOARD_LEASE_MS")]
    lease_ms: Option<u64>,
    /// Milliseconds a client's request may wait for Redis before it is
    /// answered UNAVAILABLE.
    #[arg(long, env = "SWITCHBOARD_REDIS_TIMEOUT_MS")]
    redis_timeout_ms: Option<u64>,
    /// Milliseconds a session whose connection dropped waits for its client
    /// to resume it (clients with the resume capability); 0 turns resume off.
    #[arg(long, env = "SWITCHBOARD_RESUME_GRACE_MS")]
    resume_grace_ms: Option<u64>,
    /// Most unacknowledged frames kept for a resumable client.
    #[arg(long, env = "SWITCHBOARD_REPLAY_FRAMES")]
    replay_frames: Option<usize>,
    /// Most unacknowledged payload bytes kept for a resumable client.
    #[arg(long, env = "SWITCHBOARD_REPLAY_BYTES")]
    replay_bytes: Option<usize>,
    /// Longest wait, in milliseconds, before the server acknowledges a
    /// resumable client's frames.
    #[arg(long, env = "SWITCHBOARD_ACK_DELAY_MS")]
    ack_delay_ms: Option<u64>,
    /// File holding the key webhook requests are signed with (at least 16
    /// bytes). Alternatively set SWITCHBOARD_WEBHOOK_SECRET.
    #[arg(long, env = "SWITCHBOARD_WEBHOOK_SECRET_FILE")]
    webhook_secret_file: Option<PathBuf>,
    /// File holding the admin API's bearer token (at least 16 bytes); the
    /// API (/admin/...) is off without one. Alternatively set
    /// SWITCHBOARD_ADMIN_TOKEN.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Required `iss` claim of access tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_ISSUER")]
    jwt_issuer: Option<String>,
    /// Required `aud` claim of access tokens.
    #[arg(long, env = "SWITCHBOARD_JWT_AUDIENCE")]
    jwt_audience: Option<String>,
    /// Origin allowed to open WebSockets (e.g. https://app.example.com);
    /// repeat for several. Without any, every origin is allowed.
    #[arg(
        long = "allowed-origin",
        env = "SWITCHBOARD_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Option<Vec<String>>,
    /// PEM certificate chain: serve wss:// and https:// directly (needs --tls-key).
    #[arg(long, env = "SWITCHBOARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHBOARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// File holding coturn's static-auth-secret; with --turn-url, Welcome
    /// carries per-client TURN credentials. Alternatively set
    /// SWITCHBOARD_TURN_SECRET.
    #[arg(long, env = "SWITCHBOARD_TURN_SECRET_FILE")]
    turn_secret_file: Option<PathBuf>,
    /// turn:/turns: URL handed out with credentials; repeat for several.
    #[arg(
        long = "turn-url",
        env = "SWITCHBOARD_TURN_URLS",
        value_delimiter = ','
    )]
    turn_urls: Option<Vec<String>>,
    /// Lifetime of TURN credentials in milliseconds (`turn_ttl` in TOML,
    /// also milliseconds, like every duration).
    #[arg(long, env = "SWITCHBOARD_TURN_TTL_MS")]
    turn_ttl_ms: Option<u64>,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: timestamp, level, target, message and the
    /// event's and its connection's fields.
    Json,
}

/// Starts logging (to stdout, as the fmt subscriber does).
fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => {
            EnvFilter::try_new(directives).context("RUST_LOG is not a valid filter")?
        }
        _ => EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .flatten_event(true)
            .init(),
    }
    Ok(())
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Mints an access token for `--auth token` and prints it.
    Token(TokenArgs),
}

/// `switchboard token --secret-file F --sub alice --rooms a,b --ttl 900`
#[derive(clap::Args, Debug)]
struct TokenArgs {
    /// File holding the JWT secret (the server's --jwt-secret-file).
    /// Alternatively set SWITCHBOARD_JWT_SECRET.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET_FILE")]
    secret_file: Option<PathBuf>,
    /// The user name the token is for (`sub`).
    #[arg(long)]
    sub: String,
    /// Rooms the user may join, comma-separated.
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    /// The user may also join every room whose id starts with this
    /// ("" grants every room).
    #[arg(long)]
    room_prefix: Option<String>,
    /// Lifetime in seconds. Keep it short: a stolen token is good until it
    /// expires.
    #[arg(long, default_value_t = 900)]
    ttl: u64,
    /// The user may create rooms that do not exist yet.
    #[arg(long)]
    create_rooms: bool,
    /// Largest capacity the user may give a mesh room.
    #[arg(long)]
    max_capacity: Option<u32>,
    /// `iss` claim.
    #[arg(long)]
    issuer: Option<String>,
    /// `aud` claim.
    #[arg(long)]
    audience: Option<String>,
}

impl TokenArgs {
    fn mint(self) -> anyhow::Result<String> {
        let secret = read_secret(self.secret_file.as_deref(), "SWITCHBOARD_JWT_SECRET")?
            .context("no secret: pass --secret-file or set SWITCHBOARD_JWT_SECRET")?;
        let mut claims = switchboard::auth::Claims::new(
            &self.sub,
            SystemTime::now(),
            Duration::from_secs(self.ttl),
        );
        claims.rooms = self.rooms;
        claims.room_prefix = self.room_prefix;
        claims.create_rooms = self.create_rooms;
        claims.max_capacity = self.max_capacity;
        claims.iss = self.issuer;
        claims.aud = self.audience;
        Ok(switchboard::auth::mint(&claims, secret.expose())?)
    }
}

/// A secret from `file` (trailing whitespace, such as the newline `echo`
/// or `openssl rand -base64` leave, is dropped), else from the environment
/// variable `var`.
fn read_secret(file: Option<&Path>, var: &str) -> anyhow::Result<Option<Secret>> {
    if let Some(path) = file {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(
                    file = %path.display(),
                    "secret file is readable by other users; chmod 600 it"
                );
            }
        }
        return Ok(Some(Secret::new(bytes.trim_ascii_end())));
    }
    Ok(std::env::var_os(var).map(|v| Secret::new(v.into_encoded_bytes().trim_ascii_end())))
}

impl Cli {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        let ms = Duration::from_millis;
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = self.$field { c.$field = v; })* };
        }
        set!(
            listen,
            metrics,
            metrics_path,
            node_id,
            max_connections,
            max_connections_per_ip,
            max_message_bytes,
            max_frames_per_message,
            max_sdp_bytes,
            max_candidates_per_batch,
            rate_per_second,
            rate_burst,
            rate_bytes_per_second,
            rate_bytes_burst,
            rate_abuse_threshold,
            default_room_capacity,
            max_room_capacity,
            max_rooms_per_peer,
            outbox_frames,
            outbox_bytes,
            read_buffer_bytes,
            ice_servers,
            shards,
            auth,
            allowed_origins,
            turn_urls,
            webhook_urls,
            cluster,
            replay_frames,
            replay_bytes
        );
        if let Some(v) = self.resume_grace_ms {
            c.resume_grace = ms(v);
        }
        if let Some(v) = self.ack_delay_ms {
            c.ack_delay = ms(v);
        }
        if self.redis_url.is_some() {
            c.redis_url = self.redis_url;
        }
        if let Some(v) = self.lease_ms {
            c.lease = ms(v);
        }
        if let Some(v) = self.redis_timeout_ms {
            c.redis_timeout = ms(v);
        }
        if self.jwt_issuer.is_some() {
            c.jwt_issuer = self.jwt_issuer;
        }
        if self.jwt_audience.is_some() {
            c.jwt_audience = self.jwt_audience;
        }
        if self.tls_cert.is_some() {
            c.tls_cert = self.tls_cert;
        }
        if self.metrics_listen.is_some() {
            c.metrics_listen = self.metrics_listen;
        }
        if self.tls_key.is_some() {
            c.tls_key = self.tls_key;
        }
        if let Some(v) = self.turn_ttl_ms {
            c.turn_ttl = ms(v);
        }
        c.jwt_secret = read_secret(self.jwt_secret_file.as_deref(), "SWITCHBOARD_JWT_SECRET")?;
        c.turn_secret = read_secret(self.turn_secret_file.as_deref(), "SWITCHBOARD_TURN_SECRET")?;
        c.admin_token = read_secret(self.admin_token_file.as_deref(), "SWITCHBOARD_ADMIN_TOKEN")?;
        c.webhook_secret = read_secret(
            self.webhook_secret_file.as_deref(),
            "SWITCHBOARD_WEBHOOK_SECRET",
        )?;
        if let Some(v) = self.handshake_timeout_ms {
            c.handshake_timeout = ms(v);
        }
        if let Some(v) = self.heartbeat_interval_ms {
            c.heartbeat_interval = ms(v);
        }
        if let Some(v) = self.heartbeat_timeout_ms {
            c.heartbeat_timeout = ms(v);
        }
        if let Some(v) = self.rate_abuse_window_ms {
            c.rate_abuse_window = ms(v);
        }
        if let Some(v) = self.shutdown_grace_ms {
            c.shutdown_grace = ms(v);
        }
        c.validate()?;
        Ok(c)
    }
}

/// The default of every option that has one, read from
/// `Config::default()`, so `--help` cannot drift from the code.
fn defaults(c: &Config) -> Vec<(&'static str, String)> {
    let ms = |d: Duration| d.as_millis().to_string();
    vec![
        ("listen", c.listen.to_string()),
        ("metrics", c.metrics.to_string()),
        ("metrics_path", c.metrics_path.clone()),
        ("node_id", c.node_id.to_string()),
        ("max_connections", c.max_connections.to_string()),
        (
            "max_connections_per_ip",
            c.max_connections_per_ip.to_string(),
        ),
        ("handshake_timeout_ms", ms(c.handshake_timeout)),
        ("heartbeat_interval_ms", ms(c.heartbeat_interval)),
        ("heartbeat_timeout_ms", ms(c.heartbeat_timeout)),
        ("shutdown_grace_ms", ms(c.shutdown_grace)),
        ("max_message_bytes", c.max_message_bytes.to_string()),
        (
            "max_frames_per_message",
            c.max_frames_per_message.to_string(),
        ),
        ("max_sdp_bytes", c.max_sdp_bytes.to_string()),
        (
            "max_candidates_per_batch",
            c.max_candidates_per_batch.to_string(),
        ),
        ("rate_per_second", c.rate_per_second.to_string()),
        ("rate_burst", c.rate_burst.to_string()),
        ("rate_bytes_per_second", c.rate_bytes_per_second.to_string()),
        ("rate_bytes_burst", c.rate_bytes_burst.to_string()),
        ("rate_abuse_threshold", c.rate_abuse_threshold.to_string()),
        ("rate_abuse_window_ms", ms(c.rate_abuse_window)),
        ("default_room_capacity", c.default_room_capacity.to_string()),
        ("max_room_capacity", c.max_room_capacity.to_string()),
        ("max_rooms_per_peer", c.max_rooms_per_peer.to_string()),
        ("outbox_frames", c.outbox_frames.to_string()),
        ("outbox_bytes", c.outbox_bytes.to_string()),
        ("read_buffer_bytes", c.read_buffer_bytes.to_string()),
        ("ice_servers", c.ice_servers.join(",")),
        ("shards", c.shards.to_string()),
        ("auth", format!("{:?}", c.auth).to_lowercase()),
        ("turn_ttl_ms", ms(c.turn_ttl)),
        ("cluster", c.cluster.clone()),
        ("lease_ms", ms(c.lease)),
        ("redis_timeout_ms", ms(c.redis_timeout)),
        ("resume_grace_ms", ms(c.resume_grace)),
        ("replay_frames", c.replay_frames.to_string()),
        ("replay_bytes", c.replay_bytes.to_string()),
        ("ack_delay_ms", ms(c.ack_delay)),
    ]
}

#[cfg(test)]
/// Every key of the TOML file, as `Config` itself lists them when it
/// refuses an unknown one.
fn toml_keys() -> Vec<String> {
    let e = toml::from_str::<Config>("__no_such_key__ = 0")
        .expect_err("Config refuses unknown keys")
        .to_string();
    let list = e.split("expected one of").nth(1).unwrap_or("");
    list.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
/// `docs/CONFIG.md`: every option with its environment variable, TOML key,
/// unit, default and meaning, from the command line's definition and
/// `Config`'s (a test fails when the committed file differs).
fn config_reference() -> String {
    let mut out = String::from(
        "# Configuration reference\n\n\
         Generated from the code by `SWITCHBOARD_WRITE_DOCS=1 cargo test --bin switchboard \
         config_reference`; a test fails when this file is out of date.\n\n\
         Every option can be given on the command line, in its environment variable, or (where a \
         TOML key is listed) in the file named by `--config`; the command line and the \
         environment override the file, which overrides the default. Durations are in \
         milliseconds everywhere, in TOML too. Secrets are read from files or the environment \
         only, never from the TOML file or a plain command-line value.\n\n\
         | option | environment | TOML key | unit | default | meaning |\n\
         |---|---|---|---|---|---|\n",
    );
    let keys = toml_keys();
    let cmd = command();
    let mut args: Vec<&clap::Arg> = cmd.get_arguments().collect();
    args.sort_by_key(|a| a.get_long());
    let mut covered = Vec::new();
    for arg in args {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if matches!(id, "help" | "version") {
            continue;
        }
        let env = arg
            .get_env()
            .map_or(String::new(), |e| format!("`{}`", e.to_string_lossy()));
        let key = id.strip_suffix("_ms").unwrap_or(id);
        let toml = if keys.iter().any(|k| k == key) {
            covered.push(key.to_owned());
            format!("`{key}`")
        } else {
            "—".into()
        };
        let unit = if id.ends_with("_ms") {
            "ms"
        } else if id.contains("per_second") && id.contains("bytes") {
            "bytes/s"
        } else if id.contains("per_second") {
            "frames/s"
        } else if id.contains("bytes") {
            "bytes"
        } else {
            ""
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        // The help carries its default as "[default: x]" (see `command`).
        let (meaning, default) = match help.rsplit_once(" [default: ") {
            Some((m, d)) => (m.to_owned(), d.trim_end_matches(']').to_owned()),
            None => {
                let d = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
                    .join(",");
                (help.clone(), d)
            }
        };
        let default = if default.is_empty() {
            "—".into()
        } else {
            format!("`{default}`")
        };
        let meaning = meaning.replace('\n', " ").replace('|', "\\|");
        out.push_str(&format!(
            "| `--{long}` | {env} | {toml} | {unit} | {default} | {meaning} |\n"
        ));
    }
    let toml_only: Vec<&String> = keys.iter().filter(|k| !covered.contains(k)).collect();
    if !toml_only.is_empty() {
        out.push_str("\nIn the TOML file only (see `src/config.rs` for their defaults):\n\n");
        for key in toml_only {
            out.push_str(&format!("- `{key}`\n"));
        }
    }
    out
}

/// The command line, with each option's default appended to its help.
fn command() -> clap::Command {
    use clap::CommandFactory;
    defaults(&Config::default())
        .into_iter()
        .fold(Cli::command(), |cmd, (id, value)| {
            cmd.mut_arg(id, |arg| {
                let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
                arg.help(format!("{help} [default: {value}]"))
            })
        })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested");
}

fn main() -> anyhow::Result<()> {
    let mut cli = {
        use clap::FromArgMatches;
        Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
    };
    init_logging(cli.log_format, &cli.log_level)?;
    if let Some(Command::Token(args)) = cli.command.take() {
        println!("{}", args.mint()?);
        return Ok(());
    }
    let config = cli.into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        if config.redis_url.is_some() {
            let directory = switchboard::cluster::ClusterDirectory::start(&config)
                .await
                .context("joining the cluster")?;
            switchboard::server::run_with_directory(listener, config, directory, shutdown_signal())
                .await?;
        } else {
            switchboard::server::run(listener, config, shutdown_signal()).await?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn config_reference_is_up_to_date() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/CONFIG.md");
        let want = config_reference();
        if std::env::var_os("SWITCHBOARD_WRITE_DOCS").is_some_and(|v| v == "1") {
            std::fs::write(path, &want).unwrap();
        }
        let have = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            have == want,
            "docs/CONFIG.md is out of date: run SWITCHBOARD_WRITE_DOCS=1 cargo test --bin switchboard config_reference"
        );
        // Every TOML key of Config is documented.
        for key in [
            "listen",
            "heartbeat_interval",
            "metrics_listen",
            "webhook_urls",
            "turn_ttl",
        ] {
            assert!(want.contains(&format!("`{key}`")), "{key}");
        }
    }

    #[test]
    fn help_shows_the_defaults_of_config() {
        let help = command().render_long_help().to_string();
        let c = Config::default();
        for (id, value) in defaults(&c) {
            assert!(
                help.contains(&format!("[default: {value}]")),
                "--help lacks the default of {id} ({value})"
            );
        }
        assert!(help.contains(&format!("[default: {}]", c.rate_per_second)));
    }

    #[test]
    fn durations_have_the_same_unit_on_the_command_line_and_in_toml() {
        let dir = std::env::temp_dir().join(format!("switchboard-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.toml");
        std::fs::write(&file, "turn_ttl = 120000\nheartbeat_interval = 2000\n").unwrap();
        let from_toml = Cli::parse_from(["switchboard", "--config", file.to_str().unwrap()])
            .into_config()
            .unwrap();
        let from_cli = Cli::parse_from([
            "switchboard",
            "--turn-ttl-ms",
            "120000",
            "--heartbeat-interval-ms",
            "2000",
        ])
        .into_config()
        .unwrap();
        assert_eq!(from_toml.turn_ttl, Duration::from_secs(120));
        assert_eq!(from_cli.turn_ttl, from_toml.turn_ttl);
        assert_eq!(from_cli.heartbeat_interval, from_toml.heartbeat_interval);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
