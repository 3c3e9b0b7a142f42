//! Several nodes, one routing space: the [`Directory`] shared through
//! Redis (`--redis-url`).
//!
//! What is decided cluster-wide (room capacity, name uniqueness, node ids,
//! the clean-up of a dead node) is decided atomically inside Redis by the
//! Lua scripts of [`scripts`]. What is on the hot path is not: each node
//! keeps a copy (the *mirror*) of every room one of its peers is in, kept
//! current by the room events the scripts publish on its channel, so "do
//! these two share a room" is a local lookup, and a signal to a peer of
//! another node is appended to that node's batch ([`Links`]) and leaves with
//! every other frame for it in one `PUBLISH` per flush. A signal between two
//! peers of one node never touches Redis.
//!
//! # Layout
//! - [`scripts`]: the keys and the Lua scripts.
//! - [`wire`]: what nodes send each other (room events, batches of frames).
//! - this file: [`ClusterDirectory`] and its three tasks: the *writer*
//!   (every change to Redis and every batch, in one order, so a signal sent
//!   before a leave reaches the other node before the leave's `PeerLeft`),
//!   the *listener* (this node's channel), and the *lease keeper* (renews
//!   the lease, cleans up dead nodes, writes the node's state back after
//!   Redis lost it).
//!
//! # Failure behaviour
//! Every wait for Redis is bounded by `redis_timeout`: a client's join,
//! login or call by name that cannot be decided in time is answered
//! `UNAVAILABLE`, and what it may still have done in Redis is undone
//! behind it. Same-node relay goes on without Redis. A departure that
//! cannot be written is retried by the lease keeper once Redis answers.

mod handover;
pub mod scripts;
pub mod wire;

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::directory::{Directory, RoomInfo};
use crate::metrics::Census;
use crate::outbox::{CloseReason, Origin};
use crate::protocol::{
    encode, Address, Encoded, ErrorMessage, Joined, LeaveReason, Member, Message, PeerId,
    PeerJoined, RoomId, RoomMode, UserName,
};
use crate::registry::{Registry, Route, RouteError, Shards, Target};
use crate::rooms::{JoinError, LoginError, RoomPolicy, Rooms, MAX_CALLS};
use crate::webhooks::{Event, EventSink};

use scripts::Lua;
use wire::{peer_key, Record};

/// Most bytes waiting for one other node; past it a signal for that node is
/// refused (`PEER_BUSY` to its sender) and a notice dropped.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Most requests waiting for the writer; past it a client's request is
/// answered `UNAVAILABLE` at once.
const WRITER_QUEUE: usize = 4096;

/// Most peers of dead nodes one clean-up script removes (it holds Redis
/// while it runs).
const REAP_BATCH: usize = 256;

/// Most scripts sent in one pipeline.
const WRITER_PIPELINE: usize = 128;

/// Most senders of unacknowledged signals to one node remembered, to
/// tell them if that node dies.
const MAX_UNACKED: usize = 65_536;

/// Most departures kept for writing once Redis answers again.
const MAX_RETRIES: usize = 100_000;

/// What waits for one other node: the batch, and whom to tell if it cannot
/// be delivered.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// The local senders of the relayed signals in it, with their frames'
    /// sequence numbers.
    origins: Vec<(PeerId, u32)>,
    /// Requests for sessions in it, failed at once if no node hears it.
    requests: Vec<u64>,
    /// Peers fenced in it: if no node hears it, their old node is gone.
    fences: Vec<PeerId>,
    /// Its number for its node, once the writer took it.
    seq: u64,
}

/// The frames waiting for other nodes, one batch per node, and where the
/// peers that moved between nodes are now.
#[derive(Default)]
pub struct Links {
    pending: Mutex<foldhash::HashMap<u16, Batch>>,
    wake: tokio::sync::Notify,
    /// Peers on another node than the one their id names (their sessions
    /// moved), by node. Written only with `pending` locked, so a frame is
    /// appended either before a node's fence for a move or to the new
    /// node; read without it on the hot path.
    moved: parking_lot::RwLock<foldhash::HashMap<PeerId, u16>>,
    any_moved: AtomicBool,
}

/// Where [`Links::append_to`] put a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Appended {
    /// In the batch of the peer's node.
    Queued,
    /// Nowhere: that batch is full.
    Full,
    /// Nowhere: the peer is on this node now (it moved here).
    Here,
}

impl Links {
    fn append(
        &self,
        node: u16,
        origin: Option<(PeerId, u32)>,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let mut pending = self.pending.lock();
        self.append_locked(&mut pending, node, origin, put)
    }

    fn append_locked(
        &self,
        pending: &mut foldhash::HashMap<u16, Batch>,
        node: u16,
        origin: Option<(PeerId, u32)>,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> bool {
        let batch = pending.entry(node).or_default();
        if batch.bytes.len() > MAX_BATCH_BYTES {
            return false;
        }
        let first = batch.bytes.is_empty();
        if first {
            batch.bytes = wire::new_batch();
        }
        put(&mut batch.bytes);
        batch.origins.extend(origin);
        if first {
            self.wake.notify_one();
        }
        true
    }

    /// Appends request `req` for a session to `node`'s batch.
    fn ask(&self, node: u16, req: u64, put: impl FnOnce(&mut Vec<u8>)) -> bool {
        let mut pending = self.pending.lock();
        let asked = self.append_locked(&mut pending, node, None, put);
        if asked {
            pending.entry(node).or_default().requests.push(req);
        }
        asked
    }

    /// Appends a frame for `peer` to the batch of the node it is on
    /// (`me`: this node), deciding that node under the batches' lock.
    fn append_to(
        &self,
        me: u16,
        peer: PeerId,
        origin: Option<(PeerId, u32)>,
        put: impl FnOnce(&mut Vec<u8>),
    ) -> Appended {
        let mut pending = self.pending.lock();
        let node = self.node_of(peer);
        if node == me {
            return Appended::Here;
        }
        if self.append_locked(&mut pending, node, origin, put) {
            Appended::Queued
        } else {
            Appended::Full
        }
    }

    /// The node `peer` is on.
    fn node_of(&self, peer: PeerId) -> u16 {
        if !self.any_moved.load(Ordering::Acquire) {
            return peer.node();
        }
        self.moved
            .read()
            .get(&peer)
            .copied()
            .unwrap_or_else(|| peer.node())
    }

    /// Records that `peer` is on `node` now (`None`: where its id says),
    /// then runs `then` on the batches before any other frame can be
    /// appended.
    fn set_node(
        &self,
        peer: PeerId,
        node: Option<u16>,
        then: impl FnOnce(&Links, &mut foldhash::HashMap<u16, Batch>),
    ) {
        let mut pending = self.pending.lock();
        {
            let mut moved = self.moved.write();
            match node {
                Some(node) if node != peer.node() => {
                    moved.insert(peer, node);
                }
                _ => {
                    moved.remove(&peer);
                }
            }
            self.any_moved.store(!moved.is_empty(), Ordering::Release);
        }
        then(self, &mut pending);
    }

    fn take(&self) -> Vec<(u16, Batch)> {
        let mut pending = self.pending.lock();
        pending
            .iter_mut()
            .filter(|(_, b)| !b.bytes.is_empty())
            .map(|(node, b)| (*node, std::mem::take(b)))
            .collect()
    }
}

/// A script to run by the writer, and where its answer goes (none: nobody
/// waits for it).
struct Op {
    script: &'static LazyLock<Lua>,
    args: Vec<String>,
    reply: Option<oneshot::Sender<redis::RedisResult<redis::Value>>>,
    /// What undoes the script when it ran (or may have) and its caller
    /// could not be told: run by the writer before anything queued later.
    undo: Option<Write>,
}

/// A script and its arguments.
type Write = (&'static LazyLock<Lua>, Vec<String>);

/// Batches published to one node and not acknowledged: the next batch's
/// number, and each batch's number with the senders of its signals.
#[derive(Default)]
struct Unacked {
    next: u64,
    batches: std::collections::VecDeque<(u64, Vec<(PeerId, u32)>)>,
    senders: usize,
}

/// How often a node acknowledges the batches it processed.
const ACK_EVERY: Duration = Duration::from_millis(100);

/// The [`Directory`] of a cluster node: rooms, names and calls in Redis,
/// shared by every node of the cluster; the peers connected here in the
/// local [`Registry`].
pub struct ClusterDirectory {
    registry: Arc<Registry>,
    node: u16,
    epoch: u16,
    prefix: String,
    /// This start's random token: proves the lease is ours.
    token: String,
    /// The mark of the Redis keyspace the node is registered in.
    boot: Mutex<String>,
    /// Since when the lease has been renewed without a miss: a node cleans
    /// up others only after a whole lease of health, so after an outage
    /// every node has had time to renew before any is taken for dead.
    healthy_since: Mutex<Option<Instant>>,
    conn: ConnectionManager,
    client: redis::Client,
    writer: mpsc::Sender<Op>,
    links: Links,
    /// The rooms a peer of this node is in, as the room events left them.
    mirror: Shards<Rooms>,
    hasher: foldhash::fast::RandomState,
    policy: RoomPolicy,
    events: OnceLock<EventSink>,
    /// The names held by peers of this node, for writing them back.
    names_here: Mutex<foldhash::HashMap<PeerId, UserName>>,
    /// Joins waiting for their room event (which queues `Joined`).
    joining: Mutex<foldhash::HashMap<(PeerId, RoomId), oneshot::Sender<()>>>,
    /// Departures to write once Redis answers again.
    retries: Mutex<std::collections::VecDeque<Write>>,
    leased: AtomicBool,
    listening: AtomicBool,
    /// Set while the writer sends what it took.
    writing: AtomicBool,
    /// Batches published to each node and not yet acknowledged by it,
    /// with the senders of their signals (at most [`MAX_UNACKED`] senders a
    /// node): `PUBLISH` counts a node's subscription until Redis sees its
    /// socket close, so what went to a node in the moment it died was
    /// heard by no one. Their senders are told when the node is found dead.
    unacked: Mutex<foldhash::HashMap<u16, Unacked>>,
    /// The last batch from each node processed here, to acknowledge.
    owed: Mutex<foldhash::HashMap<u16, u64>>,
    timeout: Duration,
    lease: Duration,
    /// Resumable sessions moving to and from this node.
    handovers: handover::Handovers,
    /// The bounds of an outbox (for sessions that move here).
    outbox_limits: crate::outbox::OutboxLimits,
}

fn redis_error(e: impl std::fmt::Display) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::Io, "redis", e.to_string()))
}

impl ClusterDirectory {
    /// Connects to `config.redis_url`, claims a node id and starts the
    /// node's tasks.
    pub async fn start(config: &Config) -> anyhow::Result<Arc<ClusterDirectory>> {
        let url = config
            .redis_url
            .as_deref()
            .ok_or_else(|| anyhow::anyhow!("no redis_url"))?;
        let client = redis::Client::open(url)?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.redis_timeout))
            .set_response_timeout(Some(config.redis_timeout))
            .set_max_delay(Duration::from_secs(2));
        let mut conn = tokio::time::timeout(
            config.redis_timeout * 5,
            client.get_connection_manager_with_config(manager),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from redis at {url}"))??;
        let prefix = config.cluster.clone();
        let token = format!("{:032x}", rand::random::<u128>());
        let (node, epoch, boot): (u16, u16, String) = scripts::CLAIM
            .arg(&prefix)
            .arg(&token)
            .arg(config.lease.as_millis() as u64)
            .invoke_async(&mut conn)
            .await?;
        info!(node, epoch, cluster = %prefix, "joined the cluster");
        let registry = Arc::new(Registry::new(config.shards));
        let (writer, queue) = mpsc::channel(WRITER_QUEUE);
        let dir = Arc::new(ClusterDirectory {
            registry,
            node,
            epoch,
            prefix,
            token,
            boot: Mutex::new(boot),
            healthy_since: Mutex::new(Some(Instant::now())),
            conn,
            client,
            writer,
            links: Links::default(),
            mirror: Shards::new(config.shards),
            hasher: Default::default(),
            policy: RoomPolicy {
                default_capacity: config.default_room_capacity,
                max_capacity: config.max_room_capacity,
            },
            events: OnceLock::new(),
            names_here: Default::default(),
            joining: Default::default(),
            retries: Default::default(),
            leased: AtomicBool::new(true),
            listening: AtomicBool::new(false),
            writing: AtomicBool::new(false),
            unacked: Default::default(),
            owed: Default::default(),
            timeout: config.redis_timeout,
            lease: config.lease,
            handovers: Default::default(),
            outbox_limits: crate::outbox::OutboxLimits {
                frames: config.outbox_frames,
                bytes: config.outbox_bytes,
            },
        });
        tokio::spawn(dir.clone().write(queue));
        tokio::spawn(dir.clone().listen());
        tokio::spawn(dir.clone().keep_lease());
        tokio::spawn(dir.clone().acknowledge());
        // Ready once this node hears its channel: a room event published
        // before would be lost.
        let deadline = Instant::now() + config.redis_timeout * 5;
        while !dir.listening.load(Ordering::Acquire) {
            if Instant::now() > deadline {
                anyhow::bail!("could not subscribe to this node's channel");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Peers that moved before this node started (later moves come as
        // events).
        dir.load_moved().await;
        Ok(dir)
    }

    fn channel(&self, node: u16) -> String {
        format!("{}:ch:{node}", self.prefix)
    }

    fn room_shard(&self, room: &RoomId) -> &Mutex<Rooms> {
        self.mirror.at(self.hasher.hash_one(room))
    }

    fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(sink) = self.events.get() {
            sink.emit(event());
        }
    }

    /// Whether `peer` is on this node (its id names another if it moved
    /// here, this one if it has moved away).
    fn is_here(&self, peer: PeerId) -> bool {
        self.links.node_of(peer) == self.node
    }

    // ---- the writer ----

    /// Runs every change to Redis and publishes every batch, in the order
    /// they were made. Whatever is waiting goes in one pipeline (one round
    /// trip): the batches first, then the scripts in their order, so a
    /// signal queued before a room change reaches its node before the
    /// change's events, and many concurrent joins cost one round trip.
    async fn write(self: Arc<Self>, mut queue: mpsc::Receiver<Op>) {
        let mut conn = self.conn.clone();
        let mut ops = Vec::new();
        loop {
            tokio::select! {
                biased;
                n = queue.recv_many(&mut ops, WRITER_PIPELINE) => {
                    if n == 0 {
                        return;
                    }
                }
                () = self.links.wake.notified() => {}
            }
            // Callers that gave up before their script was sent: not run,
            // so nothing to undo.
            ops.retain(|op| !op.reply.as_ref().is_some_and(|r| r.is_closed()));
            self.writing.store(true, Ordering::Release);
            let batches = self.links.take();
            // What must run before anything queued since: undos of scripts
            // whose callers could not be told, and writes that failed.
            let earlier: Vec<Write> = self.retries.lock().drain(..).collect();
            if batches.is_empty() && ops.is_empty() && earlier.is_empty() {
                self.writing.store(false, Ordering::Release);
                continue;
            }
            let mut batches = batches;
            self.number(&mut batches);
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            for (node, batch) in &batches {
                pipe.cmd("PUBLISH")
                    .arg(self.channel(*node))
                    .arg(&batch.bytes);
            }
            for (script, args) in earlier
                .iter()
                .map(|(s, a)| (s, a))
                .chain(ops.iter().map(|op| (&op.script, &op.args)))
            {
                pipe.cmd("EVAL").arg(script.code()).arg(0).arg(args);
            }
            let answers: redis::RedisResult<Vec<redis::Value>> =
                tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                    .await
                    .unwrap_or_else(|e| Err(redis_error(e)));
            let mut answers = match answers {
                Ok(answers) => answers.into_iter(),
                Err(e) => {
                    warn!(error = %e, "redis did not answer in time");
                    for (node, batch) in &batches {
                        self.undelivered(&batch.origins, RouteError::Unavailable);
                        self.unanswered(&batch.requests);
                        self.forget_batch(*node, batch.seq);
                    }
                    // Whether any ran is unknown: the earlier writes and
                    // the undos go first next time, in their order.
                    let mut again = earlier;
                    for op in ops.drain(..) {
                        if let Some(reply) = op.reply {
                            let _ = reply.send(Err(redis_error("no answer")));
                        }
                        again.extend(op.undo);
                    }
                    self.retry_first(again);
                    self.writing.store(false, Ordering::Release);
                    continue;
                }
            };
            for (node, batch) in &batches {
                let heard = answers.next().map(redis::from_redis_value::<i64>);
                if !matches!(heard, Some(Ok(n)) if n > 0) {
                    debug!(node, "no node listens: its peers are gone");
                    self.unanswered(&batch.requests);
                    self.unfenced(&batch.fences);
                    // This batch and every one before it not acknowledged.
                    self.sent_to_the_dead(*node);
                }
            }
            let answer_of = |answer: Option<redis::Value>| match answer {
                Some(redis::Value::ServerError(e)) => Err(redis_error(format!("{e:?}"))),
                Some(value) => Ok(value),
                None => Err(redis_error("missing answer")),
            };
            let mut again = Vec::new();
            for write in earlier {
                if let Err(e) = answer_of(answers.next()) {
                    debug!(error = %e, "an earlier redis change failed again");
                    again.push(write);
                }
            }
            for op in ops.drain(..) {
                let answer = answer_of(answers.next());
                match op.reply {
                    Some(reply) => {
                        // A caller that gave up meanwhile never learns what
                        // its script did: undone before anything later.
                        if reply.send(answer).is_err() {
                            again.extend(op.undo);
                        }
                    }
                    None => {
                        if let Err(e) = answer {
                            debug!(error = %e, "background redis change failed");
                        }
                    }
                }
            }
            self.retry_first(again);
            self.writing.store(false, Ordering::Release);
        }
    }

    /// Numbers each batch for its node (a `Mark` at its end) and keeps its
    /// senders until the node acknowledges it.
    fn number(&self, batches: &mut [(u16, Batch)]) {
        let mut unacked = self.unacked.lock();
        for (node, batch) in batches {
            let u = unacked.entry(*node).or_default();
            let seq = u.next;
            u.next += 1;
            batch.seq = seq;
            wire::put_mark(&mut batch.bytes, self.node, seq);
            if !batch.origins.is_empty() {
                u.senders += batch.origins.len();
                u.batches.push_back((seq, batch.origins.clone()));
                while u.senders > MAX_UNACKED {
                    let Some((_, dropped)) = u.batches.pop_front() else {
                        break;
                    };
                    u.senders -= dropped.len();
                }
            }
        }
    }

    /// Batch `seq` to `node` was not published: its senders are told so
    /// already.
    fn forget_batch(&self, node: u16, seq: u64) {
        if let Some(u) = self.unacked.lock().get_mut(&node) {
            if let Some(at) = u.batches.iter().position(|(s, _)| *s == seq) {
                if let Some((_, gone)) = u.batches.remove(at) {
                    u.senders -= gone.len();
                }
            }
        }
    }

    /// Node `from` processed this node's batches up to `seq`.
    fn on_ack(&self, from: u16, seq: u64) {
        if let Some(u) = self.unacked.lock().get_mut(&from) {
            while u.batches.front().is_some_and(|(s, _)| *s <= seq) {
                if let Some((_, done)) = u.batches.pop_front() {
                    u.senders -= done.len();
                }
            }
        }
    }

    /// Acknowledges, every [`ACK_EVERY`], the batches processed since.
    async fn acknowledge(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ACK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let owed = std::mem::take(&mut *self.owed.lock());
            for (node, seq) in owed {
                self.links
                    .append(node, None, |b| wire::put_ack(b, self.node, seq));
            }
        }
    }

    /// Node `node` died (or no node hears its channel): the senders of
    /// what went there and was not acknowledged are told it was perhaps
    /// not delivered.
    fn sent_to_the_dead(&self, node: u16) {
        let Some(u) = self.unacked.lock().remove(&node) else {
            return;
        };
        let origins: Vec<(PeerId, u32)> = u.batches.into_iter().flat_map(|(_, o)| o).collect();
        if origins.is_empty() {
            return;
        }
        info!(
            node,
            signals = origins.len(),
            "a node is gone: the senders of what it did not acknowledge are told"
        );
        for (peer, seq) in origins {
            self.notify(
                peer,
                encode(&Message::Error(ErrorMessage {
                    code: RouteError::UnknownPeer.code(),
                    message: format!("perhaps not delivered: the receiver's node {node} is gone"),
                    request_seq: seq,
                })),
            );
        }
    }

    /// Puts `writes` at the head of what the writer runs before anything
    /// new (at most [`MAX_RETRIES`] wait; past that the oldest go).
    fn retry_first(&self, writes: Vec<Write>) {
        if writes.is_empty() {
            return;
        }
        let mut retries = self.retries.lock();
        for write in writes.into_iter().rev() {
            retries.push_front(write);
        }
        if retries.len() > MAX_RETRIES {
            error!(
                dropped = retries.len() - MAX_RETRIES,
                "too many changes waiting for redis"
            );
            retries.truncate(MAX_RETRIES);
        }
    }

    /// Whether everything this node had to send other nodes has left.
    fn sent(&self) -> bool {
        !self.writing.load(Ordering::Acquire)
            && self
                .links
                .pending
                .lock()
                .values()
                .all(|b| b.bytes.is_empty())
    }

    fn undelivered(&self, origins: &[(PeerId, u32)], why: RouteError) {
        for &(peer, seq) in origins {
            self.registry.notify(
                peer,
                encode(&Message::Error(ErrorMessage {
                    code: why.code(),
                    message: format!("not delivered: {why}"),
                    request_seq: seq,
                })),
            );
        }
    }

    /// Runs `script` through the writer and waits for it, at most
    /// `redis_timeout` (queueing included).
    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &'static LazyLock<Lua>,
        args: Vec<String>,
    ) -> redis::RedisResult<T> {
        self.call_undoable(script, args, None).await
    }

    /// [`ClusterDirectory::call`], with what undoes the script should it
    /// run (or may have) without this caller learning it: the writer runs
    /// `undo` before anything queued later, so a retry that succeeds is
    /// never undone. A script never sent (the queue full, or the caller
    /// gone first) is not undone: it did not run.
    async fn call_undoable<T: redis::FromRedisValue>(
        &self,
        script: &'static LazyLock<Lua>,
        args: Vec<String>,
        undo: Option<Write>,
    ) -> redis::RedisResult<T> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .try_send(Op {
                script,
                args,
                reply: Some(reply),
                undo,
            })
            .map_err(redis_error)?;
        let value = tokio::time::timeout(self.timeout, answer)
            .await
            .map_err(redis_error)?
            .map_err(redis_error)??;
        redis::from_redis_value(value).map_err(redis_error)
    }

    /// Queues `script` behind everything queued so far, without waiting:
    /// undoes what a request that timed out may still do.
    fn behind(&self, script: &'static LazyLock<Lua>, args: Vec<String>) {
        let op = Op {
            script,
            args,
            reply: None,
            undo: None,
        };
        if let Err(mpsc::error::TrySendError::Full(op) | mpsc::error::TrySendError::Closed(op)) =
            self.writer.try_send(op)
        {
            self.retry(op.script, op.args);
        }
    }

    /// Keeps a change that could not be written for the writer's next
    /// round, ahead of anything new.
    fn retry(&self, script: &'static LazyLock<Lua>, args: Vec<String>) {
        let mut retries = self.retries.lock();
        if retries.len() < MAX_RETRIES {
            retries.push_back((script, args));
        } else {
            error!("too many departures waiting for redis; one is dropped");
        }
        drop(retries);
        self.links.wake.notify_one();
    }

    /// A read that needs no ordering with the writer's changes.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        let mut conn = self.conn.clone();
        tokio::time::timeout(self.timeout, cmd.query_async(&mut conn))
            .await
            .unwrap_or_else(|e| Err(redis_error(e)))
    }

    // ---- the listener ----

    /// Listens to this node's channel, resubscribing with backoff when the
    /// connection drops.
    async fn listen(self: Arc<Self>) {
        let channel = self.channel(self.node);
        let mut backoff = Duration::from_millis(50);
        let mut resubscribed = false;
        loop {
            let subscribed = async {
                let mut pubsub = self.client.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                Ok::<_, redis::RedisError>(pubsub)
            };
            match tokio::time::timeout(self.timeout * 2, subscribed).await {
                Ok(Ok(pubsub)) => {
                    backoff = Duration::from_millis(50);
                    if resubscribed {
                        // Events published while this node was not
                        // listening are lost: catch up from Redis before
                        // reading the ones queued since subscribing.
                        self.resync().await;
                    }
                    resubscribed = true;
                    self.listening.store(true, Ordering::Release);
                    info!(%channel, "listening to this node's channel");
                    let mut messages = pubsub.into_on_message();
                    while let Some(message) = messages.next().await {
                        self.on_message(message.get_payload_bytes());
                    }
                    self.listening.store(false, Ordering::Release);
                    warn!("lost this node's channel; subscribing again");
                }
                Ok(Err(e)) => debug!(error = %e, "cannot subscribe yet"),
                Err(_) => debug!("subscribing timed out"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Reads where every moved peer is (`P:moved`): at start, and after
    /// this node missed events.
    async fn load_moved(&self) {
        let moved: redis::RedisResult<Vec<(String, u16)>> = self
            .query(redis::cmd("HGETALL").arg(format!("{}:moved", self.prefix)))
            .await;
        match moved {
            Ok(moved) => {
                for (peer, node) in moved {
                    if let Some(peer) = wire::parse_peer(&peer) {
                        self.links.set_node(peer, Some(node), |_, _| {});
                    }
                }
            }
            Err(e) => warn!(error = %e, "could not read where moved peers are"),
        }
    }

    /// Brings the copies of this node's rooms up to date from Redis, and
    /// tells the members here of every change they missed.
    async fn resync(&self) {
        // Only within the keyspace this node knows: a Redis that came back
        // empty holds no rooms yet, and the lease keeper writes them back.
        let mark: Option<String> = self
            .query(redis::cmd("GET").arg(format!("{}:boot", self.prefix)))
            .await
            .unwrap_or(None);
        if mark.as_deref() != Some(self.boot.lock().as_str()) {
            return;
        }
        // Moves announced while this node was not listening.
        self.load_moved().await;
        let mut ids = Vec::new();
        for shard in self.mirror.shards.iter() {
            ids.extend(shard.lock().iter().map(|(id, _)| id.clone()));
        }
        for id in ids {
            let Some(now) = self.fetch_room(&id).await else {
                continue;
            };
            let before = self
                .room_shard(&id)
                .lock()
                .get(&id)
                .map(|r| r.members().to_vec())
                .unwrap_or_default();
            let after = now.as_ref().map(|r| r.members.clone()).unwrap_or_default();
            let here_after: Vec<PeerId> = after
                .iter()
                .map(|m| m.peer_id)
                .filter(|p| self.is_here(*p))
                .collect();
            {
                let mut shard = self.room_shard(&id).lock();
                match &now {
                    Some(r) if !here_after.is_empty() => {
                        shard.mirror(&id, r.mode, r.capacity, after.clone())
                    }
                    _ => {
                        shard.close(&id);
                    }
                }
            }
            for gone in before
                .iter()
                .filter(|m| !after.iter().any(|a| a.peer_id == m.peer_id))
            {
                let to: Vec<PeerId> = here_after
                    .iter()
                    .copied()
                    .filter(|p| *p != gone.peer_id)
                    .collect();
                self.registry.notify_all(
                    &to,
                    &encode(&Message::PeerLeft(crate::protocol::PeerLeft {
                        room: id.clone(),
                        peer_id: gone.peer_id,
                        reason: LeaveReason::Disconnected,
                    })),
                );
            }
            for new in after
                .iter()
                .filter(|m| !before.iter().any(|b| b.peer_id == m.peer_id))
            {
                let to: Vec<PeerId> = here_after
                    .iter()
                    .copied()
                    .filter(|p| *p != new.peer_id)
                    .collect();
                self.registry.notify_all(
                    &to,
                    &encode(&Message::PeerJoined(PeerJoined {
                        room: id.clone(),
                        member: new.clone(),
                        initiator: false,
                    })),
                );
            }
        }
    }

    /// One room as Redis has it: `Some(None)` when it is gone, `None` when
    /// Redis did not answer.
    async fn fetch_room(&self, room: &RoomId) -> Option<Option<RoomInfo>> {
        let mut conn = self.conn.clone();
        let mut call = scripts::ROOMS.prepare_invoke();
        call.arg(&self.prefix).arg(room.as_str());
        let answer: Vec<String> =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(answer)) => answer,
                _ => return None,
            };
        Some(answer.first().and_then(|a| parse_room_answer(a)))
    }

    fn on_message(self: &Arc<Self>, data: &[u8]) {
        match data.first() {
            Some(&wire::BATCH) => {
                for record in wire::records(Bytes::copy_from_slice(&data[1..])) {
                    match record {
                        Ok(record) => self.on_record(record),
                        Err(e) => {
                            warn!(error = %e, "dropped the rest of a batch");
                            break;
                        }
                    }
                }
            }
            Some(b'{') => match serde_json::from_slice::<wire::Event>(data) {
                Ok(event) => self.on_event(event),
                Err(e) => warn!(error = %e, "unreadable room event"),
            },
            _ => warn!("unknown message on this node's channel"),
        }
    }

    fn on_record(self: &Arc<Self>, record: Record) {
        match record {
            Record::Relay {
                to,
                origin,
                seq,
                frame,
                forwarded,
            } => {
                let at = Origin {
                    peer: origin,
                    seq,
                    read_at: Instant::now(),
                };
                let delivered = match self.registry.outbox(to) {
                    Some(outbox) if forwarded => outbox
                        .push_forwarded(frame, Some(at))
                        .map_err(RouteError::from),
                    // Leaving from a node that drains: its old outbox is
                    // closed, so what reaches it is forwarded as it comes.
                    Some(outbox) if self.leaving_to(to).is_some() && outbox.closed().is_some() => {
                        self.forward_record(to, Some((origin, seq)), &frame)
                    }
                    Some(outbox) => self.registry.deliver(&outbox, frame, at),
                    // It moved on: after it, like the frames its old node
                    // forwarded.
                    None if !self.is_here(to) => {
                        match self
                            .links
                            .append_to(self.node, to, Some((origin, seq)), |b| {
                                wire::put_relay(b, to, origin, seq, &frame, true)
                            }) {
                            Appended::Queued => Ok(()),
                            Appended::Full => Err(RouteError::PeerBusy),
                            Appended::Here => Err(RouteError::UnknownPeer),
                        }
                    }
                    None => Err(RouteError::UnknownPeer),
                };
                if let Err(e) = delivered {
                    self.notify(
                        origin,
                        encode(&Message::Error(ErrorMessage {
                            code: e.code(),
                            message: format!("not delivered to {to}: {e}"),
                            request_seq: seq,
                        })),
                    );
                }
            }
            Record::Notify {
                to,
                frame,
                forwarded,
            } => match self.registry.outbox(to) {
                Some(outbox) if forwarded => {
                    let _ = outbox.push_forwarded(frame, None);
                }
                Some(outbox) if self.leaving_to(to).is_some() && outbox.closed().is_some() => {
                    let _ = self.forward_record(to, None, &frame);
                }
                Some(_) => self.registry.notify(to, frame),
                None if !self.is_here(to) => self.notify(to, frame),
                None => {}
            },
            Record::Take {
                req,
                from,
                token,
                identity,
                hops,
            } => self.on_take(req, from, token, identity, hops),
            Record::Give { req, node, session } => self.on_give(req, node, session),
            Record::Fence { peer, from } => self.on_fence(peer, from),
            Record::Done { peer } => self.on_done(peer),
            Record::Mark { from, seq } => {
                self.owed.lock().insert(from, seq);
            }
            Record::Ack { from, seq } => self.on_ack(from, seq),
        }
    }

    fn on_event(&self, event: wire::Event) {
        match event {
            wire::Event::Joined { r, p, mode, cap, m } => {
                let (Some(room), Some(joiner)) = (wire::parse_room(&r), wire::parse_peer(&p))
                else {
                    return;
                };
                let members: Vec<Member> = m.iter().filter_map(|m| wire::parse_member(m)).collect();
                self.on_joined(room, joiner, wire::parse_mode(&mode), cap, members);
            }
            wire::Event::Left { r, p, why } => {
                let (Some(room), Some(peer)) = (wire::parse_room(&r), wire::parse_peer(&p)) else {
                    return;
                };
                let reason = LeaveReason::try_from(why).unwrap_or(LeaveReason::Disconnected);
                let notice = {
                    let mut shard = self.room_shard(&room).lock();
                    let notice = shard.leave(&room, peer, reason);
                    let any_here = shard
                        .get(&room)
                        .is_some_and(|r| r.members().iter().any(|m| self.is_here(m.peer_id)));
                    if !any_here {
                        shard.close(&room);
                    }
                    notice
                };
                if let Some(notice) = notice {
                    let here: Vec<PeerId> =
                        notice.to.into_iter().filter(|p| self.is_here(*p)).collect();
                    self.registry.notify_all(&here, &encode(&notice.message));
                }
            }
            wire::Event::User { r, p, u } => {
                let (Some(room), Some(peer)) = (wire::parse_room(&r), wire::parse_peer(&p)) else {
                    return;
                };
                let user = UserName::new(&u).ok();
                self.room_shard(&room).lock().set_user(&room, peer, user);
            }
            wire::Event::HangUp { to, from } => {
                if let (Some(to), Ok(from)) = (wire::parse_peer(&to), UserName::new(&from)) {
                    self.registry.notify(
                        to,
                        encode(&Message::HangUp {
                            peer: Address::User(from),
                        }),
                    );
                }
            }
            wire::Event::Kicked { r, p, why } => {
                if let (Some(room), Some(peer)) = (wire::parse_room(&r), wire::parse_peer(&p)) {
                    self.registry.tell_kicked(&room, peer, &why);
                }
            }
            wire::Event::Moved { p, n, f, ns, rooms } => {
                if let Some(peer) = wire::parse_peer(&p) {
                    self.on_moved(peer, n, f, &ns, rooms);
                }
            }
            wire::Event::Died { n } => self.sent_to_the_dead(n),
            wire::Event::Closed { r } => {
                let Some(room) = wire::parse_room(&r) else {
                    return;
                };
                let members = self.room_shard(&room).lock().close(&room);
                for peer in members.unwrap_or_default() {
                    if self.is_here(peer) {
                        self.registry
                            .tell_kicked(&room, peer, "an operator closed the room");
                    }
                }
            }
        }
    }

    /// A room event for a join: the copy of the room follows it, the joiner
    /// (if here and still waiting) gets `Joined` before anything else
    /// about the room can reach it, and the members here `PeerJoined`.
    fn on_joined(
        &self,
        room: RoomId,
        joiner: PeerId,
        mode: RoomMode,
        capacity: u32,
        members: Vec<Member>,
    ) {
        let newcomer = members.iter().find(|m| m.peer_id == joiner).cloned();
        let here: Vec<PeerId> = members
            .iter()
            .map(|m| m.peer_id)
            .filter(|p| *p != joiner && self.is_here(*p))
            .collect();
        {
            let mut shard = self.room_shard(&room).lock();
            if shard.get(&room).is_some_and(|r| r.contains(joiner)) {
                // Known already (a resynchronisation saw it first): the
                // notices went out then.
                shard.mirror(&room, mode, capacity, members);
                return;
            }
            if self.is_here(joiner) || !here.is_empty() {
                shard.mirror(&room, mode, capacity, members.clone());
            } else {
                shard.close(&room);
            }
            if self.is_here(joiner) {
                self.joined_here(&room, joiner, mode, capacity, &members);
            }
        }
        if let (Some(member), false) = (newcomer, here.is_empty()) {
            self.registry.notify_all(
                &here,
                &encode(&Message::PeerJoined(PeerJoined {
                    room,
                    member,
                    initiator: false,
                })),
            );
        }
    }

    /// Queues `Joined` for a joiner of this node whose join still waits
    /// for it; false if none waits (the join gave up and answered itself).
    fn joined_here(
        &self,
        room: &RoomId,
        joiner: PeerId,
        mode: RoomMode,
        capacity: u32,
        members: &[Member],
    ) -> bool {
        let Some(waiting) = self.joining.lock().remove(&(joiner, room.clone())) else {
            return false;
        };
        let others: Vec<Member> = members
            .iter()
            .filter(|m| m.peer_id != joiner)
            .cloned()
            .collect();
        let joined = Joined {
            room: room.clone(),
            mode,
            capacity,
            initiator: mode == RoomMode::Pair && !others.is_empty(),
            members: others,
        };
        self.registry
            .notify(joiner, encode(&Message::Joined(joined)));
        let _ = waiting.send(());
        true
    }

    // ---- the lease keeper ----

    async fn keep_lease(self: Arc<Self>) {
        let period = self.lease / 3;
        loop {
            tokio::time::sleep(period).await;
            let renewed: redis::RedisResult<(String, String)> = async {
                let mut conn = self.conn.clone();
                let boot = self.boot.lock().clone();
                let mut call = scripts::RENEW.prepare_invoke();
                call.arg(&self.prefix)
                    .arg(self.node)
                    .arg(&self.token)
                    .arg(self.lease.as_millis() as u64)
                    .arg(self.epoch)
                    .arg(boot)
                    .arg(format!("{:032x}", rand::random::<u128>()));
                let call = call.invoke_async(&mut conn);
                tokio::time::timeout(self.timeout, call)
                    .await
                    .unwrap_or_else(|e| Err(redis_error(e)))
            }
            .await;
            let answer = match renewed {
                Ok((answer, mark)) => {
                    *self.boot.lock() = mark;
                    answer
                }
                Err(e) => {
                    if self.leased.load(Ordering::Relaxed) {
                        warn!(error = %e, "cannot renew the lease");
                    }
                    self.set_leased(false);
                    continue;
                }
            };
            match answer.as_str() {
                "ok" => self.set_leased(true),
                "late" => {
                    warn!("the lease had lapsed; renewed before anyone cleaned up");
                    self.set_leased(true);
                }
                "restored" => {
                    warn!("redis lost the cluster's state; writing this node's back");
                    self.restore().await;
                    self.set_leased(true);
                }
                "reaped" => {
                    // The others took this node for dead and announced its
                    // peers as gone: they cannot stay (their clients
                    // reconnect and start again).
                    error!("this node was taken for dead; closing its connections");
                    self.registry.close_each(CloseReason::Shutdown);
                    for shard in self.mirror.shards.iter() {
                        *shard.lock() = Rooms::default();
                    }
                    self.names_here.lock().clear();
                    self.set_leased(true);
                }
                other => {
                    error!(
                        answer = other,
                        "another node holds this node's id; not ready"
                    );
                    self.set_leased(false);
                    continue;
                }
            }
            let healthy_for = self
                .healthy_since
                .lock()
                .get_or_insert_with(Instant::now)
                .elapsed();
            if healthy_for >= self.lease {
                self.reap().await;
            }
            // Changes waiting for Redis: the writer tries them again.
            if !self.retries.lock().is_empty() {
                self.links.wake.notify_one();
            }
        }
    }

    fn set_leased(&self, leased: bool) {
        self.leased.store(leased, Ordering::Relaxed);
        if !leased {
            *self.healthy_since.lock() = None;
        }
    }

    /// Cleans up nodes whose lease expired, [`REAP_BATCH`] peers per
    /// script, until none is left or Redis does not answer.
    async fn reap(&self) {
        loop {
            let mut conn = self.conn.clone();
            let mut call = scripts::REAP.prepare_invoke();
            call.arg(&self.prefix).arg(self.node).arg(REAP_BATCH);
            let call = call.invoke_async::<Vec<u16>>(&mut conn);
            match tokio::time::timeout(self.timeout, call).await {
                Ok(Ok(answer)) => {
                    let more = answer.first().is_some_and(|m| *m == 1);
                    for node in answer.iter().skip(1) {
                        warn!(
                            node,
                            "a node stopped renewing its lease; its peers are gone"
                        );
                    }
                    if !more {
                        return;
                    }
                }
                Ok(Err(e)) => return debug!(error = %e, "clean-up of dead nodes failed"),
                Err(_) => return debug!("clean-up of dead nodes timed out"),
            }
        }
    }

    /// Writes the rooms and names of this node's peers back into a Redis
    /// that lost them, from the copies kept here.
    async fn restore(&self) {
        let mut args = vec![self.prefix.clone()];
        for shard in self.mirror.shards.iter() {
            let shard = shard.lock();
            for (id, room) in shard.iter() {
                let here: Vec<(usize, &Member)> = room
                    .members()
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| self.is_here(m.peer_id))
                    .collect();
                args.extend([
                    id.to_string(),
                    wire::mode_key(room.mode()).to_owned(),
                    room.capacity().to_string(),
                    here.len().to_string(),
                ]);
                for (i, member) in here {
                    args.extend([
                        (i + 1).to_string(),
                        peer_key(member.peer_id),
                        wire::member_record(member),
                    ]);
                }
            }
        }
        args.push("-".into());
        let caps: foldhash::HashMap<PeerId, u8> = self
            .registry
            .peers()
            .into_iter()
            .map(|(p, c)| (p, c.bits()))
            .collect();
        for (peer, name) in self.names_here.lock().iter() {
            let bits = caps.get(peer).copied().unwrap_or(0);
            args.extend([name.to_string(), format!("{}:{bits}", peer_key(*peer))]);
        }
        // First the peers that moved here, so the rest is filed under
        // this node.
        let moved: Vec<String> = self
            .registry
            .peers()
            .into_iter()
            .filter(|(p, _)| p.node() != self.node)
            .map(|(p, _)| peer_key(p))
            .collect();
        let head = [self.node.to_string(), moved.len().to_string()];
        args.splice(1..1, head.into_iter().chain(moved));
        match self.call::<Vec<String>>(&scripts::RESTORE, args).await {
            Ok(clashes) if clashes.is_empty() => info!("this node's rooms and names are back"),
            Ok(clashes) => warn!(
                ?clashes,
                "names taken by another peer while redis was empty"
            ),
            Err(e) => warn!(error = %e, "could not write this node's state back; will retry"),
        }
    }

    /// Which node a user name is held on, and by whom.
    async fn lookup_name(&self, name: &UserName) -> Result<Option<(PeerId, u8)>, RouteError> {
        let value: Option<String> = self
            .query(
                redis::cmd("HGET")
                    .arg(format!("{}:names", self.prefix))
                    .arg(name.as_str()),
            )
            .await
            .map_err(|_| RouteError::Unavailable)?;
        Ok(value.and_then(|v| {
            let (peer, caps) = v.split_once(':')?;
            Some((wire::parse_peer(peer)?, caps.parse().ok()?))
        }))
    }

    /// `peer` as a target: its outbox if here, else its node.
    fn target_of(&self, peer: PeerId, caps: crate::protocol::Capabilities) -> Option<Target> {
        if self.is_here(peer) {
            return self.registry.target(peer);
        }
        Some(Target {
            peer,
            capabilities: caps,
            route: Route::Remote {
                node: self.links.node_of(peer),
            },
        })
    }

    /// The capacity a join asks for, by the room rules.
    fn capacity(&self, mode: RoomMode, asked: Option<u32>) -> Result<u32, JoinError> {
        match mode {
            RoomMode::Mesh => match asked {
                None => Ok(self.policy.default_capacity),
                Some(c) if (2..=self.policy.max_capacity).contains(&c) => Ok(c),
                Some(asked) => Err(JoinError::BadCapacity {
                    asked,
                    max: self.policy.max_capacity,
                }),
            },
            _ => Ok(2),
        }
    }
}

/// `pair_rooms`, `mesh_rooms`, `members` of `P:stats`.
type StatCounts = (Option<i64>, Option<i64>, Option<i64>);

#[derive(serde::Deserialize)]
struct JoinAnswer {
    #[serde(default)]
    ok: u8,
    #[serde(default)]
    e: String,
    #[serde(default)]
    cap: u32,
    #[serde(default)]
    mode: String,
    #[serde(default)]
    created: bool,
}

#[derive(serde::Deserialize)]
struct LeaveAnswer {
    left: bool,
    emptied: bool,
}

#[derive(serde::Deserialize)]
struct RoomAnswer {
    r: String,
    mode: String,
    cap: u32,
    #[serde(default)]
    m: Vec<String>,
}

fn parse_room_answer(answer: &str) -> Option<RoomInfo> {
    let a: RoomAnswer = serde_json::from_str(answer).ok()?;
    Some(RoomInfo {
        id: wire::parse_room(&a.r)?,
        mode: wire::parse_mode(&a.mode),
        capacity: a.cap,
        members: a.m.iter().filter_map(|m| wire::parse_member(m)).collect(),
    })
}

impl Directory for ClusterDirectory {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    fn identity(&self) -> Option<(u16, u16)> {
        Some((self.node, self.epoch))
    }

    fn ready(&self) -> bool {
        self.leased.load(Ordering::Relaxed) && self.listening.load(Ordering::Relaxed)
    }

    async fn join(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> Result<Joined, JoinError> {
        let capacity = self.capacity(mode, capacity)?;
        let mode = if mode == RoomMode::Mesh {
            RoomMode::Mesh
        } else {
            RoomMode::Pair
        };
        let peer = member.peer_id;
        let user = member.user.clone();
        let (waiting, joined) = oneshot::channel();
        let key = (peer, room.clone());
        self.joining.lock().insert(key.clone(), waiting);
        let args = vec![
            self.prefix.clone(),
            room.to_string(),
            wire::mode_key(mode).to_owned(),
            capacity.to_string(),
            peer_key(peer),
            wire::member_record(&member),
            u8::from(may_create).to_string(),
        ];
        // Should it run without this session learning it, it is undone,
        // so no one stays in a room its session does not know of.
        let undo = (
            &scripts::LEAVE,
            vec![
                self.prefix.clone(),
                room.to_string(),
                peer_key(peer),
                (LeaveReason::Left as i32).to_string(),
            ],
        );
        let answer = match self
            .call_undoable::<String>(&scripts::JOIN, args, Some(undo))
            .await
        {
            Ok(answer) => serde_json::from_str::<JoinAnswer>(&answer).ok(),
            Err(e) => {
                debug!(error = %e, %room, "join not decided in time");
                None
            }
        };
        let Some(answer) = answer else {
            self.joining.lock().remove(&key);
            return Err(JoinError::Unavailable);
        };
        if answer.ok != 1 {
            self.joining.lock().remove(&key);
            return Err(match answer.e.as_str() {
                "create" => JoinError::NotAllowedToCreate { room: room.clone() },
                "mode" => JoinError::ModeMismatch {
                    room: room.clone(),
                    existing: wire::parse_mode(&answer.mode),
                },
                "member" => JoinError::AlreadyMember { room: room.clone() },
                _ => JoinError::Full {
                    room: room.clone(),
                    capacity: answer.cap,
                },
            });
        }
        if answer.created {
            self.emit(|| Event::RoomCreated {
                room: room.clone(),
                mode,
            });
        }
        self.emit(|| Event::PeerJoined {
            room: room.clone(),
            peer,
            user,
        });
        // `Joined` is queued by the room event, in its place among the
        // room's other events. Wait for it, so whatever this session says
        // next comes after it.
        if tokio::time::timeout(self.timeout, joined).await.is_err()
            && self.joining.lock().remove(&key).is_some()
        {
            warn!(%room, "no room event for a join; this node's channel may be down");
            let members = self
                .rooms(Some(room))
                .await
                .pop()
                .map(|r| r.members)
                .unwrap_or_default();
            let others: Vec<Member> = members.into_iter().filter(|m| m.peer_id != peer).collect();
            self.registry.notify(
                peer,
                encode(&Message::Joined(Joined {
                    room: room.clone(),
                    mode,
                    capacity: answer.cap,
                    initiator: mode == RoomMode::Pair && !others.is_empty(),
                    members: others,
                })),
            );
        }
        Ok(Joined {
            room: room.clone(),
            mode,
            capacity: answer.cap,
            members: Vec::new(),
            initiator: false,
        })
    }

    async fn leave(&self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> bool {
        let args = vec![
            self.prefix.clone(),
            room.to_string(),
            peer_key(peer),
            (reason as i32).to_string(),
        ];
        match self.call::<String>(&scripts::LEAVE, args.clone()).await {
            Ok(answer) => {
                let Ok(answer) = serde_json::from_str::<LeaveAnswer>(&answer) else {
                    return false;
                };
                if answer.left {
                    self.emit(|| Event::PeerLeft {
                        room: room.clone(),
                        peer,
                        reason,
                    });
                    if answer.emptied {
                        self.emit(|| Event::RoomEmptied { room: room.clone() });
                    }
                }
                answer.left
            }
            Err(e) => {
                warn!(error = %e, %room, "leave not written; retried when redis answers");
                self.retry(&scripts::LEAVE, args);
                true
            }
        }
    }

    async fn login(&self, name: &UserName, peer: PeerId) -> Result<(), LoginError> {
        let caps = self
            .registry
            .target(peer)
            .map_or(0, |t| t.capabilities.bits());
        let args = vec![
            self.prefix.clone(),
            name.to_string(),
            peer_key(peer),
            caps.to_string(),
        ];
        let undo = (
            &scripts::LOGOUT,
            vec![self.prefix.clone(), name.to_string(), peer_key(peer)],
        );
        match self
            .call_undoable::<String>(&scripts::LOGIN, args, Some(undo))
            .await
        {
            Ok(answer) if answer == "taken" => Err(LoginError::Taken),
            Ok(answer) => {
                self.names_here.lock().insert(peer, name.clone());
                if answer == "new" {
                    self.emit(|| Event::UserLoggedIn {
                        user: name.clone(),
                        peer,
                    });
                }
                Ok(())
            }
            Err(e) => {
                debug!(error = %e, "login not decided in time");
                Err(LoginError::Unavailable)
            }
        }
    }

    async fn logout(&self, name: &UserName, peer: PeerId) -> Vec<UserName> {
        self.names_here.lock().remove(&peer);
        let args = vec![self.prefix.clone(), name.to_string(), peer_key(peer)];
        match self
            .call::<Vec<String>>(&scripts::LOGOUT, args.clone())
            .await
        {
            Ok(partners) => {
                self.emit(|| Event::UserLoggedOut {
                    user: name.clone(),
                    peer,
                });
                partners
                    .iter()
                    .filter_map(|p| UserName::new(p).ok())
                    .collect()
            }
            Err(e) => {
                warn!(error = %e, "logout not written; retried when redis answers");
                self.retry(&scripts::LOGOUT, args);
                Vec::new()
            }
        }
    }

    async fn set_member_user(&self, rooms: &[RoomId], peer: PeerId, user: Option<&UserName>) {
        if rooms.is_empty() {
            return;
        }
        let mut args = vec![
            self.prefix.clone(),
            peer_key(peer),
            user.map(|u| u.to_string()).unwrap_or_default(),
        ];
        args.extend(rooms.iter().map(|r| r.to_string()));
        if let Err(e) = self.call::<i64>(&scripts::SET_USER, args).await {
            debug!(error = %e, "member name not updated");
        }
    }

    async fn open_call(&self, a: &UserName, a_peer: PeerId, b: &UserName, b_peer: PeerId) {
        if self.in_call(a, b).await {
            // The common case: every later offer and answer of a call.
            return;
        }
        let args = vec![
            self.prefix.clone(),
            a.to_string(),
            peer_key(a_peer),
            b.to_string(),
            peer_key(b_peer),
            MAX_CALLS.to_string(),
        ];
        if let Err(e) = self.call::<i64>(&scripts::OPEN_CALL, args).await {
            debug!(error = %e, "call not recorded");
        }
    }

    async fn in_call(&self, a: &UserName, b: &UserName) -> bool {
        self.query::<bool>(
            redis::cmd("SISMEMBER")
                .arg(format!("{}:calls:{a}", self.prefix))
                .arg(b.as_str()),
        )
        .await
        .unwrap_or(false)
    }

    async fn end_call(&self, a: &UserName, b: &UserName) {
        let mut pipe = redis::pipe();
        pipe.cmd("SREM")
            .arg(format!("{}:calls:{a}", self.prefix))
            .arg(b.as_str())
            .ignore()
            .cmd("SREM")
            .arg(format!("{}:calls:{b}", self.prefix))
            .arg(a.as_str())
            .ignore();
        let mut conn = self.conn.clone();
        let done: redis::RedisResult<()> =
            match tokio::time::timeout(self.timeout, pipe.query_async(&mut conn)).await {
                Ok(done) => done,
                Err(e) => Err(redis_error(e)),
            };
        if let Err(e) = done {
            debug!(error = %e, "call end not written");
        }
    }

    async fn resolve(
        &self,
        from: PeerId,
        from_user: Option<&UserName>,
        rooms: &[RoomId],
        hint: Option<&RoomId>,
        to: &Address,
    ) -> Result<Target, RouteError> {
        match to {
            Address::Peer(peer) => {
                if *peer == from {
                    return Err(RouteError::UnknownPeer);
                }
                let caps_in = |room: &RoomId| {
                    let shard = self.room_shard(room).lock();
                    let r = shard.get(room)?;
                    if !r.contains(from) {
                        return None;
                    }
                    r.members()
                        .iter()
                        .find(|m| m.peer_id == *peer)
                        .map(|m| m.capabilities)
                };
                let caps = match hint {
                    Some(room) if rooms.contains(room) => caps_in(room),
                    Some(_) => None,
                    None => rooms.iter().find_map(caps_in),
                };
                let caps = caps.ok_or(RouteError::UnknownPeer)?;
                self.target_of(*peer, caps).ok_or(RouteError::UnknownPeer)
            }
            Address::User(name) => {
                if from_user.is_none() {
                    return Err(RouteError::NotLoggedIn);
                }
                match self.lookup_name(name).await? {
                    Some((peer, caps)) if peer != from => self
                        .target_of(peer, crate::protocol::Capabilities::from_bits(caps))
                        .ok_or(RouteError::UnknownPeer),
                    _ => Err(RouteError::UnknownPeer),
                }
            }
        }
    }

    fn deliver(&self, to: &Target, frame: Encoded, origin: Origin) -> Result<(), RouteError> {
        match &to.route {
            Route::Local(outbox) => self.registry.deliver(outbox, frame, origin),
            // The node is decided again under the batches' lock: the peer
            // may have moved since it was resolved.
            Route::Remote { .. } => match self.links.append_to(
                self.node,
                to.peer,
                Some((origin.peer, origin.seq)),
                |b| wire::put_relay(b, to.peer, origin.peer, origin.seq, &frame, false),
            ) {
                Appended::Queued => Ok(()),
                Appended::Full => Err(RouteError::PeerBusy),
                Appended::Here => match self.registry.outbox(to.peer) {
                    Some(outbox) => self.registry.deliver(&outbox, frame, origin),
                    None => Err(RouteError::UnknownPeer),
                },
            },
        }
    }

    fn notify(&self, peer: PeerId, frame: Encoded) {
        if self.is_here(peer) {
            self.registry.notify(peer, frame);
            return;
        }
        match self.links.append_to(self.node, peer, None, |b| {
            wire::put_notify(b, peer, &frame, false)
        }) {
            Appended::Queued => {}
            Appended::Here => self.registry.notify(peer, frame),
            Appended::Full => warn!(
                node = self.links.node_of(peer),
                "a notice for another node was dropped: its batch is full"
            ),
        }
    }

    async fn census(&self) -> Census {
        // Counts the scripts keep, not a scan: a scrape must not make Redis
        // walk a million rooms.
        let mut pipe = redis::pipe();
        pipe.cmd("HMGET")
            .arg(format!("{}:stats", self.prefix))
            .arg(&["pair_rooms", "mesh_rooms", "members"])
            .cmd("HLEN")
            .arg(format!("{}:names", self.prefix));
        let mut conn = self.conn.clone();
        let counts: redis::RedisResult<(StatCounts, i64)> =
            tokio::time::timeout(self.timeout, pipe.query_async(&mut conn))
                .await
                .unwrap_or_else(|e| Err(redis_error(e)));
        let Ok(((pair, mesh, members), users)) = counts else {
            return Census::default();
        };
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Census {
            pair_rooms: n(pair),
            mesh_rooms: n(mesh),
            members: n(members),
            users: users.max(0) as u64,
        }
    }

    async fn fetch_session(
        &self,
        token: crate::resume::Token,
        identity: Option<UserName>,
    ) -> Result<crate::directory::Fetched, crate::protocol::ResumeRefusal> {
        self.fetch(token, identity).await
    }

    fn set_sessions(&self, sessions: Arc<dyn crate::directory::SessionSource>) {
        self.set_session_source(sessions);
    }

    fn ended(&self, peer: PeerId) {
        self.forget_moved(peer);
    }

    async fn settle(&self) {
        // Sessions that left are forwarded until every node has fenced;
        // then their `Done` and everything else must leave before the node
        // does.
        while !self.handovers_settled() || !self.sent() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn set_events(&self, sink: EventSink) {
        let _ = self.events.set(sink);
    }

    async fn rooms(&self, only: Option<&RoomId>) -> Vec<RoomInfo> {
        let mut conn = self.conn.clone();
        let mut call = scripts::ROOMS.prepare_invoke();
        call.arg(&self.prefix);
        if let Some(room) = only {
            call.arg(room.as_str());
        }
        let answer: Vec<String> =
            match tokio::time::timeout(self.timeout, call.invoke_async(&mut conn)).await {
                Ok(Ok(answer)) => answer,
                _ => return Vec::new(),
            };
        answer.iter().filter_map(|a| parse_room_answer(a)).collect()
    }

    async fn users(&self) -> Vec<(UserName, PeerId)> {
        let all: Vec<(String, String)> = self
            .query(redis::cmd("HGETALL").arg(format!("{}:names", self.prefix)))
            .await
            .unwrap_or_default();
        all.into_iter()
            .filter_map(|(name, value)| {
                Some((UserName::new(&name).ok()?, wire::parse_peer(&value)?))
            })
            .collect()
    }

    async fn kick(&self, room: &RoomId, peer: PeerId) -> bool {
        let args = vec![self.prefix.clone(), room.to_string(), peer_key(peer)];
        let kicked = matches!(self.call::<i64>(&scripts::KICK, args).await, Ok(1));
        if kicked {
            self.emit(|| Event::PeerLeft {
                room: room.clone(),
                peer,
                reason: LeaveReason::Kicked,
            });
        }
        kicked
    }

    async fn close_room(&self, room: &RoomId) -> Option<usize> {
        let args = vec![self.prefix.clone(), room.to_string()];
        let count = self.call::<i64>(&scripts::CLOSE_ROOM, args).await.ok()?;
        if count < 0 {
            return None;
        }
        self.emit(|| Event::RoomEmptied { room: room.clone() });
        Some(count as usize)
    }
}
