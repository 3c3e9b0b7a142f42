//! The idle scenario: many connections logged in and joined, doing nothing.
//!
//! Each connection says Hello, logs in with a unique name and joins a pair
//! room with its neighbour, then holds (answering the server's heartbeat).
//! In another server's dialect ([`Dialect`]) it joins a pair room with its
//! neighbour in that dialect's way, and holds.
//! With the server's pid, the report gives the server's RSS before the
//! first connection and after the last joined, and the difference per
//! connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::watch;

use super::{
    progress_bar, run_tag, sample_process, Common, Connection, LoadError, PeerExt, Target,
};
use crate::protocol::{Join, Message, RoomId, RoomMode, UserName};

/// Options of the idle scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections to open.
    pub connections: usize,
    /// Connects in progress at once.
    pub connect_concurrency: usize,
    /// How long to hold the connections after the last one joined.
    pub hold: Duration,
    /// What the connections speak.
    pub dialect: Dialect,
}

/// What an idle run's connections speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Dialect {
    /// The binary protocol: Hello, Login, Join.
    #[default]
    Binary,
    /// Seed 001's JSON (`join` a pair room, no login): /compat/pair and the
    /// tutorial's server.
    Seed001,
    /// matchbox's: connect to `<url>/<room>`, wait for `IdAssigned`.
    Matchbox,
}

/// One held connection, in either protocol. A run holds one kind only, so
/// the larger variant (the client's connection) is not boxed.
#[allow(clippy::large_enum_variant)]
enum Held {
    Binary(Connection),
    Text(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>),
}

/// What an idle run measured.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// Always "idle".
    pub scenario: &'static str,
    /// Connections asked for.
    pub connections: usize,
    /// Connections logged in and joined.
    pub established: u64,
    /// Connections that failed.
    pub errors: u64,
    /// Seconds to open, log in and join all of them.
    pub setup_s: f64,
    /// Server RSS before the first connection, KiB.
    pub server_rss_before_kib: Option<u64>,
    /// Server RSS with all connections joined, KiB.
    pub server_rss_after_kib: Option<u64>,
    /// (after − before) / established, bytes.
    pub server_rss_per_connection_bytes: Option<u64>,
    /// Connections still open at the end of the hold.
    pub open_after_hold: u64,
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let tag = run_tag();
    let before = common
        .server_pid
        .and_then(|p| sample_process(Some(p)))
        .map(|s| s.rss_kib);
    let bar = progress_bar(
        common.progress,
        options.connections as u64,
        "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} connections",
    );
    let started = Instant::now();
    let errors = AtomicU64::new(0);
    let dialect = options.dialect;
    let peers: Vec<Held> = futures_util::stream::iter(0..options.connections)
        .map(|i| {
            let (target, tag) = (target.clone(), tag.clone());
            async move {
                let room = format!("idle-{tag}-{}", i / 2);
                match dialect {
                    Dialect::Binary => log_in_and_join(&target, &tag, i).await.map(Held::Binary),
                    Dialect::Seed001 => join_seed001(&target, &room).await.map(Held::Text),
                    Dialect::Matchbox => crate::matchbox_relay::join(&target, &room)
                        .await
                        .map(|(ws, _)| Held::Text(ws)),
                }
            }
        })
        .buffered(options.connect_concurrency.max(1))
        .filter_map(|r| {
            bar.inc(1);
            let kept = match r {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::debug!("idle connection: {e}");
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            };
            async move { kept }
        })
        .collect()
        .await;
    bar.finish_and_clear();
    let setup_s = started.elapsed().as_secs_f64();
    let established = peers.len() as u64;

    // Hold: every connection keeps reading so heartbeats are answered.
    let (exit_tx, exit_rx) = watch::channel(false);
    let open = Arc::new(AtomicU64::new(0));
    let holders: Vec<_> = peers
        .into_iter()
        .map(|p| tokio::spawn(hold(p, exit_rx.clone(), open.clone())))
        .collect();
    // Let the server settle (allocator, outbox buffers) before sampling.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = common
        .server_pid
        .and_then(|p| sample_process(Some(p)))
        .map(|s| s.rss_kib);
    tokio::time::sleep(options.hold).await;
    let _ = exit_tx.send(true);
    let mut open_after_hold = 0;
    for h in holders {
        if let Ok(true) = h.await {
            open_after_hold += 1;
        }
    }
    Ok(Report {
        scenario: "idle",
        connections: options.connections,
        established,
        errors: errors.load(Ordering::Relaxed),
        setup_s: (setup_s * 1000.0).round() / 1000.0,
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        server_rss_per_connection_bytes: match (before, after) {
            (Some(b), Some(a)) if established > 0 => Some(a.saturating_sub(b) * 1024 / established),
            _ => None,
        },
        open_after_hold,
    })
}

async fn log_in_and_join(target: &Target, tag: &str, i: usize) -> Result<Connection, LoadError> {
    let mut p = target.peer().await?;
    p.push(&Message::Login {
        name: UserName::new(&format!("idle-{tag}-{i}")).expect("valid user name"),
    });
    p.push(&Message::Join(Join {
        room: RoomId::new(&format!("idle-{tag}-{}", i / 2)).expect("valid room id"),
        mode: RoomMode::Pair,
        capacity: None,
        display_name: String::new(),
    }));
    p.flush().await?;
    p.expect("login", |m| match m {
        Message::LoginResult(r) => Some(r.error),
        _ => None,
    })
    .await?
    .map_or(Ok(()), |e| {
        Err(LoadError::Unexpected(format!("login: {e:?}")))
    })?;
    p.expect("join", |m| matches!(m, Message::Joined(_)).then_some(()))
        .await?;
    Ok(p)
}

/// Opens a connection and joins a seed 001 pair room with its neighbour.
async fn join_seed001(
    target: &Target,
    room: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, LoadError> {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    let mut ws = target.open().await?;
    let join = serde_json::json!({"type": "join", "roomId": room});
    ws.send(WsMessage::text(join.to_string())).await?;
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) if t.contains("\"joined\"") => return Ok(ws),
            Some(Ok(WsMessage::Text(t))) => {
                return Err(LoadError::Unexpected(format!("join: {t}")));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => return Err(LoadError::Closed),
        }
    }
}

/// Reads (answering Pings) until told to exit; true if still open then.
async fn hold(held: Held, exit: watch::Receiver<bool>, open: Arc<AtomicU64>) -> bool {
    match held {
        Held::Binary(p) => hold_binary(p, exit, open).await,
        Held::Text(mut ws) => {
            let mut exit = exit;
            open.fetch_add(1, Ordering::Relaxed);
            loop {
                tokio::select! {
                    biased;
                    _ = exit.changed() => {
                        let _ = ws.close(None).await;
                        return true;
                    }
                    m = ws.next() => {
                        if !matches!(m, Some(Ok(_))) {
                            open.fetch_sub(1, Ordering::Relaxed);
                            return false;
                        }
                    }
                }
            }
        }
    }
}

async fn hold_binary(
    mut p: Connection,
    mut exit: watch::Receiver<bool>,
    open: Arc<AtomicU64>,
) -> bool {
    open.fetch_add(1, Ordering::Relaxed);
    loop {
        tokio::select! {
            biased;
            _ = exit.changed() => {
                let _ = p.close().await;
                return true;
            }
            // Pings are answered inside `recv`.
            r = p.recv() => {
                if r.is_err() {
                    open.fetch_sub(1, Ordering::Relaxed);
                    return false;
                }
            }
        }
    }
}
