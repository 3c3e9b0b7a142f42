//! HTTP on the WebSocket port (over TCP or TLS): `/healthz`, `/metrics`
//! (unless it has a listener of its own), the `/ws` upgrade with its Origin
//! and subprotocol checks, and the embedded assets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument};

use super::readahead::ReadAhead;
use super::{assets, connection, Admission, Shared};
use crate::auth::{self, AuthError};
use crate::directory::Directory;
use crate::metrics::Outcome;

/// The access token a client offered in `Sec-WebSocket-Protocol`, if any,
/// or why that header could not be read. Checked after Hello, so that a
/// refusal arrives as a typed `Error` frame rather than a failed upgrade.
pub(super) type HeaderToken = Result<Option<String>, AuthError>;

type Body = Full<Bytes>;

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// How a connection came in: with its slots, or over a limit, in which case
/// it is answered over HTTP (so `/healthz` still works when the node is
/// full) but any upgrade gets 503, and the connection is not kept alive.
pub(super) enum Entry {
    /// Within every limit.
    Admitted(Admission),
    /// Over a connection limit; holds one of the few refusal slots.
    Refused {
        why: &'static str,
        _slot: tokio::sync::OwnedSemaphorePermit,
    },
}

/// Writes a 503 to a connection we cannot take, without reading its request
/// and without waiting: the socket is new, so its send buffer has room.
pub(super) fn refuse_now(stream: &TcpStream, why: &'static str) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = stream.try_write(response.as_bytes());
}

/// Serves HTTP on one accepted connection (plain TCP or TLS) until it
/// upgrades or closes.
pub(super) async fn serve<S, D: Directory>(
    shared: Arc<Shared<D>>,
    stream: S,
    addr: SocketAddr,
    entry: Entry,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (admission, refused) = match entry {
        Entry::Admitted(a) => (Some(a), None),
        Entry::Refused { why, _slot } => (None, Some((why, _slot))),
    };
    let refusal = refused.as_ref().map(|(why, _)| *why);
    let admission = Arc::new(parking_lot::Mutex::new(admission));
    let service = hyper::service::service_fn({
        let shared = shared.clone();
        move |req| {
            let shared = shared.clone();
            let admission = admission.clone();
            async move {
                let config = &shared.ctx.config;
                if config.metrics_listen.is_none() && req.uri().path() == config.metrics_path {
                    return Ok::<_, Infallible>(metrics(&req, &shared).await);
                }
                if req.uri().path().starts_with("/admin/") && refusal.is_none() {
                    if let Some(r) = super::admin::handle(req, &shared).await {
                        return Ok(r);
                    }
                    return Ok(text(StatusCode::NOT_FOUND, "not found\n"));
                }
                Ok(route(req, &shared, addr, &admission, refusal))
            }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.ctx.config.handshake_timeout)
        .keep_alive(refused.is_none())
        .max_buf_size(16 * 1024);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%addr, error = %e, "http connection ended");
    }
}

/// The Prometheus exposition, or 404 with metrics off.
async fn metrics<D: Directory>(req: &Request<Incoming>, shared: &Shared<D>) -> Response<Body> {
    let Some(m) = &shared.ctx.metrics else {
        return text(StatusCode::NOT_FOUND, "metrics are off\n");
    };
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    let openmetrics = req
        .headers()
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let census = shared.ctx.directory.census().await;
    let mut r = Response::new(Full::new(Bytes::from(m.encode(census, openmetrics))));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if openmetrics {
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        } else {
            "text/plain; version=0.0.4; charset=utf-8"
        }),
    );
    r
}

/// Connections the metrics listener serves at once (its descriptors are in
/// the open-files reserve); more are closed at once.
pub(super) const METRICS_CONNECTIONS: usize = 16;

/// Serves the metrics endpoint alone on `listener` (`metrics_listen`).
pub(super) async fn serve_metrics<D: Directory>(shared: Arc<Shared<D>>, listener: TcpListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(METRICS_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let shared = shared.clone();
                async move {
                    Ok::<_, Infallible>(if req.uri().path() == shared.ctx.config.metrics_path {
                        metrics(&req, &shared).await
                    } else {
                        text(StatusCode::NOT_FOUND, "not found\n")
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route<D: Directory>(
    mut req: Request<Incoming>,
    shared: &Arc<Shared<D>>,
    addr: SocketAddr,
    admission: &parking_lot::Mutex<Option<Admission>>,
    refusal: Option<&'static str>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/readyz" => {
            // Ready: accepting sessions (listening and not draining).
            let (status, body): (_, &'static [u8]) = if shared.draining() {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"{\"status\":\"draining\"}\n",
                )
            } else if !shared.ctx.directory.ready() {
                // A cluster node that cannot reach Redis (or lost its lease).
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    b"{\"status\":\"directory unavailable\"}\n",
                )
            } else {
                (StatusCode::OK, b"{\"status\":\"ready\"}\n")
            };
            let mut r = Response::new(Full::new(Bytes::from_static(body)));
            *r.status_mut() = status;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/healthz" => {
            // Only whether the node is alive: how many are connected is not
            // for anyone who can reach the port.
            let mut r = Response::new(Full::new(Bytes::from_static(b"{\"status\":\"ok\"}\n")));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        path @ ("/ws" | "/compat/mesh" | "/compat/pair" | "/compat/users") => {
            let dialect = crate::compat::Dialect::at_path(path);
            if let Some(why) = refusal {
                debug!(%addr, why, "upgrade refused");
                return text(StatusCode::SERVICE_UNAVAILABLE, why);
            }
            if shared.draining() {
                if let Some(m) = &shared.ctx.metrics {
                    m.attempt(Outcome::RefusedShuttingDown);
                }
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server is draining; connect again (to another node)\n",
                );
            }
            if !shared.ctx.directory.ready() {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "this node cannot reach its cluster; connect again (to another node)\n",
                );
            }
            let Some(socket) = shared.socket_permit() else {
                return text(StatusCode::SERVICE_UNAVAILABLE, "too many connections\n");
            };
            let handshake_failed = || {
                if let Some(m) = &shared.ctx.metrics {
                    m.attempt(Outcome::HandshakeFailed);
                }
            };
            let key = match websocket_key(&req) {
                Ok(key) => key,
                Err(BadUpgrade::NotWebSocket) => {
                    handshake_failed();
                    return text(
                        StatusCode::UPGRADE_REQUIRED,
                        "expected a WebSocket upgrade (version 13)\n",
                    );
                }
                Err(BadUpgrade::BadKey) => {
                    handshake_failed();
                    return text(
                        StatusCode::BAD_REQUEST,
                        "Sec-WebSocket-Key must be 16 bytes in base64\n",
                    );
                }
            };
            if !origin_allowed(&req, &shared.ctx.config.allowed_origins) {
                debug!(%addr, origin = ?req.headers().get(header::ORIGIN), "origin refused");
                handshake_failed();
                return text(StatusCode::FORBIDDEN, "origin not allowed\n");
            }
            let Some(mut admission) = admission.lock().take() else {
                return text(StatusCode::BAD_REQUEST, "one upgrade per connection\n");
            };
            admission.socket = Some(socket);
            let (offered_subprotocol, header_token) = subprotocols(&req);
            let upgrade = hyper::upgrade::on(&mut req);
            let shared = shared.clone();
            // A debug span: at info, the lifecycle lines name the connection
            // themselves, and an idle connection keeps no span (its fields
            // would cost some 450 bytes of formatted text each).
            let span = tracing::debug_span!(
                "conn",
                id = admission.id,
                %addr,
                peer = tracing::field::Empty
            );
            let fut = async move {
                let upgraded = match upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        debug!(error = %e, "upgrade failed");
                        if let Some(m) = &shared.ctx.metrics {
                            m.attempt(Outcome::HandshakeFailed);
                        }
                        return;
                    }
                };
                let config = WebSocketConfig::default()
                    .read_buffer_size(shared.ctx.config.read_buffer_bytes)
                    .write_buffer_size(0)
                    // Bounded: pongs and close replies that tungstenite
                    // queues by itself pile up here when a client sends
                    // pings and never reads.
                    .max_write_buffer_size(shared.ctx.config.write_buffer_limit())
                    .max_message_size(Some(shared.ctx.config.max_message_bytes))
                    .max_frame_size(Some(shared.ctx.config.max_message_bytes));
                let ws = WebSocketStream::from_raw_socket(
                    ReadAhead::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own, so the long-lived task holds only
                // the connection's state, not the upgrade's. In the current
                // span, unless that is off (the usual case: "conn" is a debug
                // span), when instrumenting would do nothing but keep the
                // span in every idle connection's task.
                let f = connection::run(ws, shared, admission, header_token, dialect);
                let span = tracing::Span::current();
                if span.is_disabled() {
                    tokio::spawn(f);
                } else {
                    tokio::spawn(f.instrument(span));
                }
            };
            tokio::spawn(fut.instrument(span));
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            let h = r.headers_mut();
            h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            h.insert(
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&key).expect("base64 is a valid header value"),
            );
            if offered_subprotocol {
                h.insert(
                    header::SEC_WEBSOCKET_PROTOCOL,
                    HeaderValue::from_static(auth::SUBPROTOCOL),
                );
            }
            r
        }
        path => match assets::get(path) {
            Some(asset) => {
                let mut r = Response::new(Full::new(Bytes::from_static(asset.body)));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(asset.content_type),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "not found\n"),
        },
    }
}

/// Whether a WebSocket upgrade may proceed given its `Origin`: always when
/// the allow-list is empty or the request has no `Origin` (non-browser
/// clients, which could send any `Origin` anyway), otherwise only when the
/// `Origin` is listed exactly (scheme, host and port; a trailing `/` in the
/// list is ignored).
fn origin_allowed(req: &Request<Incoming>, allowed: &[String]) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let mut origins = req.headers().get_all(header::ORIGIN).iter();
    let Some(origin) = origins.next() else {
        return true;
    };
    if origins.next().is_some() {
        return false;
    }
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

/// Whether the client offered `switchboard.v1`, and the token it offered
/// beside it. The token is never echoed back.
fn subprotocols(req: &Request<Incoming>) -> (bool, HeaderToken) {
    let values: Vec<&str> = req
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .map(|v| v.to_str().unwrap_or(""))
        .collect();
    let offered_switchboard = values
        .iter()
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == auth::SUBPROTOCOL);
    if values.is_empty() {
        return (false, Ok(None));
    }
    let joined = values.join(", ");
    let token = auth::parse_subprotocols(&joined).map(|o| o.token.map(str::to_owned));
    (offered_switchboard, token)
}

/// Why an upgrade request was refused before the upgrade.
enum BadUpgrade {
    /// Not a WebSocket upgrade (version 13) at all.
    NotWebSocket,
    /// `Sec-WebSocket-Key` is missing or not 16 bytes in base64 (RFC 6455
    /// §4.2.1 item 5).
    BadKey,
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Result<String, BadUpgrade> {
    use base64::Engine;
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(BadUpgrade::NotWebSocket);
    }
    if h.get(header::SEC_WEBSOCKET_VERSION).map(|v| v.as_bytes()) != Some(b"13") {
        return Err(BadUpgrade::NotWebSocket);
    }
    let mut keys = h.get_all(header::SEC_WEBSOCKET_KEY).iter();
    let (Some(key), None) = (keys.next(), keys.next()) else {
        return Err(BadUpgrade::BadKey);
    };
    let nonce = base64::engine::general_purpose::STANDARD.decode(key.as_bytes());
    if !nonce.is_ok_and(|n| n.len() == 16) {
        return Err(BadUpgrade::BadKey);
    }
    Ok(derive_accept_key(key.as_bytes()))
}
