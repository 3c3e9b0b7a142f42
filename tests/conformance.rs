//! Runs the language-neutral scripted exchanges of `tests/conformance/`
//! against a live server, over binary frames (see the README there).

mod common;

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use switchboard::protocol::{text, Frames, MessageType};
use tokio_tungstenite::tungstenite::Message as WsMessage;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

struct Client {
    ws: Ws,
    /// Frames received and not yet expected, as JSON envelopes.
    pending: VecDeque<Value>,
}

struct Run {
    url: String,
    clients: HashMap<String, Client>,
    /// Placeholder → value.
    names: HashMap<String, String>,
    tag: String,
}

impl Run {
    fn substitute(&self, v: &Value) -> Value {
        match v {
            Value::String(s) if s.starts_with('$') => {
                if let Some(known) = self.names.get(s.as_str()) {
                    return Value::String(known.clone());
                }
                if s == "$room" {
                    return Value::String(format!("conf-{}", self.tag));
                }
                if s == "$long-room-id" {
                    return Value::String("r".repeat(65));
                }
                if let Some(user) = s.strip_prefix("$user-") {
                    return Value::String(format!("{user}-{}", self.tag));
                }
                panic!("unknown placeholder {s}");
            }
            Value::Array(a) => Value::Array(a.iter().map(|x| self.substitute(x)).collect()),
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| (k.clone(), self.substitute(x)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// The client `name`, connected on first use. Its first frame is the
    /// default Hello, or `first` when the step gives one (a `hello` step).
    async fn client(&mut self, name: &str, first: Option<&Value>) -> &mut Client {
        if !self.clients.contains_key(name) {
            let (mut ws, _) = tokio_tungstenite::connect_async(&self.url).await.unwrap();
            let default = json!({"type": "hello", "body": {"protocolVersion": 1}});
            let hello = text::to_frame(&self.substitute(first.unwrap_or(&default)).to_string())
                .unwrap_or_else(|e| panic!("the first frame of {name} does not encode: {e}"));
            ws.send(WsMessage::Binary(hello)).await.unwrap();
            self.clients.insert(
                name.to_owned(),
                Client {
                    ws,
                    pending: VecDeque::new(),
                },
            );
        }
        self.clients.get_mut(name).unwrap()
    }

    /// The next frame `name` receives (server Pings answered and skipped).
    async fn next(&mut self, name: &str) -> Value {
        let client = self.client(name, None).await;
        loop {
            if let Some(v) = client.pending.pop_front() {
                if v["type"] == "ping" {
                    let pong = json!({"type": "pong", "body": {"nonce": v["body"]["nonce"]}});
                    let frame = text::to_frame(&pong.to_string()).unwrap();
                    client.ws.send(WsMessage::Binary(frame)).await.unwrap();
                    continue;
                }
                return v;
            }
            let msg = tokio::time::timeout(Duration::from_secs(5), client.ws.next())
                .await
                .expect("a frame within 5 s");
            // The end of the connection reads as `{"close": code}`.
            let data = match msg {
                Some(Ok(WsMessage::Binary(data))) => data,
                Some(Ok(WsMessage::Close(frame))) => {
                    return json!({"close": frame.map(|f| u16::from(f.code))});
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return json!({"close": null}),
            };
            for f in Frames::new(data, 1 << 20, 1 << 10) {
                let f = f.unwrap();
                let kind = MessageType::from_byte(f.header.kind).expect("a known type");
                let shown = text::to_text(kind, f.header.flags, f.header.seq, &f.payload).unwrap();
                client
                    .pending
                    .push_back(serde_json::from_str(&shown).unwrap());
            }
        }
    }
}

/// Whether `got` has every key of `want` with an equal value (see the
/// README's matching rule).
fn matches(want: &Value, got: &Value) -> bool {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => w
            .iter()
            .all(|(k, v)| g.get(k).is_some_and(|x| matches(v, x))),
        (Value::Array(w), Value::Array(g)) => {
            w.len() == g.len() && w.iter().zip(g).all(|(a, b)| matches(a, b))
        }
        _ => want == got,
    }
}

fn has_path(v: &Value, path: &str) -> bool {
    path.split('.').try_fold(v, |v, k| v.get(k)).is_some()
}

#[tokio::test]
async fn every_scripted_exchange_passes_against_the_server() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/conformance/exchanges.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let exchanges = vectors["exchanges"].as_array().unwrap();
    assert!(exchanges.len() >= 6);
    for (n, exchange) in exchanges.iter().enumerate() {
        let name = exchange["name"].as_str().unwrap();
        // The default server runs in this process; an exchange that names a
        // server profile gets the binary, started with the profile's flags
        // and environment, as the other languages' runners start it.
        let (in_process, child) = match exchange.get("server") {
            None => (Some(start_server(test_config()).await), None),
            Some(profile) => {
                let profile = &vectors["servers"][profile.as_str().unwrap()];
                assert!(
                    profile.is_object(),
                    "exchange {name:?}: no such server profile"
                );
                let args: Vec<&str> = profile["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                let env: Vec<(&str, &str)> = profile["env"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
                    .collect();
                (None, Some(child::Server::start_with(&args, None, &env)))
            }
        };
        let url = in_process
            .as_ref()
            .map(TestServer::url)
            .or_else(|| child.as_ref().map(child::Server::url))
            .unwrap();
        let mut run = Run {
            url,
            clients: HashMap::new(),
            names: HashMap::new(),
            tag: format!("{n}-{}", std::process::id()),
        };
        for (i, step) in exchange["steps"].as_array().unwrap().iter().enumerate() {
            let who = step["client"].as_str().unwrap();
            let at = format!("exchange {name:?}, step {i} ({who})");
            if let Some(first) = step.get("hello") {
                assert!(
                    !run.clients.contains_key(who),
                    "{at}: hello must come first"
                );
                run.client(who, Some(first)).await;
            } else if let Some(send) = step.get("send") {
                let frame = text::to_frame(&run.substitute(send).to_string())
                    .unwrap_or_else(|e| panic!("{at}: the vector does not encode: {e}"));
                let client = run.client(who, None).await;
                client.ws.send(WsMessage::Binary(frame)).await.unwrap();
            } else if let Some(hex) = step.get("sendHex") {
                let times = step["times"].as_u64().unwrap_or(1) as usize;
                let digits: String = hex.as_str().unwrap().split_whitespace().collect();
                let bytes = hex::decode(digits)
                    .unwrap_or_else(|e| panic!("{at}: sendHex is not hex: {e}"))
                    .repeat(times);
                let client = run.client(who, None).await;
                client
                    .ws
                    .send(WsMessage::Binary(bytes.into()))
                    .await
                    .unwrap();
            } else if let Some(code) = step.get("expectClose") {
                let got = run.next(who).await;
                assert_eq!(got, json!({"close": code}), "{at}: wanted the close {code}");
            } else {
                let got = run.next(who).await;
                if got["type"] == "welcome" {
                    let id = got["body"]["peerId"].as_str().unwrap().to_owned();
                    run.names.insert(format!("${who}"), id);
                }
                let want = run.substitute(&step["expect"]);
                assert!(matches(&want, &got), "{at}: wanted {want}, got {got}");
                for path in step["absent"].as_array().into_iter().flatten() {
                    let path = path.as_str().unwrap();
                    assert!(
                        !has_path(&got, path),
                        "{at}: {path} should be absent in {got}"
                    );
                }
            }
        }
    }
}

/// The matcher itself: a runner that accepted anything would pass too.
#[test]
fn the_matcher_refuses_what_differs() {
    let want = json!({"type": "joined", "body": {"members": [{"peerId": "1"}]}});
    assert!(matches(
        &want,
        &json!({"type": "joined", "seq": 3, "body": {"members": [{"peerId": "1", "displayName": "x"}]}})
    ));
    assert!(!matches(
        &want,
        &json!({"type": "joined", "body": {"members": []}})
    ));
    assert!(!matches(
        &want,
        &json!({"type": "joined", "body": {"members": [{"peerId": "2"}]}})
    ));
    assert!(!matches(&want, &json!({"type": "left"})));
    assert!(has_path(&json!({"body": {"error": 1}}), "body.error"));
    assert!(!has_path(&json!({"body": {}}), "body.error"));
}
