//! Webhooks: room and user events POSTed as JSON to the application's
//! backend, as LiveKit does.
//!
//! The directory emits an [`Event`] into an [`EventSink`]: a bounded queue
//! with a non-blocking `try_send`, so signaling never waits for a webhook;
//! when the queue is full the event is dropped and counted
//! (`switchboard_webhooks_total{outcome="dropped"}`). One dispatcher task
//! sends each event to every URL, at most [`IN_FLIGHT`] events at once,
//! retrying a failed delivery with exponential backoff.
//!
//! Each request is signed: `Webhook-Signature: v1=<hex>` is the
//! HMAC-SHA256, keyed with the webhook secret, of `"<timestamp>.<body>"`,
//! with `Webhook-Timestamp` (Unix seconds) and a unique `Webhook-Id`. A
//! receiver recomputes the HMAC, compares in constant time, and refuses
//! timestamps more than a few minutes old (replays).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
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
/// Events being delivered (with their retries) at once.
pub const IN_FLIGHT: usize = 64;
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
    let name = reason.as_str_name();
    name.strip_prefix("LEAVE_REASON_")
        .unwrap_or(name)
        .to_ascii_lowercase()
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
                json!({"room": room.as_str(), "mode": if *mode == RoomMode::Mesh { "mesh" } else { "pair" }}),
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

/// Where the directory puts events: never blocks.
#[derive(Clone, Debug)]
pub struct EventSink {
    tx: mpsc::Sender<Event>,
    metrics: Option<Arc<Metrics>>,
}

impl EventSink {
    /// Queues an event, or drops and counts it when the queue is full.
    pub fn emit(&self, event: Event) {
        if self.tx.try_send(event).is_err() {
            if let Some(m) = &self.metrics {
                m.webhook(WebhookOutcome::Dropped);
            }
        }
    }
}

/// The signature header's value for `body` sent at Unix time `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// Starts the dispatcher for `urls` (it must run inside a tokio runtime)
/// and returns the sink to emit into.
pub fn start(
    urls: Vec<String>,
    secret: Secret,
    node_id: u16,
    metrics: Option<Arc<Metrics>>,
) -> EventSink {
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(dispatch(rx, urls, secret, node_id, metrics.clone()));
    EventSink { tx, metrics }
}

type HttpsClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

async fn dispatch(
    mut rx: mpsc::Receiver<Event>,
    urls: Vec<String>,
    secret: Secret,
    node_id: u16,
    metrics: Option<Arc<Metrics>>,
) {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let client: HttpsClient = Client::builder(TokioExecutor::new()).build(connector);
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    let secret = Arc::new(secret);
    let urls: Arc<[String]> = urls.into();
    let serial = AtomicU64::new(0);
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    while let Some(event) = rx.recv().await {
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let n = serial.fetch_add(1, Ordering::Relaxed);
        // Unique across nodes and restarts: node, start time, serial.
        let id = format!("{node_id}-{start:x}-{n}");
        let now = SystemTime::now();
        let body = Bytes::from(event.to_json(&id, node_id, now).to_string());
        let (client, secret, urls, metrics) = (
            client.clone(),
            secret.clone(),
            urls.clone(),
            metrics.clone(),
        );
        tokio::spawn(async move {
            for url in urls.iter() {
                let outcome = deliver(
                    &client,
                    url,
                    &id,
                    &body,
                    secret.expose(),
                    metrics.as_deref(),
                )
                .await;
                if let Some(m) = &metrics {
                    m.webhook(outcome);
                }
            }
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
            .header("webhook-signature", signature(secret, timestamp, body))
            .body(Full::new(body.clone()));
        let request = match request {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%url, error = %e, "webhook URL unusable");
                return WebhookOutcome::Failed;
            }
        };
        let sent = tokio::time::timeout(REQUEST_TIMEOUT, client.request(request)).await;
        match sent {
            Ok(Ok(response)) if response.status().is_success() => return WebhookOutcome::Delivered,
            Ok(Ok(response)) => {
                tracing::debug!(%url, status = %response.status(), attempt, "webhook refused")
            }
            Ok(Err(e)) => tracing::debug!(%url, error = %e, attempt, "webhook failed"),
            Err(_) => tracing::debug!(%url, attempt, "webhook timed out"),
        }
        if attempt < ATTEMPTS {
            if let Some(m) = metrics {
                m.webhook(WebhookOutcome::Retried);
            }
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(Duration::from_secs(10));
        }
    }
    tracing::warn!(%url, id, "webhook given up after {ATTEMPTS} attempts");
    WebhookOutcome::Failed
}
