//! TURN credentials in Welcome: one per client, coturn's REST scheme.
//! (`tests/turn_coturn.rs` proves that a real coturn accepts them.)

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use switchboard::auth::{mint, Claims};
use switchboard::client::{default_hello, Connection};
use switchboard::config::{AuthMode, Config, Secret};
use switchboard::protocol::{Hello, IceServer};
use switchboard::turn::password;

const TURN_SECRET: &[u8] = b"coturn-static-auth-secret";
const TURN_URL: &str = "turn:turn.example.com:3478?transport=udp";

fn turn_config() -> Config {
    Config {
        turn_secret: Some(Secret::new(TURN_SECRET)),
        turn_urls: vec![TURN_URL.into(), "turns:turn.example.com:5349".into()],
        turn_ttl: Duration::from_secs(600),
        ..test_config()
    }
}

fn turn_server(welcome: &switchboard::protocol::Welcome) -> &IceServer {
    welcome
        .ice_servers
        .iter()
        .find(|s| s.urls.iter().any(|u| u == TURN_URL))
        .expect("Welcome carries the TURN server")
}

/// Checks `server` is `<expiry>:<identity>` with the right HMAC and an
/// expiry `ttl` from now.
fn check_credentials(server: &IceServer, identity: &str, ttl: Duration) {
    let (expiry, who) = server.username.split_once(':').unwrap();
    assert_eq!(who, identity);
    let expiry: u64 = expiry.parse().unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + ttl.as_secs() - 5..=now + ttl.as_secs()).contains(&expiry),
        "expiry {expiry}, now {now}"
    );
    assert_eq!(server.credential, password(TURN_SECRET, &server.username));
    assert_eq!(server.urls.len(), 2, "every configured URL is offered");
}

#[tokio::test]
async fn each_welcome_carries_credentials_for_that_peer() {
    let server = start_server(turn_config()).await;
    let a = connect(&server).await;
    let b = connect(&server).await;
    let a_turn = turn_server(a.welcome());
    check_credentials(
        a_turn,
        &a.welcome().peer_id.to_string(),
        Duration::from_secs(600),
    );
    check_credentials(
        turn_server(b.welcome()),
        &b.welcome().peer_id.to_string(),
        Duration::from_secs(600),
    );
    assert_ne!(a_turn.username, turn_server(b.welcome()).username);
    // The STUN server stays, without credentials.
    assert!(a
        .welcome()
        .ice_servers
        .iter()
        .any(|s| s.urls[0].starts_with("stun:") && s.username.is_empty()));
}

#[tokio::test]
async fn with_tokens_the_identity_is_the_user() {
    let jwt_secret = b"another-secret-for-jwt-signing!!".to_vec();
    let server = start_server(Config {
        auth: AuthMode::Token,
        jwt_secret: Some(Secret::new(jwt_secret.clone())),
        ..turn_config()
    })
    .await;
    let claims = Claims::new("alice", SystemTime::now(), Duration::from_secs(60));
    let hello = Hello {
        access_token: Some(mint(&claims, &jwt_secret).unwrap()),
        ..default_hello()
    };
    let c = Connection::connect(&server.url(), hello).await.unwrap();
    check_credentials(turn_server(c.welcome()), "alice", Duration::from_secs(600));
}

#[tokio::test]
async fn without_a_turn_secret_no_credentials_are_issued() {
    let server = start_server(test_config()).await;
    let c = connect(&server).await;
    assert!(c
        .welcome()
        .ice_servers
        .iter()
        .all(|s| s.credential.is_empty()));
}
