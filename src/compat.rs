//! The tutorials' JSON dialects (`/compat/mesh`, `/compat/pair`,
//! `/compat/users`), translated to and from the protocol's messages, sans IO.
//!
//! A compat connection is an ordinary session: what its client sends is
//! translated into [`Message`]s and handled by the session like any
//! client's, and what the session sends it is translated back. So every
//! rule, limit and protection is the protocol's, and compat clients share
//! rooms and names with SDK clients. What a dialect cannot say is listed in
//! PROTOCOL.md ("Coming from the tutorials").

use bytes::Bytes;
use serde_json::{json, Map, Value};
use switchboard_protocol::{
    Address, IceCandidate, IceCandidates, Join, Message, PeerId, RoomId, RoomMode, Sdp,
    SessionDescription, UserName,
};

/// Which tutorial's server a compat endpoint stands in for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// Seed 000: mesh rooms, signals directed by `peerId`.
    Mesh,
    /// Seed 001: 1:1 rooms, signals relayed to the other member.
    Pair,
    /// Seed 002: named users who call each other by name.
    Users,
}

impl Dialect {
    /// The dialect served at an HTTP path, if any.
    pub fn at_path(path: &str) -> Option<Dialect> {
        match path {
            "/compat/mesh" => Some(Dialect::Mesh),
            "/compat/pair" => Some(Dialect::Pair),
            "/compat/users" => Some(Dialect::Users),
            _ => None,
        }
    }
}

/// What one client message turns into.
#[derive(Debug, Default, PartialEq)]
pub struct Inbound {
    /// Messages for the session, in order.
    pub messages: Vec<Message>,
    /// Answers in the dialect that need no session (the dialect's own
    /// errors).
    pub replies: Vec<String>,
}

/// What the server sends a compat client.
#[derive(Debug, PartialEq, Eq)]
pub enum Outbound {
    /// A JSON text message.
    Text(String),
    /// A WebSocket ping (these clients send no Ping frames: the heartbeat
    /// is the browser's automatic pong).
    Ping(Bytes),
}

/// One compat connection's translation state.
#[derive(Debug)]
pub struct Translator {
    dialect: Dialect,
    /// Pair: the room joined, and the other member when there is one.
    room: Option<RoomId>,
    other: Option<PeerId>,
    /// Pair: a `leave` was sent, so the `Left` that answers it is shown.
    leaving: bool,
}

fn text(v: &Value) -> Outbound {
    Outbound::Text(v.to_string())
}

fn error(message: &str) -> String {
    json!({"type": "error", "message": message}).to_string()
}

/// An RTCSessionDescriptionInit, or the bare SDP string some pages send.
fn sdp_of(v: Option<&Value>) -> Option<Sdp> {
    let sdp = match v? {
        Value::String(s) => s.as_str(),
        Value::Object(o) => o.get("sdp")?.as_str()?,
        _ => return None,
    };
    Some(Sdp::Plain(Bytes::copy_from_slice(sdp.as_bytes())))
}

/// An RTCIceCandidateInit.
fn candidate_of(v: &Value) -> Option<IceCandidate> {
    let o = v.as_object()?;
    Some(IceCandidate {
        candidate: o.get("candidate")?.as_str()?.to_owned(),
        sdp_mid: o.get("sdpMid").and_then(Value::as_str).map(str::to_owned),
        sdp_m_line_index: o
            .get("sdpMLineIndex")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        username_fragment: o
            .get("usernameFragment")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

fn candidate_json(c: &IceCandidate) -> Value {
    let mut o = Map::new();
    o.insert("candidate".into(), c.candidate.clone().into());
    if let Some(mid) = &c.sdp_mid {
        o.insert("sdpMid".into(), mid.clone().into());
    }
    if let Some(i) = c.sdp_m_line_index {
        o.insert("sdpMLineIndex".into(), i.into());
    }
    if let Some(u) = &c.username_fragment {
        o.insert("usernameFragment".into(), u.clone().into());
    }
    Value::Object(o)
}

/// A batch as the dialects deliver it: one `{type, [peerId,] candidate}`
/// message per candidate (they have no batch and no end-of-candidates).
fn per_candidate(
    kind: &str,
    peer_id: Option<String>,
    ice: &IceCandidates,
    app_data: &str,
) -> Vec<Outbound> {
    ice.candidates
        .iter()
        .map(|c| {
            let mut o = Map::new();
            o.insert("type".into(), kind.into());
            if let Some(id) = &peer_id {
                o.insert("peerId".into(), id.clone().into());
            }
            o.insert("candidate".into(), candidate_json(c));
            text(&with_app_data(Value::Object(o), app_data))
        })
        .collect()
}

fn description_json(kind: &str, sdp: &Sdp) -> Value {
    let text = match sdp {
        Sdp::Plain(b) => String::from_utf8_lossy(b).into_owned(),
        // Never sent to a compat client: it claims no compression.
        Sdp::Deflated(_) => String::new(),
    };
    json!({"type": kind, "sdp": text})
}

/// Seed 001 turns a JSON value into a room id with
/// `String(v || "").trim()`: falsy values (0, "", null, false, absent) are
/// no room id, a number is its decimal form.
fn loose_string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.trim().to_owned(),
        Some(Value::Number(n)) if n.as_f64() != Some(0.0) => n.to_string(),
        _ => String::new(),
    }
}

fn peer_of(v: Option<&Value>) -> Option<PeerId> {
    match v? {
        Value::String(s) => s.parse().ok().map(PeerId),
        Value::Number(n) => n.as_u64().map(PeerId),
        _ => None,
    }
}

/// Seed 000's optional message fields, relayed as they were sent: they
/// travel as a JSON object in the signal's `app_data`, which SDK clients
/// see (and may set) too.
const PASSED_THROUGH: [&str; 2] = ["seq", "timestamp"];

fn app_data_of(v: &Value) -> String {
    let o: Map<String, Value> = PASSED_THROUGH
        .iter()
        .filter_map(|&k| Some((k.to_owned(), v.get(k)?.clone())))
        .collect();
    if o.is_empty() {
        String::new()
    } else {
        Value::Object(o).to_string()
    }
}

/// `o` with the passed-through fields found in `app_data` (a JSON object;
/// anything else carries none).
fn with_app_data(mut o: Value, app_data: &str) -> Value {
    if app_data.is_empty() {
        return o;
    }
    if let Ok(Value::Object(extra)) = serde_json::from_str::<Value>(app_data) {
        for k in PASSED_THROUGH {
            if let Some(x) = extra.get(k) {
                o[k] = x.clone();
            }
        }
    }
    o
}

fn offer_or_answer(offer: bool, to: Address, sdp: Sdp, app_data: String) -> Message {
    let d = SessionDescription {
        peer: to,
        sdp,
        room: None,
        app_data,
    };
    if offer {
        Message::Offer(d)
    } else {
        Message::Answer(d)
    }
}

fn ice(to: Address, candidates: Vec<IceCandidate>, app_data: String) -> Message {
    Message::Ice(IceCandidates {
        peer: to,
        candidates,
        end_of_candidates: false,
        room: None,
        app_data,
    })
}

impl Translator {
    /// A fresh connection's state.
    pub fn new(dialect: Dialect) -> Translator {
        Translator {
            dialect,
            room: None,
            other: None,
            leaving: false,
        }
    }

    /// Translates one text message from the client.
    pub fn inbound(&mut self, text: &str) -> Inbound {
        let v: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let one = |m: Message| Inbound {
            messages: vec![m],
            replies: vec![],
        };
        let reply = |r: String| Inbound {
            messages: vec![],
            replies: vec![r],
        };
        match self.dialect {
            Dialect::Mesh => {
                let to = || peer_of(v.get("peerId")).map(Address::Peer);
                match kind {
                    "join" => match RoomId::new(&loose_string(v.get("roomId"))) {
                        Ok(room) => one(Message::Join(Join {
                            room,
                            mode: RoomMode::Mesh,
                            capacity: None,
                            display_name: String::new(),
                        })),
                        Err(e) => reply(error(&format!("bad roomId: {e}"))),
                    },
                    "offer" | "answer" => match (to(), sdp_of(v.get(kind))) {
                        (Some(to), Some(sdp)) => {
                            one(offer_or_answer(kind == "offer", to, sdp, app_data_of(&v)))
                        }
                        _ => reply(error(&format!("{kind} needs peerId and {kind}"))),
                    },
                    "candidate" => match (to(), v.get("candidate").and_then(candidate_of)) {
                        (Some(to), Some(c)) => one(ice(to, vec![c], app_data_of(&v))),
                        _ => reply(error("candidate needs peerId and candidate")),
                    },
                    "ice-candidates" => {
                        let cs: Option<Vec<IceCandidate>> = v
                            .get("candidates")
                            .and_then(Value::as_array)
                            .and_then(|a| a.iter().map(candidate_of).collect());
                        match (to(), cs) {
                            (Some(to), Some(cs)) if !cs.is_empty() => {
                                one(ice(to, cs, app_data_of(&v)))
                            }
                            _ => reply(error("ice-candidates needs peerId and candidates")),
                        }
                    }
                    _ => reply(error(&format!("unknown message type {kind:?}"))),
                }
            }
            Dialect::Pair => {
                if kind == "join" {
                    return match loose_string(v.get("roomId")).as_str() {
                        "" => reply(error("roomId is required")),
                        id => match RoomId::new(id) {
                            Ok(room) => one(Message::Join(Join {
                                room,
                                mode: RoomMode::Pair,
                                capacity: None,
                                display_name: String::new(),
                            })),
                            Err(e) => reply(error(&format!("bad roomId: {e}"))),
                        },
                    };
                }
                let Some(room) = self.room.clone() else {
                    return reply(error("join a room first"));
                };
                let other = self.other.map(Address::Peer);
                match (kind, other) {
                    ("leave", _) => {
                        self.leaving = true;
                        one(Message::Leave { room })
                    }
                    ("offer" | "answer", Some(to)) => {
                        let sdp = ["sdp", kind, "description"]
                            .iter()
                            .find_map(|k| sdp_of(v.get(*k)));
                        match sdp {
                            Some(sdp) => {
                                one(offer_or_answer(kind == "offer", to, sdp, String::new()))
                            }
                            None => reply(error(&format!("{kind} needs sdp"))),
                        }
                    }
                    ("ice", Some(to)) => {
                        let c = v.get("candidate").or_else(|| v.get("ice"));
                        match c.and_then(candidate_of) {
                            Some(c) => one(ice(to, vec![c], String::new())),
                            None => reply(error("ice needs candidate")),
                        }
                    }
                    ("offer" | "answer" | "ice", None) => {
                        reply(error("no one else is in the room"))
                    }
                    // Seed 001 ignores other types once in a room.
                    _ => Inbound::default(),
                }
            }
            Dialect::Users => {
                let name = v.get("name").and_then(Value::as_str).unwrap_or("");
                let to = || UserName::new(name).map(Address::User);
                let unrecognized = || {
                    let shown = if v.get("type").is_some() {
                        kind
                    } else {
                        "undefined"
                    };
                    reply(error(&format!("Unrecognized command: {shown}")))
                };
                match kind {
                    "login" => match UserName::new(name) {
                        Ok(name) => one(Message::Login { name }),
                        Err(_) => reply(json!({"type": "login", "success": false}).to_string()),
                    },
                    "offer" | "answer" => match (to(), sdp_of(v.get(kind))) {
                        (Ok(to), Some(sdp)) => {
                            one(offer_or_answer(kind == "offer", to, sdp, String::new()))
                        }
                        _ => reply(error(&format!("{kind} needs name and {kind}"))),
                    },
                    "candidate" => match (to(), v.get("candidate").and_then(candidate_of)) {
                        (Ok(to), Some(c)) => one(ice(to, vec![c], String::new())),
                        _ => reply(error("candidate needs name and candidate")),
                    },
                    "leave" => match to() {
                        Ok(peer) => one(Message::HangUp { peer }),
                        Err(_) => reply(error("leave needs name")),
                    },
                    _ => unrecognized(),
                }
            }
        }
    }

    /// Translates one message the session sends; nothing for what the
    /// dialect has no word for (Welcome, Pong...).
    pub fn outbound(&mut self, message: &Message) -> Vec<Outbound> {
        if let Message::Ping { nonce } = message {
            return vec![Outbound::Ping(Bytes::copy_from_slice(&nonce.to_be_bytes()))];
        }
        if let Message::Error(e) = message {
            return vec![text(&json!({"type": "error", "message": e.message}))];
        }
        match self.dialect {
            Dialect::Mesh => mesh_out(message),
            Dialect::Pair => self.pair_out(message),
            Dialect::Users => users_out(message),
        }
    }

    fn pair_out(&mut self, message: &Message) -> Vec<Outbound> {
        match message {
            Message::Joined(j) => {
                self.room = Some(j.room.clone());
                self.other = j.members.first().map(|m| m.peer_id);
                let mut out = vec![text(
                    &json!({"type": "joined", "roomId": j.room.as_str(), "peers": j.members.len()}),
                )];
                if self.other.is_some() {
                    out.push(text(&json!({"type": "ready", "isInitiator": true})));
                }
                out
            }
            Message::PeerJoined(p) => {
                self.other = Some(p.member.peer_id);
                vec![text(&json!({"type": "ready", "isInitiator": false}))]
            }
            Message::PeerLeft(_) => {
                self.other = None;
                vec![text(&json!({"type": "peer-left"}))]
            }
            Message::RoomFull { room, .. } => {
                vec![text(&json!({"type": "full", "roomId": room.as_str()}))]
            }
            Message::Left { room } => {
                if self.room.as_ref() == Some(room) {
                    self.room = None;
                    self.other = None;
                }
                if std::mem::take(&mut self.leaving) {
                    vec![text(&json!({"type": "left"}))]
                } else {
                    // Left for the old room when switching rooms: seed 001
                    // says nothing to the switcher.
                    vec![]
                }
            }
            Message::Offer(d) => vec![text(
                &json!({"type": "offer", "sdp": description_json("offer", &d.sdp)}),
            )],
            Message::Answer(d) => vec![text(
                &json!({"type": "answer", "sdp": description_json("answer", &d.sdp)}),
            )],
            Message::Ice(i) => per_candidate("ice", None, i, ""),
            _ => vec![],
        }
    }
}

fn mesh_out(message: &Message) -> Vec<Outbound> {
    let id = |p: &Address| match p {
        Address::Peer(p) => p.0.to_string(),
        Address::User(u) => u.as_str().to_owned(),
    };
    match message {
        Message::Joined(j) => {
            let peers: Vec<String> = j.members.iter().map(|m| m.peer_id.0.to_string()).collect();
            vec![text(
                &json!({"type": "joined", "roomId": j.room.as_str(), "peers": peers}),
            )]
        }
        Message::PeerJoined(p) => {
            vec![text(
                &json!({"type": "new-peer", "peerId": p.member.peer_id.0.to_string()}),
            )]
        }
        Message::PeerLeft(p) => {
            vec![text(
                &json!({"type": "peer-disconnected", "peerId": p.peer_id.0.to_string()}),
            )]
        }
        Message::RoomFull { room, .. } => {
            vec![text(
                &json!({"type": "error", "message": format!("room {} is full", room.as_str())}),
            )]
        }
        Message::Offer(d) => {
            vec![text(&with_app_data(
                json!({"type": "offer", "peerId": id(&d.peer), "offer": description_json("offer", &d.sdp)}),
                &d.app_data,
            ))]
        }
        Message::Answer(d) => {
            vec![text(&with_app_data(
                json!({"type": "answer", "peerId": id(&d.peer), "answer": description_json("answer", &d.sdp)}),
                &d.app_data,
            ))]
        }
        Message::Ice(i) => per_candidate("candidate", Some(id(&i.peer)), i, &i.app_data),
        _ => vec![],
    }
}

fn users_out(message: &Message) -> Vec<Outbound> {
    match message {
        Message::LoginResult(r) => vec![text(
            &json!({"type": "login", "success": r.error.is_none()}),
        )],
        Message::Offer(d) => {
            let mut o = json!({"type": "offer", "offer": description_json("offer", &d.sdp)});
            if let Address::User(u) = &d.peer {
                o["name"] = u.as_str().into();
            }
            vec![text(&o)]
        }
        Message::Answer(d) => vec![text(
            &json!({"type": "answer", "answer": description_json("answer", &d.sdp)}),
        )],
        Message::Ice(i) => per_candidate("candidate", None, i, ""),
        Message::HangUp { .. } => vec![text(&json!({"type": "leave"}))],
        _ => vec![],
    }
}
