//! The routing table: who is connected, which rooms they are in, which names
//! they hold, and a bounded outbox per peer.
//!
//! The room and name rules live in `crate::rooms`; this module wraps them in
//! sharded `parking_lot` mutexes. A lock guards one shard (rooms hashing to
//! it, or peers whose id maps to it) and is never held across `.await` (no
//! function here is async), so a lookup never waits on unrelated rooms.
//!
//! [`Router`] is the seam for several nodes: [`LocalRouter`] keeps everything
//! in this process; a Redis-backed router can implement the same trait by
//! keeping the directory (rooms, names, peer → node) in Redis and publishing
//! deliveries for peers of other nodes.

use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::protocol::{
    encode, Address, Capabilities, Encoded, ErrorCode, LeaveReason, Member, Message, PeerId,
    RoomId, RoomMode, UserName,
};
use crate::rooms::{JoinError, JoinOutcome, LoginError, Names, Notice, RoomPolicy, Rooms};

/// Why an outbox refused a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushError {
    /// The queue is at its bound: a relayed frame is refused (its sender is
    /// told `PEER_BUSY`); the receiver is not punished for it.
    Full,
    /// The receiver is gone or going.
    Closed,
}

/// Why the connection owning an outbox must end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// It did not read what was sent to it fast enough.
    SlowConsumer,
    /// The server is shutting down.
    Shutdown,
}

/// Bounds of one outbox.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Most frames queued.
    pub frames: usize,
    /// Most payload bytes queued.
    pub bytes: usize,
}

/// Who sent a relayed frame: told if it is never delivered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The sender.
    pub peer: PeerId,
    /// The sequence number of its frame.
    pub seq: u32,
}

#[derive(Debug)]
struct Queued {
    frame: Encoded,
    /// Set for relayed frames; `None` for the server's own.
    origin: Option<Origin>,
}

#[derive(Debug, Default)]
struct OutboxState {
    frames: VecDeque<Queued>,
    bytes: usize,
    closed: Option<CloseReason>,
    /// Relayed frames thrown away when the outbox was cut off.
    undelivered: Vec<Origin>,
}

/// The bounded queue of frames waiting to be written to one connection.
///
/// Many senders push; the connection task drains everything queued at once
/// and writes it as one WebSocket message. The queue allocates nothing until
/// the first push.
///
/// Two bounds. A relayed frame ([`Outbox::push_relayed`]) is refused at the
/// soft bound (`limits`): its sender gets `PEER_BUSY` and the receiver keeps
/// its queue, so a sender cannot get a receiver that reads at a normal pace
/// disconnected by flooding it. The server's own frames (replies, room
/// notices: [`Outbox::push`]) may go up to twice the bound, so no notice is
/// lost to a full queue; past that the receiver is not reading at all and is
/// cut off ([`CloseReason::SlowConsumer`]), and the senders of the relayed
/// frames thrown away are kept for [`Outbox::take_undelivered`].
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    limits: OutboxLimits,
}

impl Outbox {
    /// An empty outbox.
    pub fn new(limits: OutboxLimits) -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState::default()),
            ready: Notify::new(),
            limits,
        }
    }

    /// Queues one of the server's own frames (a reply, a notice).
    pub fn push(&self, frame: Encoded) -> Result<(), PushError> {
        self.enqueue(Queued {
            frame,
            origin: None,
        })
    }

    /// Queues a frame relayed from `origin`, unless the soft bound is
    /// reached.
    pub fn push_relayed(&self, frame: Encoded, origin: Origin) -> Result<(), PushError> {
        self.enqueue(Queued {
            frame,
            origin: Some(origin),
        })
    }

    fn enqueue(&self, queued: Queued) -> Result<(), PushError> {
        {
            let mut s = self.state.lock();
            if s.closed.is_some() {
                return Err(PushError::Closed);
            }
            let frames = s.frames.len() + 1;
            let bytes = s.bytes + queued.frame.frame_len();
            let (max_frames, max_bytes) = match queued.origin {
                Some(_) => (self.limits.frames, self.limits.bytes),
                None => (2 * self.limits.frames, 2 * self.limits.bytes),
            };
            if frames > max_frames || bytes > max_bytes {
                if queued.origin.is_some() {
                    return Err(PushError::Full);
                }
                s.closed = Some(CloseReason::SlowConsumer);
                let dropped = std::mem::take(&mut s.frames);
                s.undelivered
                    .extend(dropped.into_iter().filter_map(|q| q.origin));
                s.bytes = 0;
                drop(s);
                self.ready.notify_one();
                return Err(PushError::Closed);
            }
            s.bytes = bytes;
            s.frames.push_back(queued);
        }
        self.ready.notify_one();
        Ok(())
    }

    /// Closes the outbox; later pushes fail and the owner is woken.
    pub fn close(&self, reason: CloseReason) {
        self.state.lock().closed.get_or_insert(reason);
        self.ready.notify_one();
    }

    /// Moves queued frames into `out`, at most `max_frames` of them and
    /// `max_bytes` in all (but at least one frame); returns why the outbox
    /// closed, if it did.
    pub fn drain(
        &self,
        out: &mut Vec<Encoded>,
        max_frames: usize,
        max_bytes: usize,
    ) -> Option<CloseReason> {
        let mut s = self.state.lock();
        let mut taken = 0;
        let mut count = 0;
        while let Some(q) = s.frames.front() {
            if count > 0 && (count == max_frames || taken + q.frame.frame_len() > max_bytes) {
                break;
            }
            count += 1;
            taken += q.frame.frame_len();
            out.push(s.frames.pop_front().expect("front exists").frame);
        }
        s.bytes -= taken;
        if s.frames.is_empty() {
            // An idle peer's outbox holds no memory.
            s.frames = VecDeque::new();
        }
        s.closed
    }

    /// The senders of relayed frames that will never be delivered: those
    /// thrown away when the outbox was cut off, and, once its owner is
    /// done (`closing`), those still queued.
    pub fn take_undelivered(&self, closing: bool) -> Vec<Origin> {
        let mut s = self.state.lock();
        let mut origins = std::mem::take(&mut s.undelivered);
        if closing {
            s.closed.get_or_insert(CloseReason::SlowConsumer);
            let queued = std::mem::take(&mut s.frames);
            s.bytes = 0;
            origins.extend(queued.into_iter().filter_map(|q| q.origin));
        }
        origins
    }

    /// Whether frames are waiting.
    pub fn has_pending(&self) -> bool {
        !self.state.lock().frames.is_empty()
    }

    /// Why the outbox was closed, if it was.
    pub fn closed(&self) -> Option<CloseReason> {
        self.state.lock().closed
    }

    /// Waits until something is queued or the outbox is closed; at once if
    /// frames are already waiting (a drain that stopped early to let the
    /// owner read its socket leaves some).
    pub async fn ready(&self) {
        {
            let s = self.state.lock();
            if !s.frames.is_empty() || s.closed.is_some() {
                return;
            }
        }
        self.ready.notified().await;
    }

    /// Waits until something more is queued or the outbox is closed, even
    /// if frames are already waiting (for an owner in the middle of a
    /// write, which only cares about a cut-off).
    pub async fn changed(&self) {
        self.ready.notified().await;
    }
}

/// Why a message could not be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The target does not exist or shares no room with the sender.
    #[error("no such peer reachable from you")]
    UnknownPeer,
    /// Addressing by name needs the sender to be logged in.
    #[error("log in before calling by name")]
    NotLoggedIn,
    /// The target's outbox is full; it is being disconnected.
    #[error("peer is not reading its messages")]
    PeerBusy,
}

impl RouteError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RouteError::UnknownPeer => ErrorCode::UnknownPeer,
            RouteError::NotLoggedIn => ErrorCode::NotLoggedIn,
            RouteError::PeerBusy => ErrorCode::PeerBusy,
        }
    }
}

/// A resolved target: who it is, what it can do, and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its id.
    pub peer: PeerId,
    /// Its capabilities (whether it inflates SDP itself).
    pub capabilities: Capabilities,
    /// Its outbox, so delivery needs no second lookup. A router for several
    /// nodes would hold the node to publish to here instead.
    outbox: Arc<Outbox>,
}

/// The routing operations a connection needs; see the module docs.
pub trait Router: Send + Sync + 'static {
    /// Makes `peer` reachable through `outbox`.
    fn register(&self, peer: PeerId, capabilities: Capabilities, outbox: Arc<Outbox>);
    /// Forgets `peer` (after it has left its rooms and names).
    fn unregister(&self, peer: PeerId);
    /// Joins a room. The router queues `Joined` for the joiner itself,
    /// under the room's lock, so nothing about the room (a member leaving or
    /// joining right after) can reach the joiner before it; the caller then
    /// broadcasts the returned notice.
    fn join(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
    ) -> Result<JoinOutcome, JoinError> {
        self.join_or_create(room, mode, capacity, member, true)
    }
    /// [`Router::join`], creating the room only if `may_create` (see
    /// [`Rooms::join_or_create`]).
    fn join_or_create(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> Result<JoinOutcome, JoinError>;
    /// Encodes a notice once and queues it for each recipient.
    fn broadcast(&self, notice: Notice);
    /// Leaves a room and tells the remaining members; false if not a member.
    fn leave(&self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> bool;
    /// Claims a user name.
    fn login(&self, name: &UserName, peer: PeerId) -> Result<(), LoginError>;
    /// Frees a user name held by `peer`, ends its calls on the partners'
    /// side too, and returns the partners (each is to be sent `HangUp`).
    fn logout(&self, name: &UserName, peer: PeerId) -> Vec<UserName>;
    /// Sets the user name `peer` is listed with in each of `rooms`.
    fn set_member_user(&self, rooms: &[RoomId], peer: PeerId, user: Option<&UserName>);
    /// Records a named call between `a` (held by `a_peer`) and `b` (held
    /// by `b_peer`), on both sides.
    fn open_call(&self, a: &UserName, a_peer: PeerId, b: &UserName, b_peer: PeerId);
    /// Whether `a` is in a call with `b`.
    fn in_call(&self, a: &UserName, b: &UserName) -> bool;
    /// Ends the call between `a` and `b` on both sides.
    fn end_call(&self, a: &UserName, b: &UserName);
    /// Finds the peer `to` names, checking that `from` may address it: by
    /// peer id only within a shared room (one of `rooms`, or `hint` alone if
    /// given), by name only when `from` is logged in.
    fn resolve(
        &self,
        from: PeerId,
        from_user: Option<&UserName>,
        rooms: &[RoomId],
        hint: Option<&RoomId>,
        to: &Address,
    ) -> Result<Target, RouteError>;
    /// Queues a frame relayed from `origin` for a resolved target.
    fn deliver(&self, to: &Target, frame: Encoded, origin: Origin) -> Result<(), RouteError>;
    /// Queues one of the server's own frames for `peer`, if connected here.
    fn notify(&self, peer: PeerId, frame: Encoded);
    /// Closes every outbox (server shutdown).
    fn close_all(&self, reason: CloseReason);
    /// Number of connected peers.
    fn peer_count(&self) -> usize;
}

struct PeerEntry {
    capabilities: Capabilities,
    outbox: Arc<Outbox>,
}

/// A fixed set of mutex-guarded shards.
struct Shards<T> {
    shards: Box<[Mutex<T>]>,
    mask: usize,
}

impl<T: Default> Shards<T> {
    fn new(count: usize) -> Shards<T> {
        let count = count.max(1).next_power_of_two();
        Shards {
            shards: (0..count).map(|_| Mutex::new(T::default())).collect(),
            mask: count - 1,
        }
    }

    fn at(&self, index: u64) -> &Mutex<T> {
        &self.shards[index as usize & self.mask]
    }
}

/// The in-process [`Router`].
pub struct LocalRouter {
    peers: Shards<foldhash::HashMap<PeerId, PeerEntry>>,
    rooms: Shards<Rooms>,
    names: Shards<Names>,
    hasher: foldhash::fast::RandomState,
    policy: RoomPolicy,
    /// Set by `close_all`: a peer registering afterwards (it was still in
    /// its handshake) is closed at once instead of being missed.
    closed: Mutex<Option<CloseReason>>,
}

impl LocalRouter {
    /// An empty table with `shards` shards per map.
    pub fn new(shards: usize, policy: RoomPolicy) -> LocalRouter {
        LocalRouter {
            peers: Shards::new(shards),
            rooms: Shards::new(shards),
            names: Shards::new(shards),
            hasher: Default::default(),
            closed: Mutex::new(None),
            policy,
        }
    }

    fn hash(&self, key: &impl Hash) -> u64 {
        self.hasher.hash_one(key)
    }

    fn room_shard(&self, room: &RoomId) -> &Mutex<Rooms> {
        self.rooms.at(self.hash(room))
    }

    fn names_shard(&self, name: &UserName) -> &Mutex<Names> {
        self.names.at(self.hash(name))
    }

    fn outbox(&self, peer: PeerId) -> Option<Arc<Outbox>> {
        self.peers
            .at(peer.0)
            .lock()
            .get(&peer)
            .map(|e| e.outbox.clone())
    }
}

impl Router for LocalRouter {
    fn register(&self, peer: PeerId, capabilities: Capabilities, outbox: Arc<Outbox>) {
        self.peers.at(peer.0).lock().insert(
            peer,
            PeerEntry {
                capabilities,
                outbox: outbox.clone(),
            },
        );
        // Checked after inserting: either close_all's sweep saw this entry,
        // or this sees the flag close_all set before its sweep.
        if let Some(reason) = *self.closed.lock() {
            outbox.close(reason);
        }
    }

    fn unregister(&self, peer: PeerId) {
        self.peers.at(peer.0).lock().remove(&peer);
    }

    fn join_or_create(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> Result<JoinOutcome, JoinError> {
        let joiner = member.peer_id;
        let mut rooms = self.room_shard(room).lock();
        let outcome =
            rooms.join_or_create(room, mode, capacity, member, self.policy, may_create)?;
        // Lock order: room shard, then peer shard, then outbox; nothing takes
        // them the other way round.
        if let Some(outbox) = self.outbox(joiner) {
            let _ = outbox.push(encode(&Message::Joined(outcome.joined.clone())));
        }
        drop(rooms);
        Ok(outcome)
    }

    fn broadcast(&self, notice: Notice) {
        if notice.to.is_empty() {
            return;
        }
        let frame = encode(&notice.message);
        for peer in notice.to {
            if let Some(outbox) = self.outbox(peer) {
                // Full or Closed: that peer is being disconnected and will
                // be announced as gone; nothing more to do for it here.
                let _ = outbox.push(frame.clone());
            }
        }
    }

    fn leave(&self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> bool {
        let notice = self.room_shard(room).lock().leave(room, peer, reason);
        match notice {
            Some(notice) => {
                self.broadcast(notice);
                true
            }
            None => false,
        }
    }

    fn login(&self, name: &UserName, peer: PeerId) -> Result<(), LoginError> {
        self.names_shard(name).lock().login(name, peer)
    }

    fn logout(&self, name: &UserName, peer: PeerId) -> Vec<UserName> {
        let calls = self.names_shard(name).lock().take(name, peer);
        let calls = calls.unwrap_or_default();
        // One shard at a time: never two name locks at once.
        for partner in &calls {
            self.names_shard(partner).lock().end_call(partner, name);
        }
        calls
    }

    fn set_member_user(&self, rooms: &[RoomId], peer: PeerId, user: Option<&UserName>) {
        for room in rooms {
            self.room_shard(room)
                .lock()
                .set_user(room, peer, user.cloned());
        }
    }

    fn open_call(&self, a: &UserName, a_peer: PeerId, b: &UserName, b_peer: PeerId) {
        if self.names_shard(a).lock().in_call(a, b) {
            // The common case (every later offer and answer of a call).
            return;
        }
        if self.names_shard(a).lock().add_call(a, a_peer, b) {
            self.names_shard(b).lock().add_call(b, b_peer, a);
        }
    }

    fn in_call(&self, a: &UserName, b: &UserName) -> bool {
        self.names_shard(a).lock().in_call(a, b)
    }

    fn end_call(&self, a: &UserName, b: &UserName) {
        self.names_shard(a).lock().end_call(a, b);
        self.names_shard(b).lock().end_call(b, a);
    }

    fn resolve(
        &self,
        from: PeerId,
        from_user: Option<&UserName>,
        rooms: &[RoomId],
        hint: Option<&RoomId>,
        to: &Address,
    ) -> Result<Target, RouteError> {
        let peer = match to {
            Address::Peer(peer) => {
                let shared = match hint {
                    Some(room) => {
                        rooms.contains(room)
                            && self.room_shard(room).lock().shares(room, from, *peer)
                    }
                    None => rooms
                        .iter()
                        .any(|room| self.room_shard(room).lock().shares(room, from, *peer)),
                };
                if !shared || *peer == from {
                    return Err(RouteError::UnknownPeer);
                }
                *peer
            }
            Address::User(name) => {
                if from_user.is_none() {
                    return Err(RouteError::NotLoggedIn);
                }
                match self.names.at(self.hash(name)).lock().lookup(name) {
                    Some(peer) if peer != from => peer,
                    _ => return Err(RouteError::UnknownPeer),
                }
            }
        };
        let (capabilities, outbox) = self
            .peers
            .at(peer.0)
            .lock()
            .get(&peer)
            .map(|e| (e.capabilities, e.outbox.clone()))
            .ok_or(RouteError::UnknownPeer)?;
        Ok(Target {
            peer,
            capabilities,
            outbox,
        })
    }

    fn deliver(&self, to: &Target, frame: Encoded, origin: Origin) -> Result<(), RouteError> {
        to.outbox.push_relayed(frame, origin).map_err(|e| match e {
            PushError::Full => RouteError::PeerBusy,
            PushError::Closed => RouteError::UnknownPeer,
        })
    }

    fn notify(&self, peer: PeerId, frame: Encoded) {
        if let Some(outbox) = self.outbox(peer) {
            let _ = outbox.push(frame);
        }
    }

    fn close_all(&self, reason: CloseReason) {
        *self.closed.lock() = Some(reason);
        for shard in self.peers.shards.iter() {
            for entry in shard.lock().values() {
                entry.outbox.close(reason);
            }
        }
    }

    fn peer_count(&self) -> usize {
        self.peers.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Message, MessageType};

    fn frame(n: u64) -> Encoded {
        encode(&Message::Ping { nonce: n })
    }

    #[test]
    fn outbox_drains_in_order_and_cuts_off_past_its_bound() {
        let outbox = Outbox::new(OutboxLimits {
            frames: 3,
            bytes: 1 << 20,
        });
        let origin = |seq| Origin {
            peer: PeerId(9),
            seq,
        };
        for n in 0..3 {
            outbox.push_relayed(frame(n), origin(n as u32)).unwrap();
        }
        // A relayed frame past the bound is refused; the receiver stays.
        assert_eq!(
            outbox.push_relayed(frame(3), origin(3)),
            Err(PushError::Full)
        );
        assert_eq!(outbox.closed(), None);
        // The server's own frames may go to twice the bound...
        for n in 0..3 {
            outbox.push(frame(10 + n)).unwrap();
        }
        // ...past which the receiver is not reading: it is cut off, and the
        // senders of the relayed frames thrown away are kept.
        assert_eq!(outbox.push(frame(13)), Err(PushError::Closed));
        let mut out = Vec::new();
        assert_eq!(
            outbox.drain(&mut out, usize::MAX, usize::MAX),
            Some(CloseReason::SlowConsumer)
        );
        assert!(out.is_empty(), "a cut-off consumer's queue is dropped");
        let lost: Vec<u32> = outbox
            .take_undelivered(false)
            .iter()
            .map(|o| o.seq)
            .collect();
        assert_eq!(lost, vec![0, 1, 2]);
        assert_eq!(outbox.push(frame(4)), Err(PushError::Closed));

        let outbox = Outbox::new(OutboxLimits {
            frames: 8,
            bytes: 1 << 20,
        });
        outbox.push(frame(1)).unwrap();
        outbox.push(frame(2)).unwrap();
        assert_eq!(outbox.drain(&mut out, usize::MAX, usize::MAX), None);
        assert_eq!(out, vec![frame(1), frame(2)]);
        assert!(out.iter().all(|f| f.kind == MessageType::Ping));
    }

    fn router() -> LocalRouter {
        LocalRouter::new(
            4,
            RoomPolicy {
                default_capacity: 4,
                max_capacity: 8,
            },
        )
    }

    /// Registers peer `id` with a fresh outbox and returns the outbox.
    fn register(router: &LocalRouter, id: u64) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(OutboxLimits {
            frames: 16,
            bytes: 1 << 16,
        }));
        router.register(PeerId(id), Capabilities::empty(), outbox.clone());
        outbox
    }

    fn member(id: u64) -> Member {
        Member {
            peer_id: PeerId(id),
            display_name: String::new(),
            user: None,
            capabilities: Capabilities::empty(),
        }
    }

    #[test]
    fn peers_reach_each_other_only_through_a_shared_room() {
        let router = router();
        for id in 1..=3 {
            register(&router, id);
        }
        let a = RoomId::new("a").unwrap();
        let b = RoomId::new("b").unwrap();
        router.join(&a, RoomMode::Mesh, None, member(1)).unwrap();
        router.join(&a, RoomMode::Mesh, None, member(2)).unwrap();
        router.join(&b, RoomMode::Mesh, None, member(3)).unwrap();
        let rooms = [a.clone()];
        assert_eq!(
            router
                .resolve(PeerId(1), None, &rooms, None, &Address::Peer(PeerId(2)))
                .unwrap()
                .peer,
            PeerId(2)
        );
        assert_eq!(
            router
                .resolve(PeerId(1), None, &rooms, None, &Address::Peer(PeerId(3)))
                .unwrap_err(),
            RouteError::UnknownPeer
        );
        assert_eq!(
            router
                .resolve(PeerId(1), None, &rooms, Some(&b), &Address::Peer(PeerId(2)))
                .unwrap_err(),
            RouteError::UnknownPeer,
            "a room hint the sender is not in is refused"
        );
    }

    #[test]
    fn a_peer_registering_after_shutdown_began_is_closed_too() {
        let router = router();
        let early = register(&router, 1);
        router.close_all(CloseReason::Shutdown);
        let late = register(&router, 2);
        assert_eq!(early.closed(), Some(CloseReason::Shutdown));
        assert_eq!(late.closed(), Some(CloseReason::Shutdown));
    }

    #[test]
    fn the_joiner_gets_joined_before_any_later_notice_of_the_room() {
        let router = router();
        let outboxes: Vec<_> = (1..=2).map(|id| register(&router, id)).collect();
        let room = RoomId::new("r").unwrap();
        router.join(&room, RoomMode::Mesh, None, member(1)).unwrap();
        router.join(&room, RoomMode::Mesh, None, member(2)).unwrap();
        router.leave(&room, PeerId(1), LeaveReason::Left);
        let mut out = Vec::new();
        outboxes[1].drain(&mut out, usize::MAX, usize::MAX);
        let kinds: Vec<_> = out.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![MessageType::Joined, MessageType::PeerLeft]);
    }
}
