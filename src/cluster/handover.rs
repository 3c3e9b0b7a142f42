//! Moving a resumable session to the node its client came back to
//! (docs/PROTOCOL.md, section 11a, "Across nodes").
//!
//! The client presents its token to node B; the token names node A, which
//! holds the session. The steps, each a record of a batch or a room event:
//!
//! 1. B sends A `Take` (the token, the client's identity).
//! 2. A takes the session from its table (closing a half-open connection
//!    first), sends B `Give` with the session's state and what its outbox
//!    held, and from then on forwards whatever reaches the old outbox
//!    (signals from peers that still route to A, notices of room events
//!    published to A) to B, marked *forwarded*.
//! 3. B registers the peer with an outbox that *holds* what is sent to it
//!    directly and lets forwarded frames through, then runs the `MOVE`
//!    script: the peer moves to B's set, the `moved` map routes it to B,
//!    and every node is told (`m` event, with the peer's rooms for B's
//!    copy). B's connection resumes the session once B has read that
//!    event.
//! 4. Every node, reading `m`, routes the peer to B from then on and sends
//!    A a `Fence`, in the same step (under the batches' lock): everything
//!    it sent A for the peer is ahead of the fence.
//! 5. Once A has every fence (or after a bound, for a node that died), it
//!    forwards what is left, forgets the peer and sends B `Done`; B
//!    releases what it held. So a sender's signals reach the peer in the
//!    order they were sent, each once, whichever way they went.
//!
//! If A is gone, or the session is not there, B's client starts fresh:
//! `UNKNOWN_TOKEN`, or `EXPIRED` when A died (its departure was announced
//! by the clean-up of A).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tracing::{debug, info, warn};

use super::wire::{self, peer_key, RoomState};
use super::{scripts, ClusterDirectory};
use crate::directory::{Directory, Fetched, SessionSource};
use crate::outbox::{CloseReason, Outbox};
use crate::protocol::{encode, ErrorMessage, Message, PeerId, ResumeRefusal, UserName};
use crate::registry::RouteError;
use crate::resume::{token_node, Handoff, Token};

/// Longest wait for the node holding a session to hand it over: it may
/// wait up to 2 s for a half-open connection to let go.
const GIVE_WAIT: Duration = Duration::from_secs(3);

/// Tokens of sessions given away remembered, to pass a late request on
/// (a client whose Welcome from the new node was lost tries its old token
/// again, perhaps on a third node).
const GONE_KEPT: usize = 4096;

/// Most times a request for a session is passed on.
const MAX_HOPS: u8 = 3;

/// The session (with its outbox, registered here) and the node that gave
/// it, or why not.
type Answer = Result<(Handoff, Arc<Outbox>, u16), ResumeRefusal>;

/// The sessions moving to and from this node.
#[derive(Default)]
pub(super) struct Handovers {
    sessions: OnceLock<Arc<dyn SessionSource>>,
    next_request: AtomicU64,
    /// Requests for sessions this node sent, by request id.
    fetching: Mutex<foldhash::HashMap<u64, oneshot::Sender<Answer>>>,
    /// Sessions that arrived and wait for their `m` event.
    moving: Mutex<foldhash::HashMap<PeerId, oneshot::Sender<()>>>,
    /// Sessions that arrived, by peer: their outboxes hold what is sent
    /// to them directly until their old node is done forwarding.
    arriving: Mutex<foldhash::HashMap<PeerId, Arc<Outbox>>>,
    /// Sessions that left, by peer, while their frames are forwarded.
    leaving: Mutex<foldhash::HashMap<PeerId, Leaving>>,
    /// Whether `leaving` has any: checked without its lock per record.
    any_leaving: std::sync::atomic::AtomicBool,
    /// Where sessions given away went, by the tokens their clients may
    /// still present (at most [`GONE_KEPT`], oldest forgotten first).
    gone: Mutex<(
        std::collections::VecDeque<Token>,
        foldhash::HashMap<Token, u16>,
    )>,
}

struct Leaving {
    /// The node it went to.
    to: u16,
    /// The nodes to hear a fence from, once the `m` event said.
    expect: Option<Vec<u16>>,
    fenced: HashSet<u16>,
    /// Woken when every fence is in.
    done: Arc<Notify>,
}

impl Leaving {
    fn complete(&self) -> bool {
        self.expect
            .as_ref()
            .is_some_and(|e| e.iter().all(|n| self.fenced.contains(n)))
    }
}

impl ClusterDirectory {
    pub(super) fn set_session_source(&self, sessions: Arc<dyn SessionSource>) {
        let _ = self.handovers.sessions.set(sessions);
    }

    /// Asks the node `token` names for the session (steps 1 and 3 above).
    pub(super) async fn fetch(
        &self,
        token: Token,
        identity: Option<UserName>,
    ) -> Result<Fetched, ResumeRefusal> {
        // The node the token names, or, for a token of this node whose
        // session went elsewhere, that node.
        let from = match token_node(&token) {
            node if node != self.node => node,
            _ => match self.handovers.gone.lock().1.get(&token) {
                Some(&node) => node,
                None => return Err(ResumeRefusal::UnknownToken),
            },
        };
        if !self.ready() {
            return Err(ResumeRefusal::UnknownToken);
        }
        let req = self.handovers.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.handovers.fetching.lock().insert(req, tx);
        let asked = self.links.ask(from, req, |b| {
            wire::put_take(b, req, self.node, &token, identity.as_ref(), 0)
        });
        let answer = if asked {
            tokio::time::timeout(self.timeout * 2 + GIVE_WAIT, rx)
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            None
        };
        self.handovers.fetching.lock().remove(&req);
        let (handoff, outbox, from) = match answer {
            Some(answer) => answer?,
            // A dead node never answers: its sessions are not resumable,
            // and its clean-up announces their departures.
            _ => return Err(ResumeRefusal::Expired),
        };
        let peer = handoff.peer;
        let (tx, rx) = oneshot::channel();
        self.handovers.moving.lock().insert(peer, tx);
        let moved: redis::RedisResult<String> = self
            .call(
                &scripts::MOVE,
                vec![
                    self.prefix.clone(),
                    peer_key(peer),
                    from.to_string(),
                    self.node.to_string(),
                ],
            )
            .await;
        let moved = match moved {
            Ok(answer) if answer == "ok" => tokio::time::timeout(self.timeout, rx)
                .await
                .is_ok_and(|r| r.is_ok()),
            Ok(answer) => {
                info!(peer = peer.0, %answer, "a session could not move here");
                false
            }
            Err(e) => {
                warn!(peer = peer.0, error = %e, "a session could not move here");
                false
            }
        };
        self.handovers.moving.lock().remove(&peer);
        if moved {
            if let Some(user) = &handoff.user {
                self.names_here.lock().insert(peer, user.clone());
            }
            info!(peer = peer.0, from, "session moved here");
        }
        Ok(Fetched {
            handoff,
            outbox,
            moved,
        })
    }

    /// Whether no session that left is still being forwarded.
    pub(super) fn handovers_settled(&self) -> bool {
        self.handovers.leaving.lock().is_empty()
    }

    /// The node `peer` went to, while this node forwards what reaches it
    /// (one atomic load when no session is leaving).
    pub(super) fn leaving_to(&self, peer: PeerId) -> Option<u16> {
        if !self.handovers.any_leaving.load(Ordering::Acquire) {
            return None;
        }
        let leaving = self.handovers.leaving.lock();
        let to = leaving.get(&peer).map(|l| l.to);
        if leaving.is_empty() {
            self.handovers.any_leaving.store(false, Ordering::Release);
        }
        to
    }

    /// Requests for sessions that no node heard (the node asked is gone):
    /// their sessions went with it.
    pub(super) fn unanswered(&self, requests: &[u64]) {
        for req in requests {
            if let Some(waiting) = self.handovers.fetching.lock().remove(req) {
                let _ = waiting.send(Err(ResumeRefusal::Expired));
            }
        }
    }

    /// Step 2: another node asks for a session of this node.
    pub(super) fn on_take(
        self: &Arc<Self>,
        req: u64,
        from: u16,
        token: Token,
        identity: Option<UserName>,
        hops: u8,
    ) {
        let Some(sessions) = self.handovers.sessions.get().cloned() else {
            self.links.append(from, None, |b| {
                wire::put_give(b, req, self.node, Err(ResumeRefusal::UnknownToken))
            });
            return;
        };
        let dir = self.clone();
        tokio::spawn(async move {
            let (handoff, outbox) = match sessions.give(token, identity.clone()).await {
                Ok(given) => given,
                Err(ResumeRefusal::UnknownToken) if hops < MAX_HOPS => {
                    let went = dir.handovers.gone.lock().1.get(&token).copied();
                    match went {
                        Some(node) if node != from && node != dir.node => {
                            // Should that node be gone, the asking node's
                            // wait runs out: the session went with it.
                            dir.links.append(node, None, |b| {
                                wire::put_take(b, req, from, &token, identity.as_ref(), hops + 1)
                            });
                        }
                        _ => {
                            dir.links.append(from, None, |b| {
                                wire::put_give(b, req, dir.node, Err(ResumeRefusal::UnknownToken))
                            });
                        }
                    }
                    return;
                }
                Err(why) => {
                    dir.links
                        .append(from, None, |b| wire::put_give(b, req, dir.node, Err(why)));
                    return;
                }
            };
            let peer = handoff.peer;
            let done = Arc::new(Notify::new());
            {
                // The flag changes only under the map's lock.
                let mut leaving = dir.handovers.leaving.lock();
                leaving.insert(
                    peer,
                    Leaving {
                        to: from,
                        expect: None,
                        fenced: HashSet::new(),
                        done: done.clone(),
                    },
                );
                dir.handovers.any_leaving.store(true, Ordering::Release);
            }
            dir.names_here.lock().remove(&peer);
            {
                let resume = &handoff.resume;
                let mut gone = dir.handovers.gone.lock();
                for token in std::iter::once(resume.token()).chain(resume.previous()) {
                    if gone.1.insert(token, from).is_none() {
                        gone.0.push_back(token);
                    }
                    if gone.0.len() > GONE_KEPT {
                        if let Some(old) = gone.0.pop_front() {
                            gone.1.remove(&old);
                        }
                    }
                }
            }
            if !dir.links.append(from, None, |b| {
                wire::put_give(b, req, dir.node, Ok(&handoff))
            }) {
                // It cannot travel: it ends here, and its rooms hear so.
                warn!(
                    peer = peer.0,
                    "a session could not be sent: the batch is full"
                );
                dir.handovers.leaving.lock().remove(&peer);
                dir.abandon(handoff, &outbox);
                outbox.close(CloseReason::Shutdown);
                return;
            }
            info!(peer = peer.0, to = from, "session handed to another node");
            tokio::spawn(dir.forward(peer, from, outbox, done));
        });
    }

    /// Forwards what reaches a session's old outbox to its new node until
    /// every node has fenced (or a bound passed), then ends with `Done`.
    async fn forward(
        self: Arc<Self>,
        peer: PeerId,
        to: u16,
        outbox: Arc<Outbox>,
        done: Arc<Notify>,
    ) {
        let deadline = tokio::time::Instant::now() + self.forwarding_bound();
        loop {
            // A closed outbox (its node drains) takes nothing more: what
            // reaches the peer then is forwarded as it arrives.
            let open = outbox.closed().is_none();
            let finished = tokio::select! {
                () = outbox.ready(), if open => false,
                () = done.notified() => true,
                () = tokio::time::sleep_until(deadline) => true,
            };
            self.forward_queued(peer, to, &outbox);
            if finished {
                break;
            }
        }
        outbox.close(CloseReason::Shutdown);
        self.forward_queued(peer, to, &outbox);
        self.registry.unregister_outbox(peer, &outbox);
        let fenced = self
            .handovers
            .leaving
            .lock()
            .remove(&peer)
            .map(|l| l.complete());
        debug!(peer = peer.0, to, ?fenced, "forwarding done");
        self.links.append(to, None, |b| wire::put_done(b, peer));
    }

    /// Forwards one frame for `peer`, which left this node, to where it
    /// went.
    pub(super) fn forward_record(
        &self,
        peer: PeerId,
        origin: Option<(PeerId, u32)>,
        frame: &crate::protocol::Encoded,
    ) -> Result<(), RouteError> {
        let to = self.leaving_to(peer).ok_or(RouteError::UnknownPeer)?;
        if self.forward_to(to, peer, origin, frame) {
            Ok(())
        } else {
            Err(RouteError::PeerBusy)
        }
    }

    /// Appends one frame for `peer` to node `to`'s batch, marked
    /// forwarded; false when that batch is full.
    fn forward_to(
        &self,
        to: u16,
        peer: PeerId,
        origin: Option<(PeerId, u32)>,
        frame: &crate::protocol::Encoded,
    ) -> bool {
        match origin {
            Some((from, seq)) => self.links.append(to, origin, |b| {
                wire::put_relay(b, peer, from, seq, frame, true)
            }),
            None => self
                .links
                .append(to, None, |b| wire::put_notify(b, peer, frame, true)),
        }
    }

    fn forward_queued(&self, peer: PeerId, to: u16, outbox: &Outbox) {
        for (frame, origin) in outbox.take_queued() {
            if self.forward_to(to, peer, origin.map(|o| (o.peer, o.seq)), &frame) {
                continue;
            }
            match origin {
                Some(o) => self.notify(
                    o.peer,
                    encode(&Message::Error(ErrorMessage {
                        code: RouteError::PeerBusy.code(),
                        message: format!("not delivered to {peer}: its node is busy"),
                        request_seq: o.seq,
                    })),
                ),
                None => warn!(peer = peer.0, "a forwarded notice was dropped: batch full"),
            }
        }
    }

    /// The session for request `req` arrived (step 3): registered here at
    /// once, so what its old node forwards next finds it.
    pub(super) fn on_give(
        self: &Arc<Self>,
        req: u64,
        giver: u16,
        session: Result<Bytes, ResumeRefusal>,
    ) {
        let waiting = self.handovers.fetching.lock().remove(&req);
        let answer = session.and_then(|bytes| {
            wire::read_handoff(bytes).map_err(|_| {
                warn!("an unreadable session from another node");
                ResumeRefusal::UnknownToken
            })
        });
        let answer = answer.map(|mut handoff| {
            let outbox = Arc::new(Outbox::holding(self.outbox_limits));
            let now = Instant::now();
            for (frame, origin) in std::mem::take(&mut handoff.queued) {
                let origin = origin.map(|(peer, seq)| crate::outbox::Origin {
                    peer,
                    seq,
                    read_at: now,
                });
                let _ = outbox.push_forwarded(frame, origin);
            }
            self.registry
                .register(handoff.peer, handoff.capabilities, outbox.clone());
            self.handovers
                .arriving
                .lock()
                .insert(handoff.peer, outbox.clone());
            // Should the old node die before its `Done`, nothing more
            // comes from it once its forwarding would have ended.
            let (dir, peer, held) = (self.clone(), handoff.peer, outbox.clone());
            tokio::spawn(async move {
                tokio::time::sleep(dir.forwarding_bound() + dir.timeout).await;
                dir.release(peer, Some(&held));
            });
            (handoff, outbox, giver)
        });
        match waiting {
            Some(waiting) => {
                if let Err(Ok((handoff, outbox, _))) = waiting.send(answer) {
                    self.abandon(handoff, &outbox);
                }
            }
            None => {
                if let Ok((handoff, outbox, _)) = answer {
                    self.abandon(handoff, &outbox);
                }
            }
        }
    }

    /// A session that arrived when nobody waited for it any more, or that
    /// could not be sent: its rooms hear it timed out.
    fn abandon(&self, handoff: Handoff, outbox: &Arc<Outbox>) {
        warn!(peer = handoff.peer.0, "a session in transit ends");
        self.registry.unregister_outbox(handoff.peer, outbox);
        self.handovers.arriving.lock().remove(&handoff.peer);
        for room in handoff.rooms {
            self.behind(
                &scripts::LEAVE,
                vec![
                    self.prefix.clone(),
                    room.to_string(),
                    peer_key(handoff.peer),
                    (crate::protocol::LeaveReason::TimedOut as i32).to_string(),
                ],
            );
        }
        if let Some(user) = handoff.user {
            self.behind(
                &scripts::LOGOUT,
                vec![
                    self.prefix.clone(),
                    user.to_string(),
                    peer_key(handoff.peer),
                ],
            );
        }
    }

    /// The `m` event (step 4): `peer` is on node `to` now (0: it is gone).
    pub(super) fn on_moved(
        &self,
        peer: PeerId,
        to: u16,
        from: u16,
        told: &[u16],
        rooms: Vec<RoomState>,
    ) {
        if to == 0 {
            self.links.set_node(peer, None, |_, _| {});
            return;
        }
        let me = self.node;
        debug!(peer = peer.0, to, from, ?told, "moved");
        self.links.set_node(peer, Some(to), |links, pending| {
            if me != from
                && links.append_locked(pending, from, None, |b| wire::put_fence(b, peer, me))
            {
                pending.entry(from).or_default().fences.push(peer);
            }
        });
        if me == to {
            for room in rooms {
                let Some(id) = wire::parse_room(&room.r) else {
                    continue;
                };
                let members = room
                    .m
                    .iter()
                    .filter_map(|m| wire::parse_member(m))
                    .collect();
                self.room_shard(&id).lock().mirror(
                    &id,
                    wire::parse_mode(&room.mode),
                    room.cap,
                    members,
                );
            }
            if let Some(waiting) = self.handovers.moving.lock().remove(&peer) {
                let _ = waiting.send(());
            }
        } else if me == from {
            // This node's copies of rooms none of its peers is in any more.
            for room in &rooms {
                if let Some(id) = wire::parse_room(&room.r) {
                    let mut shard = self.room_shard(&id).lock();
                    let any_here = shard
                        .get(&id)
                        .is_some_and(|r| r.members().iter().any(|m| self.is_here(m.peer_id)));
                    if !any_here {
                        shard.close(&id);
                    }
                }
            }
            let mut leaving = self.handovers.leaving.lock();
            if let Some(l) = leaving.get_mut(&peer) {
                l.expect = Some(told.iter().copied().filter(|n| *n != me).collect());
                if l.complete() {
                    l.done.notify_one();
                }
            }
        }
    }

    /// A node routes a peer that left here to its new node from now on.
    pub(super) fn on_fence(&self, peer: PeerId, from: u16) {
        debug!(peer = peer.0, from, "fence");
        let mut leaving = self.handovers.leaving.lock();
        if let Some(l) = leaving.get_mut(&peer) {
            l.fenced.insert(from);
            if l.complete() {
                l.done.notify_one();
            }
        }
    }

    /// The old node of a peer that arrived is done forwarding (step 5).
    pub(super) fn on_done(&self, peer: PeerId) {
        debug!(peer = peer.0, "the old node is done forwarding");
        self.release(peer, None);
    }

    /// No node heard this node's fences for `peers`: their old node is
    /// gone, and forwards nothing more.
    pub(super) fn unfenced(&self, peers: &[PeerId]) {
        for peer in peers {
            self.release(*peer, None);
        }
    }

    /// Releases what the outbox of `peer`, which arrived here, held (only
    /// if it is still `outbox`, when given).
    fn release(&self, peer: PeerId, outbox: Option<&Arc<Outbox>>) {
        let mut arriving = self.handovers.arriving.lock();
        if let Some(held) = arriving.get(&peer) {
            if outbox.is_none_or(|o| Arc::ptr_eq(o, held)) {
                held.release();
                arriving.remove(&peer);
            }
        }
    }

    /// How long the old node of a session forwards, at most: until every
    /// node has fenced, or this bound (a node died meanwhile).
    fn forwarding_bound(&self) -> Duration {
        (self.lease * 2).max(Duration::from_secs(5))
    }

    /// A session that moved here ended for good: the other nodes forget
    /// where it was.
    pub(super) fn forget_moved(&self, peer: PeerId) {
        if let Some(outbox) = self.handovers.arriving.lock().remove(&peer) {
            outbox.release();
        }
        if peer.node() != self.node {
            self.behind(&scripts::UNMOVE, vec![self.prefix.clone(), peer_key(peer)]);
        }
    }
}
