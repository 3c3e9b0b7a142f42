//! Switchboard: a WebRTC signaling relay.
//!
//! # Layout
//! - [`protocol`]: the sans-IO wire format: frame header, validated messages,
//!   SDP compression, ICE batching. Pure, fuzzed, no tokio.
//! - [`rooms`]: room and name rules as plain data (join/leave/login in,
//!   notices out). Pure and fuzzable.
//! - [`rate`]: the per-client rate guard (token bucket, limited replies,
//!   abuse by ratio over a window). Pure, clock passed in.
//! - [`outbox`]: the bounded per-peer queue of frames to write.
//! - [`registry`]: the peers connected to this node (synchronous, the
//!   relay's hot path).
//! - [`directory`]: rooms, names, calls and routes behind the asynchronous
//!   [`directory::Directory`] seam; [`directory::LocalDirectory`] in memory.
//! - [`session`]: one connection's protocol state and rules, sans I/O, time
//!   passed in.
//! - [`client`]: an async client (used by the tests and the load generator).
//! - [`config`]: typed configuration and its defaults.
//! - [`server`]: the I/O layer: accept loop, HTTP, one task per WebSocket.
//! - [`auth`]: access tokens (HS256 JWT): verification, room grants, minting,
//!   Sec-WebSocket-Protocol parsing. Pure, time passed in.
//! - [`turn`]: time-limited TURN credentials in coturn's REST scheme. Pure.
//! - `proto`: the prost types generated from `proto/`; only `protocol` sees them.

pub mod auth;
pub mod client;
pub mod config;
pub mod directory;
pub mod load;
pub mod outbox;
mod proto;
pub mod protocol;
pub mod rate;
pub mod registry;
pub mod rooms;
pub mod server;
pub mod session;
pub mod turn;
