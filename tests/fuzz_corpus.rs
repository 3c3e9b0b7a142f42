//! The committed fuzz seed corpus, run as ordinary tests.
//!
//! Every file in `fuzz/corpus/decode_message/` and `fuzz/corpus/inflate_sdp/`
//! goes through the same call as its fuzz target, so a crash once found by the
//! fuzzer (and added to the corpus) stays fixed without a fuzzer installed.
//!
//! The seeds themselves are written by this file: [`seeds_are_committed`]
//! checks that every generated seed is in the corpus, byte for byte, and with
//! `UPDATE_FUZZ_CORPUS=1` in the environment it (re)writes them instead:
//!
//! ```text
//! UPDATE_FUZZ_CORPUS=1 cargo test --test fuzz_corpus
//! ```
//!
//! Files the fuzzer found are kept beside the seeds; this file never removes
//! any.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard::protocol::{
    decode_message, encode_into, sdp, Address, Capabilities, CodecLimits, ErrorCode, ErrorMessage,
    Hello, IceCandidate, IceCandidates, IceServer, Join, Joined, LeaveReason, Limits, LoginResult,
    Member, Message, PeerId, PeerJoined, PeerLeft, RoomId, RoomMode, Sdp, SessionDescription,
    UserName, Welcome,
};

/// The limit the `inflate_sdp` target inflates with.
const MAX_SDP: usize = 64 * 1024;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// What the `decode_message` fuzz target does.
fn decode_message_target(data: &[u8]) -> usize {
    decode_message(Bytes::copy_from_slice(data), &CodecLimits::default()).count()
}

/// What the `inflate_sdp` fuzz target does.
fn inflate_sdp_target(data: &[u8]) {
    if let Ok(out) = sdp::inflate(data, MAX_SDP) {
        assert!(out.len() <= MAX_SDP, "inflated {} bytes", out.len());
    }
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    // With UPDATE_FUZZ_CORPUS the seeds are written before anyone reads them,
    // whichever test runs first.
    static WRITE_SEEDS: std::sync::Once = std::sync::Once::new();
    WRITE_SEEDS.call_once(|| {
        if std::env::var_os("UPDATE_FUZZ_CORPUS").is_some() {
            check_or_write_seeds(true);
        }
    });
    let dir = corpus_dir(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir:?}: {e}"))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_file())
        .map(|path| {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn decode_message_corpus() {
    let files = corpus("decode_message");
    assert!(files.len() >= 20, "only {} seeds", files.len());
    for (name, data) in files {
        let frames = decode_message_target(&data);
        assert!(frames <= CodecLimits::default().max_frames + 1, "{name}");
    }
}

#[test]
fn inflate_sdp_corpus() {
    let files = corpus("inflate_sdp");
    assert!(files.len() >= 5, "only {} seeds", files.len());
    for (_, data) in files {
        inflate_sdp_target(&data);
    }
}

/// What the `text` fuzz target does, with a check it cannot make on
/// arbitrary input: each committed text seed is a frame or a dialect
/// message that converts.
fn text_target(data: &[u8]) -> bool {
    use switchboard::compat::{Dialect, Translator};
    use switchboard::protocol::{decode, frame::split_frame, text};
    let Ok(s) = std::str::from_utf8(data) else {
        return false;
    };
    let mut converted = false;
    if let Ok(mut frame) = text::to_frame(s) {
        if let Ok(raw) = split_frame(&mut frame, usize::MAX) {
            converted |= decode(&raw, &CodecLimits::default()).is_ok();
        }
    }
    for dialect in [Dialect::Mesh, Dialect::Pair, Dialect::Users] {
        let mut t = Translator::new(dialect);
        let messages = t.inbound(s).messages;
        converted |= !messages.is_empty();
        for message in messages {
            let _ = t.outbound(&message);
        }
    }
    converted
}

#[test]
fn text_corpus() {
    let files = corpus("text");
    assert!(files.len() >= 4, "only {} seeds", files.len());
    for (name, data) in files {
        assert!(text_target(&data), "{name} converts to nothing");
    }
}

#[test]
fn seeds_are_committed() {
    check_or_write_seeds(std::env::var_os("UPDATE_FUZZ_CORPUS").is_some());
}

fn check_or_write_seeds(update: bool) {
    for (target, seeds) in [
        ("decode_message", decode_message_seeds()),
        ("inflate_sdp", inflate_sdp_seeds()),
    ] {
        let dir = corpus_dir(target);
        if update {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, data) in seeds {
            let path = dir.join(&name);
            if update {
                std::fs::write(&path, &data).unwrap();
            } else {
                let committed = std::fs::read(&path).unwrap_or_else(|e| {
                    panic!("{path:?}: {e}; run UPDATE_FUZZ_CORPUS=1 cargo test --test fuzz_corpus")
                });
                assert!(
                    committed == data,
                    "{path:?} is stale; run UPDATE_FUZZ_CORPUS=1 cargo test --test fuzz_corpus"
                );
            }
        }
    }
}

// ------------------------------------------------------------------ seeds

fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

fn sample(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/sdp")
            .join(name),
    )
    .unwrap()
}

fn candidate(n: u32) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 192.0.2.2 {} typ host generation 0 ufrag Wb3x network-id 1",
            50000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("Wb3x".into()),
    }
}

/// One message of every type, with realistic content.
fn messages() -> Vec<(&'static str, Message)> {
    let member = Member {
        peer_id: PeerId::new(1, 0, 2),
        display_name: "Ann".into(),
        user: Some(user("ann")),
        capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
    };
    let offer = sample("chrome-offer.sdp");
    vec![
        (
            "hello",
            Message::Hello(Hello {
                resume: None,
                protocol_version: 1,
                capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
                access_token: Some("eyJhbGciOiJIUzI1NiJ9.e30.sig".into()),
                user_agent: "switchboard-web/0.1".into(),
            }),
        ),
        (
            "welcome",
            Message::Welcome(Welcome {
                resume: None,
                peer_id: PeerId::new(1, 0, 1),
                protocol_version: 1,
                limits: Limits {
                    max_message_bytes: 128 * 1024,
                    max_frames_per_message: 64,
                    max_sdp_bytes: 64 * 1024,
                    rate_per_second: 50,
                    rate_burst: 200,
                    max_id_bytes: 64,
                    max_room_capacity: 16,
                    default_room_capacity: 8,
                    max_payload_bytes: 131_060,
                    max_candidates_per_batch: 64,
                    rate_bytes_per_second: 262_144,
                    rate_bytes_burst: 1_048_576,
                    max_rooms_per_peer: 16,
                },
                heartbeat_interval: Duration::from_secs(15),
                heartbeat_timeout: Duration::from_secs(45),
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
                        username: "1700000000:ann".into(),
                        credential: "c2VjcmV0".into(),
                    },
                ],
                capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
                sdp_dictionary: sdp::DICTIONARY_ID,
            }),
        ),
        (
            "ping",
            Message::Ping {
                nonce: 0x0123_4567_89ab_cdef,
            },
        ),
        (
            "pong",
            Message::Pong {
                nonce: 0x0123_4567_89ab_cdef,
            },
        ),
        ("ack", Message::Ack { seq: 41 }),
        (
            "join",
            Message::Join(Join {
                room: room("1001"),
                mode: RoomMode::Mesh,
                capacity: Some(6),
                display_name: "Ann".into(),
            }),
        ),
        (
            "joined",
            Message::Joined(Joined {
                room: room("1001"),
                mode: RoomMode::Mesh,
                capacity: 6,
                members: vec![
                    member.clone(),
                    Member {
                        peer_id: PeerId::new(1, 0, 3),
                        display_name: String::new(),
                        user: None,
                        capabilities: Capabilities::empty(),
                    },
                ],
                initiator: false,
            }),
        ),
        (
            "peer_joined",
            Message::PeerJoined(PeerJoined {
                room: room("1001"),
                member,
                initiator: false,
            }),
        ),
        (
            "peer_left",
            Message::PeerLeft(PeerLeft {
                room: room("1001"),
                peer_id: PeerId::new(1, 0, 2),
                reason: LeaveReason::TimedOut,
            }),
        ),
        (
            "room_full",
            Message::RoomFull {
                room: room("1001"),
                capacity: 2,
            },
        ),
        ("leave", Message::Leave { room: room("1001") }),
        ("left", Message::Left { room: room("1001") }),
        (
            "login",
            Message::Login {
                name: user("张三")
            },
        ),
        (
            "login_result",
            Message::LoginResult(LoginResult {
                name: user("张三"),
                error: Some(ErrorCode::NameTaken),
            }),
        ),
        ("logout", Message::Logout),
        (
            "hang_up",
            Message::HangUp {
                peer: Address::User(user("bob")),
            },
        ),
        (
            "offer_plain",
            Message::Offer(SessionDescription {
                peer: Address::Peer(PeerId::new(1, 0, 2)),
                sdp: Sdp::Plain(offer.clone().into()),
                room: Some(room("1001")),
                app_data: String::new(),
            }),
        ),
        (
            "offer_deflated",
            Message::Offer(SessionDescription {
                peer: Address::User(user("bob")),
                sdp: Sdp::Deflated(sdp::deflate(&offer).into()),
                room: None,
                app_data: String::new(),
            }),
        ),
        (
            "answer_deflated",
            Message::Answer(SessionDescription {
                peer: Address::Peer(PeerId::new(1, 0, 3)),
                sdp: Sdp::Deflated(sdp::deflate(&sample("firefox-answer.sdp")).into()),
                room: Some(room("1001")),
                app_data: String::new(),
            }),
        ),
        (
            "ice_batch",
            Message::Ice(IceCandidates {
                peer: Address::Peer(PeerId::new(1, 0, 2)),
                candidates: (0..8).map(candidate).collect(),
                end_of_candidates: false,
                room: Some(room("1001")),
                app_data: String::new(),
            }),
        ),
        (
            "ice_end",
            Message::Ice(IceCandidates {
                peer: Address::User(user("bob")),
                candidates: Vec::new(),
                end_of_candidates: true,
                room: None,
                app_data: String::new(),
            }),
        ),
        (
            "error",
            Message::Error(ErrorMessage {
                code: ErrorCode::UnknownPeer,
                message: "no such peer".into(),
                request_seq: 7,
            }),
        ),
    ]
}

fn frames(messages: &[Message]) -> Vec<u8> {
    let mut out = BytesMut::new();
    for (seq, msg) in (1..).zip(messages) {
        encode_into(msg, seq, &mut out);
    }
    out.to_vec()
}

fn decode_message_seeds() -> Vec<(String, Vec<u8>)> {
    let all = messages();
    let mut seeds: Vec<_> = all
        .iter()
        .map(|(name, msg)| (format!("{name}.bin"), frames(std::slice::from_ref(msg))))
        .collect();
    let every: Vec<_> = all.iter().map(|(_, m)| m.clone()).collect();
    seeds.push(("every_type.bin".into(), frames(&every)));
    let ping = frames(&[Message::Ping { nonce: 1 }]);
    // An unknown (reserved) type byte followed by a known frame.
    let mut unknown = ping.clone();
    unknown[1] = 0x05;
    unknown.extend(&ping);
    seeds.push(("unknown_type_then_ping.bin".into(), unknown));
    // An undefined flag bit, and DEFLATE_SDP on a Ping.
    let mut bad_flags = ping.clone();
    bad_flags[2] = 0x02;
    seeds.push(("bad_flags.bin".into(), bad_flags));
    let mut deflate_on_ping = ping.clone();
    deflate_on_ping[2] = 0x01;
    seeds.push(("deflate_flag_on_ping.bin".into(), deflate_on_ping));
    // Version 2.
    let mut version = ping.clone();
    version[0] = 0x02;
    seeds.push(("version_2.bin".into(), version));
    // A trailing frame cut short.
    let mut truncated = ping.clone();
    truncated.extend(&ping[..ping.len() - 1]);
    seeds.push(("truncated.bin".into(), truncated));
    seeds
}

fn inflate_sdp_seeds() -> Vec<(String, Vec<u8>)> {
    let mut seeds: Vec<_> = [
        "chrome-offer.sdp",
        "chrome-answer-simulcast.sdp",
        "firefox-offer.sdp",
        "firefox-answer-audio.sdp",
    ]
    .into_iter()
    .map(|name| (format!("{name}.deflate"), sdp::deflate(&sample(name))))
    .collect();
    seeds.push(("empty.deflate".into(), sdp::deflate(b"")));
    seeds.push(("tiny.deflate".into(), sdp::deflate(b"v=0\r\n")));
    // Inflates to 1 MiB of zeros: must stop at the limit.
    seeds.push(("bomb.deflate".into(), sdp::deflate(&vec![0u8; 1024 * 1024])));
    // Stored (uncompressed) blocks.
    let mut stored = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::none());
    std::io::Write::write_all(&mut stored, b"v=0\r\ns=-\r\n").unwrap();
    seeds.push(("stored.deflate".into(), stored.finish().unwrap()));
    let whole = sdp::deflate(&sample("chrome-offer.sdp"));
    seeds.push((
        "truncated.deflate".into(),
        whole[..whole.len() / 2].to_vec(),
    ));
    seeds
}
