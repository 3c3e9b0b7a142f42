//! The directory: rooms, names, named calls, and which node a peer is on.
//!
//! [`Directory`] is the seam for several nodes. Its lookups and changes are
//! asynchronous, because a directory shared by several nodes lives in
//! Redis; [`LocalDirectory`] keeps everything in this process, where every
//! future is ready at once (and the session awaits it without a
//! suspension). Delivery stays synchronous: a [`Target`] is either local (an
//! outbox in the [`Registry`]) or on another node, which a directory for
//! several nodes forwards to.
//!
//! The room and name rules live in `crate::rooms`; [`LocalDirectory`] wraps
//! them in sharded `parking_lot` mutexes. A lock guards one shard (rooms or
//! names hashing to it) and is never held across `.await`.

use std::future::Future;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::metrics::Census;
use crate::outbox::{Origin, Outbox};
use crate::protocol::{
    encode, Address, Encoded, Joined, LeaveReason, Member, Message, PeerId, ResumeRefusal, RoomId,
    RoomMode, UserName,
};
use crate::registry::{Registry, Route, RouteError, Shards, Target};
use crate::resume::{Handoff, Token};
use crate::rooms::{JoinError, LoginError, Names, RoomPolicy, Rooms};
use crate::webhooks::{Event, EventSink};

/// A session brought from another node ([`Directory::fetch_session`]).
#[derive(Debug)]
pub struct Fetched {
    /// Its state.
    pub handoff: Handoff,
    /// Its outbox, registered here.
    pub outbox: Arc<Outbox>,
    /// Whether the directory moved it here; if not (its old node died
    /// meanwhile, or the shared directory failed), it cannot be served and
    /// is to be ended as timed out.
    pub moved: bool,
}

/// What hands a resumable session of this node to another node (the server
/// implements it over its table of resumable sessions).
pub trait SessionSource: Send + Sync {
    /// Takes the session `token` names for a client with access-token
    /// `identity` that resumes it on another node: it is no longer served
    /// here (a half-open connection is closed first). Returns its state and
    /// its outbox, whose frames still queued are part of the state and
    /// whose later frames the directory forwards; or why not.
    fn give(&self, token: Token, identity: Option<UserName>) -> Given;
}

/// What [`SessionSource::give`] resolves to.
pub type Given =
    std::pin::Pin<Box<dyn Future<Output = Result<(Handoff, Arc<Outbox>), ResumeRefusal>> + Send>>;

/// What a session needs to know and change beyond its own node.
///
/// Every method that changes a room tells the room's other members itself
/// (`PeerJoined`, `PeerLeft`), wherever they are connected.
pub trait Directory: Send + Sync + 'static {
    /// The peers connected to this node.
    fn registry(&self) -> &Registry;

    /// Joins a room, creating it only if `may_create`. `Joined` is queued
    /// for the joiner before anything else about the room can reach it, and
    /// the other members are sent `PeerJoined`.
    fn join(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> impl Future<Output = Result<Joined, JoinError>> + Send;

    /// Leaves a room and tells the remaining members; false if not a member.
    fn leave(
        &self,
        room: &RoomId,
        peer: PeerId,
        reason: LeaveReason,
    ) -> impl Future<Output = bool> + Send;

    /// Claims a user name for `peer`.
    fn login(
        &self,
        name: &UserName,
        peer: PeerId,
    ) -> impl Future<Output = Result<(), LoginError>> + Send;

    /// Frees a name held by `peer`, ends its calls on the partners' side
    /// too, and returns the partners (each is to be sent `HangUp`).
    fn logout(&self, name: &UserName, peer: PeerId) -> impl Future<Output = Vec<UserName>> + Send;

    /// Sets the user name `peer` is listed with in each of `rooms`.
    fn set_member_user(
        &self,
        rooms: &[RoomId],
        peer: PeerId,
        user: Option<&UserName>,
    ) -> impl Future<Output = ()> + Send;

    /// Records a named call between `a` (held by `a_peer`) and `b` (held by
    /// `b_peer`), on both sides.
    fn open_call(
        &self,
        a: &UserName,
        a_peer: PeerId,
        b: &UserName,
        b_peer: PeerId,
    ) -> impl Future<Output = ()> + Send;

    /// Whether `a` is in a call with `b`.
    fn in_call(&self, a: &UserName, b: &UserName) -> impl Future<Output = bool> + Send;

    /// Ends the call between `a` and `b` on both sides.
    fn end_call(&self, a: &UserName, b: &UserName) -> impl Future<Output = ()> + Send;

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
    ) -> impl Future<Output = Result<Target, RouteError>> + Send;

    /// Queues a frame relayed from `origin` for a resolved target.
    fn deliver(&self, to: &Target, frame: Encoded, origin: Origin) -> Result<(), RouteError>;

    /// Queues one of the server's own frames for `peer`, wherever it is
    /// connected; nothing if it is gone.
    fn notify(&self, peer: PeerId, frame: Encoded);

    /// This node's id and epoch when the directory hands them out (a
    /// cluster claims them in Redis); `None` leaves the configured node id
    /// and an epoch taken from the clock.
    fn identity(&self) -> Option<(u16, u16)> {
        None
    }

    /// Whether the node may take new sessions now: a cluster node that
    /// cannot reach its shared directory, or has lost its lease, may not.
    fn ready(&self) -> bool {
        true
    }

    /// How many rooms, members and names there are now (for `/metrics`).
    fn census(&self) -> impl Future<Output = Census> + Send;

    /// Brings the resumable session `token` names from the node that holds
    /// it (the one the token names) for a client with access-token
    /// `identity`: its state, and its outbox, registered here and holding
    /// what is sent to it directly until the old node has forwarded
    /// everything sent there. Only a cluster has other nodes to ask.
    fn fetch_session(
        &self,
        token: Token,
        identity: Option<UserName>,
    ) -> impl Future<Output = Result<Fetched, ResumeRefusal>> + Send {
        let _ = (token, identity);
        std::future::ready(Err(ResumeRefusal::UnknownToken))
    }

    /// Installs what gives this node's resumable sessions to other nodes.
    fn set_sessions(&self, sessions: Arc<dyn SessionSource>) {
        let _ = sessions;
    }

    /// Resolves once what this node owes other nodes has left it (a
    /// draining node waits for it, within its grace, before it exits).
    fn settle(&self) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }

    /// `peer`'s session ended for good on this node (after its teardown).
    fn ended(&self, peer: PeerId) {
        let _ = peer;
    }

    /// From now on, emits room and user events (webhooks) into `sink`.
    fn set_events(&self, sink: EventSink);

    /// Every room with its members (admin API), or only `only`.
    fn rooms(&self, only: Option<&RoomId>) -> impl Future<Output = Vec<RoomInfo>> + Send;

    /// Every logged-in name and the peer holding it (admin API).
    fn users(&self) -> impl Future<Output = Vec<(UserName, PeerId)>> + Send;

    /// An operator removes `peer` from `room`: the others get
    /// `PeerLeft{KICKED}`, the peer an `Error{KICKED}` and `Left`; false if
    /// it was not a member.
    fn kick(&self, room: &RoomId, peer: PeerId) -> impl Future<Output = bool> + Send;

    /// An operator closes `room`: every member gets `Error{KICKED}` and
    /// `Left`; returns how many there were, `None` without such a room.
    fn close_room(&self, room: &RoomId) -> impl Future<Output = Option<usize>> + Send;
}

/// A room as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoomInfo {
    /// Its id.
    pub id: RoomId,
    /// Pair or mesh.
    pub mode: RoomMode,
    /// Most members.
    pub capacity: u32,
    /// Members in join order.
    pub members: Vec<Member>,
}

/// The in-process [`Directory`]: one node, everything in memory.
pub struct LocalDirectory {
    registry: Arc<Registry>,
    rooms: Shards<Rooms>,
    names: Shards<Names>,
    hasher: foldhash::fast::RandomState,
    policy: RoomPolicy,
    /// Where room and user events go, once webhooks are configured.
    events: std::sync::OnceLock<EventSink>,
}

impl LocalDirectory {
    /// An empty directory with `shards` shards per map, over `registry`.
    pub fn new(registry: Arc<Registry>, shards: usize, policy: RoomPolicy) -> LocalDirectory {
        LocalDirectory {
            registry,
            rooms: Shards::new(shards),
            names: Shards::new(shards),
            hasher: Default::default(),
            policy,
            events: std::sync::OnceLock::new(),
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

    fn emit(&self, event: impl FnOnce() -> Event) {
        if let Some(sink) = self.events.get() {
            sink.emit(event());
        }
    }

    /// Removes `peer` from `room` and announces it: the events under the
    /// room's lock (so they are stamped in the order the room changed),
    /// then `PeerLeft` to the remaining members. False if not a member.
    fn leave_and_announce(&self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> bool {
        let notice = {
            let mut shard = self.room_shard(room).lock();
            let Some(notice) = shard.leave(room, peer, reason) else {
                return false;
            };
            self.emit(|| Event::PeerLeft {
                room: room.clone(),
                peer,
                reason,
            });
            if notice.to.is_empty() {
                self.emit(|| Event::RoomEmptied { room: room.clone() });
            }
            notice
        };
        if !notice.to.is_empty() {
            self.registry
                .notify_all(&notice.to, &encode(&notice.message));
        }
        true
    }

    /// The synchronous join, for the async trait method and for benches.
    pub fn join_now(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> Result<Joined, JoinError> {
        let joiner = member.peer_id;
        let user = member.user.clone();
        let mut rooms = self.room_shard(room).lock();
        let outcome =
            rooms.join_or_create(room, mode, capacity, member, self.policy, may_create)?;
        // Lock order: room shard, then peer shard, then outbox; nothing takes
        // them the other way round.
        self.registry
            .notify(joiner, encode(&Message::Joined(outcome.joined.clone())));
        // Events under the room's lock: stamped in the order it changed.
        if outcome.joined.members.is_empty() {
            self.emit(|| Event::RoomCreated {
                room: room.clone(),
                mode: outcome.joined.mode,
            });
        }
        self.emit(|| Event::PeerJoined {
            room: room.clone(),
            peer: joiner,
            user,
        });
        drop(rooms);
        if let Some(notice) = outcome.notice {
            self.registry
                .notify_all(&notice.to, &encode(&notice.message));
        }
        Ok(outcome.joined)
    }

    /// The synchronous resolve, for the async trait method and for benches.
    pub fn resolve_now(
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
                match self.names_shard(name).lock().lookup(name) {
                    Some(peer) if peer != from => peer,
                    _ => return Err(RouteError::UnknownPeer),
                }
            }
        };
        self.registry.target(peer).ok_or(RouteError::UnknownPeer)
    }
}

impl Directory for LocalDirectory {
    fn registry(&self) -> &Registry {
        &self.registry
    }

    async fn join(
        &self,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        member: Member,
        may_create: bool,
    ) -> Result<Joined, JoinError> {
        self.join_now(room, mode, capacity, member, may_create)
    }

    async fn leave(&self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> bool {
        self.leave_and_announce(room, peer, reason)
    }

    async fn login(&self, name: &UserName, peer: PeerId) -> Result<(), LoginError> {
        let mut names = self.names_shard(name).lock();
        let fresh = names.lookup(name) != Some(peer);
        names.login(name, peer)?;
        if fresh {
            self.emit(|| Event::UserLoggedIn {
                user: name.clone(),
                peer,
            });
        }
        Ok(())
    }

    async fn logout(&self, name: &UserName, peer: PeerId) -> Vec<UserName> {
        let calls = {
            let mut names = self.names_shard(name).lock();
            let calls = names.take(name, peer);
            if calls.is_some() {
                self.emit(|| Event::UserLoggedOut {
                    user: name.clone(),
                    peer,
                });
            }
            calls
        };
        let calls = calls.unwrap_or_default();
        // One shard at a time: never two name locks at once.
        for partner in &calls {
            self.names_shard(partner).lock().end_call(partner, name);
        }
        calls
    }

    async fn set_member_user(&self, rooms: &[RoomId], peer: PeerId, user: Option<&UserName>) {
        for room in rooms {
            self.room_shard(room)
                .lock()
                .set_user(room, peer, user.cloned());
        }
    }

    async fn open_call(&self, a: &UserName, a_peer: PeerId, b: &UserName, b_peer: PeerId) {
        if self.names_shard(a).lock().in_call(a, b) {
            // The common case (every later offer and answer of a call).
            return;
        }
        if self.names_shard(a).lock().add_call(a, a_peer, b) {
            self.names_shard(b).lock().add_call(b, b_peer, a);
        }
    }

    async fn in_call(&self, a: &UserName, b: &UserName) -> bool {
        self.names_shard(a).lock().in_call(a, b)
    }

    async fn end_call(&self, a: &UserName, b: &UserName) {
        self.names_shard(a).lock().end_call(a, b);
        self.names_shard(b).lock().end_call(b, a);
    }

    async fn resolve(
        &self,
        from: PeerId,
        from_user: Option<&UserName>,
        rooms: &[RoomId],
        hint: Option<&RoomId>,
        to: &Address,
    ) -> Result<Target, RouteError> {
        self.resolve_now(from, from_user, rooms, hint, to)
    }

    fn deliver(&self, to: &Target, frame: Encoded, origin: Origin) -> Result<(), RouteError> {
        match &to.route {
            Route::Local(outbox) => self.registry.deliver(outbox, frame, origin),
            // One node: every target is local.
            Route::Remote { .. } => Err(RouteError::UnknownPeer),
        }
    }

    async fn rooms(&self, only: Option<&RoomId>) -> Vec<RoomInfo> {
        let info = |id: &RoomId, r: &crate::rooms::Room| RoomInfo {
            id: id.clone(),
            mode: r.mode(),
            capacity: r.capacity(),
            members: r.members().to_vec(),
        };
        if let Some(id) = only {
            let shard = self.room_shard(id).lock();
            return shard.get(id).map(|r| info(id, r)).into_iter().collect();
        }
        let mut all = Vec::new();
        for shard in self.rooms.shards.iter() {
            all.extend(shard.lock().iter().map(|(id, r)| info(id, r)));
        }
        all
    }

    async fn users(&self) -> Vec<(UserName, PeerId)> {
        let mut all = Vec::new();
        for shard in self.names.shards.iter() {
            all.extend(shard.lock().iter().map(|(n, p)| (n.clone(), p)));
        }
        all
    }

    async fn kick(&self, room: &RoomId, peer: PeerId) -> bool {
        if !self.leave_and_announce(room, peer, LeaveReason::Kicked) {
            return false;
        }
        self.registry
            .tell_kicked(room, peer, "an operator removed you from the room");
        true
    }

    async fn close_room(&self, room: &RoomId) -> Option<usize> {
        let members = {
            let mut shard = self.room_shard(room).lock();
            let members = shard.close(room)?;
            for &peer in &members {
                self.emit(|| Event::PeerLeft {
                    room: room.clone(),
                    peer,
                    reason: LeaveReason::Kicked,
                });
            }
            self.emit(|| Event::RoomEmptied { room: room.clone() });
            members
        };
        for &peer in &members {
            self.registry
                .tell_kicked(room, peer, "an operator closed the room");
        }
        Some(members.len())
    }

    fn set_events(&self, sink: EventSink) {
        let _ = self.events.set(sink);
    }

    async fn census(&self) -> Census {
        let mut c = Census::default();
        // One shard at a time, each held only to count it.
        for shard in self.rooms.shards.iter() {
            let (pair, mesh, members) = shard.lock().census();
            c.pair_rooms += pair;
            c.mesh_rooms += mesh;
            c.members += members;
        }
        for shard in self.names.shards.iter() {
            c.users += shard.lock().len() as u64;
        }
        c
    }

    fn notify(&self, peer: PeerId, frame: Encoded) {
        self.registry.notify(peer, frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbox, OutboxLimits};
    use crate::protocol::{Capabilities, MessageType};

    fn directory() -> LocalDirectory {
        LocalDirectory::new(
            Arc::new(Registry::new(4)),
            4,
            RoomPolicy {
                default_capacity: 4,
                max_capacity: 8,
            },
        )
    }

    /// Registers peer `id` with a fresh outbox and returns the outbox.
    fn register(d: &LocalDirectory, id: u64) -> Arc<Outbox> {
        let outbox = Arc::new(Outbox::new(OutboxLimits {
            frames: 16,
            bytes: 1 << 16,
        }));
        d.registry()
            .register(PeerId(id), Capabilities::empty(), outbox.clone());
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
        let d = directory();
        for id in 1..=3 {
            register(&d, id);
        }
        let a = RoomId::new("a").unwrap();
        let b = RoomId::new("b").unwrap();
        d.join_now(&a, RoomMode::Mesh, None, member(1), true)
            .unwrap();
        d.join_now(&a, RoomMode::Mesh, None, member(2), true)
            .unwrap();
        d.join_now(&b, RoomMode::Mesh, None, member(3), true)
            .unwrap();
        let rooms = [a.clone()];
        assert_eq!(
            d.resolve_now(PeerId(1), None, &rooms, None, &Address::Peer(PeerId(2)))
                .unwrap()
                .peer,
            PeerId(2)
        );
        assert_eq!(
            d.resolve_now(PeerId(1), None, &rooms, None, &Address::Peer(PeerId(3)))
                .unwrap_err(),
            RouteError::UnknownPeer
        );
        assert_eq!(
            d.resolve_now(PeerId(1), None, &rooms, Some(&b), &Address::Peer(PeerId(2)))
                .unwrap_err(),
            RouteError::UnknownPeer,
            "a room hint the sender is not in is refused"
        );
    }

    #[tokio::test]
    async fn the_joiner_gets_joined_before_any_later_notice_of_the_room() {
        let d = directory();
        let outboxes: Vec<_> = (1..=2).map(|id| register(&d, id)).collect();
        let room = RoomId::new("r").unwrap();
        d.join(&room, RoomMode::Mesh, None, member(1), true)
            .await
            .unwrap();
        d.join(&room, RoomMode::Mesh, None, member(2), true)
            .await
            .unwrap();
        d.leave(&room, PeerId(1), LeaveReason::Left).await;
        let mut out = Vec::new();
        outboxes[1].drain(&mut out, usize::MAX, usize::MAX);
        let kinds: Vec<_> = out.iter().map(|f| f.kind).collect();
        assert_eq!(kinds, vec![MessageType::Joined, MessageType::PeerLeft]);
    }
}
