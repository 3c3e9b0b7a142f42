//! The admin API: `/admin/...` on the WebSocket port, JSON in and out,
//! for the application's backend. Off unless an admin token is configured;
//! every request must carry it as `Authorization: Bearer <token>`, compared
//! in constant time (both sides hashed first, so not even the length
//! leaks).
//!
//! | request | answer |
//! |---|---|
//! | `GET /admin/stats` | node statistics |
//! | `GET /admin/rooms` | every room with its members |
//! | `GET /admin/rooms/{room}` | one room (404 if none) |
//! | `GET /admin/users` | logged-in names and their peers |
//! | `POST /admin/rooms/{room}/kick` `{"peer_id":"..."}` | removes a member |
//! | `DELETE /admin/rooms/{room}` | closes the room, removing everyone |

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::Shared;
use crate::directory::{Directory, RoomInfo};
use crate::protocol::{PeerId, RoomId};

/// Largest request body read (a kick is a few dozen bytes).
const MAX_BODY: usize = 4096;

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({ "error": message }))
}

/// Whether the request carries the admin token.
fn authorized(req: &Request<Incoming>, token: &[u8]) -> bool {
    // The scheme is case-insensitive (RFC 7235).
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
        .map(|v| &v[7..])
    else {
        return false;
    };
    Sha256::digest(given).ct_eq(&Sha256::digest(token)).into()
}

fn room_json(r: &RoomInfo) -> Value {
    let members: Vec<Value> = r
        .members
        .iter()
        .map(|m| {
            json!({
                "peer_id": m.peer_id.0.to_string(),
                "display_name": m.display_name,
                "user": m.user.as_ref().map(|u| u.as_str()),
            })
        })
        .collect();
    json!({
        "room": r.id.as_str(),
        "mode": crate::rooms::mode_name(r.mode),
        "capacity": r.capacity,
        "members": members,
    })
}

/// Answers one admin request; `None` when the admin API is off (the
/// caller answers 404 as for any unknown path).
pub(super) async fn handle<D: Directory>(
    req: Request<Incoming>,
    shared: &Shared<D>,
) -> Option<Response<Full<Bytes>>> {
    let token = shared.ctx.config.admin_token.as_ref()?;
    if !authorized(&req, token.expose()) {
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong admin token");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"switchboard admin\""),
        );
        return Some(r);
    }
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path
        .trim_start_matches("/admin/")
        .split('/')
        .filter(|p| !p.is_empty())
        .collect();
    let directory = &shared.ctx.directory;
    let room_of = |raw: &str| {
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .ok()?;
        RoomId::new(&decoded).ok()
    };
    Some(match (req.method().clone(), parts.as_slice()) {
        (Method::GET, ["stats"]) => {
            let census = directory.census().await;
            let registry = directory.registry();
            reply(
                StatusCode::OK,
                json!({
                    "node_id": shared.node,
                    "uptime_s": shared.started.elapsed().as_secs(),
                    "draining": shared.draining(),
                    "sessions": registry.peer_count(),
                    "rooms": { "pair": census.pair_rooms, "mesh": census.mesh_rooms },
                    "room_members": census.members,
                    "users": census.users,
                }),
            )
        }
        (Method::GET, ["rooms"]) => {
            let mut rooms = directory.rooms(None).await;
            rooms.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            let rooms: Vec<Value> = rooms.iter().map(room_json).collect();
            reply(StatusCode::OK, json!({ "rooms": rooms }))
        }
        (Method::GET, ["rooms", raw]) => match room_of(raw) {
            None => error(StatusCode::BAD_REQUEST, "not a valid room id"),
            Some(id) => match directory.rooms(Some(&id)).await.first() {
                Some(room) => reply(StatusCode::OK, room_json(room)),
                None => error(StatusCode::NOT_FOUND, "no such room"),
            },
        },
        (Method::GET, ["users"]) => {
            let mut users = directory.users().await;
            users.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
            let users: Vec<Value> = users
                .iter()
                .map(|(name, peer)| json!({ "user": name.as_str(), "peer_id": peer.0.to_string() }))
                .collect();
            reply(StatusCode::OK, json!({ "users": users }))
        }
        (Method::POST, ["rooms", raw, "kick"]) => {
            let Some(id) = room_of(raw) else {
                return Some(error(StatusCode::BAD_REQUEST, "not a valid room id"));
            };
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(body) => body.to_bytes(),
                Err(_) => return Some(error(StatusCode::PAYLOAD_TOO_LARGE, "body too large")),
            };
            let peer =
                serde_json::from_slice::<Value>(&body)
                    .ok()
                    .and_then(|v| match &v["peer_id"] {
                        Value::String(s) => s.parse::<u64>().ok(),
                        Value::Number(n) => n.as_u64(),
                        _ => None,
                    });
            let Some(peer) = peer else {
                return Some(error(
                    StatusCode::BAD_REQUEST,
                    "expected {\"peer_id\": \"<decimal peer id>\"}",
                ));
            };
            if directory.kick(&id, PeerId(peer)).await {
                tracing::info!(room = %id, peer, "admin: kicked");
                reply(
                    StatusCode::OK,
                    json!({ "kicked": peer.to_string(), "room": id.as_str() }),
                )
            } else {
                error(StatusCode::NOT_FOUND, "no such member in that room")
            }
        }
        (Method::DELETE, ["rooms", raw]) => match room_of(raw) {
            None => error(StatusCode::BAD_REQUEST, "not a valid room id"),
            Some(id) => match directory.close_room(&id).await {
                Some(n) => {
                    tracing::info!(room = %id, members = n, "admin: room closed");
                    reply(
                        StatusCode::OK,
                        json!({ "closed": id.as_str(), "members": n }),
                    )
                }
                None => error(StatusCode::NOT_FOUND, "no such room"),
            },
        },
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
    })
}
