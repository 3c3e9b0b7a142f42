//! Prometheus metrics (`/metrics`), with prometheus-client.
//!
//! Counting is cheap on the hot path: every labelled series a frame can
//! touch is created when the server starts and kept as a handle in an
//! array indexed by type byte or error code, so counting a frame is an
//! atomic add, with no lock, no hash and no allocation. prometheus-client's
//! own `Histogram` takes a mutex per observation, so the histograms here
//! are [`AtomicHistogram`]s (fixed buckets of atomics) that encode as
//! ordinary Prometheus histograms. The room and name gauges are read from
//! the directory at scrape time ([`Metrics::encode`]).
//!
//! The server runs with metrics off when `--metrics false`: the context
//! then holds no `Metrics` and every hook is one branch on a `None`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use crate::protocol::{text, ErrorCode, MessageType};

/// One label, `name="value"`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TypeLabel {
    r#type: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabel {
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EncodingLabel {
    encoding: &'static str,
}

/// How a connection attempt ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Welcomed: a session began.
    Accepted,
    /// Refused at the door: over `max_connections`.
    RefusedMaxConnections,
    /// Refused at the door: over `max_connections_per_ip`.
    RefusedPerIp,
    /// Refused at the door: the node is draining or shutting down.
    RefusedShuttingDown,
    /// The TLS or WebSocket handshake failed.
    HandshakeFailed,
    /// The WebSocket opened but no session began (no Hello, bad Hello,
    /// bad token).
    HelloFailed,
}

impl Outcome {
    const ALL: [Outcome; 6] = [
        Outcome::Accepted,
        Outcome::RefusedMaxConnections,
        Outcome::RefusedPerIp,
        Outcome::RefusedShuttingDown,
        Outcome::HandshakeFailed,
        Outcome::HelloFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::RefusedMaxConnections => "refused_max_connections",
            Outcome::RefusedPerIp => "refused_per_ip",
            Outcome::RefusedShuttingDown => "refused_shutting_down",
            Outcome::HandshakeFailed => "handshake_failed",
            Outcome::HelloFailed => "hello_failed",
        }
    }
}

/// What came of a client's try to resume a session, or of a session
/// another node asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeOutcome {
    /// Resumed on the node that held it.
    Resumed,
    /// Resumed here, brought from another node of the cluster.
    MovedHere,
    /// Given to another node, where its client resumed it.
    HandedOn,
    /// Refused: no session has that token.
    UnknownToken,
    /// Refused: the grace ran out (or its node died).
    Expired,
    /// Refused: frames the client needed were no longer held.
    ReplayLost,
    /// Refused: another identity's session.
    Forbidden,
}

impl ResumeOutcome {
    const ALL: [ResumeOutcome; 7] = [
        ResumeOutcome::Resumed,
        ResumeOutcome::MovedHere,
        ResumeOutcome::HandedOn,
        ResumeOutcome::UnknownToken,
        ResumeOutcome::Expired,
        ResumeOutcome::ReplayLost,
        ResumeOutcome::Forbidden,
    ];

    fn label(self) -> &'static str {
        match self {
            ResumeOutcome::Resumed => "resumed",
            ResumeOutcome::MovedHere => "moved_here",
            ResumeOutcome::HandedOn => "handed_on",
            ResumeOutcome::UnknownToken => "unknown_token",
            ResumeOutcome::Expired => "expired",
            ResumeOutcome::ReplayLost => "replay_lost",
            ResumeOutcome::Forbidden => "forbidden",
        }
    }

    /// The outcome of a refusal.
    pub fn refused(why: crate::protocol::ResumeRefusal) -> ResumeOutcome {
        use crate::protocol::ResumeRefusal as R;
        match why {
            R::Expired => ResumeOutcome::Expired,
            R::ReplayLost => ResumeOutcome::ReplayLost,
            R::Forbidden => ResumeOutcome::Forbidden,
            R::UnknownToken | R::Unspecified => ResumeOutcome::UnknownToken,
        }
    }
}

/// Why something a client sent, or something sent to it, was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// A frame over the client's rate limit.
    RateLimited,
    /// A client cut off for not reading (its queue dropped with it).
    SlowConsumer,
    /// A relayed signal refused because the receiver's queue was full.
    PeerBusy,
    /// A WebSocket message over `max_message_bytes`.
    Oversized,
}

impl DropReason {
    const ALL: [DropReason; 4] = [
        DropReason::RateLimited,
        DropReason::SlowConsumer,
        DropReason::PeerBusy,
        DropReason::Oversized,
    ];

    fn label(self) -> &'static str {
        match self {
            DropReason::RateLimited => "rate_limited",
            DropReason::SlowConsumer => "slow_consumer",
            DropReason::PeerBusy => "peer_busy",
            DropReason::Oversized => "oversized",
        }
    }
}

/// What became of a webhook event (per URL).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookOutcome {
    /// A 2xx answer.
    Delivered,
    /// One more attempt after a failure.
    Retried,
    /// Given up after every attempt.
    Failed,
    /// Never sent: the queue was full.
    Dropped,
}

impl WebhookOutcome {
    const ALL: [WebhookOutcome; 4] = [
        WebhookOutcome::Delivered,
        WebhookOutcome::Retried,
        WebhookOutcome::Failed,
        WebhookOutcome::Dropped,
    ];

    fn label(self) -> &'static str {
        match self {
            WebhookOutcome::Delivered => "delivered",
            WebhookOutcome::Retried => "retried",
            WebhookOutcome::Failed => "failed",
            WebhookOutcome::Dropped => "dropped",
        }
    }
}

/// What the directory holds now, read at scrape time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Census {
    /// Pair rooms.
    pub pair_rooms: u64,
    /// Mesh rooms.
    pub mesh_rooms: u64,
    /// Members of all rooms (a peer in two rooms counts twice).
    pub members: u64,
    /// Logged-in names.
    pub users: u64,
}

/// A histogram of fixed buckets, each an atomic: observing is two atomic
/// adds, no lock. Values are recorded in an integer unit (microseconds,
/// frames) and shown divided by `scale` (seconds: 1e6; frames: 1). Clones
/// share the buckets, as prometheus-client's own metrics do.
#[derive(Clone, Debug)]
pub struct AtomicHistogram(Arc<Buckets>);

/// Buckets are powers of two, `2^first ..= 2^last` (then +Inf), so a value
/// finds its bucket with one `leading_zeros`, not a search.
#[derive(Debug)]
struct Buckets {
    /// The exponent of the first bound.
    first: u32,
    /// One count per bound `2^first ..= 2^last`, then +Inf.
    counts: Box<[AtomicU64]>,
    sum: AtomicU64,
    scale: f64,
}

impl AtomicHistogram {
    fn new(first: u32, last: u32, scale: f64) -> AtomicHistogram {
        AtomicHistogram(Arc::new(Buckets {
            first,
            counts: (first..=last + 1).map(|_| AtomicU64::new(0)).collect(),
            sum: AtomicU64::new(0),
            scale,
        }))
    }

    /// Records one value, in the recording unit.
    pub fn observe(&self, v: u64) {
        let h = &*self.0;
        // The smallest k with v <= 2^k is ceil(log2 v).
        let k = 64 - v.saturating_sub(1).leading_zeros();
        let i = (k.saturating_sub(h.first) as usize).min(h.counts.len() - 1);
        h.counts[i].fetch_add(1, Ordering::Relaxed);
        h.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Records a duration, for histograms kept in microseconds.
    pub fn observe_duration(&self, d: Duration) {
        self.observe(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }
}

impl TypedMetric for AtomicHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for AtomicHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let h = &*self.0;
        let counts: Vec<u64> = h.counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let bounds = h.counts.len() as u32 - 1;
        let buckets: Vec<(f64, u64)> = (h.first..h.first + bounds)
            .map(|k| (1u64 << k) as f64 / h.scale)
            .chain([f64::INFINITY])
            .zip(counts.iter().copied())
            .collect();
        let count = counts.iter().sum();
        let sum = h.sum.load(Ordering::Relaxed) as f64 / h.scale;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Latency buckets, in microseconds: 2^4 = 16 µs to 2^23 µs (8.4 s).
const LATENCY_US: (u32, u32) = (4, 23);
/// Outbox depth buckets, in frames drained per write: 1 to 1,024.
const DEPTH: (u32, u32) = (0, 10);

/// Per message type: one counter of frames and one of bytes.
struct ByType {
    frames: Vec<Counter>,
    bytes: Vec<Counter>,
}

/// Slot of every type byte in a [`ByType`]: known types in
/// `MessageType::ALL` order, then "unknown".
fn type_slot(kind: u8) -> usize {
    MessageType::ALL
        .iter()
        .position(|t| *t as u8 == kind)
        .unwrap_or(MessageType::ALL.len())
}

impl ByType {
    fn new(frames: &Family<TypeLabel, Counter>, bytes: &Family<TypeLabel, Counter>) -> ByType {
        let names = MessageType::ALL
            .iter()
            .map(|t| text::type_name(*t))
            .chain(["unknown"]);
        let (mut f, mut b) = (Vec::new(), Vec::new());
        for name in names {
            let label = TypeLabel { r#type: name };
            f.push(frames.get_or_create(&label).clone());
            b.push(bytes.get_or_create(&label).clone());
        }
        ByType {
            frames: f,
            bytes: b,
        }
    }
}

/// Every metric of one node.
pub struct Metrics {
    registry: Registry,
    slots: [u8; 256],
    connections_open: Gauge,
    sessions_open: Gauge,
    connections: Vec<Counter>,
    resumes: Vec<Counter>,
    received: ByType,
    sent: ByType,
    errors: Vec<Counter>,
    closes: Family<CloseLabel, Counter>,
    drops: Vec<Counter>,
    sdp_bytes: [Counter; 2],
    rooms: Family<ModeLabel, Gauge>,
    room_members: Gauge,
    users: Gauge,
    webhooks: Vec<Counter>,
    /// Time from reading a relayed frame to taking it for the receiver's
    /// socket write.
    pub relay_latency: AtomicHistogram,
    /// Frames taken from an outbox per write.
    pub outbox_depth: AtomicHistogram,
    /// Time from TCP accept to Welcome queued.
    pub handshake_duration: AtomicHistogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn error_codes() -> impl Iterator<Item = ErrorCode> {
    (0..=64).filter_map(|i| ErrorCode::try_from(i).ok())
}

/// A protobuf enum value's name as outsiders see it (labels, webhook
/// fields): without its prefix, in lower case. `short_name(
/// "ERROR_CODE_RATE_LIMITED", "ERROR_CODE_")` is `rate_limited`.
pub fn short_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// An error code's label. Label values must be 'static: the table is
/// made (and leaked) once per process, not once per server.
fn code_label(code: ErrorCode) -> &'static str {
    static LABELS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let labels = LABELS.get_or_init(|| {
        (0..=64)
            .map(|i| match ErrorCode::try_from(i) {
                Ok(c) => &*Box::leak(short_name(c.as_str_name(), "ERROR_CODE_").into_boxed_str()),
                Err(_) => "unknown",
            })
            .collect()
    });
    labels[code as usize]
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Every series, registered and at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("switchboard");
        let connections_open = Gauge::default();
        registry.register(
            "connections",
            "Connections (HTTP and WebSocket) within the connection caps open now",
            connections_open.clone(),
        );
        let sessions_open = Gauge::default();
        registry.register(
            "sessions",
            "Sessions (connections past Welcome) open now",
            sessions_open.clone(),
        );
        let by_outcome = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "connection_attempts",
            "Connection attempts by outcome",
            by_outcome.clone(),
        );
        let connections = Outcome::ALL
            .iter()
            .map(|o| {
                by_outcome
                    .get_or_create(&OutcomeLabel { outcome: o.label() })
                    .clone()
            })
            .collect();
        let by_resume = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "resumes",
            "Session resumes by outcome: resumed (same node), moved_here (from another node), handed_on (to another node), or refused by reason",
            by_resume.clone(),
        );
        let resumes = ResumeOutcome::ALL
            .iter()
            .map(|o| {
                by_resume
                    .get_or_create(&OutcomeLabel { outcome: o.label() })
                    .clone()
            })
            .collect();
        let frames_in = Family::<TypeLabel, Counter>::default();
        let bytes_in = Family::<TypeLabel, Counter>::default();
        let frames_out = Family::<TypeLabel, Counter>::default();
        let bytes_out = Family::<TypeLabel, Counter>::default();
        registry.register(
            "frames_received",
            "Frames received from clients, by message type",
            frames_in.clone(),
        );
        registry.register_with_unit(
            "received",
            "Frame bytes (header and payload) received from clients, by message type",
            Unit::Bytes,
            bytes_in.clone(),
        );
        registry.register(
            "frames_sent",
            "Frames written to clients, by message type",
            frames_out.clone(),
        );
        registry.register_with_unit(
            "sent",
            "Frame bytes (header and payload) written to clients, by message type",
            Unit::Bytes,
            bytes_out.clone(),
        );
        let received = ByType::new(&frames_in, &bytes_in);
        let sent = ByType::new(&frames_out, &bytes_out);
        let by_code = Family::<CodeLabel, Counter>::default();
        registry.register(
            "errors_sent",
            "Error frames sent to clients, by code",
            by_code.clone(),
        );
        let mut errors = vec![Counter::default(); 65];
        for code in error_codes() {
            errors[code as usize] = by_code
                .get_or_create(&CodeLabel {
                    code: code_label(code),
                })
                .clone();
        }
        let closes = Family::<CloseLabel, Counter>::default();
        registry.register(
            "closes",
            "WebSocket closes sent by the server, by close code",
            closes.clone(),
        );
        let by_reason = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "drops",
            "Frames or connections dropped, by reason",
            by_reason.clone(),
        );
        let drops = DropReason::ALL
            .iter()
            .map(|d| {
                by_reason
                    .get_or_create(&ReasonLabel { reason: d.label() })
                    .clone()
            })
            .collect();
        let sdp = Family::<EncodingLabel, Counter>::default();
        registry.register_with_unit(
            "sdp",
            "SDP bytes in offers and answers received, deflated or plain",
            Unit::Bytes,
            sdp.clone(),
        );
        let sdp_bytes = ["plain", "deflated"]
            .map(|encoding| sdp.get_or_create(&EncodingLabel { encoding }).clone());
        let rooms = Family::<ModeLabel, Gauge>::default();
        registry.register("rooms", "Rooms now, by mode", rooms.clone());
        let room_members = Gauge::default();
        registry.register(
            "room_members",
            "Members of all rooms now",
            room_members.clone(),
        );
        let users = Gauge::default();
        registry.register("users", "Logged-in user names now", users.clone());
        let by_webhook = Family::<OutcomeLabel, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook deliveries (per event and URL) by outcome",
            by_webhook.clone(),
        );
        let webhooks = WebhookOutcome::ALL
            .iter()
            .map(|o| {
                by_webhook
                    .get_or_create(&OutcomeLabel { outcome: o.label() })
                    .clone()
            })
            .collect();
        let mut slots = [0u8; 256];
        for (b, slot) in slots.iter_mut().enumerate() {
            *slot = type_slot(b as u8) as u8;
        }
        let relay_latency = AtomicHistogram::new(LATENCY_US.0, LATENCY_US.1, 1e6);
        registry.register_with_unit(
            "relay_latency",
            "Time from reading a relayed frame to taking it for the receiver's socket write",
            Unit::Seconds,
            relay_latency.clone(),
        );
        let outbox_depth = AtomicHistogram::new(DEPTH.0, DEPTH.1, 1.0);
        registry.register(
            "outbox_depth_frames",
            "Frames taken from a connection's outbox per write",
            outbox_depth.clone(),
        );
        let handshake_duration = AtomicHistogram::new(LATENCY_US.0, LATENCY_US.1, 1e6);
        registry.register_with_unit(
            "handshake_duration",
            "Time from TCP accept to Welcome queued",
            Unit::Seconds,
            handshake_duration.clone(),
        );
        Metrics {
            registry,
            slots,
            connections_open,
            sessions_open,
            connections,
            resumes,
            received,
            sent,
            errors,
            closes,
            drops,
            sdp_bytes,
            rooms,
            room_members,
            users,
            webhooks,
            relay_latency,
            outbox_depth,
            handshake_duration,
        }
    }

    /// A connection was accepted at TCP level (`+1`) or ended (`-1`).
    pub fn connection_open(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// A session began (`+1`) or ended (`-1`).
    pub fn session_open(&self, delta: i64) {
        self.sessions_open.inc_by(delta);
    }

    /// How a connection attempt ended up.
    pub fn attempt(&self, outcome: Outcome) {
        self.connections[outcome as usize].inc();
    }

    /// A resume ended with `outcome`.
    pub fn resume(&self, outcome: ResumeOutcome) {
        self.resumes[outcome as usize].inc();
    }

    /// A frame of type byte `kind`, `len` bytes long, was received.
    #[inline]
    pub fn received(&self, kind: u8, len: usize) {
        let slot = self.slots[kind as usize] as usize;
        self.received.frames[slot].inc();
        self.received.bytes[slot].inc_by(len as u64);
    }

    /// A frame of type `kind`, `len` bytes long, was written.
    #[inline]
    pub fn sent(&self, kind: MessageType, len: usize) {
        let slot = self.slots[kind as usize] as usize;
        self.sent.frames[slot].inc();
        self.sent.bytes[slot].inc_by(len as u64);
    }

    /// An `Error` with `code` was sent.
    pub fn error(&self, code: ErrorCode) {
        if let Some(c) = self.errors.get(code as usize) {
            c.inc();
        }
    }

    /// The server closed a WebSocket with `code`; a slow consumer cut off
    /// (4021) or an oversized message (1009) also counts as a drop.
    pub fn close(&self, code: u16) {
        self.closes
            .get_or_create(&CloseLabel {
                code: code.to_string(),
            })
            .inc();
        if code == 4000 + ErrorCode::SlowConsumer as u16 {
            self.dropped(DropReason::SlowConsumer);
        } else if code == 1009 {
            self.dropped(DropReason::Oversized);
        }
    }

    /// Something was dropped.
    pub fn dropped(&self, why: DropReason) {
        self.drops[why as usize].inc();
    }

    /// What became of a webhook delivery.
    pub fn webhook(&self, outcome: WebhookOutcome) {
        self.webhooks[outcome as usize].inc();
    }

    /// An offer or answer with `len` bytes of SDP was received.
    #[inline]
    pub fn sdp(&self, deflated: bool, len: usize) {
        self.sdp_bytes[usize::from(deflated)].inc_by(len as u64);
    }

    /// The exposition of every metric, with the room and name gauges set
    /// from `census`: OpenMetrics text (what Prometheus asks for) when
    /// `openmetrics`, else the Prometheus text format 0.0.4 (for `curl`,
    /// `promtool` and older scrapers).
    pub fn encode(&self, census: Census, openmetrics: bool) -> String {
        self.rooms
            .get_or_create(&ModeLabel { mode: "pair" })
            .set(census.pair_rooms as i64);
        self.rooms
            .get_or_create(&ModeLabel { mode: "mesh" })
            .set(census.mesh_rooms as i64);
        self.room_members.set(census.members as i64);
        self.users.set(census.users as i64);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        if openmetrics {
            out
        } else {
            prometheus_text(&out)
        }
    }
}

/// OpenMetrics text as the Prometheus text format 0.0.4: the same samples;
/// a counter family's HELP and TYPE name its `_total` samples; no UNIT
/// lines and no EOF marker.
fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    // HELP comes before TYPE: held until the type says what to call it.
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = rest.split_once(' ');
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if kind == "counter" { "_total" } else { "" };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {kind}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each value lands in the first bucket whose bound is at least it.
    #[test]
    fn power_of_two_buckets() {
        let h = AtomicHistogram::new(4, 6, 1.0); // 16, 32, 64, +Inf
        for v in [0, 1, 16, 17, 32, 33, 64, 65, u64::MAX / 2] {
            h.observe(v);
        }
        let counts: Vec<u64> =
            h.0.counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect();
        assert_eq!(counts, vec![3, 2, 2, 2]);
    }
}
