//! Two clients negotiate a fake call through a running server.
//!
//! ```text
//! cargo run --release &                       # a server on :8080
//! cargo run --example call -- ws://127.0.0.1:8080/ws
//! ```
//!
//! Alice and Bob join a pair room; Bob (the later joiner, so the initiator)
//! sends Chrome's sample offer, Alice answers, both trickle a few
//! candidates, which leave in one batch, and Bob hangs up.

use std::time::{Duration, Instant};

use switchboard::client::{Client, ClientConfig, Event};
use switchboard::protocol::{Address, IceCandidate, RoomId, RoomMode};

const OFFER: &str = include_str!("../tests/data/sdp/chrome-offer.sdp");
const ANSWER: &str = include_str!("../tests/data/sdp/chrome-answer.sdp");

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let room = RoomId::new(&format!("call-{}", std::process::id()))?;
    let started = Instant::now();

    let mut alice = Client::connect(&url, ClientConfig::default()).await?;
    let mut bob = Client::connect(&url, ClientConfig::default()).await?;
    println!("alice is {}, bob is {}", alice.peer_id(), bob.peer_id());

    alice.join(room.clone(), RoomMode::Pair).await?;
    wait(&mut alice, "alice", |e| matches!(e, Event::Joined(_))).await?;
    bob.join(room.clone(), RoomMode::Pair).await?;
    wait(
        &mut bob,
        "bob",
        |e| matches!(e, Event::Joined(j) if j.initiator),
    )
    .await?;

    let to_alice = Address::Peer(alice.peer_id());
    let to_bob = Address::Peer(bob.peer_id());
    bob.send_offer(to_alice.clone(), OFFER).await?;
    for n in 0..3 {
        bob.send_ice(to_alice.clone(), candidate(n)).await?;
    }
    bob.end_of_candidates(to_alice.clone()).await?;

    wait(
        &mut alice,
        "alice",
        |e| matches!(e, Event::Offer { sdp, .. } if sdp == OFFER),
    )
    .await?;
    alice.send_answer(to_bob.clone(), ANSWER).await?;
    for n in 10..12 {
        alice.send_ice(to_bob.clone(), candidate(n)).await?;
    }
    alice.end_of_candidates(to_bob.clone()).await?;
    wait(&mut alice, "alice", |e| {
        matches!(
            e,
            Event::Ice {
                end_of_candidates: true,
                ..
            }
        )
    })
    .await?;
    wait(
        &mut bob,
        "bob",
        |e| matches!(e, Event::Answer { sdp, .. } if sdp == ANSWER),
    )
    .await?;
    wait(&mut bob, "bob", |e| {
        matches!(
            e,
            Event::Ice {
                end_of_candidates: true,
                ..
            }
        )
    })
    .await?;
    println!("negotiated in {:?}", started.elapsed());

    bob.hang_up(to_alice).await?;
    wait(&mut alice, "alice", |e| matches!(e, Event::HangUp { .. })).await?;
    alice.close().await;
    bob.close().await;
    Ok(())
}

/// Prints events until one matches `done`.
async fn wait(c: &mut Client, who: &str, done: impl Fn(&Event) -> bool) -> Result<(), Error> {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), c.next_event())
            .await
            .map_err(|_| format!("{who}: no event in 5 s"))?
            .ok_or_else(|| format!("{who}: session ended"))?;
        println!("{who}: {}", summary(&event));
        if done(&event) {
            return Ok(());
        }
    }
}

fn summary(e: &Event) -> String {
    match e {
        Event::Offer { from, sdp, .. } => {
            format!("offer from {from:?}, {} bytes of SDP", sdp.len())
        }
        Event::Answer { from, sdp, .. } => {
            format!("answer from {from:?}, {} bytes of SDP", sdp.len())
        }
        Event::Ice {
            from,
            candidates,
            end_of_candidates,
        } => format!(
            "{} candidates from {from:?} in one batch{}",
            candidates.len(),
            if *end_of_candidates {
                ", end of candidates"
            } else {
                ""
            }
        ),
        other => format!("{other:?}"),
    }
}

fn candidate(n: u32) -> IceCandidate {
    IceCandidate {
        candidate: format!(
            "candidate:{n} 1 udp 2122260223 192.0.2.7 {} typ host",
            50000 + n
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("EsAw".into()),
    }
}
