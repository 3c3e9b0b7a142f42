//! The relay scenario in seed 001's JSON dialect (1:1 rooms: `join`,
//! `joined`, `ready`, `ice`...), so the same load runs against any server
//! that speaks it: switchboard's `/compat/pair`, or the tutorial's own
//! Node.js `ws` server (`benches/seed001-node/`).
//!
//! Each pair joins one room; the side told `ready{isInitiator: true}` keeps
//! `window` `ice` messages in flight and its partner echoes each one, one
//! JSON text message per WebSocket message, as the tutorial's page sends
//! them. A message carries its send time in the candidate's
//! `usernameFragment`, so each echo that comes back is one round trip.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::relay::{measure, set_up, Report, Shared};
use super::{latency_histogram, run_tag, Common, Latency, LoadError, Target};

/// Options of the seed 001 relay scenario.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pairs (two connections each).
    pub pairs: usize,
    /// Messages the initiating side keeps in flight.
    pub window: usize,
    /// Measured time.
    pub duration: Duration,
}

type Ws = WebSocketStream<TcpStream>;

const STAMP: &str = "\"usernameFragment\":\"";

async fn send(ws: &mut Ws, v: &Value) -> Result<(), LoadError> {
    ws.send(WsMessage::text(v.to_string())).await?;
    Ok(())
}

/// The next JSON text message (pings are answered by tungstenite).
async fn recv(ws: &mut Ws) -> Result<String, LoadError> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.to_string()),
            Some(Ok(WsMessage::Close(_))) | None => return Err(LoadError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
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
async fn set_up_pair(target: &Target, room: String) -> Result<(Ws, Ws), LoadError> {
    let mut a = target.open().await?;
    let mut b = target.open().await?;
    send(&mut a, &json!({"type": "join", "roomId": room})).await?;
    expect(&mut a, "joined").await?;
    send(&mut b, &json!({"type": "join", "roomId": room})).await?;
    expect(&mut b, "joined").await?;
    let b_ready = expect(&mut b, "ready").await?;
    let a_ready = expect(&mut a, "ready").await?;
    match (
        a_ready["isInitiator"].as_bool(),
        b_ready["isInitiator"].as_bool(),
    ) {
        (Some(false), Some(true)) => Ok((b, a)),
        (Some(true), Some(false)) => Ok((a, b)),
        other => Err(LoadError::Unexpected(format!("ready: {other:?}"))),
    }
}

fn ball(now_ns: u64) -> String {
    json!({"type": "ice", "candidate": {
        "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 192.168.1.10 rport 61665 generation 0 network-cost 999",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": format!("{now_ns:020}")}})
    .to_string()
}

fn stamp_of(text: &str) -> Option<u64> {
    let at = text.find(STAMP)? + STAMP.len();
    text.get(at..at + 20)?.parse().ok()
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let target = Target::resolve(common).await?;
    let tag = run_tag();
    let pairs = set_up(options.pairs, |i| {
        let (target, room) = (target.clone(), format!("seed-{tag}-{i}"));
        async move { set_up_pair(&target, room).await }
    })
    .await?;
    let shared = Shared::new();
    let (start_tx, start_rx) = watch::channel(false);
    let (exit_tx, exit_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    for (initiator, echo) in pairs {
        tasks.push(tokio::spawn(initiate(
            initiator,
            options.window,
            shared.clone(),
            start_rx.clone(),
            exit_rx.clone(),
        )));
        tasks.push(tokio::spawn(echo_back(
            echo,
            shared.clone(),
            exit_rx.clone(),
        )));
    }
    let m = measure(common, options.duration, &shared, start_tx, exit_tx, tasks).await;
    Ok(Report {
        scenario: "seed001",
        pairs: options.pairs,
        window: options.window,
        pattern: "seed 001 JSON: the initiator sends, its partner echoes, one message each",
        both_sides: false,
        coalesce: false,
        duration_s: (m.elapsed * 1000.0).round() / 1000.0,
        relayed_messages: m.relayed,
        relayed_per_second: (m.relayed as f64 / m.elapsed) as u64,
        lost: m.lost,
        errors: shared.errors.load(Ordering::Relaxed),
        round_trip: Latency::of(&m.round_trip),
        cpu: m.cpu,
        server_us_per_message: m.per_message(),
    })
}

/// The initiating side: `window` balls out, a new one for each that returns.
async fn initiate(
    mut ws: Ws,
    window: usize,
    shared: Arc<Shared>,
    mut start: watch::Receiver<bool>,
    mut exit: watch::Receiver<bool>,
) -> Result<Histogram<u64>, LoadError> {
    let mut hist = latency_histogram();
    start
        .wait_for(|s| *s)
        .await
        .map_err(|_| LoadError::Closed)?;
    for _ in 0..window {
        let now = shared.epoch.elapsed().as_nanos() as u64;
        ws.send(WsMessage::text(ball(now))).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
    loop {
        let text = tokio::select! {
            biased;
            _ = exit.changed() => return Ok(hist),
            t = recv(&mut ws) => match t {
                Ok(t) => t,
                Err(_) if shared.stopping.load(Ordering::Relaxed) => return Ok(hist),
                Err(e) => return Err(e),
            },
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        let Some(sent) = stamp_of(&text) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if shared.stopping.load(Ordering::Relaxed) {
            continue;
        }
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let _ = hist.record((now.saturating_sub(sent) / 1000).max(1));
        ws.send(WsMessage::text(ball(now))).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The other side: sends back what it gets, as it got it.
async fn echo_back(
    mut ws: Ws,
    shared: Arc<Shared>,
    mut exit: watch::Receiver<bool>,
) -> Result<Histogram<u64>, LoadError> {
    loop {
        let text = tokio::select! {
            biased;
            _ = exit.changed() => return Ok(latency_histogram()),
            t = recv(&mut ws) => match t {
                Ok(t) => t,
                Err(_) if shared.stopping.load(Ordering::Relaxed) => return Ok(latency_histogram()),
                Err(e) => return Err(e),
            },
        };
        shared.received.fetch_add(1, Ordering::Relaxed);
        if shared.stopping.load(Ordering::Relaxed) {
            continue;
        }
        ws.send(WsMessage::text(text)).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}
