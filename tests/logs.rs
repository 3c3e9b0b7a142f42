//! `--log-format json` on the real binary: one JSON object per line, the
//! connection's fields on each of its lines, one line per lifecycle event
//! (never one per relayed message), and no token or secret anywhere.

mod common;

use std::time::{Duration, Instant};

use common::child::Server;
use common::*;
use serde_json::Value;
use switchboard::client::{default_hello, Connection};
use switchboard::protocol::{Address, Hello, Message, RoomMode};

const SECRET: &str = "logs-test-secret-0123456789abcdef-xyz";

fn token(sub: &str) -> String {
    common::token_granting_everything(SECRET, sub)
}

/// The log's lines, each parsed (a line that is not JSON fails the test).
fn lines(server: &Server) -> Vec<Value> {
    server
        .log_text()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn with_message<'a>(lines: &'a [Value], message: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["message"] == message).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_carry_the_connection_and_never_a_token() {
    let server = Server::start_with(
        &[
            "--log-format",
            "json",
            "--log-level",
            "info",
            "--auth",
            "token",
        ],
        None,
        // An empty RUST_LOG leaves the level to --log-level.
        &[("SWITCHBOARD_JWT_SECRET", SECRET), ("RUST_LOG", "")],
    );
    let alice_token = token("alice");
    let bob_token = token("bob");
    let hello = |token: &str| Hello {
        access_token: Some(token.to_owned()),
        ..default_hello()
    };
    let mut alice = Connection::connect(&server.url(), hello(&alice_token))
        .await
        .unwrap();
    let mut bob = Connection::connect(&server.url(), hello(&bob_token))
        .await
        .unwrap();
    let alice_id = alice.welcome().peer_id;
    let bob_id = bob.welcome().peer_id;
    join_ok(&mut alice, "log-room", RoomMode::Mesh).await;
    join_ok(&mut bob, "log-room", RoomMode::Mesh).await;
    let _ = next(&mut alice).await; // PeerJoined
    alice
        .send(&Message::Login {
            name: user("alice"),
        })
        .await
        .unwrap();
    assert!(matches!(next(&mut alice).await, Message::LoginResult(_)));
    // A hundred relayed signals: not one log line each.
    for _ in 0..100 {
        alice.send(&ice(Address::Peer(bob_id), 1)).await.unwrap();
    }
    for _ in 0..100 {
        assert!(matches!(next(&mut bob).await, Message::Ice(_)));
    }
    // A refused token is not logged either.
    let forged = format!("{alice_token}tampered");
    let refused = Connection::connect(&server.url(), hello(&forged)).await;
    assert!(refused.is_err());
    alice.close().await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    let lines = loop {
        let lines = lines(&server);
        if !with_message(&lines, "session ended").is_empty() {
            break lines;
        }
        assert!(
            Instant::now() < deadline,
            "no 'session ended' line: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = server.log_text();
    for secret in [SECRET, &alice_token, &bob_token, &forged] {
        assert!(!text.contains(secret), "a secret reached the log: {text}");
    }
    // Alice's lines: each names her peer id (decimal).
    let hers: Vec<&Value> = lines.iter().filter(|l| l["peer"] == alice_id.0).collect();
    let messages: Vec<&str> = hers.iter().filter_map(|l| l["message"].as_str()).collect();
    assert_eq!(
        messages,
        [
            "session started",
            "joined",
            "logged in",
            "left",
            "logged out",
            "session ended"
        ],
        "{hers:?}"
    );
    for l in &hers {
        assert_eq!(l["level"], "INFO");
        assert!(l["timestamp"].as_str().is_some());
    }
    // The first and the last name the connection too.
    for l in [hers[0], hers[5]] {
        assert!(l["conn"].as_u64().is_some(), "{l}");
        assert!(l["addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{l}");
    }
    assert_eq!(hers[0]["conn"], hers[5]["conn"]);
    assert_eq!(hers[1]["room"], "log-room");
    assert_eq!(hers[2]["user"], "alice");
    // Her disconnect takes her out of the room and frees her name.
    assert_eq!(hers[3]["room"], "log-room");
    assert_eq!(hers[4]["user"], "alice");
    let ended = hers[5];
    assert_eq!(ended["ended_by"], "client");
    assert_eq!(ended["user"], "alice");
    assert!(ended["duration_ms"].as_u64().is_some(), "{ended}");
    assert_eq!(with_message(&lines, "session started").len(), 2);
}
