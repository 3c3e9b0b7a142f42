//! The text mode: one frame as one JSON text message.
//!
//! A text frame is an envelope naming the type, around the proto3 JSON
//! mapping of the frame's payload (generated from `proto/` by pbjson-build,
//! so it follows the schema without per-message code):
//!
//! ```json
//! {"type": "join", "seq": 2, "body": {"room": "lobby", "mode": "ROOM_MODE_MESH"}}
//! ```
//!
//! `seq` and `flags` are the binary header's fields (both default to 0 and
//! `flags` is left out when 0); `body` defaults to the empty message. A text
//! frame is converted to the binary frame it stands for, which is then
//! decoded and checked like any other, so every rule and limit of the
//! binary protocol applies unchanged.

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::frame::{write_frame, Flags, MessageType};
use crate::proto as pb;
use crate::DecodeError;

/// The envelope's name of each message type.
pub fn type_name(kind: MessageType) -> &'static str {
    match kind {
        MessageType::Hello => "hello",
        MessageType::Ping => "ping",
        MessageType::Pong => "pong",
        MessageType::Ack => "ack",
        MessageType::Join => "join",
        MessageType::Leave => "leave",
        MessageType::Login => "login",
        MessageType::Logout => "logout",
        MessageType::HangUp => "hang_up",
        MessageType::Offer => "offer",
        MessageType::Answer => "answer",
        MessageType::Ice => "ice",
        MessageType::Welcome => "welcome",
        MessageType::Joined => "joined",
        MessageType::PeerJoined => "peer_joined",
        MessageType::PeerLeft => "peer_left",
        MessageType::RoomFull => "room_full",
        MessageType::Left => "left",
        MessageType::LoginResult => "login_result",
        MessageType::Error => "error",
    }
}

/// The type an envelope names, if this version knows it.
pub fn type_by_name(name: &str) -> Option<MessageType> {
    MessageType::ALL.into_iter().find(|t| type_name(*t) == name)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Incoming {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    seq: u32,
    #[serde(default)]
    flags: u8,
    #[serde(default)]
    body: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Outgoing<B> {
    #[serde(rename = "type")]
    kind: &'static str,
    seq: u32,
    #[serde(skip_serializing_if = "is_zero")]
    flags: u8,
    body: B,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_zero(flags: &u8) -> bool {
    *flags == 0
}

/// Calls the generic function `$f` with the schema type of `$kind`.
macro_rules! with_schema {
    ($kind:expr, $f:ident($($arg:expr),*)) => {
        match $kind {
            MessageType::Hello => $f::<pb::Hello>($($arg),*),
            MessageType::Ping => $f::<pb::Ping>($($arg),*),
            MessageType::Pong => $f::<pb::Pong>($($arg),*),
            MessageType::Ack => $f::<pb::Ack>($($arg),*),
            MessageType::Join => $f::<pb::Join>($($arg),*),
            MessageType::Leave => $f::<pb::Leave>($($arg),*),
            MessageType::Login => $f::<pb::Login>($($arg),*),
            MessageType::Logout => $f::<pb::Logout>($($arg),*),
            MessageType::HangUp => $f::<pb::HangUp>($($arg),*),
            MessageType::Offer | MessageType::Answer => $f::<pb::SessionDescription>($($arg),*),
            MessageType::Ice => $f::<pb::IceCandidates>($($arg),*),
            MessageType::Welcome => $f::<pb::Welcome>($($arg),*),
            MessageType::Joined => $f::<pb::Joined>($($arg),*),
            MessageType::PeerJoined => $f::<pb::PeerJoined>($($arg),*),
            MessageType::PeerLeft => $f::<pb::PeerLeft>($($arg),*),
            MessageType::RoomFull => $f::<pb::RoomFull>($($arg),*),
            MessageType::Left => $f::<pb::Left>($($arg),*),
            MessageType::LoginResult => $f::<pb::LoginResult>($($arg),*),
            MessageType::Error => $f::<pb::Error>($($arg),*),
        }
    };
}

/// The sequence number a text message claims, read leniently so that an
/// error about the rest of it can still answer the right request; 0 when
/// there is none.
pub fn claimed_seq(text: &str) -> u32 {
    #[derive(Deserialize)]
    struct Seq {
        #[serde(default)]
        seq: u32,
    }
    serde_json::from_str::<Seq>(text).map_or(0, |s| s.seq)
}

/// Converts a text frame into the binary frame it stands for (header and
/// payload), to be decoded like any other.
///
/// # Errors
///
/// [`DecodeError::Json`] for text that is not a well-formed envelope or a
/// body that does not fit the type's schema (including JSON nested deeper
/// than serde_json's recursion limit), [`DecodeError::UnknownName`] for a
/// type this version does not know.
pub fn to_frame(text: &str) -> Result<Bytes, DecodeError> {
    let json = |e: serde_json::Error| DecodeError::Json(e.to_string());
    let incoming: Incoming = serde_json::from_str(text).map_err(json)?;
    let kind = type_by_name(&incoming.kind).ok_or_else(|| DecodeError::UnknownName {
        name: incoming.kind.chars().take(64).collect(),
    })?;
    let body = incoming
        .body
        .unwrap_or_else(|| serde_json::Value::Object(serde_json::Map::new()));
    fn payload<M>(body: serde_json::Value) -> Result<Vec<u8>, serde_json::Error>
    where
        M: prost::Message + serde::de::DeserializeOwned,
    {
        serde_json::from_value::<M>(body).map(|m| m.encode_to_vec())
    }
    let payload = with_schema!(kind, payload(body)).map_err(json)?;
    let mut out = BytesMut::with_capacity(crate::HEADER_LEN + payload.len());
    write_frame(
        &mut out,
        kind,
        Flags(incoming.flags),
        incoming.seq,
        &payload,
    );
    Ok(out.freeze())
}

/// Converts a binary frame into its text form.
///
/// # Errors
///
/// [`DecodeError::Protobuf`] if the payload is not valid for its type.
pub fn to_text(
    kind: MessageType,
    flags: Flags,
    seq: u32,
    payload: &[u8],
) -> Result<String, DecodeError> {
    // Straight from the decoded message to the text, no JSON tree between.
    fn show<M>(
        payload: &[u8],
        kind: MessageType,
        flags: Flags,
        seq: u32,
    ) -> Result<String, DecodeError>
    where
        M: prost::Message + Default + Serialize,
    {
        let body = M::decode(payload)?;
        let out = Outgoing {
            kind: type_name(kind),
            seq,
            flags: flags.0,
            body,
        };
        serde_json::to_string(&out).map_err(|e| DecodeError::Json(e.to_string()))
    }
    with_schema!(kind, show(payload, kind, flags, seq))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::split_frame;
    use crate::{decode, CodecLimits, Message};
    use prost::Message as _;

    fn message(text: &str) -> Result<Message, DecodeError> {
        let mut bytes = to_frame(text)?;
        let frame = split_frame(&mut bytes, usize::MAX)?;
        decode(&frame, &CodecLimits::default())
    }

    #[test]
    fn a_join_in_text_is_the_binary_join() {
        let got =
            message(r#"{"type":"join","seq":2,"body":{"room":"lobby","mode":"ROOM_MODE_MESH"}}"#);
        assert!(
            matches!(&got, Ok(Message::Join(j)) if j.room.as_str() == "lobby" && j.mode == crate::RoomMode::Mesh),
            "{got:?}"
        );
    }

    #[test]
    fn sdp_is_base64_as_in_the_proto3_json_mapping() {
        let got = message(r#"{"type":"offer","body":{"peer":{"peerId":"5"},"sdp":"dj0w"}}"#);
        assert!(
            matches!(&got, Ok(Message::Offer(d)) if d.sdp == crate::message::Sdp::Plain(Bytes::from_static(b"v=0"))),
            "{got:?}"
        );
    }

    #[test]
    fn frames_come_back_in_the_envelope() {
        let text = to_text(
            MessageType::Left,
            Flags(0),
            7,
            &pb::Left { room: "a".into() }.encode_to_vec(),
        );
        assert_eq!(
            text.unwrap(),
            r#"{"type":"left","seq":7,"body":{"room":"a"}}"#
        );
    }

    #[test]
    fn bad_input_gets_the_binary_protocol_codes() {
        let code = |text: &str| message(text).unwrap_err().code();
        assert_eq!(code("{"), crate::ErrorCode::Malformed);
        assert_eq!(
            code(r#"{"type":"teleport"}"#),
            crate::ErrorCode::UnknownType
        );
        assert_eq!(
            code(r#"{"type":"join","body":{"rooom":"x"}}"#),
            crate::ErrorCode::Malformed
        );
        assert_eq!(
            code(r#"{"type":"join","body":{"room":7}}"#),
            crate::ErrorCode::Malformed
        );
        assert_eq!(
            code(r#"{"type":"login","body":{"name":""}}"#),
            crate::ErrorCode::InvalidArgument
        );
        let deep = format!(
            r#"{{"type":"join","body":{}{}}}"#,
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        assert_eq!(code(&deep), crate::ErrorCode::Malformed);
    }

    #[test]
    fn the_claimed_seq_survives_a_bad_body() {
        assert_eq!(
            claimed_seq(r#"{"type":"join","seq":9,"body":{"room":7}}"#),
            9
        );
        assert_eq!(claimed_seq("nonsense"), 0);
    }
}
