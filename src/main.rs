//! The `switchboard` binary: parses options and runs the server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchboard::config::Config;
use tracing_subscriber::EnvFilter;

/// mimalloc returns freed pages to the system and packs small allocations
/// tightly, which keeps resident memory per idle connection low after the
/// bursts of short-lived buffers that connection set-up allocates.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A WebRTC signaling relay: 1:1 rooms, mesh rooms and calls by name.
///
/// Settings come from the defaults, then --config FILE (TOML, same keys as
/// the long options with '_' for '-', durations in milliseconds), then these
/// options or their environment variables.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "SWITCHBOARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 0.0.0.0:8080].
    #[arg(long, env = "SWITCHBOARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// Node id in a multi-node routing space (high 16 bits of peer ids) [default: 0].
    #[arg(long, env = "SWITCHBOARD_NODE_ID")]
    node_id: Option<u16>,
    /// Most connections at once [default: 100000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Most connections at once from one IP address [default: 1000].
    #[arg(long, env = "SWITCHBOARD_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<usize>,
    /// Milliseconds a client has to upgrade and send Hello [default: 10000].
    #[arg(long, env = "SWITCHBOARD_HANDSHAKE_TIMEOUT_MS")]
    handshake_timeout_ms: Option<u64>,
    /// Milliseconds of silence before the server pings [default: 15000].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_INTERVAL_MS")]
    heartbeat_interval_ms: Option<u64>,
    /// Milliseconds of silence before a connection is closed [default: 45000].
    #[arg(long, env = "SWITCHBOARD_HEARTBEAT_TIMEOUT_MS")]
    heartbeat_timeout_ms: Option<u64>,
    /// Milliseconds clients get to close on shutdown [default: 5000].
    #[arg(long, env = "SWITCHBOARD_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
    /// Largest WebSocket message accepted, in bytes [default: 131072].
    #[arg(long, env = "SWITCHBOARD_MAX_MESSAGE_BYTES")]
    max_message_bytes: Option<usize>,
    /// Most frames in one WebSocket message [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_FRAMES_PER_MESSAGE")]
    max_frames_per_message: Option<usize>,
    /// Largest SDP, compressed or inflated, in bytes [default: 65536].
    #[arg(long, env = "SWITCHBOARD_MAX_SDP_BYTES")]
    max_sdp_bytes: Option<usize>,
    /// Sustained frames per second per client [default: 200].
    #[arg(long, env = "SWITCHBOARD_RATE_PER_SECOND")]
    rate_per_second: Option<u32>,
    /// Burst of frames above the sustained rate [default: 400].
    #[arg(long, env = "SWITCHBOARD_RATE_BURST")]
    rate_burst: Option<u32>,
    /// Rate-limited frames in a row before the client is disconnected [default: 1000].
    #[arg(long, env = "SWITCHBOARD_RATE_ABUSE_THRESHOLD")]
    rate_abuse_threshold: Option<u32>,
    /// Capacity of a mesh room created without asking [default: 8].
    #[arg(long, env = "SWITCHBOARD_DEFAULT_ROOM_CAPACITY")]
    default_room_capacity: Option<u32>,
    /// Largest mesh room capacity a client may ask for [default: 64].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOM_CAPACITY")]
    max_room_capacity: Option<u32>,
    /// Most rooms one connection may be in [default: 16].
    #[arg(long, env = "SWITCHBOARD_MAX_ROOMS_PER_PEER")]
    max_rooms_per_peer: Option<usize>,
    /// Frames queued for one client before it is cut off as slow [default: 1024].
    #[arg(long, env = "SWITCHBOARD_OUTBOX_FRAMES")]
    outbox_frames: Option<usize>,
    /// Bytes queued for one client before it is cut off as slow [default: 1048576].
    #[arg(long, env = "SWITCHBOARD_OUTBOX_BYTES")]
    outbox_bytes: Option<usize>,
    /// Read buffer per WebSocket connection, in bytes [default: 256].
    #[arg(long, env = "SWITCHBOARD_READ_BUFFER_BYTES")]
    read_buffer_bytes: Option<usize>,
    /// STUN/TURN URL handed to clients; repeat for several [default: stun:stun.l.google.com:19302].
    #[arg(
        long = "ice-server",
        env = "SWITCHBOARD_ICE_SERVERS",
        value_delimiter = ','
    )]
    ice_servers: Option<Vec<String>>,
    /// Routing-table shards [default: 64].
    #[arg(long, env = "SWITCHBOARD_SHARDS")]
    shards: Option<usize>,
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
            node_id,
            max_connections,
            max_connections_per_ip,
            max_message_bytes,
            max_frames_per_message,
            max_sdp_bytes,
            rate_per_second,
            rate_burst,
            rate_abuse_threshold,
            default_room_capacity,
            max_room_capacity,
            max_rooms_per_peer,
            outbox_frames,
            outbox_bytes,
            read_buffer_bytes,
            ice_servers,
            shards
        );
        if let Some(v) = self.handshake_timeout_ms {
            c.handshake_timeout = ms(v);
        }
        if let Some(v) = self.heartbeat_interval_ms {
            c.heartbeat_interval = ms(v);
        }
        if let Some(v) = self.heartbeat_timeout_ms {
            c.heartbeat_timeout = ms(v);
        }
        if let Some(v) = self.shutdown_grace_ms {
            c.shutdown_grace = ms(v);
        }
        c.validate()?;
        Ok(c)
    }
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
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Cli::parse().into_config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        switchboard::server::run(listener, config, shutdown_signal()).await?;
        Ok(())
    })
}
