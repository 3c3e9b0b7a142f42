//! The generated protobuf types of `proto/switchboard/v1/signal.proto`.
//!
//! Only the codec (this crate's modules) uses these; everything else works
//! with the validated domain types of [`crate::message`].
#![allow(missing_docs, clippy::all, clippy::pedantic)]

include!(concat!(env!("OUT_DIR"), "/switchboard.v1.rs"));
include!(concat!(env!("OUT_DIR"), "/switchboard.v1.serde.rs"));
