//! The local registry: the peers connected to this node, their
//! capabilities and their outboxes. Synchronous and on the hot path: a
//! relay to a peer of this node is one shard lock here and a push into its
//! outbox.
//!
//! What a peer may reach (rooms, names, which node a peer is on) is the
//! directory's business (`crate::directory`), not the registry's.

use std::sync::Arc;

use parking_lot::Mutex;

use crate::outbox::{CloseReason, Origin, Outbox, PushError};
use crate::protocol::{
    encode, Capabilities, Encoded, ErrorCode, ErrorMessage, Message, PeerId, RoomId,
};

/// Why a message could not be routed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The target does not exist or shares no room with the sender.
    #[error("no such peer reachable from you")]
    UnknownPeer,
    /// Addressing by name needs the sender to be logged in.
    #[error("log in before calling by name")]
    NotLoggedIn,
    /// The target's queue is full; the sender should slow down.
    #[error("peer is not keeping up with its messages")]
    PeerBusy,
    /// The shared directory of a cluster could not be reached in time.
    #[error("the cluster directory cannot be reached; try again")]
    Unavailable,
}

impl From<PushError> for RouteError {
    fn from(e: PushError) -> RouteError {
        match e {
            PushError::Full => RouteError::PeerBusy,
            PushError::Closed => RouteError::UnknownPeer,
        }
    }
}

impl RouteError {
    /// The wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RouteError::UnknownPeer => ErrorCode::UnknownPeer,
            RouteError::NotLoggedIn => ErrorCode::NotLoggedIn,
            RouteError::PeerBusy => ErrorCode::PeerBusy,
            RouteError::Unavailable => ErrorCode::Unavailable,
        }
    }
}

/// Where a resolved target lives.
#[derive(Clone, Debug)]
pub enum Route {
    /// Connected to this node: its outbox, so delivery needs no second
    /// lookup.
    Local(Arc<Outbox>),
    /// Connected to another node of the routing space, named by the high
    /// bits of its peer id; a directory for several nodes forwards there.
    Remote {
        /// The node it is connected to.
        node: u16,
    },
}

/// A resolved target: who it is, what it can do, and how to reach it.
#[derive(Clone, Debug)]
pub struct Target {
    /// Its id.
    pub peer: PeerId,
    /// Its capabilities (whether it inflates SDP itself).
    pub capabilities: Capabilities,
    /// How to reach it.
    pub route: Route,
}

struct PeerEntry {
    capabilities: Capabilities,
    outbox: Arc<Outbox>,
}

/// A fixed set of mutex-guarded shards.
pub(crate) struct Shards<T> {
    pub(crate) shards: Box<[Mutex<T>]>,
    mask: usize,
}

impl<T: Default> Shards<T> {
    pub(crate) fn new(count: usize) -> Shards<T> {
        let count = count.max(1).next_power_of_two();
        Shards {
            shards: (0..count).map(|_| Mutex::new(T::default())).collect(),
            mask: count - 1,
        }
    }

    pub(crate) fn at(&self, index: u64) -> &Mutex<T> {
        &self.shards[index as usize & self.mask]
    }
}

/// The peers connected to this node.
pub struct Registry {
    peers: Shards<foldhash::HashMap<PeerId, PeerEntry>>,
    /// Set by `close_all`: a peer registering afterwards (it was still in
    /// its handshake) is closed at once instead of being missed.
    closed: Mutex<Option<CloseReason>>,
}

impl Registry {
    /// An empty registry with `shards` shards.
    pub fn new(shards: usize) -> Registry {
        Registry {
            peers: Shards::new(shards),
            closed: Mutex::new(None),
        }
    }

    /// Makes `peer` reachable through `outbox`.
    pub fn register(&self, peer: PeerId, capabilities: Capabilities, outbox: Arc<Outbox>) {
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

    /// Forgets `peer`.
    pub fn unregister(&self, peer: PeerId) {
        self.peers.at(peer.0).lock().remove(&peer);
    }

    /// Forgets `peer` if `outbox` is still its outbox (it may have been
    /// registered again since, by a session that came back).
    pub fn unregister_outbox(&self, peer: PeerId, outbox: &Arc<Outbox>) {
        let mut shard = self.peers.at(peer.0).lock();
        if shard
            .get(&peer)
            .is_some_and(|e| Arc::ptr_eq(&e.outbox, outbox))
        {
            shard.remove(&peer);
        }
    }

    /// `peer`'s outbox, if it is connected here.
    pub fn outbox(&self, peer: PeerId) -> Option<Arc<Outbox>> {
        self.peers
            .at(peer.0)
            .lock()
            .get(&peer)
            .map(|e| e.outbox.clone())
    }

    /// `peer` as a local target, if it is connected here.
    pub fn target(&self, peer: PeerId) -> Option<Target> {
        self.peers.at(peer.0).lock().get(&peer).map(|e| Target {
            peer,
            capabilities: e.capabilities,
            route: Route::Local(e.outbox.clone()),
        })
    }

    /// Queues a frame relayed from `origin` for a local target.
    pub fn deliver(
        &self,
        outbox: &Outbox,
        frame: Encoded,
        origin: Origin,
    ) -> Result<(), RouteError> {
        outbox.push_relayed(frame, origin).map_err(RouteError::from)
    }

    /// Queues one of the server's own frames for `peer`, if connected here.
    pub fn notify(&self, peer: PeerId, frame: Encoded) {
        if let Some(outbox) = self.outbox(peer) {
            let _ = outbox.push(frame);
        }
    }

    /// Queues one encoded frame for each of `peers` connected here.
    pub fn notify_all(&self, peers: &[PeerId], frame: &Encoded) {
        for &peer in peers {
            // Full or Closed: that peer is being disconnected and will be
            // announced as gone; nothing more to do for it here.
            self.notify(peer, frame.clone());
        }
    }

    /// Tells `peer`, if connected here, that an operator removed it from
    /// `room` (`Error{KICKED}` saying `why`, then `Left`), and its session,
    /// which forgets the room.
    pub fn tell_kicked(&self, room: &RoomId, peer: PeerId, why: &str) {
        self.notify(
            peer,
            encode(&Message::Error(ErrorMessage {
                code: ErrorCode::Kicked,
                message: format!("{why}: {room}"),
                request_seq: 0,
            })),
        );
        self.notify(peer, encode(&Message::Left { room: room.clone() }));
        if let Some(outbox) = self.outbox(peer) {
            outbox.kicked_from(room.clone());
        }
    }

    /// Closes every outbox (server shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        *self.closed.lock() = Some(reason);
        for shard in self.peers.shards.iter() {
            for entry in shard.lock().values() {
                entry.outbox.close(reason);
            }
        }
    }

    /// Closes the outbox of every peer connected now, without refusing
    /// those that register later (a cluster node whose peers the others
    /// took for gone).
    pub fn close_each(&self, reason: CloseReason) {
        for shard in self.peers.shards.iter() {
            for entry in shard.lock().values() {
                entry.outbox.close(reason);
            }
        }
    }

    /// Every peer connected here with its capabilities.
    pub fn peers(&self) -> Vec<(PeerId, Capabilities)> {
        let mut all = Vec::new();
        for shard in self.peers.shards.iter() {
            all.extend(shard.lock().iter().map(|(p, e)| (*p, e.capabilities)));
        }
        all
    }

    /// Number of peers connected here.
    pub fn peer_count(&self) -> usize {
        self.peers.shards.iter().map(|s| s.lock().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::OutboxLimits;

    #[test]
    fn a_peer_registering_after_shutdown_began_is_closed_too() {
        let registry = Registry::new(4);
        let limits = OutboxLimits {
            frames: 16,
            bytes: 1 << 16,
        };
        let early = Arc::new(Outbox::new(limits));
        registry.register(PeerId(1), Capabilities::empty(), early.clone());
        registry.close_all(CloseReason::Shutdown);
        let late = Arc::new(Outbox::new(limits));
        registry.register(PeerId(2), Capabilities::empty(), late.clone());
        assert_eq!(early.closed(), Some(CloseReason::Shutdown));
        assert_eq!(late.closed(), Some(CloseReason::Shutdown));
    }
}
