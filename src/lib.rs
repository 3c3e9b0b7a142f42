//! Switchboard: a WebRTC signaling relay.
//!
//! # Layout
//! - [`protocol`]: the sans-IO wire format: frame header, validated messages,
//!   SDP compression, ICE batching. Pure, fuzzed, no tokio.
//! - `proto`: the prost types generated from `proto/`; only `protocol` sees them.

pub mod protocol;
mod proto;
