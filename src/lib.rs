//! Switchboard: a WebRTC signaling relay. This crate is the server; the
//! wire protocol and the client are crates of their own
//! (`switchboard-protocol`, `switchboard-client`, re-exported here as
//! [`protocol`] and [`client`]), so a Rust client needs neither this crate
//! nor its dependencies.
//!
//! # Layout
//! - [`rooms`]: room and name rules as plain data (join/leave/login in,
//!   notices out). Pure and fuzzable.
//! - [`rate`]: the per-client rate guard (frame and byte buckets, limited
//!   replies, abuse by ratio over a window). Pure, time passed in.
//! - [`outbox`]: the bounded per-peer queue of frames to write.
//! - [`registry`]: the peers connected to this node (synchronous, the
//!   relay's hot path).
//! - [`directory`]: rooms, names, calls and routes behind the asynchronous
//!   [`directory::Directory`] seam; [`directory::LocalDirectory`] in memory.
//! - [`cluster`]: the [`directory::Directory`] of several nodes sharing
//!   one routing space through Redis (`--redis-url`).
//! - [`resume`]: session resume's bookkeeping (held frames, acks, the
//!   token), sans I/O.
//! - [`session`]: one connection's protocol state and rules, sans I/O, time
//!   passed in.
//! - [`config`]: typed configuration and its defaults.
//! - [`server`]: the I/O layer: accept loop, HTTP, one task per WebSocket.
//! - [`auth`]: access tokens (HS256 JWT): verification, room grants, minting,
//!   Sec-WebSocket-Protocol parsing. Pure, time passed in.
//! - [`turn`]: time-limited TURN credentials in coturn's REST scheme. Pure.

pub mod auth;
pub mod cluster;
pub mod compat;
pub mod config;
pub mod directory;
pub mod metrics;
pub mod outbox;
pub mod rate;
pub mod registry;
pub mod resume;
pub mod rooms;
pub mod server;
pub mod session;
pub mod turn;
pub mod webhooks;

#[doc(no_inline)]
pub use switchboard_client as client;
#[doc(no_inline)]
pub use switchboard_protocol as protocol;
