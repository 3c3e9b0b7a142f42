//! The routing table under contention.
//!
//! `resolve_deliver/{shards}shards/{threads}t`: each thread resolves its
//! partner in a pair room of its own (rooms are distinct across threads)
//! and delivers one ICE-sized frame to the partner's outbox, draining the
//! outbox every 32 frames as the connection task would. One iteration is
//! one resolve + deliver on every thread, so with perfect scaling the time
//! per iteration stays flat from 1 to 2 threads and the reported
//! elements/s double. 1 shard shows the cost of one global lock.
//!
//! Quick run: `cargo bench --bench routing -- --warm-up-time 1 --measurement-time 3`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use switchboard::directory::{Directory, LocalDirectory};
use switchboard::outbox::{Origin, Outbox, OutboxLimits};
use switchboard::protocol::{
    encode, Address, Capabilities, Encoded, IceCandidate, IceCandidates, Member, Message, PeerId,
    RoomId, RoomMode,
};
use switchboard::registry::Registry;
use switchboard::rooms::RoomPolicy;

/// Pairs per thread: enough rooms that they spread over the shards.
const PAIRS_PER_THREAD: usize = 64;

struct Pair {
    from: PeerId,
    to: PeerId,
    room: [RoomId; 1],
    outbox: Arc<Outbox>,
}

fn frame(to: PeerId) -> Encoded {
    encode(&Message::Ice(IceCandidates {
        peer: Address::Peer(to),
        candidates: vec![IceCandidate {
            candidate: "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx \
                        raddr 192.168.1.10 rport 61665 generation 0"
                .into(),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("EsAw".into()),
        }],
        end_of_candidates: false,
        room: None,
        app_data: String::new(),
    }))
}

fn member(peer: PeerId) -> Member {
    Member {
        peer_id: peer,
        display_name: String::new(),
        user: None,
        capabilities: Capabilities::DEFLATE_SDP.union(Capabilities::ICE_BATCH),
    }
}

/// A directory with `threads × PAIRS_PER_THREAD` pairs, each in its own room.
fn setup(shards: usize, threads: usize) -> (Arc<LocalDirectory>, Vec<Vec<Pair>>) {
    let router = Arc::new(LocalDirectory::new(
        Arc::new(Registry::new(shards)),
        shards,
        RoomPolicy {
            default_capacity: 8,
            max_capacity: 64,
        },
    ));
    let limits = OutboxLimits {
        frames: 1024,
        bytes: 1 << 20,
    };
    let mut serial = 0;
    let groups = (0..threads)
        .map(|t| {
            (0..PAIRS_PER_THREAD)
                .map(|i| {
                    let room = RoomId::new(&format!("bench-{t}-{i}")).unwrap();
                    let mut ids = [PeerId(0); 2];
                    let mut outboxes = Vec::new();
                    for id in &mut ids {
                        serial += 1;
                        *id = PeerId::new(0, 0, serial as u32);
                        let outbox = Arc::new(Outbox::new(limits));
                        router
                            .registry()
                            .register(*id, member(*id).capabilities, outbox.clone());
                        router
                            .join_now(&room, RoomMode::Pair, None, member(*id), true)
                            .unwrap();
                        outboxes.push(outbox);
                    }
                    Pair {
                        from: ids[0],
                        to: ids[1],
                        room: [room],
                        outbox: outboxes.pop().unwrap(),
                    }
                })
                .collect()
        })
        .collect();
    (router, groups)
}

/// `iters` resolve + deliver on one thread, round-robin over its pairs.
fn work(router: &LocalDirectory, pairs: &[Pair], iters: u64) {
    let frames: Vec<Encoded> = pairs.iter().map(|p| frame(p.from)).collect();
    let mut drained = Vec::with_capacity(64);
    let read_at = std::time::Instant::now();
    for i in 0..iters as usize {
        let k = i % pairs.len();
        let p = &pairs[k];
        let target = router
            .resolve_now(p.from, None, &p.room, None, &Address::Peer(p.to))
            .unwrap();
        let origin = Origin {
            peer: p.from,
            seq: i as u32,
            read_at,
        };
        router.deliver(&target, frames[k].clone(), origin).unwrap();
        if (i / pairs.len()) % 32 == 31 && k == pairs.len() - 1 {
            for p in pairs {
                p.outbox.drain(&mut drained, usize::MAX, usize::MAX);
            }
            drained.clear();
        }
    }
    for p in pairs {
        p.outbox.drain(&mut drained, usize::MAX, usize::MAX);
    }
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve_deliver");
    for shards in [1, 64] {
        for threads in [1, 2] {
            let (router, groups) = setup(shards, threads);
            group.throughput(Throughput::Elements(threads as u64));
            group.bench_function(
                BenchmarkId::new(format!("{shards}shards"), format!("{threads}t")),
                |b| {
                    b.iter_custom(|iters| {
                        let start = Instant::now();
                        std::thread::scope(|s| {
                            for pairs in &groups {
                                let router = &router;
                                s.spawn(move || work(router, pairs, iters));
                            }
                        });
                        start.elapsed()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3));
    targets = routing
}
criterion_main!(benches);
