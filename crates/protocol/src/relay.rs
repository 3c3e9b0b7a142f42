//! The relay fast path: re-address an Offer, Answer or IceCandidates payload
//! without decoding it into owned values.
//!
//! A relayed signal differs from what its sender sent only in its `peer`
//! field (the server writes the sender there). Every encoder puts that
//! field first, so the payload is "field 1, then the rest": [`scan`] checks
//! the whole payload in place, and [`readdress`] writes a new field 1 in
//! front of the unchanged rest. No string is allocated and nothing is
//! re-encoded.
//!
//! The scan is deliberately conservative. It returns `None` for anything
//! unusual (the address not first or repeated, a wire type it does not
//! expect, a field this version does not know, any field failing
//! validation) and the caller then takes the full
//! decoder, which either accepts the message or reports the exact error. So
//! the fast path never accepts what [`decode`](super::decode) refuses, and
//! the property tests check that both read an accepted payload the same way.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{decode_key, decode_varint, encode_key, encode_varint, WireType};

use super::message::{MAX_APP_DATA_BYTES, MAX_CANDIDATE_BYTES, PROTOCOL_VERSION};
use super::MAX_ID_BYTES;
use super::{Address, CodecLimits, Flags, MessageType, PeerId, RawFrame, RoomId, UserName};

/// A signal checked in place, ready to be re-addressed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// Offer, Answer or Ice.
    pub kind: MessageType,
    /// The frame's flags (DEFLATE_SDP on a compressed SDP).
    pub flags: Flags,
    /// Whom the sender addressed.
    pub target: Address,
    /// The room the sender named, if any.
    pub room: Option<RoomId>,
    /// Bytes of SDP (as sent, deflated or not); 0 for ICE.
    pub sdp_len: usize,
    /// The payload after the address field.
    body: Bytes,
}

impl Signal {
    /// Whether the SDP is deflated.
    pub fn deflated(&self) -> bool {
        self.flags.contains(Flags::DEFLATE_SDP)
    }
}

const _: () = assert!(PROTOCOL_VERSION == 1, "the layout below is protocol v1's");

/// Checks a client's signal frame in place; `None` means "use the full
/// decoder" (the frame is not a signal, is laid out unusually, or is invalid).
pub fn scan(frame: &RawFrame, limits: &CodecLimits) -> Option<Signal> {
    let kind = MessageType::from_byte(frame.header.kind)?;
    let flags = frame.header.flags;
    let sdp = match kind {
        MessageType::Offer | MessageType::Answer => true,
        MessageType::Ice => false,
        _ => return None,
    };
    if flags.0 & !Flags::KNOWN != 0 || (flags.contains(Flags::DEFLATE_SDP) && !sdp) {
        return None;
    }
    let payload = &frame.payload[..];
    if payload.len() > limits.max_payload {
        return None;
    }
    let mut buf = payload;
    let (tag, wire) = decode_key(&mut buf).ok()?;
    if tag != 1 || wire != WireType::LengthDelimited {
        return None;
    }
    let address = length_delimited(&mut buf)?;
    let target = parse_address(address)?;
    let body_start = payload.len() - buf.len();
    let (room, sdp_len) = if sdp {
        check_session_description(buf, flags.contains(Flags::DEFLATE_SDP), limits)?
    } else {
        (check_ice(buf, limits)?, 0)
    };
    let room = match room {
        Some(r) if !r.is_empty() => Some(RoomId::new(r).ok()?),
        _ => None,
    };
    Some(Signal {
        kind,
        flags,
        target,
        room,
        sdp_len,
        body: frame.payload.slice(body_start..),
    })
}

/// The payload of `signal` as its receiver gets it: `from` in the address
/// field, everything else as the sender wrote it.
pub fn readdress(signal: &Signal, from: &Address) -> Bytes {
    let mut address = [0u8; 16 + MAX_ID_BYTES];
    let mut a = &mut address[..];
    match from {
        Address::Peer(id) => {
            encode_key(1, WireType::Varint, &mut a);
            encode_varint(id.0, &mut a);
        }
        Address::User(name) => {
            encode_key(2, WireType::LengthDelimited, &mut a);
            encode_varint(name.as_str().len() as u64, &mut a);
            a.put_slice(name.as_str().as_bytes());
        }
    }
    let address_len = a.len();
    let address_len = address.len() - address_len;
    let mut out = BytesMut::with_capacity(2 + address_len + signal.body.len());
    encode_key(1, WireType::LengthDelimited, &mut out);
    encode_varint(address_len as u64, &mut out);
    out.put_slice(&address[..address_len]);
    out.put_slice(&signal.body);
    out.freeze()
}

fn length_delimited<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(decode_varint(buf).ok()?).ok()?;
    if len > buf.len() {
        return None;
    }
    let (field, rest) = buf.split_at(len);
    *buf = rest;
    Some(field)
}

fn text<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(length_delimited(buf)?).ok()
}

fn parse_address(mut buf: &[u8]) -> Option<Address> {
    let mut address = None;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (1, WireType::Varint) => {
                address = Some(Address::Peer(PeerId(decode_varint(&mut buf).ok()?)))
            }
            (2, WireType::LengthDelimited) => {
                address = Some(Address::User(UserName::new(text(&mut buf)?).ok()?))
            }
            (1 | 2, _) => return None,
            // Unknown fields would be relayed though the full
            // decoder drops them: leave such payloads to it.
            _ => return None,
        }
    }
    address
}

/// Checks the rest of a SessionDescription; returns its room field and the
/// length of its SDP.
fn check_session_description<'a>(
    mut buf: &'a [u8],
    deflated: bool,
    limits: &CodecLimits,
) -> Option<(Option<&'a str>, usize)> {
    let mut sdp: &[u8] = &[];
    let mut room = None;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (3, WireType::LengthDelimited) => sdp = length_delimited(&mut buf)?,
            (4, WireType::LengthDelimited) => room = Some(text(&mut buf)?),
            (5, WireType::LengthDelimited) => app_data(&mut buf)?,
            (1 | 3 | 4 | 5, _) => return None,
            // Unknown fields would be relayed though the full
            // decoder drops them: leave such payloads to it.
            _ => return None,
        }
    }
    if sdp.len() > limits.max_sdp || (!deflated && std::str::from_utf8(sdp).is_err()) {
        return None;
    }
    Some((room, sdp.len()))
}

/// Checks the rest of an IceCandidates; returns its room field.
fn check_ice<'a>(mut buf: &'a [u8], limits: &CodecLimits) -> Option<Option<&'a str>> {
    let mut room = None;
    let mut count = 0;
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (3, WireType::LengthDelimited) => {
                count += 1;
                if count > limits.max_candidates {
                    return None;
                }
                check_candidate(length_delimited(&mut buf)?)?;
            }
            (4, WireType::Varint) => {
                decode_varint(&mut buf).ok()?;
            }
            (5, WireType::LengthDelimited) => room = Some(text(&mut buf)?),
            (6, WireType::LengthDelimited) => app_data(&mut buf)?,
            (1 | 3..=6, _) => return None,
            // Unknown fields would be relayed though the full
            // decoder drops them: leave such payloads to it.
            _ => return None,
        }
    }
    Some(room)
}

/// An `app_data` field: UTF-8 and within its bound (the last occurrence is
/// the one the decoder keeps, and each one must pass).
fn app_data(buf: &mut &[u8]) -> Option<()> {
    (text(buf)?.len() <= MAX_APP_DATA_BYTES).then_some(())
}

fn check_candidate(mut buf: &[u8]) -> Option<()> {
    // The last occurrence of a field is the one that counts; each must be
    // UTF-8, as prost checks every occurrence it reads.
    let (mut candidate, mut mid, mut ufrag) = (0, 0, 0);
    while !buf.is_empty() {
        let (tag, wire) = decode_key(&mut buf).ok()?;
        match (tag, wire) {
            (1, WireType::LengthDelimited) => candidate = text(&mut buf)?.len(),
            (2, WireType::LengthDelimited) => mid = text(&mut buf)?.len(),
            (3, WireType::Varint) => {
                decode_varint(&mut buf).ok()?;
            }
            (4, WireType::LengthDelimited) => ufrag = text(&mut buf)?.len(),
            (1..=4, _) => return None,
            // Unknown fields would be relayed though the full
            // decoder drops them: leave such payloads to it.
            _ => return None,
        }
    }
    (candidate <= MAX_CANDIDATE_BYTES && mid <= MAX_ID_BYTES && ufrag <= MAX_ID_BYTES).then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        decode, encode, Header, IceCandidate, IceCandidates, Message, Sdp, SessionDescription,
    };

    fn frame_of(m: &Message) -> RawFrame {
        let e = encode(m);
        RawFrame {
            header: Header {
                kind: e.kind as u8,
                flags: e.flags,
                seq: 1,
                len: e.payload.len() as u32,
            },
            payload: e.payload,
        }
    }

    fn ice(to: Address) -> Message {
        Message::Ice(IceCandidates {
            peer: to,
            candidates: vec![IceCandidate {
                candidate: "candidate:1 1 udp 2113937151 192.0.2.1 50000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: Some("abcd".into()),
            }],
            end_of_candidates: false,
            room: Some(RoomId::new("r").unwrap()),
            app_data: r#"{"seq":1}"#.into(),
        })
    }

    #[test]
    fn readdressed_ice_decodes_as_the_original_from_the_sender() {
        let limits = CodecLimits::default();
        let sent = ice(Address::Peer(PeerId(2)));
        let signal = scan(&frame_of(&sent), &limits).expect("canonical ice is scanned");
        assert_eq!(signal.target, Address::Peer(PeerId(2)));
        assert_eq!(signal.room, Some(RoomId::new("r").unwrap()));
        let from = Address::User(UserName::new("alice").unwrap());
        let out = RawFrame {
            header: Header {
                kind: signal.kind as u8,
                flags: signal.flags,
                seq: 1,
                len: 0,
            },
            payload: readdress(&signal, &from),
        };
        let Message::Ice(mut expected) = sent else {
            unreachable!()
        };
        expected.peer = from;
        assert_eq!(decode(&out, &limits).unwrap(), Message::Ice(expected));
    }

    #[test]
    fn invalid_or_unusual_payloads_go_to_the_full_decoder() {
        let limits = CodecLimits::default();
        // app_data over its bound.
        let Message::Ice(mut long) = ice(Address::Peer(PeerId(1))) else {
            unreachable!()
        };
        long.app_data = "x".repeat(MAX_APP_DATA_BYTES + 1);
        let long = frame_of(&Message::Ice(long));
        assert!(decode(&long, &limits).is_err());
        assert!(scan(&long, &limits).is_none());
        // Plain SDP that is not UTF-8.
        let bad = Message::Offer(SessionDescription {
            peer: Address::Peer(PeerId(1)),
            sdp: Sdp::Plain(Bytes::from_static(b"\xff")),
            room: None,
            app_data: String::new(),
        });
        assert!(scan(&frame_of(&bad), &limits).is_none());
        // Not a signal.
        assert!(scan(&frame_of(&Message::Ping { nonce: 1 }), &limits).is_none());
        // Too many candidates.
        let mut many = ice(Address::Peer(PeerId(1)));
        if let Message::Ice(i) = &mut many {
            i.candidates = vec![IceCandidate::default(); limits.max_candidates + 1];
        }
        assert!(scan(&frame_of(&many), &limits).is_none());
        // An unknown field: the full decoder drops it, so the fast path must
        // not relay it.
        let mut unknown = frame_of(&ice(Address::Peer(PeerId(1))));
        let mut bytes = unknown.payload.to_vec();
        bytes.extend_from_slice(&[0x7a, 0x03, b'x', b'y', b'z']);
        unknown.payload = bytes.into();
        assert!(decode(&unknown, &limits).is_ok());
        assert!(scan(&unknown, &limits).is_none());
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn message() -> impl Strategy<Value = Message> {
            let address = prop_oneof![
                any::<u64>().prop_map(|id| Address::Peer(PeerId(id))),
                "[a-z]{1,8}".prop_map(|n| Address::User(UserName::new(&n).unwrap())),
            ];
            let room = proptest::option::of("[a-z0-9]{1,8}".prop_map(|r| RoomId::new(&r).unwrap()));
            let candidate = (
                "[ -~]{0,40}",
                proptest::option::of("[0-9]{1,2}"),
                proptest::option::of(any::<u32>()),
            )
                .prop_map(|(c, mid, idx)| IceCandidate {
                    candidate: c,
                    sdp_mid: mid,
                    sdp_m_line_index: idx,
                    username_fragment: None,
                });
            prop_oneof![
                (
                    address.clone(),
                    proptest::collection::vec(candidate, 0..4),
                    any::<bool>(),
                    room.clone(),
                    "[ -~]{0,20}"
                )
                    .prop_map(
                        |(peer, candidates, end_of_candidates, room, app_data)| {
                            Message::Ice(IceCandidates {
                                peer,
                                candidates,
                                end_of_candidates,
                                room,
                                app_data,
                            })
                        }
                    ),
                (
                    address,
                    proptest::collection::vec(any::<u8>(), 0..64),
                    any::<bool>(),
                    room,
                    "[ -~]{0,20}"
                )
                    .prop_map(|(peer, sdp, deflated, room, app_data)| {
                        let sdp = if deflated {
                            Sdp::Deflated(sdp.into())
                        } else {
                            Sdp::Plain(String::from_utf8_lossy(&sdp).into_owned().into())
                        };
                        Message::Offer(SessionDescription {
                            peer,
                            sdp,
                            room,
                            app_data,
                        })
                    }),
            ]
        }

        proptest! {
            /// Whatever the fast path accepts, the full decoder accepts with
            /// the same meaning, and the re-addressed payload decodes to it
            /// with only the sender changed.
            #[test]
            fn the_fast_path_agrees_with_the_full_decoder(
                m in message(),
                flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..3),
                extra in proptest::collection::vec(any::<u8>(), 0..8),
            ) {
                let limits = CodecLimits::default();
                let mut frame = frame_of(&m);
                let mut bytes = frame.payload.to_vec();
                for (at, value) in flips {
                    if !bytes.is_empty() {
                        let i = at % bytes.len();
                        bytes[i] = value;
                    }
                }
                bytes.extend_from_slice(&extra);
                frame.payload = bytes.into();
                if let Some(signal) = scan(&frame, &limits) {
                    let full = decode(&frame, &limits).expect("the full decoder accepts what the fast path accepts");
                    let from = Address::Peer(PeerId(77));
                    let out = RawFrame { header: frame.header, payload: readdress(&signal, &from) };
                    let relayed = decode(&out, &limits).expect("re-addressed payload decodes");
                    let expected = match full {
                        Message::Ice(mut i) => { prop_assert_eq!(&i.peer, &signal.target); prop_assert_eq!(&i.room, &signal.room); i.peer = from; Message::Ice(i) }
                        Message::Offer(mut d) => { prop_assert_eq!(&d.peer, &signal.target); prop_assert_eq!(&d.room, &signal.room); d.peer = from; Message::Offer(d) }
                        other => panic!("unexpected {other:?}"),
                    };
                    prop_assert_eq!(relayed, expected);
                }
            }
        }
    }
}
