//! Codec benchmarks over in-memory bytes.
//!
//! - `offer/{plain,deflate,deflate_dict}/{encode,decode}`: the Chrome offer of
//!   `tests/data/sdp` framed as an Offer, with compression (encode) and
//!   inflation (decode) included in the time. `deflate` is plain raw DEFLATE
//!   level 6 through flate2 without the preset dictionary, for comparison;
//!   `deflate_dict` is what the protocol sends (`protocol::sdp`).
//! - `ice_batch_8/{encode,decode}`: one IceCandidates of 8 candidates.
//! - `frames_16/{split,decode}`: cutting a 16-frame WebSocket message into
//!   frames, and decoding all of them.
//!
//! Quick run: `cargo bench --bench codec -- --warm-up-time 1 --measurement-time 3`.

use std::hint::black_box;
use std::io::Write as _;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use flate2::{write::DeflateEncoder, Compression, Decompress, FlushDecompress};
use switchboard::protocol::{
    decode_message, encode_into, sdp, Address, CodecLimits, Frames, IceCandidate, IceCandidates,
    Message, PeerId, RoomId, Sdp, SessionDescription,
};

const OFFER: &[u8] = include_bytes!("../tests/data/sdp/chrome-offer.sdp");

fn offer(sdp: Sdp) -> Message {
    Message::Offer(SessionDescription {
        peer: Address::Peer(PeerId::new(1, 0, 2)),
        sdp,
        room: Some(RoomId::new("1001").unwrap()),
        app_data: String::new(),
    })
}

fn frame(msg: &Message) -> Bytes {
    let mut out = BytesMut::new();
    encode_into(msg, 1, &mut out);
    out.freeze()
}

/// Decodes a one-frame message and returns its SDP bytes as sent.
fn decoded_sdp(bytes: Bytes, limits: &CodecLimits) -> Bytes {
    match decode_message(bytes, limits).next() {
        Some(Ok((_, Message::Offer(d)))) => match d.sdp {
            Sdp::Plain(b) | Sdp::Deflated(b) => b,
        },
        other => panic!("not an offer: {other:?}"),
    }
}

/// Raw DEFLATE at level 6 without a dictionary.
fn deflate_plain(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::with_capacity(data.len() / 2), Compression::new(6));
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn inflate_plain(data: &[u8], max: usize) -> Vec<u8> {
    let mut d = Decompress::new(false);
    let mut out = Vec::with_capacity(max);
    d.decompress_vec(data, &mut out, FlushDecompress::Finish)
        .unwrap();
    out
}

fn bench_offer(c: &mut Criterion) {
    let limits = CodecLimits::default();
    let mut group = c.benchmark_group("offer");
    group.throughput(Throughput::Bytes(OFFER.len() as u64));

    let plain = frame(&offer(Sdp::Plain(Bytes::from_static(OFFER))));
    let deflated = frame(&offer(Sdp::Deflated(deflate_plain(OFFER).into())));
    let with_dict = frame(&offer(Sdp::Deflated(sdp::deflate(OFFER).into())));
    eprintln!(
        "chrome-offer.sdp: {} bytes of SDP; frame on the wire: plain {} B, deflate {} B, deflate+dict {} B",
        OFFER.len(),
        plain.len(),
        deflated.len(),
        with_dict.len()
    );

    group.bench_function("plain/encode", |b| {
        b.iter(|| frame(&offer(Sdp::Plain(Bytes::from_static(black_box(OFFER))))))
    });
    group.bench_function("plain/decode", |b| {
        b.iter(|| decoded_sdp(black_box(plain.clone()), &limits))
    });

    group.bench_function("deflate/encode", |b| {
        b.iter(|| {
            frame(&offer(Sdp::Deflated(
                deflate_plain(black_box(OFFER)).into(),
            )))
        })
    });
    group.bench_function("deflate/decode", |b| {
        b.iter(|| {
            let wire = decoded_sdp(black_box(deflated.clone()), &limits);
            inflate_plain(&wire, limits.max_sdp)
        })
    });

    group.bench_function("deflate_dict/encode", |b| {
        b.iter(|| frame(&offer(Sdp::Deflated(sdp::deflate(black_box(OFFER)).into()))))
    });
    group.bench_function("deflate_dict/decode", |b| {
        b.iter(|| {
            let wire = decoded_sdp(black_box(with_dict.clone()), &limits);
            sdp::inflate(&wire, limits.max_sdp).unwrap()
        })
    });
    group.finish();

    // Sanity: both compressed forms restore the offer.
    assert_eq!(
        inflate_plain(&decoded_sdp(deflated, &limits), limits.max_sdp),
        OFFER
    );
    assert_eq!(
        sdp::inflate(&decoded_sdp(with_dict, &limits), limits.max_sdp).unwrap(),
        OFFER
    );
}

fn ice_batch() -> Message {
    let candidates = (0..8u32)
        .map(|n| IceCandidate {
            candidate: format!(
                "candidate:{} 1 udp 2122194687 192.0.2.{} {} typ host generation 0 ufrag ZXd0 network-id 1",
                2_484_189_599u32.wrapping_add(n),
                n + 2,
                58979 + n
            ),
            sdp_mid: Some((n % 3).to_string()),
            sdp_m_line_index: Some(n % 3),
            username_fragment: Some("ZXd0".into()),
        })
        .collect();
    Message::Ice(IceCandidates {
        peer: Address::Peer(PeerId::new(1, 0, 2)),
        candidates,
        end_of_candidates: false,
        room: Some(RoomId::new("1001").unwrap()),
        app_data: String::new(),
    })
}

fn bench_ice(c: &mut Criterion) {
    let limits = CodecLimits::default();
    let msg = ice_batch();
    let wire = frame(&msg);
    let mut group = c.benchmark_group("ice_batch_8");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("encode", |b| b.iter(|| frame(black_box(&msg))));
    group.bench_function("decode", |b| {
        b.iter(|| {
            decode_message(black_box(wire.clone()), &limits)
                .next()
                .unwrap()
                .unwrap()
        })
    });
    group.finish();
}

fn bench_frames(c: &mut Criterion) {
    let limits = CodecLimits::default();
    // A realistic coalesced message: 16 single-candidate ICE frames.
    let Message::Ice(batch) = ice_batch() else {
        unreachable!()
    };
    let mut out = BytesMut::new();
    for seq in 0..16u32 {
        let single = Message::Ice(IceCandidates {
            candidates: vec![batch.candidates[seq as usize % 8].clone()],
            ..batch.clone()
        });
        encode_into(&single, seq + 1, &mut out);
    }
    let message = out.freeze();
    let mut group = c.benchmark_group("frames_16");
    group.throughput(Throughput::Bytes(message.len() as u64));
    group.bench_function("split", |b| {
        b.iter(|| {
            Frames::new(
                black_box(message.clone()),
                limits.max_payload,
                limits.max_frames,
            )
            .map(|f| f.unwrap().payload.len())
            .sum::<usize>()
        })
    });
    group.bench_function("decode", |b| {
        b.iter(|| {
            decode_message(black_box(message.clone()), &limits)
                .map(|m| m.unwrap().0)
                .max()
        })
    });
    group.finish();
}

criterion_group!(benches, bench_offer, bench_ice, bench_frames);
criterion_main!(benches);
