//! Room and name rules as plain data structures.
//!
//! Nothing here locks, awaits or touches a socket: a join, a leave or a login
//! goes in, and the messages to deliver come out as [`Notice`]s. The routing
//! table (`crate::routing`) wraps these in sharded locks; the stateful fuzz
//! target drives them directly.

use crate::protocol::{
    Joined, LeaveReason, Member, Message, PeerId, PeerJoined, PeerLeft, RoomId, RoomMode, UserName,
};

/// One message for a list of recipients; encoded once by the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Who receives it.
    pub to: Vec<PeerId>,
    /// What they receive.
    pub message: Message,
}

/// Capacity rules of a room, from configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RoomPolicy {
    /// Capacity of a mesh room created without asking.
    pub default_capacity: u32,
    /// Largest capacity a mesh room may ask for.
    pub max_capacity: u32,
}

/// Why a join was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The room is at capacity.
    #[error("room {room} is full ({capacity} members)")]
    Full {
        /// The room.
        room: RoomId,
        /// Its capacity.
        capacity: u32,
    },
    /// The room exists with the other mode.
    #[error("room {room} is a {existing:?} room")]
    ModeMismatch {
        /// The room.
        room: RoomId,
        /// The mode it has.
        existing: RoomMode,
    },
    /// The requested capacity is out of range.
    #[error("capacity {asked} is outside 2..={max}")]
    BadCapacity {
        /// What was asked.
        asked: u32,
        /// The maximum.
        max: u32,
    },
    /// The peer is already a member.
    #[error("already in room {room}")]
    AlreadyMember {
        /// The room.
        room: RoomId,
    },
    /// The room does not exist and the joiner may not create rooms (its
    /// access token lacks `create_rooms`).
    #[error("room {room} does not exist and you may not create rooms")]
    NotAllowedToCreate {
        /// The room.
        room: RoomId,
    },
    /// The shared directory of a cluster could not be reached in time; the
    /// join was not carried out.
    #[error("the cluster directory cannot be reached; try again")]
    Unavailable,
}

/// A room mode as outsiders see it (admin API, webhooks): `pair` or
/// `mesh` (a join with mode 0 makes a pair room).
pub fn mode_name(mode: RoomMode) -> &'static str {
    match mode {
        RoomMode::Mesh => "mesh",
        _ => "pair",
    }
}

/// One room: its mode, capacity and members in join order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Room {
    mode: RoomMode,
    capacity: u32,
    members: Vec<Member>,
}

impl Room {
    /// The members in join order.
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Whether `peer` is a member.
    pub fn contains(&self, peer: PeerId) -> bool {
        self.members.iter().any(|m| m.peer_id == peer)
    }

    /// The room's mode.
    pub fn mode(&self) -> RoomMode {
        self.mode
    }

    /// The room's capacity.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }
}

/// What a successful join produces.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinOutcome {
    /// The answer for the joiner.
    pub joined: Joined,
    /// `PeerJoined` for the other members.
    pub notice: Option<Notice>,
}

/// A set of rooms (one shard of the routing table, or all of them).
#[derive(Clone, Debug, Default)]
pub struct Rooms {
    rooms: foldhash::HashMap<RoomId, Room>,
}

impl Rooms {
    /// No rooms.
    pub fn new() -> Rooms {
        Rooms::default()
    }

    /// The room called `id`, if it has members.
    pub fn get(&self, id: &RoomId) -> Option<&Room> {
        self.rooms.get(id)
    }

    /// Number of rooms with members.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether there is no room.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Every room, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&RoomId, &Room)> {
        self.rooms.iter()
    }

    /// Sets `room` as another node reported it (a cluster node's copy of the
    /// rooms its peers are in): its mode, capacity and every member in join
    /// order. No rule is checked: the shared directory decided.
    pub fn mirror(&mut self, room: &RoomId, mode: RoomMode, capacity: u32, members: Vec<Member>) {
        self.rooms.insert(
            room.clone(),
            Room {
                mode,
                capacity,
                members,
            },
        );
    }

    /// Removes every member of `room` at once (an operator closed it);
    /// returns them, or `None` if there is no such room. No one is left to
    /// be told: each member is told by the caller.
    pub fn close(&mut self, room: &RoomId) -> Option<Vec<PeerId>> {
        let room = self.rooms.remove(room)?;
        Some(room.members.into_iter().map(|m| m.peer_id).collect())
    }

    /// Pair rooms, mesh rooms and members, counted.
    pub fn census(&self) -> (u64, u64, u64) {
        self.rooms
            .values()
            .fold((0, 0, 0), |(pair, mesh, members), r| {
                let n = r.members().len() as u64;
                match r.mode() {
                    RoomMode::Mesh => (pair, mesh + 1, members + n),
                    _ => (pair + 1, mesh, members + n),
                }
            })
    }

    /// Whether `a` and `b` are both members of `room`.
    pub fn shares(&self, room: &RoomId, a: PeerId, b: PeerId) -> bool {
        self.rooms
            .get(room)
            .is_some_and(|r| r.contains(a) && r.contains(b))
    }

    /// Adds `member` to `room`, creating it if needed.
    ///
    /// Pair rooms hold two; the later joiner is the initiator. Mesh rooms hold
    /// `capacity` (asked by the creator, else the policy default).
    pub fn join(
        &mut self,
        room: &RoomId,
        mode: RoomMode,
        asked_capacity: Option<u32>,
        member: Member,
        policy: RoomPolicy,
    ) -> Result<JoinOutcome, JoinError> {
        self.join_or_create(room, mode, asked_capacity, member, policy, true)
    }

    /// [`Rooms::join`], creating the room only if `may_create`; otherwise
    /// a room that does not exist yet is [`JoinError::NotAllowedToCreate`].
    /// Deciding here, under the caller's lock, leaves no window between
    /// "does it exist" and "join it".
    pub fn join_or_create(
        &mut self,
        room: &RoomId,
        mode: RoomMode,
        asked_capacity: Option<u32>,
        member: Member,
        policy: RoomPolicy,
        may_create: bool,
    ) -> Result<JoinOutcome, JoinError> {
        if !may_create && !self.rooms.contains_key(room) {
            return Err(JoinError::NotAllowedToCreate { room: room.clone() });
        }
        let capacity = match mode {
            RoomMode::Mesh => match asked_capacity {
                None => policy.default_capacity,
                Some(c) if (2..=policy.max_capacity).contains(&c) => c,
                Some(asked) => {
                    return Err(JoinError::BadCapacity {
                        asked,
                        max: policy.max_capacity,
                    })
                }
            },
            _ => 2,
        };
        let mode = if mode == RoomMode::Mesh {
            RoomMode::Mesh
        } else {
            RoomMode::Pair
        };
        let entry = self.rooms.entry(room.clone()).or_insert_with(|| Room {
            mode,
            capacity,
            // Pair rooms hold exactly two; mesh rooms grow as members come.
            members: Vec::with_capacity(capacity.min(4) as usize),
        });
        if entry.mode != mode {
            return Err(JoinError::ModeMismatch {
                room: room.clone(),
                existing: entry.mode,
            });
        }
        if entry.contains(member.peer_id) {
            return Err(JoinError::AlreadyMember { room: room.clone() });
        }
        if entry.members.len() >= entry.capacity as usize {
            return Err(JoinError::Full {
                room: room.clone(),
                capacity: entry.capacity,
            });
        }
        let others: Vec<PeerId> = entry.members.iter().map(|m| m.peer_id).collect();
        let joined = Joined {
            room: room.clone(),
            mode,
            capacity: entry.capacity,
            members: entry.members.clone(),
            initiator: mode == RoomMode::Pair && !others.is_empty(),
        };
        let notice = (!others.is_empty()).then(|| Notice {
            to: others,
            message: Message::PeerJoined(PeerJoined {
                room: room.clone(),
                member: member.clone(),
                initiator: false,
            }),
        });
        entry.members.push(member);
        Ok(JoinOutcome { joined, notice })
    }

    /// Sets the user name `peer` is listed with in `room` (`None` after a
    /// logout), so member lists always show the current name; false if
    /// `peer` is not a member.
    pub fn set_user(&mut self, room: &RoomId, peer: PeerId, user: Option<UserName>) -> bool {
        let Some(member) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.members.iter_mut().find(|m| m.peer_id == peer))
        else {
            return false;
        };
        member.user = user;
        true
    }

    /// Removes `peer` from `room`; returns the `PeerLeft` notice for the
    /// remaining members, or `None` if `peer` was not a member. An empty room
    /// is forgotten.
    pub fn leave(&mut self, room: &RoomId, peer: PeerId, reason: LeaveReason) -> Option<Notice> {
        let entry = self.rooms.get_mut(room)?;
        let index = entry.members.iter().position(|m| m.peer_id == peer)?;
        entry.members.remove(index);
        if entry.members.is_empty() {
            self.rooms.remove(room);
            return Some(Notice {
                to: Vec::new(),
                message: peer_left(room, peer, reason),
            });
        }
        Some(Notice {
            to: entry.members.iter().map(|m| m.peer_id).collect(),
            message: peer_left(room, peer, reason),
        })
    }
}

fn peer_left(room: &RoomId, peer: PeerId, reason: LeaveReason) -> Message {
    Message::PeerLeft(PeerLeft {
        room: room.clone(),
        peer_id: peer,
        reason,
    })
}

/// Most call partners one name has at once; past it the oldest call is
/// forgotten (so cold callers cannot make a user unreachable).
pub const MAX_CALLS: usize = 64;

/// Logged-in user names, unique within the set, and the named calls each
/// is in.
///
/// A call between two names begins with the first offer or answer one
/// sends the other by name, and ends with a hang-up by either, or when
/// either logs out or disconnects (the other is then sent `HangUp`). Only a
/// partner in a call may hang it up.
#[derive(Clone, Debug, Default)]
pub struct Names {
    names: foldhash::HashMap<UserName, NameEntry>,
}

#[derive(Clone, Debug)]
struct NameEntry {
    peer: PeerId,
    /// Names this one is in a call with, oldest first.
    calls: Vec<UserName>,
}

/// Why a login was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// Another peer holds the name.
    #[error("name is taken")]
    Taken,
    /// The shared directory of a cluster could not be reached in time.
    #[error("the cluster directory cannot be reached; try again")]
    Unavailable,
}

impl Names {
    /// Claims `name` for `peer`.
    pub fn login(&mut self, name: &UserName, peer: PeerId) -> Result<(), LoginError> {
        match self.names.get(name) {
            Some(holder) if holder.peer != peer => Err(LoginError::Taken),
            Some(_) => Ok(()),
            None => {
                self.names.insert(
                    name.clone(),
                    NameEntry {
                        peer,
                        calls: Vec::new(),
                    },
                );
                Ok(())
            }
        }
    }

    /// Frees `name` if `peer` holds it.
    pub fn logout(&mut self, name: &UserName, peer: PeerId) -> bool {
        self.take(name, peer).is_some()
    }

    /// Frees `name` if `peer` holds it and returns the names it was in a
    /// call with (each must be told and must forget it).
    pub fn take(&mut self, name: &UserName, peer: PeerId) -> Option<Vec<UserName>> {
        if self.lookup(name) != Some(peer) {
            return None;
        }
        self.names.remove(name).map(|e| e.calls)
    }

    /// Every logged-in name and its peer, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&UserName, PeerId)> {
        self.names.iter().map(|(n, e)| (n, e.peer))
    }

    /// The peer holding `name`.
    pub fn lookup(&self, name: &UserName) -> Option<PeerId> {
        self.names.get(name).map(|e| e.peer)
    }

    /// Records, on `name`'s side only, that it is in a call with `other`
    /// (the caller records both sides, each in the shard holding it);
    /// false if `peer` does not hold `name`.
    pub fn add_call(&mut self, name: &UserName, peer: PeerId, other: &UserName) -> bool {
        let Some(entry) = self.names.get_mut(name).filter(|e| e.peer == peer) else {
            return false;
        };
        if !entry.calls.contains(other) {
            if entry.calls.len() >= MAX_CALLS {
                entry.calls.remove(0);
            }
            entry.calls.push(other.clone());
        }
        true
    }

    /// Forgets, on `name`'s side, its call with `other`; false if there was
    /// none.
    pub fn end_call(&mut self, name: &UserName, other: &UserName) -> bool {
        let Some(entry) = self.names.get_mut(name) else {
            return false;
        };
        let before = entry.calls.len();
        entry.calls.retain(|c| c != other);
        entry.calls.len() != before
    }

    /// Whether `name` is in a call with `other`.
    pub fn in_call(&self, name: &UserName, other: &UserName) -> bool {
        self.names
            .get(name)
            .is_some_and(|e| e.calls.contains(other))
    }

    /// Number of names held.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no name is held.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Capabilities;

    const POLICY: RoomPolicy = RoomPolicy {
        default_capacity: 4,
        max_capacity: 8,
    };

    fn m(id: u64) -> Member {
        Member {
            peer_id: PeerId(id),
            display_name: format!("p{id}"),
            user: None,
            capabilities: Capabilities::empty(),
        }
    }

    fn r(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    #[test]
    fn pair_room_later_joiner_initiates_and_third_is_refused() {
        let mut rooms = Rooms::new();
        let a = rooms
            .join(&r("1001"), RoomMode::Pair, None, m(1), POLICY)
            .unwrap();
        assert!(!a.joined.initiator);
        assert!(a.joined.members.is_empty());
        assert!(a.notice.is_none());
        let b = rooms
            .join(&r("1001"), RoomMode::Pair, None, m(2), POLICY)
            .unwrap();
        assert!(b.joined.initiator);
        assert_eq!(b.joined.members, vec![m(1)]);
        let notice = b.notice.unwrap();
        assert_eq!(notice.to, vec![PeerId(1)]);
        assert!(matches!(notice.message, Message::PeerJoined(ref p) if p.member == m(2)));
        assert_eq!(
            rooms.join(&r("1001"), RoomMode::Pair, None, m(3), POLICY),
            Err(JoinError::Full {
                room: r("1001"),
                capacity: 2
            })
        );
    }

    #[test]
    fn mesh_room_lists_members_and_honours_capacity() {
        let mut rooms = Rooms::new();
        for id in 1..=3 {
            rooms
                .join(&r("m"), RoomMode::Mesh, Some(3), m(id), POLICY)
                .unwrap();
        }
        assert_eq!(
            rooms.get(&r("m")).unwrap().members().len(),
            3,
            "capacity 3 reached"
        );
        assert!(matches!(
            rooms.join(&r("m"), RoomMode::Mesh, None, m(4), POLICY),
            Err(JoinError::Full { capacity: 3, .. })
        ));
        assert!(matches!(
            rooms.join(&r("n"), RoomMode::Mesh, Some(9), m(4), POLICY),
            Err(JoinError::BadCapacity { asked: 9, max: 8 })
        ));
        assert!(matches!(
            rooms.join(&r("m"), RoomMode::Pair, None, m(4), POLICY),
            Err(JoinError::ModeMismatch { .. })
        ));
    }

    #[test]
    fn leave_tells_the_rest_and_forgets_empty_rooms() {
        let mut rooms = Rooms::new();
        rooms
            .join(&r("x"), RoomMode::Mesh, None, m(1), POLICY)
            .unwrap();
        rooms
            .join(&r("x"), RoomMode::Mesh, None, m(2), POLICY)
            .unwrap();
        let n = rooms.leave(&r("x"), PeerId(1), LeaveReason::Left).unwrap();
        assert_eq!(n.to, vec![PeerId(2)]);
        assert!(rooms.leave(&r("x"), PeerId(1), LeaveReason::Left).is_none());
        let n = rooms
            .leave(&r("x"), PeerId(2), LeaveReason::Disconnected)
            .unwrap();
        assert!(n.to.is_empty());
        assert!(rooms.is_empty());
    }

    #[test]
    fn only_creators_create_rooms_but_anyone_may_join_existing_ones() {
        let mut rooms = Rooms::new();
        assert_eq!(
            rooms.join_or_create(&r("c"), RoomMode::Mesh, None, m(1), POLICY, false),
            Err(JoinError::NotAllowedToCreate { room: r("c") })
        );
        assert!(
            rooms.is_empty(),
            "a refused join leaves no empty room behind"
        );
        rooms
            .join_or_create(&r("c"), RoomMode::Mesh, None, m(1), POLICY, true)
            .unwrap();
        let joined = rooms
            .join_or_create(&r("c"), RoomMode::Mesh, None, m(2), POLICY, false)
            .unwrap();
        assert_eq!(joined.joined.members, vec![m(1)]);
        // Once the last member leaves, the room is gone and must be created
        // again.
        rooms.leave(&r("c"), PeerId(1), LeaveReason::Left);
        rooms.leave(&r("c"), PeerId(2), LeaveReason::Left);
        assert!(matches!(
            rooms.join_or_create(&r("c"), RoomMode::Mesh, None, m(3), POLICY, false),
            Err(JoinError::NotAllowedToCreate { .. })
        ));
    }

    #[test]
    fn names_are_unique_until_freed() {
        let mut names = Names::default();
        let alice = UserName::new("alice").unwrap();
        names.login(&alice, PeerId(1)).unwrap();
        assert_eq!(names.login(&alice, PeerId(2)), Err(LoginError::Taken));
        assert!(!names.logout(&alice, PeerId(2)));
        assert!(names.logout(&alice, PeerId(1)));
        names.login(&alice, PeerId(2)).unwrap();
        assert_eq!(names.lookup(&alice), Some(PeerId(2)));
    }

    #[test]
    fn calls_last_until_hung_up_or_logged_out_and_are_bounded() {
        let mut names = Names::default();
        let n = |s: &str| UserName::new(s).unwrap();
        names.login(&n("alice"), PeerId(1)).unwrap();
        names.login(&n("bob"), PeerId(2)).unwrap();
        assert!(
            !names.add_call(&n("alice"), PeerId(9), &n("bob")),
            "not alice's peer"
        );
        assert!(names.add_call(&n("alice"), PeerId(1), &n("bob")));
        assert!(names.add_call(&n("bob"), PeerId(2), &n("alice")));
        assert!(names.in_call(&n("alice"), &n("bob")));
        assert!(names.end_call(&n("alice"), &n("bob")));
        assert!(!names.in_call(&n("alice"), &n("bob")));
        // Logging out hands back the calls to end; the name comes back clean.
        assert_eq!(names.take(&n("bob"), PeerId(2)), Some(vec![n("alice")]));
        names.login(&n("bob"), PeerId(3)).unwrap();
        assert!(!names.in_call(&n("bob"), &n("alice")));
        // Past MAX_CALLS the oldest call is forgotten.
        for i in 0..=MAX_CALLS {
            assert!(names.add_call(&n("alice"), PeerId(1), &n(&format!("c{i}"))));
        }
        assert!(!names.in_call(&n("alice"), &n("c0")));
        assert!(names.in_call(&n("alice"), &n(&format!("c{MAX_CALLS}"))));
    }

    #[test]
    fn member_lists_follow_logins_and_logouts() {
        let mut rooms = Rooms::new();
        rooms
            .join(&r("x"), RoomMode::Mesh, None, m(1), POLICY)
            .unwrap();
        let carol = UserName::new("carol").unwrap();
        assert!(rooms.set_user(&r("x"), PeerId(1), Some(carol.clone())));
        let joined = rooms
            .join(&r("x"), RoomMode::Mesh, None, m(2), POLICY)
            .unwrap();
        assert_eq!(joined.joined.members[0].user, Some(carol));
        assert!(rooms.set_user(&r("x"), PeerId(1), None));
        let joined = rooms
            .join(&r("x"), RoomMode::Mesh, None, m(3), POLICY)
            .unwrap();
        assert_eq!(joined.joined.members[0].user, None);
        assert!(!rooms.set_user(&r("x"), PeerId(7), None), "not a member");
    }
}
