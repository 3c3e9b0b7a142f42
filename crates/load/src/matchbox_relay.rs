//! The relay scenario in matchbox's protocol (`matchbox_server` 0.15,
//! `matchbox_protocol`), so the same load runs against that server.
//!
//! A matchbox client's room is the URL's path: `--url` is the server's
//! base URL, and pair `i` connects both its clients to `<url>/<room i>`
//! (a plain room, no `?next=` matchmaking, so pairs never mix). The server
//! sends each connection `{"IdAssigned":"<uuid>"}`, and the members already
//! in the room `{"NewPeer":"<uuid>"}` of a newcomer. As a `matchbox_socket`
//! does, the member told of the other initiates: it sends
//! `{"Signal":{"receiver":"<uuid>","data":<PeerSignal>}}`, which the
//! server delivers as `{"Signal":{"sender":"<uuid>","data":<PeerSignal>}}`
//! (the same `data`). A ball's `data` is what `matchbox_socket` sends for a
//! candidate: `{"IceCandidate":"<RTCIceCandidateInit as JSON>"}`, a JSON
//! string inside the JSON; the partner echoes it back to the sender.

use std::time::Duration;

use serde_json::{json, Value};

use super::relay::Report;
use super::text_relay::{self, recv, Pair, Side, Ws};
use super::{Common, LoadError, Target};

pub use super::text_relay::Options;

/// What a delivered signal starts with, up to its sender's id.
const SIGNAL_FROM: &str = "{\"Signal\":{\"sender\":";
/// What a signal sent back starts with, up to its receiver's id.
const SIGNAL_TO: &str = "{\"Signal\":{\"receiver\":";

/// A side of a matchbox pair: a ball addressed to its partner, encoded once
/// around the stamp.
#[derive(Debug)]
pub(crate) struct Matchbox {
    /// The ball up to its stamp.
    head: String,
    /// The ball after its stamp.
    tail: String,
}

impl Matchbox {
    /// A side whose partner has the id `partner`.
    pub(crate) fn to(partner: &str) -> Matchbox {
        let placeholder = text_relay::stamp(0);
        let candidate = json!({
            "candidate": "candidate:842163049 1 udp 1677729535 203.0.113.7 61665 typ srflx raddr 192.168.1.10 rport 61665 generation 0 network-cost 999",
            "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": placeholder});
        let ball = json!({"Signal": {
            "receiver": partner,
            "data": {"IceCandidate": candidate.to_string()}}})
        .to_string();
        let at = ball.find(Self::STAMP).expect("the ball carries its stamp") + Self::STAMP.len();
        Matchbox {
            head: ball[..at].to_string(),
            tail: ball[at + placeholder.len()..].to_string(),
        }
    }
}

impl Side for Matchbox {
    /// The stamp's key inside the candidate's JSON, itself a JSON string.
    const STAMP: &'static str = "usernameFragment\\\":\\\"";

    fn ball(&self, now_ns: u64) -> String {
        let mut ball = String::with_capacity(self.head.len() + 20 + self.tail.len());
        ball.push_str(&self.head);
        ball.push_str(&text_relay::stamp(now_ns));
        ball.push_str(&self.tail);
        ball
    }

    /// The signal back to its sender, with the same `data`.
    fn echo(&self, received: String) -> Option<String> {
        let rest = received.strip_prefix(SIGNAL_FROM)?;
        Some(format!("{SIGNAL_TO}{rest}"))
    }
}

/// The id in a server event `{"<kind>":"<uuid>"}`, or why there is none.
pub(crate) fn event_id(text: &str, kind: &str) -> Result<String, LoadError> {
    let v: Value = serde_json::from_str(text).map_err(|e| LoadError::Unexpected(e.to_string()))?;
    v.get(kind)
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| LoadError::Unexpected(format!("wanted {kind}, got {text}")))
}

/// The id the next event of `kind` names.
async fn expect(ws: &mut Ws, kind: &str) -> Result<String, LoadError> {
    event_id(&recv(ws).await?, kind)
}

/// Opens a connection to `room` and waits for its id.
pub(crate) async fn join(target: &Target, room: &str) -> Result<(Ws, String), LoadError> {
    let mut ws = target.open_room(room).await?;
    let id = tokio::time::timeout(Duration::from_secs(10), expect(&mut ws, "IdAssigned"))
        .await
        .map_err(|_| LoadError::Timeout("IdAssigned"))??;
    Ok((ws, id))
}

/// Two connections in one room; the one told of the other initiates.
async fn set_up_pair(target: Target, room: String) -> Result<Pair<Matchbox>, LoadError> {
    let (mut a, a_id) = join(&target, &room).await?;
    let (mut b, b_id) = join(&target, &room).await?;
    // The server adds a member to its room after sending its id, so b may
    // (rarely) be added before a; then b is the one told.
    let told = tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            id = expect(&mut a, "NewPeer") => id.map(|id| (true, id)),
            id = expect(&mut b, "NewPeer") => id.map(|id| (false, id)),
        }
    })
    .await
    .map_err(|_| LoadError::Timeout("NewPeer"))??;
    let pair = match told {
        (true, id) if id == b_id => Pair {
            initiator: (a, Matchbox::to(&b_id)),
            echo: (b, Matchbox::to(&a_id)),
        },
        (false, id) if id == a_id => Pair {
            initiator: (b, Matchbox::to(&a_id)),
            echo: (a, Matchbox::to(&b_id)),
        },
        (_, id) => {
            return Err(LoadError::Unexpected(format!(
                "NewPeer {id} in a room of {a_id} and {b_id}"
            )))
        }
    };
    Ok(pair)
}

/// Runs the scenario.
pub async fn run(common: &Common, options: &Options) -> Result<Report, LoadError> {
    let pattern = "matchbox JSON: the initiator sends, its partner echoes, one message each";
    text_relay::run(common, options, ("matchbox", pattern), set_up_pair).await
}

#[cfg(test)]
mod tests {
    //! The dialect against matchbox's own types (`matchbox_protocol` 0.15
    //! with its `json` feature, which `matchbox_server` uses to read
    //! requests and write events) and against the JSON its tests send.

    use std::str::FromStr;

    use matchbox_protocol::{JsonPeerEvent, JsonPeerRequest, PeerId, PeerRequest};
    use serde_json::Value;

    use super::{event_id, Matchbox, Side};
    use crate::text_relay::stamp_of;

    const A: &str = "67e55044-10b1-426f-9247-bb680e5fe0c8";
    const B: &str = "9b2d4c4e-7d8a-4f4e-8a77-3c3a0c1d2e5f";

    fn peer(id: &str) -> PeerId {
        PeerId(id.parse().expect("a uuid"))
    }

    #[test]
    fn ids_are_read_from_the_servers_events() {
        let assigned = JsonPeerEvent::IdAssigned(peer(A)).to_string();
        assert_eq!(event_id(&assigned, "IdAssigned").unwrap(), A);
        let new_peer = JsonPeerEvent::NewPeer(peer(B)).to_string();
        assert_eq!(event_id(&new_peer, "NewPeer").unwrap(), B);
        assert!(event_id(&new_peer, "IdAssigned").is_err());
        let left = JsonPeerEvent::PeerLeft(peer(B)).to_string();
        assert!(event_id(&left, "NewPeer").is_err());
    }

    #[test]
    fn a_ball_is_a_signal_request_carrying_an_ice_candidate() {
        let ball = Matchbox::to(B).ball(1234);
        let request = JsonPeerRequest::from_str(&ball).expect("matchbox reads the ball");
        let PeerRequest::Signal { receiver, data } = request else {
            panic!("not a signal: {ball}");
        };
        assert_eq!(receiver, peer(B));
        // matchbox_socket's PeerSignal::IceCandidate: the candidate's JSON.
        let candidate: Value =
            serde_json::from_str(data["IceCandidate"].as_str().expect("IceCandidate"))
                .expect("the candidate is JSON");
        assert!(candidate["candidate"]
            .as_str()
            .unwrap()
            .starts_with("candidate:"));
        assert_eq!(candidate["sdpMLineIndex"], 0);
        assert_eq!(candidate["usernameFragment"], "00000000000000001234");
    }

    #[test]
    fn a_delivered_ball_shows_its_stamp_and_echoes_back_to_its_sender() {
        let ball = Matchbox::to(B).ball(987_654_321);
        let PeerRequest::Signal { data, .. } = JsonPeerRequest::from_str(&ball).unwrap() else {
            panic!("not a signal");
        };
        // What the server writes to B (topology.rs: JsonPeerEvent::Signal).
        let delivered = JsonPeerEvent::Signal {
            sender: peer(A),
            data: data.clone(),
        }
        .to_string();
        assert_eq!(stamp_of(&delivered, Matchbox::STAMP), Some(987_654_321));
        let echo = Matchbox::to(A).echo(delivered).expect("a signal is echoed");
        assert_eq!(
            JsonPeerRequest::from_str(&echo).expect("matchbox reads the echo"),
            PeerRequest::Signal {
                receiver: peer(A),
                data
            }
        );
    }

    #[test]
    fn the_signal_of_matchboxs_own_test_is_echoed() {
        // matchbox_server's `signal` test sends this (with spaces); the
        // server writes it out again compactly.
        let sent = format!("{{\"Signal\": {{\"receiver\": \"{B}\", \"data\": \"123\" }}}}");
        let PeerRequest::Signal { data, .. } = JsonPeerRequest::from_str(&sent).unwrap() else {
            panic!("not a signal");
        };
        let delivered = JsonPeerEvent::Signal {
            sender: peer(A),
            data,
        }
        .to_string();
        assert_eq!(
            delivered,
            format!("{{\"Signal\":{{\"sender\":\"{A}\",\"data\":\"123\"}}}}")
        );
        let echo = Matchbox::to(A).echo(delivered).unwrap();
        assert_eq!(
            echo,
            format!("{{\"Signal\":{{\"receiver\":\"{A}\",\"data\":\"123\"}}}}")
        );
        // Anything else the server sends is not a ball.
        let left = JsonPeerEvent::PeerLeft(peer(A)).to_string();
        assert_eq!(Matchbox::to(A).echo(left), None);
    }
}
