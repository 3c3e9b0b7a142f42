//! HTTP on the WebSocket port (over TCP or TLS): `/healthz`, the `/ws`
//! upgrade with its Origin and subprotocol checks, and the embedded assets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, Instrument};

use super::readahead::ReadAhead;
use super::{assets, connection, Admission, Shared};
use crate::auth::{self, AuthError};

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

/// Answers a connection we cannot take with 503 and closes it.
pub(super) async fn refuse(mut stream: TcpStream, why: &'static str) {
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{why}",
        why.len()
    );
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        stream.write_all(response.as_bytes()),
    )
    .await;
}

/// Serves HTTP on one accepted connection (plain TCP or TLS) until it
/// upgrades or closes.
pub(super) async fn serve<S>(shared: Arc<Shared>, stream: S, addr: SocketAddr, admission: Admission)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let admission = Arc::new(parking_lot::Mutex::new(Some(admission)));
    let service = hyper::service::service_fn({
        let shared = shared.clone();
        move |req| {
            let shared = shared.clone();
            let admission = admission.clone();
            async move { Ok::<_, Infallible>(route(req, &shared, addr, &admission)) }
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(shared.config.handshake_timeout)
        .max_buf_size(16 * 1024);
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        debug!(%addr, error = %e, "http connection ended");
    }
}

fn route(
    mut req: Request<Incoming>,
    shared: &Arc<Shared>,
    addr: SocketAddr,
    admission: &parking_lot::Mutex<Option<Admission>>,
) -> Response<Body> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/healthz" => {
            let body = format!(
                "{{\"status\":\"ok\",\"connections\":{}}}\n",
                shared.router.peer_count()
            );
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        "/ws" => {
            let Some(key) = websocket_key(&req) else {
                return text(
                    StatusCode::UPGRADE_REQUIRED,
                    "expected a WebSocket upgrade (version 13)\n",
                );
            };
            if !origin_allowed(&req, &shared.config.allowed_origins) {
                debug!(%addr, origin = ?req.headers().get(header::ORIGIN), "origin refused");
                return text(StatusCode::FORBIDDEN, "origin not allowed\n");
            }
            let Some(admission) = admission.lock().take() else {
                return text(StatusCode::BAD_REQUEST, "one upgrade per connection\n");
            };
            let (offered_subprotocol, header_token) = subprotocols(&req);
            let upgrade = hyper::upgrade::on(&mut req);
            let shared = shared.clone();
            let span = tracing::debug_span!("conn", %addr, peer = tracing::field::Empty);
            let fut = async move {
                let upgraded = match upgrade.await {
                    Ok(u) => u,
                    Err(e) => {
                        debug!(error = %e, "upgrade failed");
                        return;
                    }
                };
                let config = WebSocketConfig::default()
                    .read_buffer_size(shared.config.read_buffer_bytes)
                    .write_buffer_size(0)
                    .max_message_size(Some(shared.config.max_message_bytes))
                    .max_frame_size(Some(shared.config.max_message_bytes));
                let ws = WebSocketStream::from_raw_socket(
                    ReadAhead::new(TokioIo::new(upgraded)),
                    Role::Server,
                    Some(config),
                )
                .await;
                // A task of its own, so the long-lived task holds only
                // the connection's state, not the upgrade's.
                let f = connection::run(ws, shared, admission, header_token);
                tokio::spawn(f.in_current_span());
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

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
fn websocket_key(req: &Request<Incoming>) -> Option<String> {
    let h = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        h.get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return None;
    }
    if h.get(header::SEC_WEBSOCKET_VERSION)? != "13" {
        return None;
    }
    let key = h.get(header::SEC_WEBSOCKET_KEY)?;
    Some(derive_accept_key(key.as_bytes()))
}
