//! `--tls-cert`/`--tls-key`: wss:// and https:// served directly, with a
//! self-signed certificate generated at run time.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use switchboard::client::{default_hello, Connection};
use switchboard::config::Config;
use switchboard::protocol::{Message, RoomMode, PROTOCOL_VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

struct Pki {
    dir: PathBuf,
    cert: CertificateDer<'static>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed certificate for `localhost`, written as PEM files.
fn self_signed() -> Pki {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let dir = std::env::temp_dir().join(format!(
        "switchboard-tls-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem()).unwrap();
    Pki {
        dir,
        cert: certified.cert.der().clone(),
    }
}

fn tls_config(pki: &Pki) -> Config {
    Config {
        tls_cert: Some(pki.dir.join("cert.pem")),
        tls_key: Some(pki.dir.join("key.pem")),
        handshake_timeout: Duration::from_millis(500),
        ..test_config()
    }
}

/// A TLS configuration that trusts only the generated certificate.
fn client_config(pki: &Pki) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.cert.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

async fn tls_connect(server: &TestServer, pki: &Pki) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    TlsConnector::from(client_config(pki))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake with the generated certificate")
}

/// A client of the client crate over wss://, trusting only the generated
/// certificate.
async fn wss_peer(server: &TestServer, pki: &Pki) -> Connection {
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let c = Connection::connect_with_tls(&url, default_hello(), client_config(pki))
        .await
        .expect("wss:// connection with the generated certificate");
    assert_eq!(c.welcome().protocol_version, PROTOCOL_VERSION);
    c
}

#[tokio::test]
async fn wss_hello_welcome_join_and_offer() {
    let pki = self_signed();
    let server = start_server(tls_config(&pki)).await;
    let mut a = wss_peer(&server, &pki).await;
    let mut b = wss_peer(&server, &pki).await;
    assert!(!join_ok(&mut a, "tls-room", RoomMode::Pair).await.initiator);
    assert!(join_ok(&mut b, "tls-room", RoomMode::Pair).await.initiator);
    assert!(matches!(next(&mut a).await, Message::PeerJoined(_)));
    b.send(&offer(
        switchboard::protocol::Address::Peer(peer(&a)),
        "v=0",
    ))
    .await
    .unwrap();
    assert!(matches!(next(&mut a).await, Message::Offer(_)));
}

#[tokio::test]
async fn https_healthz() {
    let pki = self_signed();
    let server = start_server(tls_config(&pki)).await;
    let mut tls = tls_connect(&server, &pki).await;
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    // rustls reports the peer's missing close_notify as an error after the
    // body; what was read until then is the response.
    let _ = tls.read_to_string(&mut response).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"status\":\"ok\""), "{response}");
}

#[tokio::test]
async fn plaintext_and_stalled_handshakes_on_the_tls_port_are_dropped() {
    let pki = self_signed();
    let server = start_server(tls_config(&pki)).await;
    // Plain HTTP on the TLS port gets no HTTP answer.
    let response = http_get(server.addr, "/healthz").await;
    assert!(!response.contains("200"), "{response}");
    // A client that opens TCP and never says ClientHello is dropped after
    // the handshake timeout (500 ms here).
    let mut idle = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3), idle.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a stalled TLS handshake was not dropped");
    // The server still serves TLS clients.
    let mut ws = wss_peer(&server, &pki).await;
    ws.send(&Message::Ping { nonce: 9 }).await.unwrap();
    assert_eq!(next(&mut ws).await, Message::Pong { nonce: 9 });
}
