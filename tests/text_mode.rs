//! The JSON text mode on `/ws`: text clients speak the same protocol as
//! binary ones, share rooms and names with them, and get the same errors.

mod common;

use base64::Engine as _;
use common::*;
use futures_util::SinkExt;
use serde_json::{json, Value};
use switchboard::protocol::{Address, Join, Message, PeerId, RoomMode, Sdp, SessionDescription};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use common::json::{self, Socket};

/// A client typing JSON, as `wscat` would.
struct TextClient {
    ws: Socket,
}

impl TextClient {
    async fn connect(server: &TestServer) -> TextClient {
        let (ws, _) = tokio_tungstenite::connect_async(server.url())
            .await
            .unwrap();
        TextClient { ws }
    }

    /// Connects and says hello; returns the client and its peer id.
    async fn hello(server: &TestServer) -> (TextClient, u64) {
        let mut c = TextClient::connect(server).await;
        c.send(r#"{"type":"hello","body":{"protocolVersion":1}}"#)
            .await;
        let welcome = c.recv().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let id = welcome["body"]["peerId"].as_str().unwrap().parse().unwrap();
        (c, id)
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(WsMessage::text(text)).await.unwrap();
    }

    /// The next text message, parsed; anything else fails the test.
    async fn recv(&mut self) -> Value {
        json::recv(&mut self.ws).await
    }

    async fn expect_error(&mut self, code: &str, request_seq: u32) {
        let got = self.recv().await;
        assert_eq!(got["type"], "error", "{got}");
        assert_eq!(got["body"]["code"], code, "{got}");
        assert_eq!(
            got["body"]["requestSeq"].as_u64().unwrap_or(0),
            u64::from(request_seq),
            "{got}"
        );
    }

    /// The close code the server ends with.
    async fn close_code(&mut self) -> u16 {
        json::close_code(&mut self.ws).await
    }
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

const SDP: &str = "v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\na=group:BUNDLE 0\r\na=msid-semantic: WMS\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\na=rtcp:9 IN IP4 0.0.0.0\r\na=ice-ufrag:abcd\r\na=ice-pwd:abcdefghijklmnopqrstuvwx\r\na=fingerprint:sha-256 00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF:00:11:22:33:44:55:66:77:88:99:AA:BB:CC:DD:EE:FF\r\na=setup:actpass\r\na=mid:0\r\na=sendrecv\r\na=rtcp-mux\r\na=rtpmap:111 opus/48000/2\r\n";

#[tokio::test]
async fn a_text_client_and_a_binary_client_share_a_room_and_negotiate() {
    let server = start_server(test_config()).await;
    let (mut text, text_id) = TextClient::hello(&server).await;
    text.send(r#"{"type":"join","seq":1,"body":{"room":"r","mode":"ROOM_MODE_MESH"}}"#)
        .await;
    let joined = text.recv().await;
    assert_eq!(joined["type"], "joined", "{joined}");
    assert_eq!(
        joined["body"].get("members"),
        None,
        "no one else yet: {joined}"
    );

    // The binary client claims deflate: the text client does not, so what
    // it receives is plain whatever the sender can do.
    let mut bin = connect(&server).await;
    let bin_id = bin.welcome().peer_id;
    bin.send(&Message::Join(Join {
        room: room("r"),
        mode: RoomMode::Mesh,
        capacity: None,
        display_name: String::new(),
    }))
    .await
    .unwrap();
    let Message::Joined(j) = next(&mut bin).await else {
        panic!()
    };
    assert!(j.members.iter().any(|m| m.peer_id == PeerId(text_id)));
    let joined = text.recv().await;
    assert_eq!(joined["type"], "peer_joined", "{joined}");
    assert_eq!(
        joined["body"]["member"]["peerId"],
        bin_id.0.to_string(),
        "{joined}"
    );

    bin.send(&Message::Offer(SessionDescription {
        peer: Address::Peer(PeerId(text_id)),
        sdp: Sdp::Plain(SDP.into()),
        room: None,
        app_data: String::new(),
    }))
    .await
    .unwrap();
    let offer = text.recv().await;
    assert_eq!(offer["type"], "offer", "{offer}");
    assert_eq!(
        offer.get("flags"),
        None,
        "a text client gets plain sdp: {offer}"
    );
    assert_eq!(offer["body"]["sdp"], b64(SDP));
    assert_eq!(offer["body"]["peer"]["peerId"], bin_id.0.to_string());

    let answer = json!({"type": "answer", "seq": 2, "body": {"peer": {"peerId": bin_id.0.to_string()}, "sdp": b64("v=0\r\n")}});
    text.send(&answer.to_string()).await;
    let Message::Answer(a) = next(&mut bin).await else {
        panic!()
    };
    assert_eq!(a.peer, Address::Peer(PeerId(text_id)));
    assert_eq!(a.sdp, Sdp::Plain("v=0\r\n".into()));

    let ice = json!({"type": "ice", "seq": 3, "body": {"peer": {"peerId": bin_id.0.to_string()},
        "candidates": [{"candidate": "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}]}});
    text.send(&ice.to_string()).await;
    let Message::Ice(i) = next(&mut bin).await else {
        panic!()
    };
    assert_eq!(i.candidates.len(), 1);
    assert_eq!(i.candidates[0].sdp_mid.as_deref(), Some("0"));

    text.send(r#"{"type":"leave","seq":4,"body":{"room":"r"}}"#)
        .await;
    assert_eq!(text.recv().await["type"], "left");
    assert!(matches!(next(&mut bin).await, Message::PeerLeft(p) if p.peer_id == PeerId(text_id)));
}

#[tokio::test]
async fn bad_text_gets_the_binary_protocols_errors_and_the_connection_stays() {
    let server = start_server(test_config()).await;
    let (mut c, _) = TextClient::hello(&server).await;
    c.send("{").await;
    c.expect_error("ERROR_CODE_MALFORMED", 0).await;
    c.send(r#"{"type":"teleport","seq":5}"#).await;
    c.expect_error("ERROR_CODE_UNKNOWN_TYPE", 5).await;
    c.send(r#"{"type":"join","seq":6,"body":{"room":7}}"#).await;
    c.expect_error("ERROR_CODE_MALFORMED", 6).await;
    c.send(r#"{"type":"join","seq":7,"body":{"room":"r","mood":"happy"}}"#)
        .await;
    c.expect_error("ERROR_CODE_MALFORMED", 7).await;
    let deep = format!(
        r#"{{"type":"join","seq":8,"body":{}{}}}"#,
        "[".repeat(50_000),
        "]".repeat(50_000)
    );
    c.send(&deep).await;
    c.expect_error("ERROR_CODE_MALFORMED", 8).await;
    // Decoded, then refused by the same rules as a binary frame.
    c.send(r#"{"type":"leave","seq":9,"body":{"room":"never-joined"}}"#)
        .await;
    c.expect_error("ERROR_CODE_NOT_JOINED", 9).await;
    c.send(r#"{"type":"welcome","seq":10}"#).await;
    c.expect_error("ERROR_CODE_INVALID_ARGUMENT", 10).await;
    c.send(r#"{"type":"offer","seq":11,"flags":128,"body":{}}"#)
        .await;
    c.expect_error("ERROR_CODE_MALFORMED", 11).await;

    // Still usable.
    c.send(r#"{"type":"ping","seq":12,"body":{"nonce":"42"}}"#)
        .await;
    let pong = c.recv().await;
    assert_eq!(pong["type"], "pong", "{pong}");
    assert_eq!(pong["body"]["nonce"], "42");

    // Over the message limit: refused before parsing, as for binary.
    let big = format!(
        r#"{{"type":"login","body":{{"name":"{}"}}}}"#,
        "x".repeat(200 * 1024)
    );
    let _ = c.ws.send(WsMessage::text(big)).await;
    assert_eq!(c.close_code().await, 1009);
}

#[tokio::test]
async fn a_bad_text_hello_is_refused_in_text() {
    let server = start_server(test_config()).await;
    let mut c = TextClient::connect(&server).await;
    c.send(r#"{"type":"hello","body":{"protocolVersion":0}}"#)
        .await;
    c.expect_error("ERROR_CODE_UNSUPPORTED_VERSION", 0).await;
    assert_eq!(c.close_code().await, 4005);

    let mut c = TextClient::connect(&server).await;
    c.send(r#"{"type":"join","body":{"room":"r"}}"#).await;
    c.expect_error("ERROR_CODE_HELLO_REQUIRED", 0).await;
    assert_eq!(c.close_code().await, 4006);
}

/// Whether `got` has everything `want` has; the string "…" stands for any
/// value.
fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::String(s), _) if s == "…" => true,
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|gv| matches(v, gv))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        _ => want == got,
    }
}

/// The README's `wscat` session, replayed line by line: `>` lines are
/// sent, `<` lines must arrive (fields shown must match; "…" is any value).
/// Bob, whom Alice calls, is a binary client logged in beforehand.
#[tokio::test]
async fn the_readme_wscat_session_works_as_shown() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme
        .find("$ wscat -c ws://localhost:8080/ws")
        .expect("README has the wscat session");
    let session: Vec<&str> = readme[start..]
        .lines()
        .skip(1)
        .take_while(|l| l.starts_with('>') || l.starts_with('<'))
        .collect();
    assert!(session.len() >= 6, "{session:?}");

    let server = start_server(test_config()).await;
    let mut bob = connect(&server).await;
    bob.send(&Message::Login { name: user("bob") })
        .await
        .unwrap();
    assert!(matches!(next(&mut bob).await, Message::LoginResult(r) if r.error.is_none()));

    let mut alice = TextClient::connect(&server).await;
    for line in session {
        let (dir, json) = line.split_at(1);
        let json = json.trim();
        if dir == ">" {
            alice.send(json).await;
        } else {
            let want: Value =
                serde_json::from_str(json).unwrap_or_else(|e| panic!("README line {json}: {e}"));
            let got = alice.recv().await;
            assert!(
                matches(&want, &got),
                "README shows\n  {want}\nserver sent\n  {got}"
            );
        }
    }
    let Message::Offer(offer) = next(&mut bob).await else {
        panic!()
    };
    assert_eq!(offer.peer, Address::User(user("alice")));
}
