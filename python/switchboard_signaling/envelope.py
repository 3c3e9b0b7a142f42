"""Frames as the JSON envelope of the text mode: {"type", "seq", "flags",
"body"}, the body in the proto3 JSON mapping (docs/PROTOCOL.md section 12)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from . import frame
from . import signal_pb2 as pb

# Envelope type name -> (type byte, payload message).
TYPES: dict[str, tuple[int, Any]] = {
    "hello": (pb.MESSAGE_TYPE_HELLO, pb.Hello),
    "ping": (pb.MESSAGE_TYPE_PING, pb.Ping),
    "pong": (pb.MESSAGE_TYPE_PONG, pb.Pong),
    "ack": (pb.MESSAGE_TYPE_ACK, pb.Ack),
    "join": (pb.MESSAGE_TYPE_JOIN, pb.Join),
    "leave": (pb.MESSAGE_TYPE_LEAVE, pb.Leave),
    "login": (pb.MESSAGE_TYPE_LOGIN, pb.Login),
    "logout": (pb.MESSAGE_TYPE_LOGOUT, pb.Logout),
    "hang_up": (pb.MESSAGE_TYPE_HANG_UP, pb.HangUp),
    "offer": (pb.MESSAGE_TYPE_OFFER, pb.SessionDescription),
    "answer": (pb.MESSAGE_TYPE_ANSWER, pb.SessionDescription),
    "ice": (pb.MESSAGE_TYPE_ICE, pb.IceCandidates),
    "welcome": (pb.MESSAGE_TYPE_WELCOME, pb.Welcome),
    "joined": (pb.MESSAGE_TYPE_JOINED, pb.Joined),
    "peer_joined": (pb.MESSAGE_TYPE_PEER_JOINED, pb.PeerJoined),
    "peer_left": (pb.MESSAGE_TYPE_PEER_LEFT, pb.PeerLeft),
    "room_full": (pb.MESSAGE_TYPE_ROOM_FULL, pb.RoomFull),
    "left": (pb.MESSAGE_TYPE_LEFT, pb.Left),
    "login_result": (pb.MESSAGE_TYPE_LOGIN_RESULT, pb.LoginResult),
    "error": (pb.MESSAGE_TYPE_ERROR, pb.Error),
}
NAMES = {type_: name for name, (type_, _) in TYPES.items()}


def to_frame(envelope: dict[str, Any]) -> bytes:
    """One binary frame for an envelope."""
    type_, message = TYPES[envelope["type"]]
    body = json_format.ParseDict(envelope.get("body", {}), message())
    return frame.encode(type_, envelope.get("flags", 0), envelope.get("seq", 0), body.SerializeToString())


def from_frame(f: frame.Frame) -> dict[str, Any]:
    """The envelope of a received frame (KeyError for an unknown type byte)."""
    name = NAMES[f.type]
    body = TYPES[name][1].FromString(f.payload)
    return {"type": name, "seq": f.seq, "flags": f.flags, "body": json_format.MessageToDict(body)}
