//! The admin API end to end: list rooms and users, kick a member, close a
//! room, over real HTTP and real WebSocket clients; a wrong or missing token
//! is refused, and without a configured token the API does not exist.

mod common;

use std::net::SocketAddr;

use common::*;
use serde_json::{json, Value};
use switchboard::config::{Config, Secret};
use switchboard::protocol::{ErrorCode, Join, LeaveReason, Message, RoomMode};

const TOKEN: &str = "admin-test-token-0123456789";

/// One HTTP/1.1 request; returns the status code and the JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status: u16 = out[9..12].parse().unwrap();
    let json = out
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b.trim()).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

fn admin_config() -> Config {
    Config {
        admin_token: Some(Secret::new(TOKEN.as_bytes().to_vec())),
        ..test_config()
    }
}

#[tokio::test]
async fn rooms_users_kick_and_close() {
    let server = start_server(admin_config()).await;
    let addr = server.addr;
    let mut a = connect(&server).await;
    let mut b = connect(&server).await;
    let mut c = connect(&server).await;
    let (a_id, b_id, c_id) = (
        a.welcome().peer_id,
        b.welcome().peer_id,
        c.welcome().peer_id,
    );
    a.send(&Message::Join(Join {
        room: room("team"),
        mode: RoomMode::Mesh,
        capacity: Some(5),
        display_name: "Ann".into(),
    }))
    .await
    .unwrap();
    assert!(matches!(next(&mut a).await, Message::Joined(_)));
    join_ok(&mut b, "team", RoomMode::Mesh).await;
    join_ok(&mut c, "team", RoomMode::Mesh).await;
    let _ = next(&mut a).await; // PeerJoined b
    let _ = next(&mut a).await; // PeerJoined c
    let _ = next(&mut b).await; // PeerJoined c
    a.send(&Message::Login { name: user("ann") }).await.unwrap();
    assert!(matches!(next(&mut a).await, Message::LoginResult(_)));

    // Refused without the token, or with a wrong one.
    for token in [None, Some("admin-test-token-0123456780"), Some("")] {
        let (status, body) = request(addr, "GET", "/admin/rooms", token, None).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert_eq!(body["error"], "missing or wrong admin token");
    }

    let (status, rooms) = request(addr, "GET", "/admin/rooms", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        rooms,
        json!({"rooms": [{
            "room": "team", "mode": "mesh", "capacity": 5,
            "members": [
                {"peer_id": a_id.0.to_string(), "display_name": "Ann", "user": "ann"},
                {"peer_id": b_id.0.to_string(), "display_name": "", "user": null},
                {"peer_id": c_id.0.to_string(), "display_name": "", "user": null},
            ]
        }]})
    );
    let (status, one) = request(addr, "GET", "/admin/rooms/team", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(one["members"].as_array().unwrap().len(), 3);
    let (status, _) = request(addr, "GET", "/admin/rooms/nope", Some(TOKEN), None).await;
    assert_eq!(status, 404);
    let (status, users) = request(addr, "GET", "/admin/users", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        users,
        json!({"users": [{"user": "ann", "peer_id": a_id.0.to_string()}]})
    );
    let (status, stats) = request(addr, "GET", "/admin/stats", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(stats["sessions"], 3);
    assert_eq!(stats["rooms"]["mesh"], 1);
    assert_eq!(stats["room_members"], 3);
    assert_eq!(stats["users"], 1);

    // Kick b: the others see PeerLeft{KICKED}, b a typed notice and Left.
    let kick = json!({"peer_id": b_id.0.to_string()});
    let (status, body) = request(
        addr,
        "POST",
        "/admin/rooms/team/kick",
        Some(TOKEN),
        Some(kick.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    for other in [&mut a, &mut c] {
        let Message::PeerLeft(left) = next(other).await else {
            panic!()
        };
        assert_eq!((left.peer_id, left.reason), (b_id, LeaveReason::Kicked));
    }
    let Message::Error(e) = next(&mut b).await else {
        panic!()
    };
    assert_eq!(e.code, ErrorCode::Kicked);
    assert!(e.message.contains("team"), "{}", e.message);
    assert_eq!(next(&mut b).await, Message::Left { room: room("team") });
    // b's session forgot the room: it may join again.
    join_ok(&mut b, "team", RoomMode::Mesh).await;
    let _ = next(&mut a).await; // PeerJoined b
    let _ = next(&mut c).await;
    // Kicking a non-member is a 404.
    let stranger = json!({"peer_id": "12345"});
    let (status, _) = request(
        addr,
        "POST",
        "/admin/rooms/team/kick",
        Some(TOKEN),
        Some(stranger),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = request(
        addr,
        "POST",
        "/admin/rooms/team/kick",
        Some(TOKEN),
        Some(json!({"peer": 1})),
    )
    .await;
    assert_eq!(status, 400);

    // Close the room: everyone gets the notice and Left; it is gone.
    let (status, body) = request(addr, "DELETE", "/admin/rooms/team", Some(TOKEN), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"closed": "team", "members": 3}));
    for member in [&mut a, &mut b, &mut c] {
        let Message::Error(e) = next(member).await else {
            panic!()
        };
        assert_eq!(e.code, ErrorCode::Kicked);
        assert_eq!(next(member).await, Message::Left { room: room("team") });
    }
    let (_, rooms) = request(addr, "GET", "/admin/rooms", Some(TOKEN), None).await;
    assert_eq!(rooms, json!({"rooms": []}));
    // And the members may use the room id again.
    join_ok(&mut c, "team", RoomMode::Pair).await;
}

#[tokio::test]
async fn without_a_token_there_is_no_admin_api() {
    let server = start_server(test_config()).await;
    let (status, _) = request(server.addr, "GET", "/admin/rooms", Some(TOKEN), None).await;
    assert_eq!(status, 404);
}
