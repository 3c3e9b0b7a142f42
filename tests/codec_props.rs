//! Property tests of the wire codec: encode then decode is the identity for
//! every message type, and no byte string makes the decoder panic.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use proptest::collection::vec;
use proptest::prelude::*;
use switchboard::protocol::frame::write_frame;
use switchboard::protocol::{
    decode_message, encode_into, Address, Capabilities, CodecLimits, DecodeError, ErrorCode,
    ErrorMessage, FieldError, Flags, Hello, IceCandidate, IceCandidates, IceServer, Join, Joined,
    LeaveReason, Limits, LoginResult, Member, Message, MessageType, PeerId, PeerJoined, PeerLeft,
    RoomId, RoomMode, Sdp, SessionDescription, UserName, Welcome, MAX_ID_BYTES,
};

// ------------------------------------------------------------------ strategies

/// A valid room id or user name: non-empty, at most 64 bytes, no control
/// characters, no surrounding whitespace. Mostly ASCII, sometimes any
/// printable Unicode (CJK, emoji, inner spaces).
fn id_text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_.-]{1,64}",
        1 => "[^\\p{C}\\s]([^\\p{C}]{0,12}[^\\p{C}\\s])?",
    ]
    .prop_filter("valid id", |s| {
        s.len() <= MAX_ID_BYTES && RoomId::new(s).is_ok()
    })
}

fn room_id() -> impl Strategy<Value = RoomId> {
    id_text().prop_map(|s| RoomId::new(&s).unwrap())
}

fn user_name() -> impl Strategy<Value = UserName> {
    id_text().prop_map(|s| UserName::new(&s).unwrap())
}

/// Free text of at most `max_chars` characters (at most 4 bytes each).
fn text(max_chars: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("\\PC{{0,{max_chars}}}")).unwrap()
}

fn capabilities() -> impl Strategy<Value = Capabilities> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(d, i, r)| {
        [
            (d, Capabilities::DEFLATE_SDP),
            (i, Capabilities::ICE_BATCH),
            (r, Capabilities::RESUME),
        ]
        .into_iter()
        .filter(|(on, _)| *on)
        .fold(Capabilities::empty(), |set, (_, c)| set.union(c))
    })
}

fn address() -> impl Strategy<Value = Address> {
    prop_oneof![
        any::<u64>().prop_map(|id| Address::Peer(PeerId(id))),
        user_name().prop_map(Address::User),
    ]
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    (0i32..=24).prop_map(|v| ErrorCode::try_from(v).unwrap())
}

/// Error codes a failed login can carry (UNSPECIFIED reads back as INTERNAL).
fn failure_code() -> impl Strategy<Value = ErrorCode> {
    (1i32..=24).prop_map(|v| ErrorCode::try_from(v).unwrap())
}

fn leave_reason() -> impl Strategy<Value = LeaveReason> {
    (0i32..=6).prop_map(|v| LeaveReason::try_from(v).unwrap())
}

fn member() -> impl Strategy<Value = Member> {
    (
        any::<u64>(),
        text(32),
        proptest::option::of(user_name()),
        capabilities(),
    )
        .prop_map(|(id, display_name, user, capabilities)| Member {
            peer_id: PeerId(id),
            display_name,
            user,
            capabilities,
        })
}

fn candidate() -> impl Strategy<Value = IceCandidate> {
    (
        text(200),
        proptest::option::of(text(16)),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text(16)),
    )
        .prop_map(
            |(candidate, sdp_mid, sdp_m_line_index, username_fragment)| IceCandidate {
                candidate,
                sdp_mid,
                sdp_m_line_index,
                username_fragment,
            },
        )
}

fn session_description() -> impl Strategy<Value = SessionDescription> {
    let sdp = prop_oneof![
        text(2000).prop_map(|s| Sdp::Plain(Bytes::from(s))),
        vec(any::<u8>(), 0..2000).prop_map(|b| Sdp::Deflated(Bytes::from(b))),
    ];
    (address(), sdp, proptest::option::of(room_id()), text(64)).prop_map(
        |(peer, sdp, room, app_data)| SessionDescription {
            peer,
            sdp,
            room,
            app_data,
        },
    )
}

fn limits() -> impl Strategy<Value = Limits> {
    any::<[u32; 13]>().prop_map(|l| Limits {
        max_message_bytes: l[0],
        max_frames_per_message: l[1],
        max_sdp_bytes: l[2],
        rate_per_second: l[3],
        rate_burst: l[4],
        max_id_bytes: l[5],
        max_room_capacity: l[6],
        default_room_capacity: l[7],
        max_payload_bytes: l[8],
        max_candidates_per_batch: l[9],
        rate_bytes_per_second: l[10],
        rate_bytes_burst: l[11],
        max_rooms_per_peer: l[12],
    })
}

fn ice_server() -> impl Strategy<Value = IceServer> {
    (vec(text(40), 0..3), text(20), text(20)).prop_map(|(urls, username, credential)| IceServer {
        urls,
        username,
        credential,
    })
}

fn hello() -> impl Strategy<Value = Message> {
    (
        any::<u32>(),
        capabilities(),
        proptest::option::of("[A-Za-z0-9._-]{1,300}"),
        text(40),
    )
        .prop_map(
            |(protocol_version, capabilities, access_token, user_agent)| {
                Message::Hello(Hello {
                    resume: None,
                    protocol_version,
                    capabilities,
                    access_token,
                    user_agent,
                })
            },
        )
}

fn welcome() -> impl Strategy<Value = Message> {
    (
        any::<u64>(),
        any::<u32>(),
        limits(),
        any::<u32>(),
        any::<u32>(),
        vec(ice_server(), 0..4),
        capabilities(),
        any::<u32>(),
    )
        .prop_map(
            |(peer_id, version, limits, interval, timeout, ice_servers, caps, dict)| {
                Message::Welcome(Welcome {
                    resume: None,
                    peer_id: PeerId(peer_id),
                    protocol_version: version,
                    limits,
                    heartbeat_interval: Duration::from_millis(interval.into()),
                    heartbeat_timeout: Duration::from_millis(timeout.into()),
                    ice_servers,
                    capabilities: caps,
                    sdp_dictionary: dict,
                })
            },
        )
}

fn join() -> impl Strategy<Value = Message> {
    (
        room_id(),
        prop_oneof![Just(RoomMode::Pair), Just(RoomMode::Mesh)],
        proptest::option::of(1u32..),
        text(32),
    )
        .prop_map(|(room, mode, capacity, display_name)| {
            Message::Join(Join {
                room,
                mode,
                capacity,
                display_name,
            })
        })
}

fn joined() -> impl Strategy<Value = Message> {
    (
        room_id(),
        (0i32..=2).prop_map(|m| RoomMode::try_from(m).unwrap()),
        any::<u32>(),
        vec(member(), 0..8),
        any::<bool>(),
    )
        .prop_map(|(room, mode, capacity, members, initiator)| {
            Message::Joined(Joined {
                room,
                mode,
                capacity,
                members,
                initiator,
            })
        })
}

fn ice() -> impl Strategy<Value = Message> {
    (
        address(),
        vec(candidate(), 0..16),
        any::<bool>(),
        proptest::option::of(room_id()),
        text(64),
    )
        .prop_map(|(peer, candidates, end_of_candidates, room, app_data)| {
            Message::Ice(IceCandidates {
                peer,
                candidates,
                end_of_candidates,
                room,
                app_data,
            })
        })
}

/// Any valid message of protocol v1, every variant reachable.
fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        hello(),
        welcome(),
        any::<u64>().prop_map(|nonce| Message::Ping { nonce }),
        any::<u64>().prop_map(|nonce| Message::Pong { nonce }),
        any::<u32>().prop_map(|seq| Message::Ack { seq }),
        join(),
        joined(),
        (room_id(), member(), any::<bool>()).prop_map(|(room, member, initiator)| {
            Message::PeerJoined(PeerJoined {
                room,
                member,
                initiator,
            })
        }),
        (room_id(), any::<u64>(), leave_reason()).prop_map(|(room, id, reason)| {
            Message::PeerLeft(PeerLeft {
                room,
                peer_id: PeerId(id),
                reason,
            })
        }),
        (room_id(), any::<u32>()).prop_map(|(room, capacity)| Message::RoomFull { room, capacity }),
        room_id().prop_map(|room| Message::Leave { room }),
        room_id().prop_map(|room| Message::Left { room }),
        user_name().prop_map(|name| Message::Login { name }),
        (user_name(), proptest::option::of(failure_code()))
            .prop_map(|(name, error)| Message::LoginResult(LoginResult { name, error })),
        Just(Message::Logout),
        address().prop_map(|peer| Message::HangUp { peer }),
        session_description().prop_map(Message::Offer),
        session_description().prop_map(Message::Answer),
        ice(),
        (error_code(), text(100), any::<u32>()).prop_map(|(code, message, request_seq)| {
            Message::Error(ErrorMessage {
                code,
                message,
                request_seq,
            })
        }),
    ]
}

// ------------------------------------------------------------------ properties

fn decode_all(bytes: Bytes) -> Vec<Result<(u32, Message), DecodeError>> {
    decode_message(bytes, &CodecLimits::default()).collect()
}

proptest! {
    #[test]
    fn every_message_round_trips(msg in message(), seq in any::<u32>()) {
        let mut out = BytesMut::new();
        encode_into(&msg, seq, &mut out);
        prop_assert_eq!(decode_all(out.freeze()), vec![Ok((seq, msg))]);
    }

    #[test]
    fn several_messages_in_one_frame_round_trip(msgs in vec(message(), 1..8), first_seq in any::<u32>()) {
        let mut out = BytesMut::new();
        let mut expected = Vec::new();
        for (i, msg) in msgs.into_iter().enumerate() {
            let seq = first_seq.wrapping_add(i as u32);
            encode_into(&msg, seq, &mut out);
            expected.push(Ok((seq, msg)));
        }
        prop_assert_eq!(decode_all(out.freeze()), expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..2048)) {
        let decoded = decode_all(Bytes::from(bytes));
        prop_assert!(decoded.len() <= CodecLimits::default().max_frames + 1);
    }

    #[test]
    fn arbitrary_frames_never_panic(
        frames in vec((any::<u8>(), 0u8..4, any::<u32>(), vec(any::<u8>(), 0..256)), 1..8),
    ) {
        // Well-formed headers (version 1, honest lengths) in front of random
        // payloads, so the protobuf and field checks are reached.
        let mut out = BytesMut::new();
        for (kind, flags, seq, payload) in &frames {
            out.extend_from_slice(&[1, *kind, *flags, 0]);
            out.extend_from_slice(&seq.to_be_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            out.extend_from_slice(payload);
        }
        prop_assert_eq!(decode_all(out.freeze()).len(), frames.len());
    }

    #[test]
    fn arbitrary_payload_of_each_known_type_never_panics(
        payload in vec(any::<u8>(), 0..1024),
        deflate in any::<bool>(),
    ) {
        for kind in MessageType::ALL {
            let flags = if deflate { Flags::DEFLATE_SDP } else { Flags::default() };
            let mut out = BytesMut::new();
            write_frame(&mut out, kind, flags, 1, &payload);
            let decoded = decode_all(out.freeze());
            prop_assert_eq!(decoded.len(), 1);
            if let Err(e) = &decoded[0] {
                // Every error maps to a wire code.
                let _ = e.code();
            }
        }
    }

    #[test]
    fn mutated_messages_never_panic(
        msg in message(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut out = BytesMut::new();
        encode_into(&msg, 1, &mut out);
        encode_into(&Message::Ping { nonce: 1 }, 2, &mut out);
        let mut bytes = out.to_vec();
        for (at, value) in flips {
            let at = at.index(bytes.len());
            bytes[at] = value;
        }
        let _ = decode_all(Bytes::from(bytes));
    }
}

/// 100,000 empty candidates take 200 KB on the wire and would be 100,000
/// structs once decoded; the codec counts them first and refuses.
#[test]
fn huge_ice_batch_is_refused_by_count_before_decoding() {
    let limits = CodecLimits {
        max_payload: 1 << 20,
        ..CodecLimits::default()
    };
    // Address { peer_id: 1 }, then one candidate that is not valid protobuf
    // inside (1a 01 ff: a key with no value), then 100,000 empty ones (1a 00).
    // Had prost decoded the payload, the bad candidate would give a Protobuf
    // error; the count, which only skips over candidates, comes first.
    let mut payload = vec![0x0a, 0x02, 0x08, 0x01, 0x1a, 0x01, 0xff];
    for _ in 0..100_000 {
        payload.extend([0x1a, 0x00]);
    }
    let mut out = BytesMut::new();
    write_frame(&mut out, MessageType::Ice, Flags::default(), 1, &payload);
    let decoded: Vec<_> = decode_message(out.freeze(), &limits).collect();
    assert_eq!(
        decoded,
        vec![Err(DecodeError::Field(FieldError::TooMany {
            field: "candidates",
            count: 100_001,
            max: limits.max_candidates,
        }))]
    );
    assert_eq!(decoded[0].as_ref().unwrap_err().code(), ErrorCode::TooLarge);
}

#[test]
fn huge_ice_batch_over_the_default_payload_limit_is_too_large() {
    let mut payload = vec![0x0a, 0x02, 0x08, 0x01];
    for _ in 0..100_000 {
        payload.extend([0x1a, 0x00]);
    }
    let mut out = BytesMut::new();
    write_frame(&mut out, MessageType::Ice, Flags::default(), 1, &payload);
    let decoded = decode_all(out.freeze());
    assert!(
        matches!(decoded[..], [Err(DecodeError::TooLarge { .. })]),
        "{decoded:?}"
    );
}

mod ice_batching {
    use std::time::{Duration, Instant};

    use proptest::prelude::*;
    use switchboard::protocol::ice::{Batch, BatchConfig, IceBatcher};
    use switchboard::protocol::IceCandidate;

    fn candidate(n: usize) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 1 192.0.2.2 {n} typ host"),
            ..IceCandidate::default()
        }
    }

    proptest! {
        /// Whatever the timing, candidates come out once each, in order, in
        /// batches of at most `max`, none held past its window when the
        /// caller polls at the deadline, and the end marker comes last.
        #[test]
        fn batches_preserve_order_and_bounds(
            gaps_ms in proptest::collection::vec(0u64..30, 0..40),
            window_ms in 0u64..40,
            max in 1usize..10,
        ) {
            let config = BatchConfig { window: Duration::from_millis(window_ms), max };
            let mut batcher = IceBatcher::new(config);
            let t0 = Instant::now();
            let mut now = t0;
            let mut batches: Vec<Batch> = Vec::new();
            for (n, gap) in gaps_ms.iter().enumerate() {
                let next = now + Duration::from_millis(*gap);
                // The caller wakes at the deadline if it comes first.
                if let Some(deadline) = batcher.deadline() {
                    if deadline <= next {
                        batches.extend(batcher.poll(deadline));
                        prop_assert!(batcher.deadline().is_none());
                    }
                }
                now = next;
                batches.extend(batcher.push(candidate(n), now));
                if let Some(deadline) = batcher.deadline() {
                    prop_assert!(deadline > now, "a due batch was not returned by push");
                }
            }
            batches.push(batcher.end_of_candidates());
            prop_assert_eq!(batcher.pending(), 0);

            let all: Vec<_> = batches.iter().flat_map(|b| b.candidates.clone()).collect();
            let expected: Vec<_> = (0..gaps_ms.len()).map(candidate).collect();
            prop_assert_eq!(all, expected);
            for (i, batch) in batches.iter().enumerate() {
                prop_assert!(batch.candidates.len() <= max);
                prop_assert_eq!(batch.end_of_candidates, i == batches.len() - 1);
                if i + 1 < batches.len() {
                    prop_assert!(!batch.candidates.is_empty());
                }
            }
        }
    }
}
