//! The generated protobuf types of `proto/switchboard/v1/signal.proto`.
//!
//! Only the codec (`crate::protocol`) uses these; the rest of the crate works
//! with the validated domain types of `crate::protocol::message`.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
