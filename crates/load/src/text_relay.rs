//! The relay scenario over a JSON text dialect, whatever the dialect: one
//! side of each pair keeps `window` balls in flight, its partner echoes
//! each one, one JSON text message per WebSocket message, as a browser page
//! sends its signals. A ball carries its send time as a fixed-width stamp
//! (20 digits, in the candidate's `usernameFragment`), so each echo that
//! comes back is one round trip.
//!
//! A dialect ([`seed_relay`](crate::seed_relay),
//! [`matchbox_relay`](crate::matchbox_relay)) sets its pairs up and says,
//! through [`Side`], what a ball looks like and how to echo one; the
//! sending, counting and measuring here is the same for all of them, and
//! shares the binary relay's counters and measuring loop ([`measure`]).

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use super::relay::{measure, set_up, Pattern, Report, Shared};
use super::{latency_histogram, run_tag, Common, LoadError, Target};

/// Options of a relay in a JSON dialect.
#[derive(Clone, Debug)]
pub struct Options {
    /// Pairs (two connections each).
    pub pairs: usize,
    /// Messages the initiating side keeps in flight.
    pub window: usize,
    /// Measured time.
    pub duration: Duration,
}

pub(crate) type Ws = WebSocketStream<TcpStream>;

/// Digits of a ball's stamp (nanoseconds since the run's epoch).
const STAMP_DIGITS: usize = 20;

/// How one side of a pair speaks its dialect once the pair is set up.
pub(crate) trait Side: Send + 'static {
    /// What stands just before a ball's stamp in a message as the server
    /// delivers it.
    const STAMP: &'static str;

    /// A ball for the partner, stamped with `now_ns`.
    fn ball(&self, now_ns: u64) -> String;

    /// What to send back for a received ball (`None`: it is not one).
    fn echo(&self, received: String) -> Option<String>;
}

/// The fixed-width stamp a ball carries.
pub(crate) fn stamp(now_ns: u64) -> String {
    format!("{now_ns:0w$}", w = STAMP_DIGITS)
}

/// The stamp of a delivered ball, found after `marker`.
pub(crate) fn stamp_of(text: &str, marker: &str) -> Option<u64> {
    let at = text.find(marker)? + marker.len();
    text.get(at..at + STAMP_DIGITS)?.parse().ok()
}

/// The next text message (pings are answered by tungstenite).
pub(crate) async fn recv(ws: &mut Ws) -> Result<String, LoadError> {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => return Ok(t.to_string()),
            Some(Ok(WsMessage::Close(_))) | None => return Err(LoadError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// One pair, set up: the initiating side and the echoing side.
pub(crate) struct Pair<S> {
    pub(crate) initiator: (Ws, S),
    pub(crate) echo: (Ws, S),
}

/// Sets up the pairs, each in a room of its own (`set_up_pair(target,
/// room)`), runs the relay over them and reports it as `scenario`, whose
/// traffic `pattern` describes.
pub(crate) async fn run<S, F, Fut>(
    common: &Common,
    options: &Options,
    (scenario, pattern): (&'static str, &'static str),
    set_up_pair: F,
) -> Result<Report, LoadError>
where
    S: Side,
    F: Fn(Target, String) -> Fut,
    Fut: Future<Output = Result<Pair<S>, LoadError>>,
{
    let target = Target::resolve(common).await?;
    let tag = run_tag();
    let pairs = set_up(options.pairs, |i| {
        set_up_pair(target.clone(), format!("{scenario}-{tag}-{i}"))
    })
    .await?;
    let shared = Shared::new();
    let (start_tx, start_rx) = watch::channel(false);
    let (exit_tx, exit_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(pairs.len() * 2);
    for Pair { initiator, echo } in pairs {
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
    Ok(m.report(
        scenario,
        (options.pairs, options.window),
        (pattern, Pattern::default()),
        &shared,
    ))
}

/// The initiating side: `window` balls out, a new one for each that returns.
async fn initiate<S: Side>(
    (mut ws, side): (Ws, S),
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
        ws.send(WsMessage::text(side.ball(now))).await?;
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
        let Some(sent) = stamp_of(&text, S::STAMP) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        if shared.stopping.load(Ordering::Relaxed) {
            continue;
        }
        let now = shared.epoch.elapsed().as_nanos() as u64;
        let _ = hist.record((now.saturating_sub(sent) / 1000).max(1));
        ws.send(WsMessage::text(side.ball(now))).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}

/// The other side: sends back each ball it gets.
async fn echo_back<S: Side>(
    (mut ws, side): (Ws, S),
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
        let Some(reply) = side.echo(text) else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        ws.send(WsMessage::text(reply)).await?;
        shared.sent.fetch_add(1, Ordering::Relaxed);
    }
}
