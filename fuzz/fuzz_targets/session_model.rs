//! A model-checking harness for the session core.
//!
//! Bytes are read as a sequence of client inputs (join, leave, login,
//! logout, offers by peer id and by name, hang-ups, ping floods, the time
//! moving on, disconnects and reconnects) for a handful of client slots.
//! Each input goes to a real `switchboard::session::Session` over a
//! `LocalDirectory`, with the time passed in; after every step every
//! client's outbox is read, and what the clients saw must keep the
//! invariants of ARCHITECTURE.md:
//!
//! - no offer reaches a peer that shares no room with its sender (by id) or
//!   is not logged in (by name);
//! - no `Joined` lists more members than the room's capacity allows;
//! - a name is held by at most one client at a time;
//! - every departure from a room is announced exactly once to each member
//!   that knew of the leaver, and never names a stranger;
//! - every offer is delivered or answered with an `Error` naming it.
//!
//! Shared by the `session` fuzz target and `tests/session_model.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use switchboard::config::Config;
use switchboard::directory::{Directory, LocalDirectory};
use switchboard::outbox::{Outbox, OutboxLimits};
use switchboard::protocol::{
    decode_message, encode, Address, Capabilities, CodecLimits, ErrorCode, Join, Message, PeerId,
    RoomId, RoomMode, Sdp, SessionDescription, UserName,
};
use switchboard::rate::RateGuard;
use switchboard::registry::Registry;
use switchboard::rooms::RoomPolicy;
use switchboard::session::{Context, Session};

const SLOTS: usize = 4;
const ROOMS: u8 = 3;
const NAMES: u8 = 3;

struct Client {
    id: PeerId,
    session: Session<LocalDirectory>,
    outbox: Arc<Outbox>,
    seq: u32,
    /// Rooms it was told it is in, and the members it knows in each.
    rooms: BTreeMap<RoomId, BTreeSet<PeerId>>,
    /// The name its last successful login gave it.
    name: Option<UserName>,
}

/// The harness: clients, the time, and what they have been told.
pub struct Harness {
    ctx: Arc<Context<LocalDirectory>>,
    clients: Vec<Option<Client>>,
    next_id: u64,
    now: Instant,
    /// Offers neither delivered nor answered yet: dropped past the reply
    /// budget, they must be covered by a later `RATE_LIMITED`.
    unreported: Vec<(PeerId, u32)>,
}

fn room(n: u8) -> RoomId {
    RoomId::new(&format!("r{}", n % ROOMS)).unwrap()
}

fn name(n: u8) -> UserName {
    UserName::new(&format!("u{}", n % NAMES)).unwrap()
}

impl Default for Harness {
    fn default() -> Harness {
        Harness::new()
    }
}

impl Harness {
    pub fn new() -> Harness {
        let config = Config {
            rate_per_second: 50,
            rate_burst: 50,
            rate_abuse_threshold: 100,
            default_room_capacity: 3,
            max_room_capacity: 4,
            max_rooms_per_peer: 2,
            ..Config::default()
        };
        let directory = Arc::new(LocalDirectory::new(
            Arc::new(Registry::new(4)),
            4,
            RoomPolicy {
                default_capacity: config.default_room_capacity,
                max_capacity: config.max_room_capacity,
            },
        ));
        let ctx = Arc::new(Context {
            codec: config.codec_limits(),
            config,
            directory,
            metrics: None,
        });
        let mut h = Harness {
            ctx,
            clients: (0..SLOTS).map(|_| None).collect(),
            next_id: 1,
            now: Instant::now(),
            unreported: Vec::new(),
        };
        for slot in 0..SLOTS {
            h.connect(slot);
        }
        h
    }

    fn connect(&mut self, slot: usize) {
        let id = PeerId(self.next_id);
        self.next_id += 1;
        let outbox = Arc::new(Outbox::new(OutboxLimits {
            frames: 256,
            bytes: 1 << 20,
        }));
        self.ctx
            .directory
            .registry()
            .register(id, Capabilities::empty(), outbox.clone());
        let session = Session::new(
            self.ctx.clone(),
            id,
            Capabilities::empty(),
            outbox.clone(),
            None,
            RateGuard::new(self.ctx.config.rate_policy(), self.now),
            self.now,
            SystemTime::now(),
        );
        self.clients[slot] = Some(Client {
            id,
            session,
            outbox,
            seq: 1,
            rooms: BTreeMap::new(),
            name: None,
        });
    }

    /// Runs every 4-byte action of `data`, checking after each.
    pub fn run(data: &[u8]) {
        let mut h = Harness::new();
        for action in data.chunks_exact(4).take(256) {
            h.step(action[0], action[1] as usize % SLOTS, action[2], action[3]);
        }
        // Drop reports are due within a second.
        h.now += Duration::from_secs(2);
        let now = h.now;
        for c in h.clients.iter_mut().flatten() {
            let _ = c.session.on_timer(now);
        }
        h.check_deliveries(&[]);
        assert!(
            h.unreported.is_empty(),
            "offers dropped and never reported: {:?}",
            h.unreported
        );
        // Everyone leaves at the end: the departures must add up too.
        for slot in 0..SLOTS {
            h.disconnect(slot);
            h.check_deliveries(&[]);
        }
    }

    fn step(&mut self, op: u8, slot: usize, arg: u8, extra: u8) {
        // One token's worth of time per step: a client's single message
        // is never rate-limited, only its floods are, so the model knows
        // which logins and logouts took effect.
        self.now += Duration::from_millis(1000 / 50);
        if self.clients[slot].is_none() {
            self.connect(slot);
            return;
        }
        let mut sent: Vec<(usize, u32, Option<PeerId>)> = Vec::new();
        match op % 10 {
            0 => {
                let capacity = match extra >> 1 {
                    0 => None,
                    c => Some(u32::from(c % 4) + 1),
                };
                let mode = if extra & 1 == 1 {
                    RoomMode::Pair
                } else {
                    RoomMode::Mesh
                };
                self.send(
                    slot,
                    Message::Join(Join {
                        room: room(arg),
                        mode,
                        capacity,
                        display_name: String::new(),
                    }),
                );
            }
            1 => {
                self.send(slot, Message::Leave { room: room(arg) });
            }
            2 => {
                self.send(slot, Message::Login { name: name(arg) });
            }
            3 => {
                self.send(slot, Message::Logout);
                self.client(slot).name = None;
            }
            4 | 5 => {
                let (to, target) = if op % 10 == 4 {
                    let target = self.clients[arg as usize % SLOTS].as_ref().map(|c| c.id);
                    (Address::Peer(target.unwrap_or(PeerId(0))), target)
                } else {
                    (Address::User(name(arg)), None)
                };
                let seq = self.send(
                    slot,
                    Message::Offer(SessionDescription {
                        peer: to,
                        sdp: Sdp::Plain(Bytes::from_static(b"v=0")),
                        room: None,
                        app_data: String::new(),
                    }),
                );
                sent.push((slot, seq, target));
            }
            6 => {
                self.send(
                    slot,
                    Message::HangUp {
                        peer: Address::User(name(arg)),
                    },
                );
            }
            7 => {
                self.now += Duration::from_millis(u64::from(extra) * 100);
                let now = self.now;
                for c in self.clients.iter_mut().flatten() {
                    // A close here is the heartbeat's: the fuzzer's
                    // clients never answer pings.
                    if c.session.on_timer(now).is_some() {
                        c.outbox.close(switchboard::outbox::CloseReason::Shutdown);
                    }
                }
            }
            8 => self.disconnect(slot),
            _ => {
                for n in 0..extra {
                    self.send(slot, Message::Ping { nonce: n.into() });
                }
            }
        }
        self.check_deliveries(&sent);
    }

    fn client(&mut self, slot: usize) -> &mut Client {
        self.clients[slot].as_mut().unwrap()
    }

    /// Sends one message; returns its seq. A close ends the client.
    fn send(&mut self, slot: usize, message: Message) -> u32 {
        let now = self.now;
        let c = self.client(slot);
        c.seq += 1;
        let mut out = BytesMut::new();
        encode(&message).write(c.seq, &mut out);
        let close = c
            .session
            .receive(now, out.freeze(), 64)
            .now_or_never()
            .expect("the local directory never suspends");
        if close.is_some() {
            // Ended by its own input (rate abuse): torn down below.
            c.outbox.close(switchboard::outbox::CloseReason::Shutdown);
        }
        c.seq
    }

    fn disconnect(&mut self, slot: usize) {
        if let Some(mut c) = self.clients[slot].take() {
            c.session.teardown().now_or_never().unwrap();
            // Nothing more can be reported to a client that is gone.
            self.unreported.retain(|&(p, _)| p != c.id);
        }
    }

    /// Clients whose session ended (closed by an input or the timer, or cut
    /// off as slow) are torn down, as the connection task would.
    fn drop_closed(&mut self) {
        for slot in 0..SLOTS {
            let gone = self.clients[slot]
                .as_ref()
                .is_some_and(|c| c.outbox.closed().is_some());
            if gone {
                self.disconnect(slot);
            }
        }
    }

    /// Reads every client's outbox and checks what it says.
    fn read_all(
        &mut self,
        named: &BTreeMap<PeerId, Option<UserName>>,
        offers_from: &mut Vec<(PeerId, PeerId)>,
        errors_for: &mut Vec<(PeerId, u32)>,
    ) {
        for slot in 0..SLOTS {
            let Some(c) = self.clients[slot].as_mut() else {
                continue;
            };
            let mut frames = Vec::new();
            c.outbox.drain(&mut frames, usize::MAX, usize::MAX);
            for f in frames {
                let mut out = BytesMut::new();
                f.write(1, &mut out);
                let limits = CodecLimits::default();
                let (_, m) = decode_message(out.freeze(), &limits)
                    .next()
                    .unwrap()
                    .unwrap();
                match m {
                    Message::Joined(j) => {
                        assert!(
                            (j.members.len() as u32) < j.capacity,
                            "Joined lists {} members of a room of {}",
                            j.members.len(),
                            j.capacity
                        );
                        let members = j.members.iter().map(|m| m.peer_id).collect();
                        c.rooms.insert(j.room, members);
                    }
                    Message::Left { room } => {
                        c.rooms.remove(&room);
                    }
                    Message::PeerJoined(p) => {
                        let known = c
                            .rooms
                            .get_mut(&p.room)
                            .expect("PeerJoined for a room we are not in");
                        assert!(known.insert(p.member.peer_id), "joined twice");
                    }
                    Message::PeerLeft(p) => {
                        let known = c
                            .rooms
                            .get_mut(&p.room)
                            .expect("PeerLeft for a room we are not in");
                        assert!(
                            known.remove(&p.peer_id),
                            "PeerLeft for {} in {}: not a member we knew, or announced twice",
                            p.peer_id,
                            p.room
                        );
                    }
                    Message::LoginResult(r) if r.error.is_none() => {
                        c.name = Some(r.name.clone());
                    }
                    Message::Offer(o) => {
                        let from = match o.peer {
                            Address::Peer(p) => p,
                            Address::User(n) => named
                                .iter()
                                .find(|(_, held)| held.as_ref() == Some(&n))
                                .map(|(p, _)| *p)
                                .expect("an offer by name from nobody holding it"),
                        };
                        offers_from.push((c.id, from));
                    }
                    Message::Error(e) => {
                        if e.code == ErrorCode::RateLimited {
                            // Covers every unanswered frame up to its seq.
                            let me = c.id;
                            self.unreported
                                .retain(|&(p, s)| !(p == me && s <= e.request_seq));
                        }
                        errors_for.push((c.id, e.request_seq));
                    }
                    _ => {}
                }
            }
        }
    }

    /// Reads every client's outbox and checks what was delivered.
    fn check_deliveries(&mut self, sent: &[(usize, u32, Option<PeerId>)]) {
        // The senders, before their clients may be torn down below.
        let senders: Vec<Option<PeerId>> = sent
            .iter()
            .map(|&(slot, _, _)| self.clients[slot].as_ref().map(|c| c.id))
            .collect();
        // Snapshot of who is where before this step's messages are read.
        let rooms_of: BTreeMap<PeerId, BTreeSet<RoomId>> = self
            .clients
            .iter()
            .flatten()
            .map(|c| (c.id, c.rooms.keys().cloned().collect()))
            .collect();
        let named: BTreeMap<PeerId, Option<UserName>> = self
            .clients
            .iter()
            .flatten()
            .map(|c| (c.id, c.name.clone()))
            .collect();
        let mut offers_from: Vec<(PeerId, PeerId)> = Vec::new(); // (receiver, sender)
        let mut errors_for: Vec<(PeerId, u32)> = Vec::new();
        // What everyone was sent (the ones whose session ended included),
        // then the ends, then what the others were told of them.
        self.read_all(&named, &mut offers_from, &mut errors_for);
        self.drop_closed();
        self.read_all(&named, &mut offers_from, &mut errors_for);
        // Names: one holder each.
        let mut held = BTreeSet::new();
        for c in self.clients.iter().flatten() {
            if let Some(n) = &c.name {
                assert!(held.insert(n.clone()), "name {n} held twice");
            }
        }
        // Every offer: delivered (within a shared room, or by name) or
        // answered with an Error that names it.
        for (&(_, seq, target), sender) in sent.iter().zip(senders) {
            let Some(sender) = sender else { continue };
            let delivered: Vec<PeerId> = offers_from
                .iter()
                .filter(|(_, from)| *from == sender)
                .map(|(to, _)| *to)
                .collect();
            let answered = errors_for.iter().any(|&(to, s)| to == sender && s == seq);
            let closed = !self.clients.iter().flatten().any(|c| c.id == sender);
            if delivered.is_empty() && !answered && !closed {
                // Dropped past the reply budget: a report must follow.
                self.unreported.push((sender, seq));
            }
            for to in delivered {
                if let Some(target) = target {
                    assert_eq!(to, target, "offer delivered to someone else");
                    let shared = rooms_of
                        .get(&sender)
                        .zip(rooms_of.get(&to))
                        .is_some_and(|(a, b)| a.intersection(b).next().is_some());
                    assert!(shared, "offer from {sender} to {to} across rooms");
                }
            }
        }
        // Views agree: every member a client knows in a room is a client
        // that is itself in that room (departures were all announced).
        let current: BTreeMap<PeerId, BTreeSet<RoomId>> = self
            .clients
            .iter()
            .flatten()
            .map(|c| (c.id, c.rooms.keys().cloned().collect()))
            .collect();
        for c in self.clients.iter().flatten() {
            for (room, known) in &c.rooms {
                for member in known {
                    assert!(
                        current.get(member).is_some_and(|r| r.contains(room)),
                        "{} still lists {member} in {room}: a departure was not announced",
                        c.id
                    );
                }
            }
        }
    }
}
