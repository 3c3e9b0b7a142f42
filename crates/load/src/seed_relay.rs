//! The relay scenario in seed 001's JSON dialect (1:1 rooms: `join`,
//! `joined`, `ready`, `ice`...), so the same load runs against any server
//! that speaks it: switchboard's `/compat/pair`, or the tutorial's own
//! Node.js `ws` server (`benches/seed001-node/`).
//!
//! Each pair joins one room; the side told `ready{isInitiator: true}` keeps
//! `window` `ice` messages in flight and its partner echoes each one as it
//! got it (the server relays the message unchanged), through
//! [`text_relay`](crate::text_relay).

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use super::relay::Report;
use super::text_relay::{self, recv, Pair, Side, Ws};
use super::{Common, LoadError, Target};

pub use super::text_relay::Options;

/// A side of a seed 001 pair: the server relays an `ice` message as it
/// got it, so a ball is echoed unchanged.
struct Seed001;

impl Side for Seed001 {
    const STAMP: &'static str = "\"usernameFragment\":\"";

    fn ball(&self, now_ns: u64) -> String {
        json!({"type": "ice", "candidate": {
            "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 192.168.1.10 rport 61665 generation 0 network-cost 999",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": text_relay::stamp(now_ns)}})
        .to_string()
    }

    fn echo(&self, received: String) -> Option<String> {
        Some(received)
    }
}

async fn send(ws: &mut Ws, v: &Value) -> Result<(), LoadError> {
    ws.send(WsMessage::text(v.to_string())).await?;
    Ok(())
}

async fn expect(ws: &mut Ws, kind: &str) -> Result<Value, LoadError> {
    let text = recv(ws).await?;
    let v: Value = serde_json::from_str(&text).map_err(|e| LoadError::Unexpected(e.to_string()))?;
    if v["type"] != kind {
        return Err(LoadError::Unexpected(format!("wanted {kind}, got {text}")));
    }
    Ok(v)
}

/// Two connections in one room: (initiator, echo).
async fn set_up_pair(target: Target, room: String) -> Result<Pair<Seed001>, LoadError> {
    let mut a = target.open().await?;
    let mut b = target.open().await?;
    send(&mut a, &json!({"type": "join", "roomId": room})).await?;
    expect(&mut a, "joined").await?;
    send(&mut b, &json!({"type": "join", "roomId": room})).await?;
    expect(&mut b, "joined").await?;
    let b_ready = expect(&mut b, "ready").await?;
    let a_ready = expect(&mut a, "ready").await?;
    let (initiator, echo) = match (
        a_ready["isInitiator"].as_bool(),
        b_ready["isInitiator"].as_bool(),
    ) {
        (Some(false), Some(true)) => (b, a),
        (Some(true), Some(false)) => (a, b),
        other => return Err(LoadError::Unexpected(format!("ready: {other:?}"))),
    };
    Ok(Pair {
        initiator: (initiator, Seed001),
        echo: (echo, Seed001),
    })
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let pattern = "seed 001 JSON: the initiator sends, its partner echoes, one message each";
    text_relay::run(common, options, ("seed001", pattern), set_up_pair).await
}
