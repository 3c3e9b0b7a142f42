//! The I/O layer: accept loop, HTTP on the same port, WebSocket upgrade.
//!
//! Everything protocol-shaped happens in `crate::protocol`, `crate::rooms`
//! and `crate::routing`; this module only moves bytes and owns tasks.
//!
//! - [`run`]: accept connections until `shutdown` resolves, then drain.
//! - `http`: `/healthz`, the `/ws` upgrade and the embedded demo page, served by hyper.
//! - `assets`: the demo page and SDK bundle compiled into the binary.
//! - `connection`: one task per WebSocket, owning its socket.
//! - `readahead`: socket reads through a per-thread buffer, so idle
//!   connections hold almost no read buffer.
//! - `tls`: the rustls acceptor for `--tls-cert`/`--tls-key`.

mod admin;
mod assets;
mod connection;
mod descriptors;
mod http;
mod park;
mod readahead;
mod tls;

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::auth::Authenticator;
use crate::config::{AuthMode, Config};
use crate::directory::{Directory, LocalDirectory};
use crate::metrics::{Metrics, Outcome};
use crate::outbox::{CloseReason, OutboxLimits};
use crate::protocol::PeerId;
use crate::rate::RateLimits;
use crate::registry::Registry;
use crate::rooms::RoomPolicy;
use crate::session::Context;
use crate::turn::TurnConfig;

/// State shared by every connection of one server.
pub(crate) struct Shared<D> {
    /// What the sessions share: configuration, codec limits, directory.
    pub ctx: Arc<Context<D>>,
    pub outbox: OutboxLimits,
    /// The rate limits every connection's `RateGuard` shares.
    pub rate: Arc<RateLimits>,
    /// The token verifier, with `auth = token`.
    pub auth: Option<Authenticator>,
    /// The TURN credential issuer, with a TURN secret configured.
    pub turn: Option<TurnConfig>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// This node's id and this start's epoch: the bits above the serial in
    /// every peer id.
    pub node: u16,
    epoch: u16,
    next_serial: AtomicU64,
    next_connection: AtomicU64,
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
    connections: Arc<Semaphore>,
    /// Connections over a limit being answered with a 503 (or `/healthz`).
    refusals: Arc<Semaphore>,
    /// One permit per WebSocket connection task: a drain ends when it can
    /// take them all (plain HTTP connections, such as a scraper's
    /// keep-alive one, do not hold it up).
    sockets: Arc<Semaphore>,
    /// Set when shutdown begins: `/readyz` says so, upgrades get 503.
    draining: std::sync::atomic::AtomicBool,
    /// Wakes connections still waiting for their Hello when a drain begins.
    drain_started: tokio::sync::Notify,
    /// When the node started.
    started: std::time::Instant,
    /// Resumable sessions by token: served by a connection, or waiting
    /// for their client after a drop.
    pub resumable: Mutex<HashMap<crate::resume::Token, Resumable<D>>>,
    /// Tokens of sessions whose grace ran out lately (to say `EXPIRED`
    /// rather than `UNKNOWN_TOKEN`); at most [`EXPIRED_KEPT`].
    pub expired: Mutex<std::collections::VecDeque<crate::resume::Token>>,
    next_park: AtomicU64,
}

/// Expired resume tokens remembered.
pub(crate) const EXPIRED_KEPT: usize = 4096;

/// A resumable session.
pub(crate) enum Resumable<D> {
    /// Served by a connection; notifying it makes the connection hand the
    /// session over (a resume arrived while the old socket is half-open).
    Live(Arc<tokio::sync::Notify>, Option<crate::protocol::UserName>),
    /// Waiting for its client since its connection dropped; `id` names this
    /// wait, so an expiry timer ends only the wait it was set for.
    Parked {
        session: Box<crate::session::Session<D>>,
        outbox: Arc<crate::outbox::Outbox>,
        id: u64,
    },
    /// Being resumed by a connection that has not finished its handshake;
    /// a resume arriving meanwhile waits for it.
    Resuming,
    /// An older token of the session now listed under this one: still
    /// valid while the client has not shown it got the newer one.
    Older(crate::resume::Token),
}

impl<D: Directory> Shared<D> {
    fn new(config: Config, directory: Arc<D>) -> std::io::Result<Shared<D>> {
        let invalid = |e: crate::config::ConfigError| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string())
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(invalid(crate::config::ConfigError::Invalid(
                    "tls_cert and tls_key go together".into(),
                )))
            }
        };
        Ok(Shared {
            auth: config.authenticator().map_err(invalid)?,
            turn: config.turn(),
            tls,
            outbox: OutboxLimits {
                frames: config.outbox_frames,
                bytes: config.outbox_bytes,
            },
            rate: Arc::new(RateLimits::new(config.rate_policy())),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            sockets: Arc::new(Semaphore::new(config.max_connections)),
            draining: std::sync::atomic::AtomicBool::new(false),
            drain_started: tokio::sync::Notify::new(),
            started: std::time::Instant::now(),
            refusals: Arc::new(Semaphore::new(descriptors::REFUSAL_SLOTS)),
            node: directory
                .identity()
                .map_or(config.node_id, |(node, _)| node),
            epoch: directory
                .identity()
                .map_or_else(start_epoch, |(_, epoch)| epoch),
            next_serial: AtomicU64::new(1),
            next_connection: AtomicU64::new(1),
            per_ip: Arc::new(Mutex::new(HashMap::new())),
            resumable: Mutex::new(HashMap::new()),
            expired: Mutex::new(std::collections::VecDeque::new()),
            next_park: AtomicU64::new(1),
            ctx: Arc::new(Context {
                codec: config.codec_limits(),
                metrics: config.metrics.then(|| Arc::new(Metrics::new())),
                config,
                directory,
            }),
        })
    }

    /// A number for the next parked session.
    pub fn next_park_id(&self) -> u64 {
        self.next_park.fetch_add(1, Ordering::Relaxed)
    }

    /// The id of the next WebSocket connection, for logs.
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether the node is draining (shutting down).
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether a drain keeps resumable sessions for their clients to
    /// resume on another node (a cluster node with resume on).
    pub fn hands_over(&self) -> bool {
        self.ctx.directory.identity().is_some() && self.ctx.config.resume_limits().is_some()
    }

    /// Resolves once the node is draining.
    pub async fn drain_started(&self) {
        // Created before the check: `notify_waiters` reaches every
        // `Notified` that exists when it is called, polled or not.
        let notified = self.drain_started.notified();
        if self.draining() {
            return;
        }
        notified.await;
    }

    /// A permit held by a WebSocket connection task for its whole life.
    pub fn socket_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.sockets.clone().try_acquire_owned().ok()
    }

    /// A peer id never issued before by this node: its node id, its epoch
    /// (which moves on if the 32-bit serial wraps) and the serial.
    pub fn next_peer_id(&self) -> PeerId {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let epoch = self.epoch.wrapping_add((serial >> 32) as u16);
        PeerId::new(self.node, epoch, serial as u32)
    }

    /// Counts a connection from `ip`; `None` when that IP (an IPv6 /64) is
    /// at its limit.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpGuard> {
        let ip = admission_key(ip);
        let mut per_ip = self.per_ip.lock();
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.ctx.config.max_connections_per_ip {
            return None;
        }
        *count += 1;
        Some(IpGuard {
            per_ip: self.per_ip.clone(),
        })
    }
}

/// What the per-IP cap counts: an IPv4 address, or an IPv6 /64 (one host
/// usually holds a whole /64, so counting single IPv6 addresses would give
/// it 2⁶⁴ caps). IPv4-mapped IPv6 addresses count as their IPv4 address.
fn admission_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(
                u128::from(v6) & !((1u128 << 64) - 1),
            )),
        },
    }
}

/// This start's epoch: the time of the start in seconds, modulo 2¹⁶, so a
/// node that restarts does not issue the ids of its previous run again (a
/// cluster directory hands out epochs that cannot collide at all).
fn start_epoch() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u16)
}

/// One of an IP's connection slots, given back by the [`Admission`] that
/// holds it (which knows the address: the IP is not kept twice).
pub(crate) struct IpGuard {
    per_ip: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl IpGuard {
    /// Gives the slot of `ip` back.
    fn release(&self, ip: IpAddr) {
        let ip = admission_key(ip);
        let mut per_ip = self.per_ip.lock();
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
    }
}

/// What a connection holds for its whole life: a global slot and an IP slot
/// (and its place in the open-connections gauge).
pub(crate) struct Admission {
    _permit: OwnedSemaphorePermit,
    ip: IpGuard,
    _open: Option<OpenGuard>,
    /// When the TCP connection was accepted.
    pub accepted_at: std::time::Instant,
    /// Held from the WebSocket upgrade on (see `Shared::sockets`).
    pub socket: Option<OwnedSemaphorePermit>,
    /// This connection's number, for logs.
    pub id: u64,
    /// The client's address, for logs; its IP's slot is given back by it.
    pub addr: SocketAddr,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.ip.release(self.addr.ip());
    }
}

/// Counts one open connection until dropped.
struct OpenGuard(Arc<Metrics>);

impl OpenGuard {
    fn new(metrics: &Arc<Metrics>) -> OpenGuard {
        metrics.connection_open(1);
        OpenGuard(metrics.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.connection_open(-1);
    }
}

/// Builds the default in-memory directory (one node) for `config`.
pub fn local_directory(config: &Config) -> Arc<LocalDirectory> {
    Arc::new(LocalDirectory::new(
        Arc::new(Registry::new(config.shards)),
        config.shards,
        RoomPolicy {
            default_capacity: config.default_room_capacity,
            max_capacity: config.max_room_capacity,
        },
    ))
}

/// Serves `listener` until `shutdown` resolves, then tells every client the
/// server is going away and waits up to `config.shutdown_grace` for them.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let directory = local_directory(&config);
    run_with_directory(listener, config, directory, shutdown).await
}

/// [`run`] with a directory of the caller's choosing.
pub async fn run_with_directory<D: Directory>(
    listener: TcpListener,
    config: Config,
    directory: Arc<D>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let mut config = config;
    descriptors::fit(&mut config);
    let shared = Arc::new(Shared::new(config, directory)?);
    shared
        .ctx
        .directory
        .set_sessions(Arc::new(park::Giver(Arc::downgrade(&shared))));
    let config = &shared.ctx.config;
    let events = match (config.webhook_urls.is_empty(), &config.webhook_secret) {
        (false, Some(secret)) => {
            info!(urls = config.webhook_urls.len(), "webhooks on");
            let sink = crate::webhooks::start(
                config.webhook_urls.clone(),
                secret.clone(),
                shared.node,
                shared.ctx.metrics.clone(),
            );
            shared.ctx.directory.set_events(sink.clone());
            Some(sink)
        }
        _ => None,
    };
    // Every listener is bound before the first "listening" line, so a
    // supervisor (or a test) that waits for that line, under the fixed
    // target `switchboard::listen`, finds the node fully reachable, and a
    // metrics address that is taken stops the node before it serves.
    let metrics_listener = match shared.ctx.config.metrics_listen {
        Some(addr) => Some(TcpListener::bind(addr).await?),
        None => None,
    };
    let local = listener.local_addr()?;
    info!(
        target: "switchboard::listen",
        addr = %local,
        tls = shared.tls.is_some(),
        auth = ?shared.ctx.config.auth,
        "listening"
    );
    warn_if_open(&shared.ctx.config, local);
    let metrics_task = match metrics_listener {
        Some(listener) => {
            info!(
                target: "switchboard::listen",
                addr = %listener.local_addr()?,
                path = %shared.ctx.config.metrics_path,
                "metrics listening"
            );
            Some(tokio::spawn(http::serve_metrics(shared.clone(), listener)))
        }
        None => None,
    };
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(1);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => {
                backoff = Duration::from_millis(1);
                pair
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of
                // spinning, and keep serving the connections we have.
                warn!(error = %e, ?backoff, "accept failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        accept(&shared, stream, addr);
    }
    // Draining: not ready any more, but still answering HTTP (probes,
    // metrics) while the clients are told to go; upgrades get 503.
    shared.draining.store(true, Ordering::Relaxed);
    shared.drain_started.notify_waiters();
    let drained = drain(&shared);
    tokio::pin!(drained);
    loop {
        tokio::select! {
            biased;
            () = &mut drained => break,
            accepted = listener.accept() => {
                if let Ok((stream, addr)) = accepted {
                    accept(&shared, stream, addr);
                }
            }
        }
    }
    // The last sessions' departures are events too: deliver them (or give
    // up on them) before the runtime, and the dispatchers with it, ends.
    if let Some(events) = events {
        events.settle(shared.ctx.config.shutdown_grace).await;
    }
    if let Some(task) = metrics_task {
        task.abort();
    }
    Ok(())
}

/// Says so at start-up when a server reachable from other hosts lets anyone
/// in, since that is right for development and wrong for production.
fn warn_if_open(config: &Config, local: SocketAddr) {
    if local.ip().is_loopback() {
        return;
    }
    if config.auth == AuthMode::None {
        warn!(
            addr = %local,
            "--auth none on a non-loopback address: anyone can connect, take any free \
             name and join any room whose id they guess; use --auth token in production"
        );
    }
    if config.allowed_origins.is_empty() {
        warn!(
            addr = %local,
            "no --allowed-origin: any web page can make its visitors' browsers connect"
        );
    }
    if config.metrics && config.metrics_listen.is_none() {
        warn!(
            addr = %local,
            "/metrics is served on the public port (it shows session and room counts, and \
             each scrape counts the rooms): use --metrics-listen on a private address"
        );
    }
    if config.tls_cert.is_none() {
        info!("no --tls-cert: serve behind a TLS-terminating proxy, or tokens and SDP travel in clear");
    }
}

fn accept<D: Directory>(shared: &Arc<Shared<D>>, stream: tokio::net::TcpStream, addr: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let metrics = shared.ctx.metrics.as_ref();
    let admission = match shared.connections.clone().try_acquire_owned() {
        Err(_) => Err(("too many connections\n", Outcome::RefusedMaxConnections)),
        Ok(permit) => match shared.admit(addr.ip()) {
            None => Err((
                "too many connections from your address\n",
                Outcome::RefusedPerIp,
            )),
            Some(ip) => Ok(Admission {
                _permit: permit,
                ip,
                _open: metrics.map(OpenGuard::new),
                accepted_at: std::time::Instant::now(),
                socket: None,
                id: shared.next_connection_id(),
                addr,
            }),
        },
    };
    if let (Some(m), Err((_, outcome))) = (metrics, &admission) {
        m.attempt(*outcome);
    }
    let admission = admission.map_err(|(why, _)| why);
    let entry = match admission {
        Ok(admission) => http::Entry::Admitted(admission),
        // Under TLS the refused connection is just closed: answering would
        // cost a TLS handshake per refused connection, which is what an
        // attacker at the cap would like the server to spend.
        Err(why) if shared.tls.is_some() => {
            debug!(%addr, why, "refused");
            return;
        }
        Err(why) => {
            debug!(%addr, why, "refused");
            match shared.refusals.clone().try_acquire_owned() {
                // Answered over HTTP: a 503 for an upgrade, `/healthz`
                // as usual; one request, then closed.
                Ok(slot) => http::Entry::Refused { why, _slot: slot },
                Err(_) => {
                    // Every refusal slot is busy: a 503 straight into the
                    // fresh socket's empty send buffer, no task, no wait.
                    http::refuse_now(&stream, why);
                    return;
                }
            }
        }
    };
    match &shared.tls {
        None => {
            tokio::spawn(http::serve(shared.clone(), stream, addr, entry));
        }
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            let shared = shared.clone();
            tokio::spawn(async move {
                // The TLS handshake gets the handshake timeout of its own;
                // HTTP headers and Hello then get theirs.
                let timeout = shared.ctx.config.handshake_timeout;
                match tokio::time::timeout(timeout, handshake).await {
                    Ok(Ok(tls)) => return http::serve(shared, tls, addr, entry).await,
                    Ok(Err(e)) => debug!(%addr, error = %e, "TLS handshake failed"),
                    Err(_) => debug!(%addr, "TLS handshake timed out"),
                }
                if let Some(m) = &shared.ctx.metrics {
                    m.attempt(Outcome::HandshakeFailed);
                }
            });
        }
    }
}

async fn drain<D: Directory>(shared: &Arc<Shared<D>>) {
    let registry = shared.ctx.directory.registry();
    info!(
        connections = registry.peer_count(),
        "draining: not ready, telling clients to reconnect"
    );
    registry.close_all(CloseReason::Shutdown);
    // In a cluster, resumable sessions wait (parked) for their clients to
    // resume them on another node until the grace ends. Elsewhere they will
    // not get a resume from this node: they leave their rooms now, like the
    // connected ones.
    let hand_over = shared.hands_over();
    let ended =
        (!hand_over).then(|| park::end_all(shared, crate::protocol::LeaveReason::ServerShutdown));
    let all = u32::try_from(shared.ctx.config.max_connections).unwrap_or(u32::MAX);
    let deadline = tokio::time::Instant::now() + shared.ctx.config.shutdown_grace;
    // Every WebSocket connection holds a permit until its task ends.
    let sockets = async {
        let permits = shared.sockets.acquire_many(all).await;
        if let Some(ended) = ended {
            ended.await;
        }
        permits
    };
    if tokio::time::timeout_at(deadline, sockets).await.is_err() {
        warn!(
            remaining = registry.peer_count(),
            "shutdown grace expired with connections open"
        );
    }
    if hand_over {
        while park::parked(shared) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let left = park::parked(shared);
        info!(
            left,
            "draining: sessions not resumed on another node end now"
        );
        let end = park::end_all(shared, crate::protocol::LeaveReason::ServerShutdown);
        // The sessions' teardowns are bounded each; so is their sum here.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), end).await;
        // The sessions given away: forwarded until every node routes them
        // to their new node.
        let settled = shared.ctx.directory.settle();
        if tokio::time::timeout_at(
            deadline.max(tokio::time::Instant::now() + std::time::Duration::from_secs(1)),
            settled,
        )
        .await
        .is_err()
        {
            warn!("draining: frames for sessions that moved may not all have been forwarded");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_addresses_are_counted_by_their_64() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            admission_key(ip("2001:db8:1:2:aaaa::1")),
            admission_key(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_eq!(admission_key(ip("2001:db8:1:2::9")), ip("2001:db8:1:2::"));
        assert_ne!(
            admission_key(ip("2001:db8:1:2::1")),
            admission_key(ip("2001:db8:1:3::1"))
        );
        assert_eq!(admission_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(admission_key(ip("192.0.2.7")), ip("192.0.2.7"));
    }

    #[tokio::test]
    async fn one_64_shares_one_per_ip_cap() {
        let shared = Arc::new(
            Shared::new(
                Config {
                    max_connections_per_ip: 2,
                    ..Config::default()
                },
                local_directory(&Config::default()),
            )
            .unwrap(),
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let _a = shared.admit(ip("2001:db8::1")).unwrap();
        let _b = shared.admit(ip("2001:db8::2")).unwrap();
        assert!(
            shared.admit(ip("2001:db8::ffff")).is_none(),
            "third in the /64"
        );
        assert!(shared.admit(ip("2001:db8:0:1::1")).is_some(), "another /64");
    }
}
