//! Webhooks: room and user events POSTed as JSON to the application's
//! backend, as LiveKit does.
//!
//! The directory emits an [`Event`] into an [`EventSink`], under the lock
//! that ordered it, which stamps its time and serial: one bounded queue per
//! URL with a non-blocking `try_send`, so signaling never waits for a
//! webhook; when a queue is full the event is dropped for that URL and
//! counted (`switchboard_webhooks_total{outcome="dropped"}`). One
//! dispatcher task per URL (a dead receiver delays no other) delivers at
//! most [`IN_FLIGHT`] events at once, retrying a failed delivery with
//! exponential backoff. A draining node waits ([`EventSink::settle`]) for
//! the queues to empty before it exits.
//!
//! Each request is signed: `Webhook-Signature: v1=<hex>` is the
//! HMAC-SHA256, keyed with the webhook secret, of
//! `"<Webhook-Id>.<Webhook-Timestamp>.<body>"`. A receiver recomputes the
//! HMAC, compares in constant time, refuses timestamps more than a few
//! minutes old and ids it has seen (replays).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::{mpsc, Semaphore};

use crate::config::Secret;
use crate::metrics::{Metrics, WebhookOutcome};
use crate::protocol::{LeaveReason, PeerId, RoomId, RoomMode, UserName};

/// Events waiting to be sent; past this they are dropped and counted.
pub const QUEUE: usize = 4096;
/// Events being delivered (with their retries) at once, per URL.
pub const IN_FLIGHT: usize = 16;
/// Most bytes of a receiver's answer read (so the connection is reused).
const MAX_ANSWER: usize = 64 * 1024;
/// Deliveries tried per event and URL.
pub const ATTEMPTS: u32 = 5;
/// Wait before the first retry; doubled for each next one.
pub const FIRST_RETRY: Duration = Duration::from_millis(250);
/// Time one request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Something the application's backend may want to hear of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The first member joined a room that did not exist.
    RoomCreated {
        /// The room.
        room: RoomId,
        /// Its mode.
        mode: RoomMode,
    },
    /// The last member left; the room is gone.
    RoomEmptied {
        /// The room.
        room: RoomId,
    },
    /// A peer joined a room.
    PeerJoined {
        /// The room.
        room: RoomId,
        /// The peer.
        peer: PeerId,
        /// Its name, when logged in.
        user: Option<UserName>,
    },
    /// A peer left a room.
    PeerLeft {
        /// The room.
        room: RoomId,
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: LeaveReason,
    },
    /// A peer logged in with a name.
    UserLoggedIn {
        /// The name.
        user: UserName,
        /// The peer.
        peer: PeerId,
    },
    /// A name was freed (logout or disconnect).
    UserLoggedOut {
        /// The name.
        user: UserName,
        /// The peer that held it.
        peer: PeerId,
    },
}

fn reason_name(reason: LeaveReason) -> String {
    crate::metrics::short_name(reason.as_str_name(), "LEAVE_REASON_")
}

impl Event {
    /// The event's JSON body: `event` names it, the other fields say what
    /// it concerns (peer ids as decimal strings).
    pub fn to_json(&self, id: &str, node_id: u16, at: SystemTime) -> Value {
        let at_ms = at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let (event, mut v) = match self {
            Event::RoomCreated { room, mode } => (
                "room_created",
                json!({"room": room.as_str(), "mode": crate::rooms::mode_name(*mode)}),
            ),
            Event::RoomEmptied { room } => ("room_emptied", json!({"room": room.as_str()})),
            Event::PeerJoined { room, peer, user } => (
                "peer_joined",
                json!({"room": room.as_str(), "peer_id": peer.0.to_string(), "user": user.as_ref().map(|u| u.as_str())}),
            ),
            Event::PeerLeft { room, peer, reason } => (
                "peer_left",
                json!({"room": room.as_str(), "peer_id": peer.0.to_string(), "reason": reason_name(*reason)}),
            ),
            Event::UserLoggedIn { user, peer } => (
                "user_logged_in",
                json!({"user": user.as_str(), "peer_id": peer.0.to_string()}),
            ),
            Event::UserLoggedOut { user, peer } => (
                "user_logged_out",
                json!({"user": user.as_str(), "peer_id": peer.0.to_string()}),
            ),
        };
        v["event"] = event.into();
        v["id"] = id.into();
        v["node_id"] = node_id.into();
        v["created_at_ms"] = at_ms.into();
        v
    }
}

/// An event with the moment it happened and its place in the node's order.
#[derive(Clone, Debug)]
struct Stamped {
    event: Event,
    at: SystemTime,
    serial: u64,
}

/// Where the directory puts events: never blocks. Each URL has its own
/// queue and dispatcher, so a dead receiver delays no other.
#[derive(Clone, Debug)]
pub struct EventSink {
    queues: Arc<[mpsc::Sender<Stamped>]>,
    serial: Arc<AtomicU64>,
    /// Events queued or being delivered, over all URLs.
    outstanding: Arc<AtomicUsize>,
    metrics: Option<Arc<Metrics>>,
}

impl EventSink {
    /// Stamps an event (time and serial, taken here, where it happened:
    /// the directory emits under the lock that ordered it) and queues it
    /// for every URL; a full queue drops it for that URL, counted.
    pub fn emit(&self, event: Event) {
        let stamped = Stamped {
            event,
            at: SystemTime::now(),
            serial: self.serial.fetch_add(1, Ordering::Relaxed),
        };
        for queue in self.queues.iter() {
            self.outstanding.fetch_add(1, Ordering::Relaxed);
            if queue.try_send(stamped.clone()).is_err() {
                self.outstanding.fetch_sub(1, Ordering::Relaxed);
                if let Some(m) = &self.metrics {
                    m.webhook(WebhookOutcome::Dropped);
                }
            }
        }
    }

    /// Waits until every queued event has been delivered or given up, or
    /// `within` has passed (a draining node calls it before it exits).
    pub async fn settle(&self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.outstanding.load(Ordering::Relaxed) > 0 {
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    events = self.outstanding.load(Ordering::Relaxed),
                    "webhook events still undelivered at exit"
                );
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The signature header's value for an event `id` with `body`, sent at
/// Unix time `timestamp`: HMAC-SHA256 over `"<id>.<timestamp>.<body>"`.
pub fn signature(secret: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The part of a URL that may be logged: scheme, host and port (paths,
/// queries and user info often carry tokens).
fn shown(url: &str) -> String {
    url.parse::<hyper::Uri>()
        .ok()
        .and_then(|u| Some(format!("{}://{}", u.scheme_str()?, u.authority()?.host())))
        .unwrap_or_else(|| "<unparsable url>".into())
}

/// Starts one dispatcher per URL (inside a tokio runtime) and returns the
/// sink to emit into.
pub fn start(
    urls: Vec<String>,
    secret: Secret,
    node_id: u16,
    metrics: Option<Arc<Metrics>>,
) -> EventSink {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);
    let secret = Arc::new(secret);
    let outstanding = Arc::new(AtomicUsize::new(0));
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let queues = urls
        .into_iter()
        .map(|url| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(dispatch(Dispatcher {
                rx,
                url,
                client: client.clone(),
                secret: secret.clone(),
                node_id,
                start,
                outstanding: outstanding.clone(),
                metrics: metrics.clone(),
            }));
            tx
        })
        .collect();
    EventSink {
        queues,
        serial: Arc::new(AtomicU64::new(0)),
        outstanding,
        metrics,
    }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

struct Dispatcher {
    rx: mpsc::Receiver<Stamped>,
    url: String,
    client: HttpsClient,
    secret: Arc<Secret>,
    node_id: u16,
    start: u64,
    outstanding: Arc<AtomicUsize>,
    metrics: Option<Arc<Metrics>>,
}

/// Delivers one URL's events, at most [`IN_FLIGHT`] at once.
async fn dispatch(mut d: Dispatcher) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let url: Arc<str> = d.url.clone().into();
    while let Some(stamped) = d.rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        // Unique across nodes and restarts: node, start time, serial.
        let id = format!("{}-{:x}-{}", d.node_id, d.start, stamped.serial);
        let body = Bytes::from(
            stamped
                .event
                .to_json(&id, d.node_id, stamped.at)
                .to_string(),
        );
        let (client, secret, url, metrics, outstanding) = (
            d.client.clone(),
            d.secret.clone(),
            url.clone(),
            d.metrics.clone(),
            d.outstanding.clone(),
        );
        tokio::spawn(async move {
            let outcome = deliver(
                &client,
                &url,
                &id,
                &body,
                secret.expose(),
                metrics.as_deref(),
            )
            .await;
            if let Some(m) = &metrics {
                m.webhook(outcome);
            }
            outstanding.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Sends one event to one URL, retrying with backoff.
async fn deliver(
    client: &HttpsClient,
    url: &str,
    id: &str,
    body: &Bytes,
    secret: &[u8],
    metrics: Option<&Metrics>,
) -> WebhookOutcome {
    let mut wait = FIRST_RETRY;
    for attempt in 1..=ATTEMPTS {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )
            .header(
                header::USER_AGENT,
                concat!("switchboard/", env!("CARGO_PKG_VERSION")),
            )
            .header("webhook-id", id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature(secret, id, timestamp, body))
            .body(Full::new(body.clone()));
        let to = shown(url);
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%to, error = %e, "webhook URL unusable");
                return WebhookOutcome::Failed;
            }
        };
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, async {
            let response = client.request(request).await?;
            let status = response.status();
            // Read the (bounded) answer, so the connection goes back to
            // the pool instead of a new one being opened per event.
            let _ = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await;
            Ok::<_, hyper_util::client::legacy::Error>(status)
        })
        .await;
        match sent {
            Ok(Ok(status)) if status.is_success() => return WebhookOutcome::Delivered,
            Ok(Ok(status)) => tracing::debug!(%to, %status, attempt, "webhook refused"),
            Ok(Err(e)) => tracing::debug!(%to, error = %e, attempt, "webhook failed"),
            Err(_) => tracing::debug!(%to, attempt, "webhook timed out"),
        }
        if attempt < ATTEMPTS {
            if let Some(m) = metrics {
                m.webhook(WebhookOutcome::Retried);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
    tracing::warn!(to = %shown(url), id, "webhook given up after {ATTEMPTS} attempts");
    WebhookOutcome::Failed
}
