//! Golden frames shared with the browser SDK (`web/test/golden.test.ts`).
//!
//! `tests/data/golden/*.bin` are WebSocket messages written by this crate's
//! encoder; `manifest.json` says, per file, which messages they decode to, in
//! a language-neutral JSON form. This test checks that the Rust encoder still
//! writes exactly those bytes and that the decoder reads them back to the
//! manifest; the SDK's test checks the same two directions in TypeScript, so
//! the same bytes mean the same message in both languages.
//!
//! Regenerate after a deliberate wire change with
//! `SWITCHBOARD_WRITE_GOLDEN=1 cargo test --test golden`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_json::{json, Map, Value};
use switchboard::protocol::{
    decode_message, encode_into, sdp, Address, Capabilities, CodecLimits, ErrorCode, ErrorMessage,
    Hello, IceCandidate, IceCandidates, IceServer, Join, Joined, LeaveReason, Limits, LoginResult,
    Member, Message, PeerId, PeerJoined, PeerLeft, Resume, ResumeLimits, ResumeRefusal,
    ResumeRequest, RoomId, RoomMode, Sdp, SessionDescription, UserName, Welcome,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/golden")
}

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

fn sample_sdp() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/sdp/chrome-offer-audio.sdp");
    std::fs::read(path).unwrap()
}

fn both() -> Capabilities {
    Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH)
}

fn all_three() -> Capabilities {
    both().union(Capabilities::RESUME)
}

/// A 32-byte resume token: `first`, `first + step`, ... (mod 256), so the
/// hex in the manifest has both digits and letters.
fn token(first: u8, step: u8) -> Bytes {
    (0..32u8)
        .map(|i| first.wrapping_add(i.wrapping_mul(step)))
        .collect()
}

/// The server's defaults (PROTOCOL.md section 11a).
fn resume_limits() -> ResumeLimits {
    ResumeLimits {
        grace: Duration::from_millis(30_000),
        replay_frames: 256,
        replay_bytes: 262_144,
        ack_delay: Duration::from_millis(200),
    }
}

fn limits() -> Limits {
    Limits {
        max_message_bytes: 131_072,
        max_frames_per_message: 64,
        max_sdp_bytes: 65_536,
        rate_per_second: 50,
        rate_burst: 100,
        max_id_bytes: 64,
        max_room_capacity: 16,
        default_room_capacity: 8,
        max_payload_bytes: 131_060,
        max_candidates_per_batch: 64,
        rate_bytes_per_second: 262_144,
        rate_bytes_burst: 1_048_576,
        max_rooms_per_peer: 16,
    }
}

/// A Welcome with the default limits, no ICE servers, and all three
/// capabilities.
fn welcome_with(peer_id: u64, resume: Resume) -> Message {
    Message::Welcome(Welcome {
        peer_id: PeerId(peer_id),
        protocol_version: 1,
        limits: limits(),
        heartbeat_interval: Duration::from_millis(15_000),
        heartbeat_timeout: Duration::from_millis(45_000),
        ice_servers: vec![],
        capabilities: all_three(),
        sdp_dictionary: 1,
        resume: Some(resume),
    })
}

/// One golden file: its name, what it shows, and its frames.
struct Case {
    name: &'static str,
    description: &'static str,
    frames: Vec<(u32, Message)>,
}

fn case(name: &'static str, description: &'static str, frames: Vec<(u32, Message)>) -> Case {
    Case {
        name,
        description,
        frames,
    }
}

fn cases() -> Vec<Case> {
    let sdp = sample_sdp();
    let alice = Member {
        peer_id: PeerId(0x0001_0000_0000_0007),
        display_name: "Alice".into(),
        user: Some(user("alice")),
        capabilities: both(),
    };
    let bob = Member {
        peer_id: PeerId(42),
        display_name: "Bob ☎".into(),
        user: None,
        capabilities: Capabilities::ICE_BATCH,
    };
    vec![
        case(
            "hello",
            "Hello with both capabilities and an access token",
            vec![(
                1,
                Message::Hello(Hello {
                    resume: None,
                    protocol_version: 1,
                    capabilities: both(),
                    access_token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                    user_agent: "switchboard-web/0.1".into(),
                }),
            )],
        ),
        case(
            "welcome",
            "Welcome with limits, a STUN and a TURN server, a peer id above 2^53",
            vec![(
                1,
                Message::Welcome(Welcome {
                    resume: None,
                    peer_id: PeerId(0xfffe_0000_0000_0001),
                    protocol_version: 1,
                    limits: limits(),
                    heartbeat_interval: Duration::from_millis(15_000),
                    heartbeat_timeout: Duration::from_millis(45_000),
                    ice_servers: vec![
                        IceServer {
                            urls: vec!["stun:stun.example.org:3478".into()],
                            username: String::new(),
                            credential: String::new(),
                        },
                        IceServer {
                            urls: vec![
                                "turn:turn.example.org:3478?transport=udp".into(),
                                "turns:turn.example.org:5349".into(),
                            ],
                            username: "1700000000:alice".into(),
                            credential: "c2VjcmV0".into(),
                        },
                    ],
                    capabilities: both(),
                    sdp_dictionary: 1,
                }),
            )],
        ),
        case(
            "join",
            "Join a mesh room asking for capacity 4",
            vec![(
                2,
                Message::Join(Join {
                    room: room("standup"),
                    mode: RoomMode::Mesh,
                    capacity: Some(4),
                    display_name: "Bob ☎".into(),
                }),
            )],
        ),
        case(
            "joined",
            "Joined a mesh room with two members, one logged in",
            vec![(
                2,
                Message::Joined(Joined {
                    room: room("standup"),
                    mode: RoomMode::Mesh,
                    capacity: 4,
                    members: vec![alice.clone(), bob.clone()],
                    initiator: false,
                }),
            )],
        ),
        case(
            "peer_joined",
            "PeerJoined in a pair room",
            vec![(
                3,
                Message::PeerJoined(PeerJoined {
                    room: room("room-1"),
                    member: bob.clone(),
                    initiator: false,
                }),
            )],
        ),
        case(
            "peer_left",
            "PeerLeft after a heartbeat timeout",
            vec![(
                4,
                Message::PeerLeft(PeerLeft {
                    room: room("room-1"),
                    peer_id: PeerId(42),
                    reason: LeaveReason::TimedOut,
                }),
            )],
        ),
        case(
            "room_full",
            "RoomFull for a pair room",
            vec![(
                5,
                Message::RoomFull {
                    room: room("room-1"),
                    capacity: 2,
                },
            )],
        ),
        case(
            "leave",
            "Leave a room",
            vec![(6, Message::Leave { room: room("room-1") })],
        ),
        case(
            "left",
            "Left a room",
            vec![(6, Message::Left { room: room("room-1") })],
        ),
        case(
            "login",
            "Login with a non-ASCII name",
            vec![(7, Message::Login { name: user("zoë") })],
        ),
        case(
            "login_result",
            "LoginResult refusing a taken name",
            vec![(
                7,
                Message::LoginResult(LoginResult {
                    name: user("zoë"),
                    error: Some(ErrorCode::NameTaken),
                }),
            )],
        ),
        case("logout", "Logout (empty payload)", vec![(8, Message::Logout)]),
        case(
            "hang_up",
            "HangUp addressed to a user name",
            vec![(
                9,
                Message::HangUp {
                    peer: Address::User(user("alice")),
                },
            )],
        ),
        case(
            "offer_plain",
            "Offer with plain SDP to a peer id, in a room",
            vec![(
                10,
                Message::Offer(SessionDescription {
                    peer: Address::Peer(PeerId(42)),
                    sdp: Sdp::Plain(Bytes::from(sdp.clone())),
                    room: Some(room("room-1")),
                    app_data: String::new(),
                }),
            )],
        ),
        case(
            "offer_deflate",
            "Offer with DEFLATE_SDP (level 6, preset dictionary), to a peer id above 2^53",
            vec![(
                11,
                Message::Offer(SessionDescription {
                    peer: Address::Peer(PeerId(0x0001_0000_0000_0007)),
                    sdp: Sdp::Deflated(Bytes::from(sdp::deflate(&sdp))),
                    room: None,
                    app_data: String::new(),
                }),
            )],
        ),
        case(
            "answer",
            "Answer with plain SDP to a user, no room, with app_data",
            vec![(
                12,
                Message::Answer(SessionDescription {
                    peer: Address::User(user("alice")),
                    sdp: Sdp::Plain(Bytes::from_static(b"v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n")),
                    room: None,
                    app_data: r#"{"seq":2,"timestamp":1625097600000}"#.into(),
                }),
            )],
        ),
        case(
            "ice_batch",
            "IceCandidates: three candidates with and without optional fields",
            vec![(
                13,
                Message::Ice(IceCandidates {
                    peer: Address::Peer(PeerId(42)),
                    candidates: vec![
                        IceCandidate {
                            candidate: "candidate:1 1 udp 2122260223 192.0.2.10 54321 typ host generation 0".into(),
                            sdp_mid: Some("0".into()),
                            sdp_m_line_index: Some(0),
                            username_fragment: Some("f9Xb".into()),
                        },
                        IceCandidate {
                            candidate: "candidate:2 1 udp 1686052607 203.0.113.5 61000 typ srflx raddr 192.0.2.10 rport 54321".into(),
                            sdp_mid: Some(String::new()),
                            sdp_m_line_index: Some(0),
                            username_fragment: None,
                        },
                        IceCandidate {
                            candidate: "candidate:3 1 tcp 1518280447 192.0.2.10 9 typ host tcptype active".into(),
                            sdp_mid: None,
                            sdp_m_line_index: None,
                            username_fragment: None,
                        },
                    ],
                    end_of_candidates: false,
                    room: Some(room("room-1")),
                    app_data: String::new(),
                }),
            )],
        ),
        case(
            "ping",
            "Ping with a nonce above 2^53",
            vec![(14, Message::Ping { nonce: u64::MAX - 1 })],
        ),
        case(
            "pong",
            "Pong with nonce 0 (empty payload)",
            vec![(15, Message::Pong { nonce: 0 })],
        ),
        case(
            "error",
            "Error answering request 3",
            vec![(
                16,
                Message::Error(ErrorMessage {
                    code: ErrorCode::UnknownPeer,
                    message: "peer 2a is not in a room with you".into(),
                    request_seq: 3,
                }),
            )],
        ),
        case(
            "ack",
            "Ack (header seq 0) of the peer's frames up to 3000000000, above 2^31",
            vec![(0, Message::Ack { seq: 3_000_000_000 })],
        ),
        case(
            "hello_resume",
            "Hello resuming a session: all three capabilities, a 32-byte token, last server seq 41",
            vec![(
                1,
                Message::Hello(Hello {
                    protocol_version: 1,
                    capabilities: all_three(),
                    access_token: None,
                    user_agent: "switchboard-web/0.1".into(),
                    resume: Some(ResumeRequest {
                        token: token(0x07, 8),
                        last_seq: 41,
                    }),
                }),
            )],
        ),
        case(
            "welcome_resume_granted",
            "Welcome of a fresh session granting resume: a token and the resume limits",
            vec![(
                1,
                welcome_with(
                    7,
                    Resume {
                        token: token(0x07, 8),
                        resumed: false,
                        refusal: None,
                        last_seq: 0,
                        limits: resume_limits(),
                    },
                ),
            )],
        ),
        case(
            "welcome_resumed",
            "Welcome (header seq 0) continuing the session: a new token, last client seq 17",
            vec![(
                0,
                welcome_with(
                    7,
                    Resume {
                        token: token(0xa0, 3),
                        resumed: true,
                        refusal: None,
                        last_seq: 17,
                        limits: resume_limits(),
                    },
                ),
            )],
        ),
        case(
            "welcome_resume_refused",
            "Welcome refusing a resume (grace period over): a fresh session with a new peer id and token",
            vec![(
                1,
                welcome_with(
                    8,
                    Resume {
                        token: token(0xf0, 5),
                        resumed: false,
                        refusal: Some(ResumeRefusal::Expired),
                        last_seq: 0,
                        limits: resume_limits(),
                    },
                ),
            )],
        ),
        case(
            "two_frames",
            "Two frames in one WebSocket message: a Pong and an end-of-candidates marker",
            vec![
                (17, Message::Pong { nonce: 12_345 }),
                (
                    18,
                    Message::Ice(IceCandidates {
                        peer: Address::User(user("alice")),
                        candidates: vec![],
                        end_of_candidates: true,
                        room: None,
                        app_data: String::new(),
                    }),
                ),
            ],
        ),
    ]
}

// ------------------------------------------------------------ message -> JSON

fn capabilities(c: Capabilities) -> Value {
    let mut names = vec![];
    if c.contains(Capabilities::DEFLATE_SDP) {
        names.push("CAPABILITY_DEFLATE_SDP");
    }
    if c.contains(Capabilities::ICE_BATCH) {
        names.push("CAPABILITY_ICE_BATCH");
    }
    if c.contains(Capabilities::RESUME) {
        names.push("CAPABILITY_RESUME");
    }
    json!(names)
}

fn address(a: &Address) -> Value {
    match a {
        Address::Peer(id) => json!({ "peer_id": id.0.to_string() }),
        Address::User(name) => json!({ "user": name.as_str() }),
    }
}

fn member(m: &Member) -> Value {
    let mut v = json!({
        "peer_id": m.peer_id.0.to_string(),
        "display_name": m.display_name,
        "capabilities": capabilities(m.capabilities),
    });
    if let Some(u) = &m.user {
        v["user"] = json!(u.as_str());
    }
    v
}

fn insert_room(v: &mut Value, room: &Option<RoomId>) {
    if let Some(r) = room {
        v["room"] = json!(r.as_str());
    }
}

fn insert_app_data(v: &mut Value, app_data: &str) {
    if !app_data.is_empty() {
        v["app_data"] = json!(app_data);
    }
}

/// The language-neutral JSON of a decoded message: proto field names,
/// 64-bit integers as decimal strings, enums by their proto names, absent
/// optional fields left out, SDP as text (inflated when sent deflated),
/// other bytes (resume tokens) as lowercase hex.
fn to_json(msg: &Message) -> Value {
    let (kind, mut body) = match msg {
        Message::Hello(h) => {
            let mut v = json!({
                "protocol_version": h.protocol_version,
                "capabilities": capabilities(h.capabilities),
                "user_agent": h.user_agent,
            });
            if let Some(t) = &h.access_token {
                v["access_token"] = json!(t);
            }
            if let Some(r) = &h.resume {
                v["resume_token"] = json!(hex::encode(&r.token));
                v["resume_last_seq"] = json!(r.last_seq);
            }
            ("hello", v)
        }
        Message::Welcome(w) => {
            let mut v = json!({
                "peer_id": w.peer_id.0.to_string(),
                "protocol_version": w.protocol_version,
                "limits": {
                    "max_message_bytes": w.limits.max_message_bytes,
                    "max_frames_per_message": w.limits.max_frames_per_message,
                    "max_sdp_bytes": w.limits.max_sdp_bytes,
                    "rate_per_second": w.limits.rate_per_second,
                    "rate_burst": w.limits.rate_burst,
                    "max_id_bytes": w.limits.max_id_bytes,
                    "max_room_capacity": w.limits.max_room_capacity,
                    "default_room_capacity": w.limits.default_room_capacity,
                    "max_payload_bytes": w.limits.max_payload_bytes,
                    "max_candidates_per_batch": w.limits.max_candidates_per_batch,
                    "rate_bytes_per_second": w.limits.rate_bytes_per_second,
                    "rate_bytes_burst": w.limits.rate_bytes_burst,
                    "max_rooms_per_peer": w.limits.max_rooms_per_peer,
                },
                "heartbeat_interval_ms": w.heartbeat_interval.as_millis() as u64,
                "heartbeat_timeout_ms": w.heartbeat_timeout.as_millis() as u64,
                "ice_servers": w.ice_servers.iter().map(|s| json!({
                    "urls": s.urls, "username": s.username, "credential": s.credential,
                })).collect::<Vec<_>>(),
                "capabilities": capabilities(w.capabilities),
                "sdp_dictionary": w.sdp_dictionary,
            });
            if let Some(r) = &w.resume {
                v["resume_token"] = json!(hex::encode(&r.token));
                v["resumed"] = json!(r.resumed);
                if let Some(refusal) = r.refusal {
                    v["resume_refusal"] = json!(refusal.as_str_name());
                }
                v["resume_last_seq"] = json!(r.last_seq);
                v["resume_limits"] = json!({
                    "grace_ms": r.limits.grace.as_millis() as u64,
                    "replay_frames": r.limits.replay_frames,
                    "replay_bytes": r.limits.replay_bytes,
                    "ack_delay_ms": r.limits.ack_delay.as_millis() as u64,
                });
            }
            ("welcome", v)
        }
        Message::Ping { nonce } => ("ping", json!({ "nonce": nonce.to_string() })),
        Message::Pong { nonce } => ("pong", json!({ "nonce": nonce.to_string() })),
        Message::Ack { seq } => ("ack", json!({ "seq": seq })),
        Message::Join(j) => {
            let mut v = json!({
                "room": j.room.as_str(),
                "mode": j.mode.as_str_name(),
                "display_name": j.display_name,
            });
            if let Some(c) = j.capacity {
                v["capacity"] = json!(c);
            }
            ("join", v)
        }
        Message::Joined(j) => (
            "joined",
            json!({
                "room": j.room.as_str(),
                "mode": j.mode.as_str_name(),
                "capacity": j.capacity,
                "members": j.members.iter().map(member).collect::<Vec<_>>(),
                "initiator": j.initiator,
            }),
        ),
        Message::PeerJoined(p) => (
            "peer_joined",
            json!({ "room": p.room.as_str(), "member": member(&p.member), "initiator": p.initiator }),
        ),
        Message::PeerLeft(p) => (
            "peer_left",
            json!({
                "room": p.room.as_str(),
                "peer_id": p.peer_id.0.to_string(),
                "reason": p.reason.as_str_name(),
            }),
        ),
        Message::RoomFull { room, capacity } => (
            "room_full",
            json!({ "room": room.as_str(), "capacity": capacity }),
        ),
        Message::Leave { room } => ("leave", json!({ "room": room.as_str() })),
        Message::Left { room } => ("left", json!({ "room": room.as_str() })),
        Message::Login { name } => ("login", json!({ "name": name.as_str() })),
        Message::LoginResult(l) => {
            let mut v = json!({ "name": l.name.as_str() });
            if let Some(e) = l.error {
                v["error"] = json!(e.as_str_name());
            }
            ("login_result", v)
        }
        Message::Logout => ("logout", json!({})),
        Message::HangUp { peer } => ("hang_up", json!({ "peer": address(peer) })),
        Message::Offer(d) | Message::Answer(d) => {
            let (text, deflated) = match &d.sdp {
                Sdp::Plain(b) => (b.to_vec(), false),
                Sdp::Deflated(b) => (
                    sdp::inflate(b, 64 * 1024).expect("golden SDP inflates"),
                    true,
                ),
            };
            let mut v = json!({
                "peer": address(&d.peer),
                "sdp": String::from_utf8(text).unwrap(),
                "deflated": deflated,
            });
            insert_room(&mut v, &d.room);
            insert_app_data(&mut v, &d.app_data);
            let kind = if matches!(msg, Message::Offer(_)) {
                "offer"
            } else {
                "answer"
            };
            (kind, v)
        }
        Message::Ice(i) => {
            let candidates: Vec<Value> = i
                .candidates
                .iter()
                .map(|c| {
                    let mut v = json!({ "candidate": c.candidate });
                    if let Some(m) = &c.sdp_mid {
                        v["sdp_mid"] = json!(m);
                    }
                    if let Some(m) = c.sdp_m_line_index {
                        v["sdp_m_line_index"] = json!(m);
                    }
                    if let Some(u) = &c.username_fragment {
                        v["username_fragment"] = json!(u);
                    }
                    v
                })
                .collect();
            let mut v = json!({
                "peer": address(&i.peer),
                "candidates": candidates,
                "end_of_candidates": i.end_of_candidates,
            });
            insert_room(&mut v, &i.room);
            insert_app_data(&mut v, &i.app_data);
            ("ice", v)
        }
        Message::Error(e) => (
            "error",
            json!({ "code": e.code.as_str_name(), "message": e.message, "request_seq": e.request_seq }),
        ),
    };
    let mut out = Map::new();
    out.insert("type".into(), json!(kind));
    out.append(body.as_object_mut().unwrap());
    Value::Object(out)
}

fn encode(frames: &[(u32, Message)]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (seq, msg) in frames {
        encode_into(msg, *seq, &mut out);
    }
    out.to_vec()
}

/// Decodes a golden file into its manifest frames.
fn decode(bytes: &[u8]) -> Vec<Value> {
    let mut flags = vec![];
    let mut rest = bytes;
    while rest.len() >= 12 {
        flags.push(rest[2]);
        let len = u32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]) as usize;
        rest = &rest[12 + len..];
    }
    decode_message(Bytes::copy_from_slice(bytes), &CodecLimits::default())
        .zip(flags)
        .map(|(frame, flags)| {
            let (seq, msg) = frame.expect("golden frame decodes");
            json!({ "seq": seq, "flags": flags, "message": to_json(&msg) })
        })
        .collect()
}

fn manifest(cases: &[Case]) -> Value {
    let files: Vec<Value> = cases
        .iter()
        .map(|c| {
            json!({
                "file": format!("{}.bin", c.name),
                "description": c.description,
                "frames": decode(&encode(&c.frames)),
            })
        })
        .collect();
    json!({
        "comment": "Written by `SWITCHBOARD_WRITE_GOLDEN=1 cargo test --test golden`; see README.md.",
        "files": files,
    })
}

#[test]
fn golden_frames() {
    let cases = cases();
    let dir = dir();
    if std::env::var_os("SWITCHBOARD_WRITE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir).unwrap();
        for c in &cases {
            std::fs::write(dir.join(format!("{}.bin", c.name)), encode(&c.frames)).unwrap();
        }
        let text = serde_json::to_string_pretty(&manifest(&cases)).unwrap() + "\n";
        std::fs::write(dir.join("manifest.json"), text).unwrap();
    }

    let text = std::fs::read_to_string(dir.join("manifest.json")).expect("manifest.json exists");
    let on_disk: Value = serde_json::from_str(&text).unwrap();
    let files = on_disk["files"].as_array().unwrap();
    assert_eq!(
        files.len(),
        cases.len(),
        "manifest lists {} files, the test builds {}",
        files.len(),
        cases.len()
    );
    for (entry, c) in files.iter().zip(&cases) {
        let name = format!("{}.bin", c.name);
        assert_eq!(entry["file"], json!(name));
        let bytes = std::fs::read(dir.join(&name)).unwrap();
        // The encoder still writes the committed bytes...
        assert!(
            encode(&c.frames) == bytes,
            "{name}: encoder output differs from the golden file"
        );
        // ...and the decoder reads them back to the manifest.
        assert_eq!(
            json!(decode(&bytes)),
            entry["frames"],
            "{name}: decoded message differs"
        );
        // The manifest says what the test meant to encode.
        for ((seq, msg), frame) in c.frames.iter().zip(entry["frames"].as_array().unwrap()) {
            assert_eq!(frame["seq"], json!(seq), "{name}");
            assert_eq!(frame["message"], to_json(msg), "{name}");
        }
    }
}

/// SDP deflated by the browser SDK (pako, written by `web/test/golden.test.ts`)
/// inflates with the server's decoder. The two deflaters pick different but
/// equally valid encodings, so only this direction can be compared.
#[test]
fn sdk_deflated_sdp_inflates() {
    let compressed = std::fs::read(dir().join("sdp_deflate_pako.raw")).unwrap();
    assert_eq!(sdp::inflate(&compressed, 64 * 1024).unwrap(), sample_sdp());
}
