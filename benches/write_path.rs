//! The connection write path over in-memory I/O.
//!
//! `write_path/{per_message,coalesced_32}`: 32 ICE-sized frames go from
//! encoded [`Encoded`] frames to bytes on a `tokio::io::duplex` pipe through
//! tokio-tungstenite's `WebSocketStream` (server role, so unmasked, as the
//! server writes). `per_message` writes each frame as its own WebSocket
//! message with a flush, as an uncoalesced server would; `coalesced_32`
//! appends all 32 frames to one buffer and writes one message with one
//! flush, as the server's outbox drain does. A task on the other end of the
//! pipe reads and discards. Throughput is in frames.
//!
//! Quick run: `cargo bench --bench write_path -- --warm-up-time 1 --measurement-time 3`.

use std::time::Duration;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::SinkExt;
use switchboard::protocol::{
    encode, Address, Encoded, IceCandidate, IceCandidates, Message, PeerId,
};
use tokio::io::{AsyncReadExt, DuplexStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

const FRAMES: usize = 32;

fn frames() -> Vec<Encoded> {
    (0..FRAMES as u64)
        .map(|n| {
            encode(&Message::Ice(IceCandidates {
                peer: Address::Peer(PeerId::new(0, 0, n as u32 + 1)),
                candidates: vec![IceCandidate {
                    candidate: format!(
                        "candidate:842163049 1 udp 1677729535 203.0.113.7 {} typ srflx \
                         raddr 192.168.1.10 rport 61665 generation 0",
                        50000 + n
                    ),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: Some("EsAw".into()),
                }],
                end_of_candidates: false,
                room: None,
                app_data: String::new(),
            }))
        })
        .collect()
}

/// A server-role WebSocket whose peer end is read and discarded by a task.
async fn socket() -> WebSocketStream<DuplexStream> {
    let (ours, mut theirs) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        let mut buf = vec![0u8; 1 << 16];
        while matches!(theirs.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    WebSocketStream::from_raw_socket(ours, Role::Server, None).await
}

fn write_path(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let frames = frames();
    let mut group = c.benchmark_group("write_path");
    group.throughput(Throughput::Elements(FRAMES as u64));

    let mut ws = runtime.block_on(socket());
    let mut out = BytesMut::with_capacity(1 << 14);
    let mut seq = 0u32;
    group.bench_function("per_message", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for f in &frames {
                    seq = seq.wrapping_add(1);
                    f.write(seq, &mut out);
                    let data = out.split().freeze();
                    ws.send(WsMessage::Binary(data)).await.unwrap();
                }
            })
        })
    });
    group.bench_function("coalesced_32", |b| {
        b.iter(|| {
            runtime.block_on(async {
                for f in &frames {
                    seq = seq.wrapping_add(1);
                    f.write(seq, &mut out);
                }
                let data = out.split().freeze();
                ws.send(WsMessage::Binary(data)).await.unwrap();
            })
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = write_path
}
criterion_main!(benches);
