//! Webhooks delivered to a receiver the test runs: every event of a known
//! sequence arrives once, signed (the signature verified here), a failing
//! receiver is retried, and signaling does not wait for any of it.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use switchboard::config::{Config, Secret};
use switchboard::protocol::{Address, Message, RoomMode};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

const SECRET: &str = "webhook-test-secret-0123456789";
/// How long the receiver holds each request it fails.
const STALL: Duration = Duration::from_secs(3);

/// One request as the receiver saw it, and what it answered.
#[derive(Debug)]
struct Received {
    headers: HashMap<String, String>,
    body: String,
    answered: u16,
}

/// A plain HTTP receiver answering 500, after [`STALL`], to its first
/// `failures` requests, then 200 at once; reports every request.
async fn receiver(failures: usize) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::unbounded_channel();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (tx, seen) = (tx.clone(), seen.clone());
            // A task per connection: the client keeps several open.
            tokio::spawn(async move {
                let mut stream = BufReader::new(stream);
                // Several requests may come over one kept-alive connection.
                loop {
                    let mut headers = HashMap::new();
                    let mut line = String::new();
                    if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                        break;
                    }
                    assert!(line.starts_with("POST /hooks "), "{line}");
                    loop {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                        let l = line.trim_end();
                        if l.is_empty() {
                            break;
                        }
                        let (k, v) = l.split_once(':').unwrap();
                        headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
                    }
                    let len: usize = headers["content-length"].parse().unwrap();
                    let mut body = vec![0; len];
                    stream.read_exact(&mut body).await.unwrap();
                    let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    let answered = if n <= failures { 500 } else { 200 };
                    if answered == 500 {
                        // A receiver that is slow as well as failing.
                        tokio::time::sleep(STALL).await;
                    }
                    let reason = if answered == 200 {
                        "OK"
                    } else {
                        "Internal Server Error"
                    };
                    stream
                        .get_mut()
                        .write_all(
                            format!("HTTP/1.1 {answered} {reason}\r\ncontent-length: 0\r\n\r\n")
                                .as_bytes(),
                        )
                        .await
                        .unwrap();
                    let _ = tx.send(Received {
                        headers,
                        body: String::from_utf8(body).unwrap(),
                        answered,
                    });
                }
            });
        }
    });
    (url, rx)
}

fn verify(r: &Received) -> Value {
    let timestamp: u64 = r.headers["webhook-timestamp"].parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(now.abs_diff(timestamp) < 60, "stale timestamp {timestamp}");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    let id = &r.headers["webhook-id"];
    mac.update(format!("{id}.{timestamp}.{}", r.body).as_bytes());
    let hex = r.headers["webhook-signature"]
        .strip_prefix("v1=")
        .expect("v1= signature");
    let signature = hex::decode(hex).expect("a hex signature");
    mac.verify_slice(&signature)
        .expect("the signature verifies with the shared secret");
    let event: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(event["id"], r.headers["webhook-id"]);
    assert_eq!(r.headers["content-type"], "application/json");
    event
}

/// The part of an event the test predicts.
fn summary(e: &Value) -> Value {
    let mut s = e.clone();
    let o = s.as_object_mut().unwrap();
    for k in ["id", "node_id", "created_at_ms"] {
        assert!(o.remove(k).is_some(), "{k} missing from {e}");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_signed_once_each_and_a_failing_receiver_is_retried() {
    // The first two deliveries fail: their events must come again.
    let (url, mut received) = receiver(2).await;
    let server = start_server(Config {
        webhook_urls: vec![url],
        webhook_secret: Some(Secret::new(SECRET.as_bytes().to_vec())),
        ..test_config()
    })
    .await;
    // Signaling does not wait for webhooks: the joins and the offer below
    // are done long before the receiver answers the first two events.
    let t = Instant::now();
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let (a_id, b_id) = (a.welcome().peer_id, b.welcome().peer_id);
    join_ok(&mut a, "hooks", RoomMode::Mesh).await;
    join_ok(&mut b, "hooks", RoomMode::Mesh).await;
    let _ = next(&mut a).await; // PeerJoined
    a.send(&offer(Address::Peer(b_id), "v=0\r\n"))
        .await
        .unwrap();
    assert!(matches!(next(&mut b).await, Message::Offer(_)));
    assert!(t.elapsed() < STALL / 2, "signaling took {:?}", t.elapsed());
    a.send(&Message::Login { name: user("ann") }).await.unwrap();
    assert!(matches!(next(&mut a).await, Message::LoginResult(_)));
    b.send(&Message::Leave {
        room: room("hooks"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut b).await, Message::Left { .. }));
    drop(a);

    let (a, b) = (a_id.0.to_string(), b_id.0.to_string());
    let want = vec![
        json!({"event": "room_created", "room": "hooks", "mode": "mesh"}),
        json!({"event": "peer_joined", "room": "hooks", "peer_id": a, "user": null}),
        json!({"event": "peer_joined", "room": "hooks", "peer_id": b, "user": null}),
        json!({"event": "user_logged_in", "user": "ann", "peer_id": a}),
        json!({"event": "peer_left", "room": "hooks", "peer_id": b, "reason": "left"}),
        json!({"event": "peer_left", "room": "hooks", "peer_id": a, "reason": "disconnected"}),
        json!({"event": "room_emptied", "room": "hooks"}),
        json!({"event": "user_logged_out", "user": "ann", "peer_id": a}),
    ];
    let mut delivered: HashMap<String, Value> = HashMap::new();
    let mut failed_ids = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered.len() < want.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let r = tokio::time::timeout(left, received.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} events delivered: {delivered:?}", delivered.len()))
            .unwrap();
        let event = verify(&r);
        let id = event["id"].as_str().unwrap().to_owned();
        if r.answered == 200 {
            assert!(
                delivered.insert(id, summary(&event)).is_none(),
                "delivered twice: {event}"
            );
        } else {
            failed_ids.push(id);
        }
    }
    assert_eq!(failed_ids.len(), 2);
    for id in &failed_ids {
        assert!(delivered.contains_key(id), "{id} was not retried");
    }
    // The same events, in any order (deliveries run concurrently).
    let mut got: Vec<Value> = delivered.into_values().collect();
    for w in &want {
        let i = got
            .iter()
            .position(|g| g == w)
            .unwrap_or_else(|| panic!("{w} not delivered; got {got:?}"));
        got.swap_remove(i);
    }
    assert!(got.is_empty(), "unexpected events: {got:?}");
    // Nothing more comes.
    let extra = tokio::time::timeout(Duration::from_millis(300), received.recv()).await;
    assert!(extra.is_err(), "unexpected: {extra:?}");
}
