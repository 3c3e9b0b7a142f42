//! Probes and drain on SIGTERM, on the real binary: `/readyz` goes false at
//! once, new sessions are refused, connected clients are told to reconnect,
//! and the process exits when they are gone.

mod common;

use std::time::{Duration, Instant};

use common::child::Server;
use common::*;
use switchboard::client::{default_hello, Connection};
use switchboard::protocol::{ErrorCode, Message, RoomMode};

fn status_line(response: &str) -> &str {
    response.lines().next().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readyz_first_then_clients_then_exits() {
    // A grace far longer than the drain needs: the exit below must come from
    // the node being empty, not from the deadline.
    let mut server = Server::start(&["--shutdown-grace-ms", "30000"]);
    let ready = http_get(server.addr, "/readyz").await;
    assert!(status_line(&ready).contains("200"), "{ready}");
    assert!(ready.ends_with("{\"status\":\"ready\"}\n"), "{ready}");

    let mut client = Connection::connect(&server.url(), default_hello())
        .await
        .unwrap();
    join_ok(&mut client, "drain", RoomMode::Mesh).await;
    // A client that never says Hello: it is refused at once when the drain
    // begins, not left to its handshake timeout.
    let (_silent, _) = tokio_tungstenite::connect_async(server.url())
        .await
        .unwrap();

    let killed = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());

    // Not ready at once, alive all along, no new sessions.
    let deadline = Instant::now() + Duration::from_secs(2);
    let draining = loop {
        let r = http_get(server.addr, "/readyz").await;
        if status_line(&r).contains("503") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "still ready 2 s after SIGTERM: {r}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        draining.ends_with("{\"status\":\"draining\"}\n"),
        "{draining}"
    );
    let alive = http_get(server.addr, "/healthz").await;
    assert!(status_line(&alive).contains("200"), "{alive}");
    let refused = tokio_tungstenite::connect_async(server.url()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("an upgrade while draining got {other:?}"),
    }

    // The connected client is told to go, in-band and by the close code.
    let Message::Error(e) = next(&mut client).await else {
        panic!("expected the shutdown error")
    };
    assert_eq!(e.code, ErrorCode::ServerShuttingDown);

    // Then the process exits by itself, successfully, as soon as the
    // clients are gone (each gets a second for its close handshake).
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status}");
}
