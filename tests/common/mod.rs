//! Helpers shared by the integration tests: a server on port 0 and clients.
#![allow(dead_code)]

pub mod child;
pub mod fleet;
pub mod json;
pub mod proxy;
pub mod redis;

use std::net::SocketAddr;
use std::time::Duration;

use switchboard::client::{default_hello, ClientError, Connection};
use switchboard::config::Config;
use switchboard::protocol::{
    Address, ErrorCode, IceCandidate, IceCandidates, Join, Message, PeerId, RoomId, RoomMode, Sdp,
    SessionDescription, UserName,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running in this process until dropped or shut down.
pub struct TestServer {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Asks the server to shut down and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config for tests: loopback, port 0, generous limits.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    }
}

pub async fn start_server(config: Config) -> TestServer {
    start_server_with_directory(config).await.0
}

/// [`start_server`], also returning its directory, so a test can see what
/// the server holds (how many are connected) without asking it over the
/// network.
pub async fn start_server_with_directory(
    config: Config,
) -> (
    TestServer,
    std::sync::Arc<switchboard::directory::LocalDirectory>,
) {
    let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    let directory = switchboard::server::local_directory(&config);
    let task = tokio::spawn(switchboard::server::run_with_directory(
        listener,
        config,
        directory.clone(),
        async {
            let _ = rx.await;
        },
    ));
    let server = TestServer {
        addr,
        shutdown: Some(tx),
        task: Some(task),
    };
    (server, directory)
}

pub async fn connect(server: &TestServer) -> Connection {
    Connection::connect(&server.url(), default_hello())
        .await
        .expect("connect")
}

pub fn room(s: &str) -> RoomId {
    RoomId::new(s).unwrap()
}

pub fn user(s: &str) -> UserName {
    UserName::new(s).unwrap()
}

pub fn join(r: &str, mode: RoomMode) -> Message {
    Message::Join(Join {
        room: room(r),
        mode,
        capacity: None,
        display_name: String::new(),
    })
}

pub fn offer(to: Address, sdp: &str) -> Message {
    Message::Offer(SessionDescription {
        peer: to,
        sdp: Sdp::Plain(sdp.as_bytes().to_vec().into()),
        room: None,
        app_data: String::new(),
    })
}

pub fn answer(to: Address, sdp: &str) -> Message {
    Message::Answer(SessionDescription {
        peer: to,
        sdp: Sdp::Plain(sdp.as_bytes().to_vec().into()),
        room: None,
        app_data: String::new(),
    })
}

/// Host candidate number `n`, as the client tests send it.
pub fn host_candidate(n: u32) -> IceCandidate {
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

pub fn ice(to: Address, n: u32) -> Message {
    Message::Ice(IceCandidates {
        peer: to,
        candidates: vec![IceCandidate {
            candidate: format!(
                "candidate:{n} 1 udp 2113937151 192.0.2.1 {} typ host",
                50000 + n
            ),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: Some("abcd".into()),
        }],
        end_of_candidates: false,
        room: None,
        app_data: String::new(),
    })
}

/// Receives the next message within 5 s.
pub async fn next(c: &mut Connection) -> Message {
    tokio::time::timeout(Duration::from_secs(5), c.recv())
        .await
        .expect("timed out waiting for a message")
        .expect("receive failed")
}

/// Receives the next message and returns the Error it must be.
pub async fn expect_error(c: &mut Connection, code: ErrorCode) -> u32 {
    match next(c).await {
        Message::Error(e) => {
            assert_eq!(e.code, code, "unexpected error: {e:?}");
            e.request_seq
        }
        other => panic!("expected error {code:?}, got {other:?}"),
    }
}

/// Waits until the connection is closed; returns the close code.
pub async fn expect_closed(c: &mut Connection) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(10), c.recv()).await {
            Err(_) => panic!("connection not closed in time"),
            Ok(Ok(_)) => continue,
            Ok(Err(ClientError::Closed { code, .. })) => return code,
            Ok(Err(_)) => return 0,
        }
    }
}

/// Joins a room and returns the Joined answer's initiator flag and members.
pub async fn join_ok(c: &mut Connection, r: &str, mode: RoomMode) -> switchboard::protocol::Joined {
    c.send(&join(r, mode)).await.unwrap();
    match next(c).await {
        Message::Joined(j) => j,
        other => panic!("expected Joined, got {other:?}"),
    }
}

pub fn peer(c: &Connection) -> PeerId {
    c.welcome().peer_id
}

/// Reads raw WebSocket messages until the close frame; returns its code.
pub async fn wait_close(ws: &mut switchboard::client::Socket) -> u16 {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as WsMessage;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Err(_) => panic!("not closed"),
            Ok(Some(Ok(WsMessage::Close(Some(f))))) => return f.code.into(),
            Ok(Some(Ok(_))) => continue,
            Ok(_) => return 0,
        }
    }
}

/// A plain HTTP/1.1 GET; returns the whole response.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// An hour's access token for `sub`, signed with `secret`, that grants every
/// room and the right to create rooms.
pub fn token_granting_everything(secret: &str, sub: &str) -> String {
    switchboard::auth::mint_token(
        secret.as_bytes(),
        sub,
        Vec::new(),
        Some(String::new()),
        Duration::from_secs(3600),
        true,
        None,
    )
    .unwrap()
}
