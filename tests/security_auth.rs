//! `--auth token` and the Origin allow-list, over real sockets.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use futures_util::{SinkExt, StreamExt};
use switchboard::auth::{mint, Claims};
use switchboard::client::{default_hello, ClientError, Connection};
use switchboard::config::{AuthMode, Config, Secret};
use switchboard::protocol::{
    decode_message, encode_into, CodecLimits, ErrorCode, Hello, Join, Message, RoomMode,
};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SECRET: &[u8] = b"test-secret-test-secret-test-secret!";
const UNAUTHENTICATED_CLOSE: u16 = 4000 + ErrorCode::Unauthenticated as u16;

fn token_config() -> Config {
    Config {
        auth: AuthMode::Token,
        jwt_secret: Some(Secret::new(SECRET)),
        ..test_config()
    }
}

fn claims(sub: &str) -> Claims {
    let mut c = Claims::new(sub, SystemTime::now(), Duration::from_secs(600));
    c.rooms = vec!["lobby".into()];
    c.room_prefix = Some("team-".into());
    c
}

fn token(c: &Claims) -> String {
    mint(c, SECRET).unwrap()
}

fn hello_with(token: &str) -> Hello {
    Hello {
        access_token: Some(token.to_owned()),
        ..default_hello()
    }
}

async fn connect_with(server: &TestServer, claims: &Claims) -> Connection {
    Connection::connect(&server.url(), hello_with(&token(claims)))
        .await
        .expect("a valid token is accepted")
}

/// Sends `hello` on a raw socket and returns the first message and the
/// close code that follow.
async fn refused(server: &TestServer, hello: Hello) -> (Message, u16) {
    let (mut ws, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();
    let mut out = bytes::BytesMut::new();
    encode_into(&Message::Hello(hello), 1, &mut out);
    ws.send(WsMessage::Binary(out.freeze())).await.unwrap();
    let first = loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("an answer to hello")
        {
            Some(Ok(WsMessage::Binary(data))) => {
                break decode_message(data, &CodecLimits::default())
                    .next()
                    .unwrap()
                    .unwrap()
                    .1
            }
            Some(Ok(_)) => continue,
            other => panic!("no error frame before the close: {other:?}"),
        }
    };
    (first, wait_close(&mut ws).await)
}

fn assert_unauthenticated(message: &Message, needle: &str) {
    match message {
        Message::Error(e) => {
            assert_eq!(e.code, ErrorCode::Unauthenticated, "{e:?}");
            assert!(
                e.message.contains(needle),
                "{:?} lacks {needle:?}",
                e.message
            );
        }
        other => panic!("expected UNAUTHENTICATED, got {other:?}"),
    }
}

#[tokio::test]
async fn missing_expired_forged_and_malformed_tokens_are_refused_and_closed() {
    let server = start_server(token_config()).await;

    let (error, code) = refused(&server, default_hello()).await;
    assert_unauthenticated(&error, "access token is required");
    assert_eq!(code, UNAUTHENTICATED_CLOSE);

    let mut expired = claims("alice");
    expired.exp = 1_000_000;
    expired.iat = Some(999_000);
    let (error, code) = refused(&server, hello_with(&token(&expired))).await;
    assert_unauthenticated(&error, "expired");
    assert_eq!(code, UNAUTHENTICATED_CLOSE);

    let forged = mint(&claims("alice"), b"another-secret-another-secret-!!").unwrap();
    let (error, code) = refused(&server, hello_with(&forged)).await;
    assert_unauthenticated(&error, "signature");
    assert_eq!(code, UNAUTHENTICATED_CLOSE);

    let (error, code) = refused(&server, hello_with("not.a.jwt")).await;
    assert_unauthenticated(&error, "refused");
    assert_eq!(code, UNAUTHENTICATED_CLOSE);

    // The client library reports the typed refusal.
    match Connection::connect(&server.url(), hello_with(&forged)).await {
        Err(ClientError::Refused(Some(e))) => assert_eq!(e.code, ErrorCode::Unauthenticated),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("forged token accepted"),
    }
}

#[tokio::test]
async fn a_token_in_sec_websocket_protocol_is_accepted_and_never_echoed() {
    let server = start_server(token_config()).await;
    let jwt = token(&claims("alice"));
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("switchboard.v1, access_token.{jwt}")).unwrap(),
    );
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "switchboard.v1",
        "the answer names the protocol only"
    );
    let mut c = Connection::handshake(ws, default_hello()).await.unwrap();
    c.send(&Message::Login {
        name: user("alice"),
    })
    .await
    .unwrap();
    assert!(matches!(next(&mut c).await, Message::LoginResult(r) if r.error.is_none()));

    // A bad token in the header is refused like one in Hello.
    let mut request = server.url().into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("switchboard.v1, access_token.a, access_token.b"),
    );
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    match Connection::handshake(ws, default_hello()).await {
        Err(ClientError::Refused(Some(e))) => {
            assert_eq!(e.code, ErrorCode::Unauthenticated);
            assert!(e.message.contains("Sec-WebSocket-Protocol"), "{e:?}");
        }
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("two tokens accepted"),
    }
}

#[tokio::test]
async fn the_token_names_the_user() {
    let server = start_server(token_config()).await;
    let mut alice = connect_with(&server, &claims("alice")).await;
    alice
        .send(&Message::Login { name: user("bob") })
        .await
        .unwrap();
    match next(&mut alice).await {
        Message::LoginResult(r) => assert_eq!(r.error, Some(ErrorCode::Forbidden)),
        other => panic!("{other:?}"),
    }
    alice
        .send(&Message::Login {
            name: user("alice"),
        })
        .await
        .unwrap();
    assert!(matches!(next(&mut alice).await, Message::LoginResult(r) if r.error.is_none()));
}

#[tokio::test]
async fn joins_follow_the_grant() {
    let server = start_server(token_config()).await;
    let mut creator_claims = claims("carol");
    creator_claims.create_rooms = true;
    creator_claims.max_capacity = Some(4);
    let mut carol = connect_with(&server, &creator_claims).await;
    let mut alice = connect_with(&server, &claims("alice")).await;

    // A room the token does not list.
    alice
        .send(&join("elsewhere", RoomMode::Mesh))
        .await
        .unwrap();
    let seq = expect_error(&mut alice, ErrorCode::Forbidden).await;
    assert!(seq > 0);
    // A listed room that does not exist yet: alice may not create it.
    alice.send(&join("lobby", RoomMode::Mesh)).await.unwrap();
    expect_error(&mut alice, ErrorCode::Forbidden).await;
    // carol may, within her capacity cap...
    let mesh = |room: &str, capacity| {
        Message::Join(Join {
            room: switchboard::protocol::RoomId::new(room).unwrap(),
            mode: RoomMode::Mesh,
            capacity,
            display_name: String::new(),
        })
    };
    carol.send(&mesh("lobby", Some(5))).await.unwrap();
    expect_error(&mut carol, ErrorCode::Forbidden).await;
    // ...and a room created without asking gets min(default 8, cap 4).
    carol.send(&mesh("lobby", None)).await.unwrap();
    match next(&mut carol).await {
        Message::Joined(j) => assert_eq!(j.capacity, 4),
        other => panic!("{other:?}"),
    }
    // Now that it exists, alice may join it, and by prefix too.
    let joined = join_ok(&mut alice, "lobby", RoomMode::Mesh).await;
    assert_eq!(joined.members.len(), 1);
    assert!(matches!(next(&mut carol).await, Message::PeerJoined(_)));
    carol.send(&mesh("team-x", None)).await.unwrap();
    assert!(matches!(next(&mut carol).await, Message::Joined(_)));
    join_ok(&mut alice, "team-x", RoomMode::Mesh).await;
}

#[tokio::test]
async fn auth_none_ignores_tokens() {
    let server = start_server(test_config()).await;
    // Even garbage: without --auth token nobody looks at it.
    let mut c = Connection::connect(&server.url(), hello_with("garbage"))
        .await
        .unwrap();
    join_ok(&mut c, "anything", RoomMode::Mesh).await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_403_before_the_upgrade() {
    let server = start_server(Config {
        allowed_origins: vec![
            "https://app.example".into(),
            "http://localhost:3000/".into(),
        ],
        ..test_config()
    })
    .await;
    let with_origin = |origin: &'static str| {
        let mut request = server.url().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("origin", HeaderValue::from_static(origin));
        request
    };
    for bad in ["https://evil.example", "https://app.example.evil", "null"] {
        match tokio_tungstenite::connect_async(with_origin(bad)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{bad}")
            }
            other => panic!("{bad}: {other:?}"),
        }
    }
    for good in ["https://app.example", "http://localhost:3000"] {
        let (ws, _) = tokio_tungstenite::connect_async(with_origin(good))
            .await
            .unwrap();
        Connection::handshake(ws, default_hello()).await.unwrap();
    }
    // Non-browser clients send no Origin and are let in.
    connect(&server).await;
}

/// A compat page (which sends no Hello) under `--auth token`: the token
/// comes in `Sec-WebSocket-Protocol`, and without one the page is refused
/// with an error and a typed close.
#[tokio::test]
async fn compat_endpoints_take_the_token_from_sec_websocket_protocol() {
    let server = start_server(token_config()).await;
    let url = format!("ws://{}/compat/pair", server.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let mut saw_error = false;
    let code = loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(t))) => {
                assert!(t.contains("\"type\":\"error\""), "{t}");
                saw_error = true;
            }
            Some(Ok(WsMessage::Close(Some(f)))) => break u16::from(f.code),
            other => panic!("{other:?}"),
        }
    };
    assert!(saw_error, "the refusal is explained in the dialect");
    assert_eq!(code, UNAUTHENTICATED_CLOSE);

    let mut c = claims("alice");
    c.create_rooms = true;
    let jwt = token(&c);
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("switchboard.v1, access_token.{jwt}")).unwrap(),
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    ws.send(WsMessage::text(r#"{"type":"join","roomId":"team-1001"}"#))
        .await
        .unwrap();
    let Some(Ok(WsMessage::Text(t))) = ws.next().await else {
        panic!()
    };
    assert_eq!(
        t.as_str(),
        r#"{"type":"joined","roomId":"team-1001","peers":0}"#
    );
    // The grant's rooms still bind.
    ws.send(WsMessage::text(r#"{"type":"join","roomId":"elsewhere"}"#))
        .await
        .unwrap();
    let Some(Ok(WsMessage::Text(t))) = ws.next().await else {
        panic!()
    };
    assert!(t.contains("\"type\":\"error\""), "{t}");
}
