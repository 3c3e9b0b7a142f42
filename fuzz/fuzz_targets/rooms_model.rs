//! A model-checking harness for the pure room and name rules.
//!
//! Bytes are read as a sequence of client actions (join, leave, disconnect,
//! login, logout, route) by a handful of peers over a handful of rooms and
//! names. Each action goes to `switchboard::rooms::{Rooms, Names}` and to a
//! plain model of who is where; after every step the two must agree and:
//!
//! - no notice reaches a peer outside the room it is about;
//! - no room holds more members than its capacity;
//! - a name is held by at most one peer;
//! - every departure is announced exactly once to each remaining member
//!   (and never to the one who left);
//! - a peer may address another by id only when they share a room.
//!
//! Shared by the `rooms` fuzz target and `tests/rooms_model.rs`, which
//! replays the seed corpus and runs it as a property test.

use std::collections::{BTreeMap, BTreeSet};

use switchboard::protocol::{
    Capabilities, LeaveReason, Member, Message, PeerId, RoomId, RoomMode, UserName,
};
use switchboard::rooms::{JoinError, Names, Notice, RoomPolicy, Rooms};

const PEERS: u64 = 6;
const ROOMS: u8 = 4;
const NAMES: u8 = 3;
const POLICY: RoomPolicy = RoomPolicy {
    default_capacity: 3,
    max_capacity: 4,
};

/// One client action, decoded from the input.
#[derive(Debug, Clone)]
pub enum Action {
    Join {
        peer: PeerId,
        room: RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        may_create: bool,
    },
    Leave {
        peer: PeerId,
        room: RoomId,
    },
    Disconnect {
        peer: PeerId,
    },
    Login {
        peer: PeerId,
        name: UserName,
    },
    Logout {
        peer: PeerId,
        name: UserName,
    },
    Route {
        from: PeerId,
        to: PeerId,
        room: RoomId,
    },
}

/// Decodes actions from `data`, 4 bytes each; a short tail is ignored.
pub fn actions(data: &[u8]) -> Vec<Action> {
    data.chunks_exact(4)
        .map(|c| {
            let peer = PeerId(1 + u64::from(c[1]) % PEERS);
            let room = RoomId::new(&format!("r{}", c[2] % ROOMS)).unwrap();
            let name = UserName::new(&format!("n{}", c[2] % NAMES)).unwrap();
            match c[0] % 6 {
                0 => Action::Join {
                    peer,
                    room,
                    mode: if c[3] & 1 == 0 {
                        RoomMode::Mesh
                    } else {
                        RoomMode::Pair
                    },
                    // 0 and 1 are out of range on purpose; 5 is past the max.
                    capacity: match (c[3] >> 1) % 7 {
                        0 => None,
                        n => Some(u32::from(n) - 1),
                    },
                    may_create: c[3] & 0x80 == 0,
                },
                1 => Action::Leave { peer, room },
                2 => Action::Disconnect { peer },
                3 => Action::Login { peer, name },
                4 => Action::Logout { peer, name },
                _ => Action::Route {
                    from: peer,
                    to: PeerId(1 + u64::from(c[3]) % PEERS),
                    room,
                },
            }
        })
        .collect()
}

fn member(peer: PeerId) -> Member {
    Member {
        peer_id: peer,
        display_name: String::new(),
        user: None,
        capabilities: Capabilities::empty(),
    }
}

/// The rules under test and the model they must agree with.
#[derive(Default)]
pub struct Harness {
    rooms: Rooms,
    names: Names,
    /// Members of each room, in join order.
    members: BTreeMap<RoomId, Vec<PeerId>>,
    /// Mode and capacity of each room.
    shape: BTreeMap<RoomId, (RoomMode, u32)>,
    holders: BTreeMap<UserName, PeerId>,
    /// PeerLeft notices seen per (room, departed, recipient) since the
    /// departed peer last joined that room.
    announced: BTreeMap<(RoomId, PeerId, PeerId), u32>,
}

impl Harness {
    /// Applies every action in `data`, checking after each.
    pub fn run(data: &[u8]) {
        let mut h = Harness::default();
        for action in actions(data) {
            h.step(&action);
            h.check();
        }
        // Everyone disconnects: every room empties and is forgotten.
        for peer in 1..=PEERS {
            h.step(&Action::Disconnect { peer: PeerId(peer) });
            h.check();
        }
        assert!(h.rooms.is_empty(), "rooms left after everyone went");
        assert!(h.names.is_empty(), "names left after everyone went");
    }

    fn step(&mut self, action: &Action) {
        match action {
            Action::Join {
                peer,
                room,
                mode,
                capacity,
                may_create,
            } => self.join(*peer, room, *mode, *capacity, *may_create),
            Action::Leave { peer, room } => self.leave(*peer, room, LeaveReason::Left),
            Action::Disconnect { peer } => {
                // What `Session::drop` does: leave every room, free names.
                let rooms: Vec<RoomId> = self
                    .members
                    .iter()
                    .filter(|(_, m)| m.contains(peer))
                    .map(|(r, _)| r.clone())
                    .collect();
                for room in rooms {
                    self.leave(*peer, &room, LeaveReason::Disconnected);
                }
                let held: Vec<UserName> = self
                    .holders
                    .iter()
                    .filter(|(_, p)| *p == peer)
                    .map(|(n, _)| n.clone())
                    .collect();
                for name in held {
                    assert!(self.names.logout(&name, *peer));
                    self.holders.remove(&name);
                }
            }
            Action::Login { peer, name } => {
                let free = self.holders.get(name).is_none_or(|h| h == peer);
                let result = self.names.login(name, *peer);
                assert_eq!(result.is_ok(), free, "login {name} by {peer:?}");
                if free {
                    self.holders.insert(name.clone(), *peer);
                }
            }
            Action::Logout { peer, name } => {
                let holds = self.holders.get(name) == Some(peer);
                assert_eq!(self.names.logout(name, *peer), holds);
                if holds {
                    self.holders.remove(name);
                }
            }
            Action::Route { from, to, room } => {
                let model = self
                    .members
                    .get(room)
                    .is_some_and(|m| m.contains(from) && m.contains(to));
                assert_eq!(self.rooms.shares(room, *from, *to), model, "route");
            }
        }
    }

    fn join(
        &mut self,
        peer: PeerId,
        room: &RoomId,
        mode: RoomMode,
        capacity: Option<u32>,
        may_create: bool,
    ) {
        let before = self.members.get(room).cloned().unwrap_or_default();
        let result =
            self.rooms
                .join_or_create(room, mode, capacity, member(peer), POLICY, may_create);
        let asked_ok = mode != RoomMode::Mesh
            || capacity.is_none_or(|c| (2..=POLICY.max_capacity).contains(&c));
        match result {
            Ok(outcome) => {
                assert!(asked_ok, "bad capacity accepted");
                assert!(
                    may_create || !before.is_empty(),
                    "created without the right"
                );
                assert!(!before.contains(&peer), "joined twice");
                let listed: Vec<PeerId> =
                    outcome.joined.members.iter().map(|m| m.peer_id).collect();
                assert_eq!(listed, before, "Joined lists the members before");
                let shape = (outcome.joined.mode, outcome.joined.capacity);
                if before.is_empty() {
                    let expected = match mode {
                        RoomMode::Mesh => capacity.unwrap_or(POLICY.default_capacity),
                        _ => 2,
                    };
                    assert_eq!(shape.1, expected);
                    self.shape.insert(room.clone(), shape);
                } else {
                    assert_eq!(Some(&shape), self.shape.get(room));
                }
                match outcome.notice {
                    None => assert!(before.is_empty()),
                    Some(notice) => {
                        self.check_recipients(room, &notice, &before);
                        assert!(
                            matches!(&notice.message, Message::PeerJoined(p) if p.member.peer_id == peer && p.room == *room)
                        );
                    }
                }
                self.members.entry(room.clone()).or_default().push(peer);
                // A new membership: its departure is yet to be announced.
                self.announced
                    .retain(|(r, departed, _), _| !(r == room && *departed == peer));
            }
            Err(JoinError::NotAllowedToCreate { .. }) => {
                assert!(!may_create && before.is_empty())
            }
            Err(JoinError::BadCapacity { .. }) => assert!(!asked_ok),
            Err(JoinError::AlreadyMember { .. }) => assert!(before.contains(&peer)),
            Err(JoinError::ModeMismatch { existing, .. }) => {
                assert_eq!(self.shape.get(room).map(|s| s.0), Some(existing))
            }
            Err(JoinError::Full { capacity, .. }) => {
                assert_eq!(self.shape.get(room).map(|s| s.1), Some(capacity));
                assert_eq!(before.len(), capacity as usize, "refused as full too early");
            }
            Err(JoinError::Unavailable) => unreachable!("rooms in memory are always available"),
        }
    }

    fn leave(&mut self, peer: PeerId, room: &RoomId, reason: LeaveReason) {
        let was_member = self.members.get(room).is_some_and(|m| m.contains(&peer));
        let notice = self.rooms.leave(room, peer, reason);
        assert_eq!(notice.is_some(), was_member, "leave by a non-member");
        let Some(notice) = notice else {
            return;
        };
        let members = self.members.get_mut(room).unwrap();
        members.retain(|p| *p != peer);
        let remaining = members.clone();
        if remaining.is_empty() {
            self.members.remove(room);
            self.shape.remove(room);
        }
        self.check_recipients(room, &notice, &remaining);
        assert!(
            matches!(&notice.message, Message::PeerLeft(p) if p.peer_id == peer && p.room == *room && p.reason == reason)
        );
        for to in &notice.to {
            let count = self.announced.entry((room.clone(), peer, *to)).or_default();
            *count += 1;
            assert_eq!(*count, 1, "departure of {peer:?} announced twice to {to:?}");
        }
    }

    /// A notice about `room` goes exactly to `expected`, each once.
    fn check_recipients(&self, room: &RoomId, notice: &Notice, expected: &[PeerId]) {
        let to: BTreeSet<PeerId> = notice.to.iter().copied().collect();
        assert_eq!(to.len(), notice.to.len(), "a recipient listed twice");
        let expected: BTreeSet<PeerId> = expected.iter().copied().collect();
        assert_eq!(to, expected, "notice about {room} to the wrong peers");
    }

    fn check(&self) {
        assert_eq!(self.rooms.len(), self.members.len(), "empty rooms kept");
        for (room, members) in &self.members {
            let actual = self.rooms.get(room).expect("room with members exists");
            let ids: Vec<PeerId> = actual.members().iter().map(|m| m.peer_id).collect();
            assert_eq!(&ids, members, "members of {room}");
            assert!(
                ids.len() <= actual.capacity() as usize,
                "{room} over capacity"
            );
            let max = match actual.mode() {
                RoomMode::Mesh => POLICY.max_capacity,
                _ => 2,
            };
            assert!(actual.capacity() <= max);
        }
        assert_eq!(self.names.len(), self.holders.len());
        for (name, holder) in &self.holders {
            assert_eq!(self.names.lookup(name), Some(*holder), "holder of {name}");
        }
    }
}
