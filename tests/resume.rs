//! Session resume on the server (docs/PROTOCOL.md, section 11a), driven by
//! a raw client that numbers its own frames, so every sequence number on
//! the wire is the test's to choose and check.

mod common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard::config::Config;
use switchboard::protocol::{
    self, Address, Capabilities, CodecLimits, Frames, Hello, LeaveReason, Message, PeerId,
    ResumeRefusal, ResumeRequest, RoomMode, Welcome, PROTOCOL_VERSION,
};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws = switchboard::client::Socket;

/// A client that speaks the binary protocol frame by frame.
struct Raw {
    ws: Ws,
    /// The last sequence number this client used.
    seq: u32,
    /// The highest server sequence number received (0 = outside the count).
    server_seq: u32,
    welcome: Welcome,
    /// Frames read and not yet taken by `next`.
    queue: std::collections::VecDeque<(u32, Message)>,
}

fn resumable_hello(resume: Option<ResumeRequest>) -> Hello {
    Hello {
        protocol_version: PROTOCOL_VERSION,
        capabilities: Capabilities::DEFLATE_SDP
            .union(Capabilities::ICE_BATCH)
            .union(Capabilities::RESUME),
        access_token: None,
        user_agent: "resume-test".into(),
        resume,
    }
}

impl Raw {
    /// Connects and says Hello; `seq` is the number of the Hello frame.
    async fn connect(server: &TestServer, hello: Hello, seq: u32) -> Raw {
        let (ws, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        let mut raw = Raw {
            ws,
            seq: seq - 1,
            server_seq: 0,
            welcome: placeholder_welcome(),
            queue: Default::default(),
        };
        raw.send(&Message::Hello(hello)).await;
        match raw.next().await {
            (_, Message::Welcome(w)) => raw.welcome = w,
            other => panic!("expected Welcome, got {other:?}"),
        }
        raw
    }

    /// Sends one frame with the next number; returns it.
    async fn send(&mut self, message: &Message) -> u32 {
        self.seq += 1;
        let seq = self.seq;
        self.send_numbered(message, seq).await;
        seq
    }

    /// Sends one frame with the number `seq`.
    async fn send_numbered(&mut self, message: &Message, seq: u32) {
        let mut out = BytesMut::new();
        protocol::encode_into(message, seq, &mut out);
        self.ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
    }

    /// The next frame within 5 s, with its sequence number; Acks are
    /// skipped.
    async fn next(&mut self) -> (u32, Message) {
        loop {
            if self.queue.is_empty() {
                let batch = self.next_batch().await;
                self.queue.extend(batch);
            }
            if let Some((seq, m)) = self.queue.pop_front() {
                if !matches!(m, Message::Ack { .. }) {
                    return (seq, m);
                }
            }
        }
    }

    /// Every frame of the next WebSocket message, in order (after what
    /// `next` left queued). Server frames must arrive once and in order.
    async fn next_batch(&mut self) -> Vec<(u32, Message)> {
        if !self.queue.is_empty() {
            return self.queue.drain(..).collect();
        }
        let limits = CodecLimits::default();
        loop {
            let message = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("timed out waiting for a message")
                .expect("connection ended")
                .expect("read failed");
            let WsMessage::Binary(data) = message else {
                continue;
            };
            let mut out = Vec::new();
            for frame in Frames::new(data, limits.max_payload, limits.max_frames) {
                let frame = frame.expect("a well-formed frame");
                let seq = frame.header.seq;
                if seq != 0 {
                    assert!(
                        seq > self.server_seq,
                        "server frames arrive once and in order: {seq} after {}",
                        self.server_seq
                    );
                    self.server_seq = seq;
                }
                out.push((seq, protocol::decode(&frame, &limits).expect("decodable")));
            }
            return out;
        }
    }

    fn token(&self) -> bytes::Bytes {
        self.welcome
            .resume
            .as_ref()
            .expect("resume granted")
            .token
            .clone()
    }

    fn id(&self) -> PeerId {
        self.welcome.peer_id
    }
}

fn placeholder_welcome() -> Welcome {
    Welcome {
        peer_id: PeerId(0),
        protocol_version: 0,
        limits: test_config().wire_limits(),
        heartbeat_interval: Duration::ZERO,
        heartbeat_timeout: Duration::ZERO,
        ice_servers: Vec::new(),
        capabilities: Capabilities::empty(),
        sdp_dictionary: 0,
        resume: None,
    }
}

fn config(grace_ms: u64) -> Config {
    Config {
        resume_grace: Duration::from_millis(grace_ms),
        ack_delay: Duration::from_millis(50),
        ..test_config()
    }
}

/// A resumable A and a plain B in pair room `r`; A has read everything.
async fn pair(server: &TestServer, r: &str) -> (Raw, switchboard::client::Connection) {
    let mut a = Raw::connect(server, resumable_hello(None), 1).await;
    assert!(a.welcome.capabilities.contains(Capabilities::RESUME));
    assert!(!a.welcome.resume.as_ref().unwrap().resumed);
    let mut b = connect(server).await;
    a.send(&join(r, RoomMode::Pair)).await;
    assert!(matches!(a.next().await.1, Message::Joined(_)));
    join_ok(&mut b, r, RoomMode::Pair).await;
    match a.next().await.1 {
        Message::PeerJoined(p) => assert_eq!(p.member.peer_id, peer(&b)),
        other => panic!("{other:?}"),
    }
    (a, b)
}

#[tokio::test]
async fn a_dropped_connection_resumes_with_every_signal_once_and_no_departure() {
    let server = start_server(config(5_000)).await;
    let (mut a, mut b) = pair(&server, "resume-1").await;
    let (token, last_seen, a_id) = (a.token(), a.server_seq, a.id());
    let offer_seq = a.send(&offer(Address::Peer(peer(&b)), "v=0 before")).await;
    match next(&mut b).await {
        Message::Offer(o) => assert_eq!(o.peer, Address::Peer(a_id)),
        other => panic!("{other:?}"),
    }
    // The connection drops: TCP ends without a close frame.
    let next_seq = a.seq + 1;
    drop(a);
    // B goes on signalling; nobody is told A left.
    b.send(&offer(Address::Peer(a_id), "v=0 while away"))
        .await
        .unwrap();
    b.send(&ice(Address::Peer(a_id), 1)).await.unwrap();
    let quiet = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
    assert!(quiet.is_err(), "B was told something: {quiet:?}");

    let hello = resumable_hello(Some(ResumeRequest {
        token: token.clone(),
        last_seq: last_seen,
    }));
    let mut a = Raw::connect(&server, hello, next_seq).await;
    let resume = a.welcome.resume.clone().unwrap();
    assert!(resume.resumed, "{resume:?}");
    assert_eq!(resume.refusal, None);
    assert_eq!(a.id(), a_id, "the same peer id");
    assert_ne!(resume.token, token, "the token changes on every resume");
    assert_eq!(resume.last_seq, offer_seq, "the server processed A's offer");
    // What B sent meanwhile, in order, each once, numbered after what A saw.
    let (seq1, first) = a.next().await;
    assert!(
        matches!(&first, Message::Offer(o) if o.peer == Address::Peer(peer(&b))),
        "{first:?}"
    );
    assert_eq!(seq1, last_seen + 1);
    let (seq2, second) = a.next().await;
    assert!(matches!(second, Message::Ice(_)), "{second:?}");
    assert_eq!(seq2, seq1 + 1);
    // A sends its offer again with its number (as a client does after a
    // resume): the server had processed it, so B does not get it twice.
    a.send_numbered(&offer(Address::Peer(peer(&b)), "v=0 before"), offer_seq)
        .await;
    let answer_seq = a.send(&answer(Address::Peer(peer(&b)), "v=0 after")).await;
    match next(&mut b).await {
        Message::Answer(d) => assert_eq!(d.peer, Address::Peer(a_id)),
        other => panic!("B got {other:?} instead of the answer only"),
    }
    assert!(answer_seq > offer_seq);
    let quiet = tokio::time::timeout(Duration::from_millis(200), b.recv()).await;
    assert!(quiet.is_err(), "B got something more: {quiet:?}");
    // The old token is void now.
    let stale = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest { token, last_seq: 0 })),
        1,
    )
    .await;
    let r = stale.welcome.resume.clone().unwrap();
    assert!(!r.resumed);
    assert_eq!(r.refusal, Some(ResumeRefusal::UnknownToken));
    assert_ne!(stale.id(), a_id);
}

#[tokio::test]
async fn the_server_acknowledges_client_frames_within_the_ack_delay() {
    let server = start_server(config(5_000)).await;
    let mut a = Raw::connect(&server, resumable_hello(None), 1).await;
    let ping = a.send(&Message::Ping { nonce: 7 }).await;
    // The Pong goes out at once, with the Ack in the same message.
    let batch = a.next_batch().await;
    assert!(
        batch
            .iter()
            .any(|(_, m)| matches!(m, Message::Pong { nonce: 7 })),
        "{batch:?}"
    );
    assert!(
        batch
            .iter()
            .any(|(seq, m)| *seq == 0 && matches!(m, Message::Ack { seq } if *seq == ping)),
        "the Ack rides with the Pong, numbered 0: {batch:?}"
    );
    // Frames with no answer are acknowledged after the delay.
    let leave = a.send(&join("acks", RoomMode::Mesh)).await;
    let mut acked = false;
    for _ in 0..3 {
        for (seq, m) in a.next_batch().await {
            if let Message::Ack { seq: s } = m {
                assert_eq!(seq, 0);
                acked |= s == leave;
            }
        }
        if acked {
            break;
        }
    }
    assert!(acked, "the join was acknowledged");
}

#[tokio::test]
async fn after_the_grace_the_session_ends_once_and_a_resume_is_refused_as_expired() {
    let server = start_server(config(300)).await;
    let (a, mut b) = pair(&server, "resume-2").await;
    let (token, a_id) = (a.token(), a.id());
    drop(a);
    match tokio::time::timeout(Duration::from_secs(3), b.recv()).await {
        Ok(Ok(Message::PeerLeft(p))) => {
            assert_eq!(p.peer_id, a_id);
            assert_eq!(p.reason, LeaveReason::TimedOut);
        }
        other => panic!("B expected PeerLeft TIMED_OUT, got {other:?}"),
    }
    let late = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest { token, last_seq: 0 })),
        1,
    )
    .await;
    let r = late.welcome.resume.clone().unwrap();
    assert!(!r.resumed);
    assert_eq!(r.refusal, Some(ResumeRefusal::Expired));
    assert_ne!(late.id(), a_id, "a fresh session");
    let quiet = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
    assert!(quiet.is_err(), "the departure is announced once: {quiet:?}");
}

#[tokio::test]
async fn a_resume_takes_over_a_half_open_connection() {
    let server = start_server(config(5_000)).await;
    let (mut a, mut b) = pair(&server, "resume-3").await;
    let (token, last_seen, a_id) = (a.token(), a.server_seq, a.id());
    // The old connection is still open (the client thinks it is dead).
    let mut again = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest {
            token,
            last_seq: last_seen,
        })),
        a.seq + 1,
    )
    .await;
    assert!(again.welcome.resume.as_ref().unwrap().resumed);
    assert_eq!(again.id(), a_id);
    assert_eq!(
        wait_close(&mut a.ws).await,
        1000,
        "the old socket is closed"
    );
    b.send(&offer(Address::Peer(a_id), "v=0 to the new socket"))
        .await
        .unwrap();
    assert!(matches!(again.next().await.1, Message::Offer(_)));
    let quiet = tokio::time::timeout(Duration::from_millis(200), b.recv()).await;
    assert!(quiet.is_err(), "B saw no departure: {quiet:?}");
}

#[tokio::test]
async fn a_client_closing_ends_its_session_at_once_even_with_resume() {
    let server = start_server(config(5_000)).await;
    let (mut a, mut b) = pair(&server, "resume-4").await;
    let a_id = a.id();
    a.ws.close(None).await.unwrap();
    match next(&mut b).await {
        Message::PeerLeft(p) => {
            assert_eq!(p.peer_id, a_id);
            assert_eq!(p.reason, LeaveReason::Disconnected);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn without_the_capability_or_with_resume_off_nothing_changes() {
    let server = start_server(config(0)).await;
    let a = Raw::connect(&server, resumable_hello(None), 1).await;
    assert!(!a.welcome.capabilities.contains(Capabilities::RESUME));
    assert_eq!(a.welcome.resume, None);
    let server = start_server(config(5_000)).await;
    let plain = connect(&server).await;
    assert_eq!(plain.welcome().resume, None);
    // An unknown token from a client that does ask gets a fresh session.
    let fresh = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest {
            token: bytes::Bytes::from_static(&[7; 32]),
            last_seq: 3,
        })),
        1,
    )
    .await;
    let r = fresh.welcome.resume.clone().unwrap();
    assert!(!r.resumed);
    assert_eq!(r.refusal, Some(ResumeRefusal::UnknownToken));
    assert_eq!(r.limits.grace, Duration::from_secs(5));
}

#[tokio::test]
async fn frames_dropped_unacknowledged_make_a_resume_fail_as_replay_lost() {
    let server = start_server(Config {
        replay_frames: 4,
        ..config(5_000)
    })
    .await;
    let (mut a, mut b) = pair(&server, "resume-5").await;
    let (token, a_id) = (a.token(), a.id());
    let before = a.server_seq;
    // A reads B's offers but never acknowledges them: the server's replay
    // buffer (4 frames) drops the oldest.
    for n in 0..8 {
        b.send(&offer(Address::Peer(a_id), &format!("v=0 {n}")))
            .await
            .unwrap();
        assert!(matches!(a.next().await.1, Message::Offer(_)));
    }
    let seen = a.server_seq;
    drop(a);
    // A claims to have missed them all: they are not all held any more.
    let late = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest {
            token,
            last_seq: before,
        })),
        1,
    )
    .await;
    let r = late.welcome.resume.clone().unwrap();
    assert!(!r.resumed);
    assert_eq!(r.refusal, Some(ResumeRefusal::ReplayLost));
    match tokio::time::timeout(Duration::from_secs(3), b.recv()).await {
        Ok(Ok(Message::PeerLeft(p))) => {
            assert_eq!(p.peer_id, a_id);
            assert_eq!(p.reason, LeaveReason::TimedOut);
        }
        other => panic!("B expected PeerLeft TIMED_OUT, got {other:?}"),
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), b.recv()).await;
    assert!(quiet.is_err(), "the departure is announced once: {quiet:?}");
    assert!(seen > before + 4);
}

#[tokio::test]
async fn a_client_that_saw_the_dropped_frames_still_resumes() {
    let server = start_server(Config {
        replay_frames: 4,
        ..config(5_000)
    })
    .await;
    let (mut a, mut b) = pair(&server, "resume-6").await;
    let (token, a_id) = (a.token(), a.id());
    for n in 0..8 {
        b.send(&offer(Address::Peer(a_id), &format!("v=0 {n}")))
            .await
            .unwrap();
        assert!(matches!(a.next().await.1, Message::Offer(_)));
    }
    let (seen, next_seq) = (a.server_seq, a.seq + 1);
    drop(a);
    let mut a = Raw::connect(
        &server,
        resumable_hello(Some(ResumeRequest {
            token,
            last_seq: seen,
        })),
        next_seq,
    )
    .await;
    assert!(a.welcome.resume.as_ref().unwrap().resumed);
    b.send(&offer(Address::Peer(a_id), "v=0 after"))
        .await
        .unwrap();
    let (seq, m) = a.next().await;
    assert!(matches!(m, Message::Offer(_)), "{m:?}");
    assert_eq!(seq, seen + 1, "nothing seen is sent again");
}
