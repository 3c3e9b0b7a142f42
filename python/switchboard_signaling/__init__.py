"""asyncio client for the switchboard signaling protocol v1.

`Client` is a session that reconnects and batches ICE candidates;
`Connection` is one WebSocket. Both hand out typed events (`events`).
``signal_pb2`` is generated from ``proto/switchboard/v1/signal.proto`` when
the package is built; ``frame`` is the 12-byte header of docs/PROTOCOL.md
section 2; ``envelope`` converts frames to and from the JSON envelope of the
text mode (section 12) that the conformance vectors are written in;
``ice.IceBatcher`` is the batching rule of section 8, sans IO.
"""

from .client import Client, Connection, ConnectionClosed, SignalingError, backoff
from .events import (
    Address,
    Answer,
    Candidate,
    Capability,
    Disconnected,
    Error,
    ErrorCode,
    Event,
    HangUp,
    IceCandidates,
    Joined,
    LeaveReason,
    Left,
    LoginResult,
    Member,
    Offer,
    PeerJoined,
    PeerLeft,
    Pong,
    Reconnected,
    RoomFull,
    RoomMode,
    Skipped,
)

__all__ = [
    "Address",
    "Answer",
    "Candidate",
    "Capability",
    "Client",
    "Connection",
    "ConnectionClosed",
    "Disconnected",
    "Error",
    "ErrorCode",
    "Event",
    "HangUp",
    "IceCandidates",
    "Joined",
    "LeaveReason",
    "Left",
    "LoginResult",
    "Member",
    "Offer",
    "PeerJoined",
    "PeerLeft",
    "Pong",
    "Reconnected",
    "RoomFull",
    "RoomMode",
    "Skipped",
    "SignalingError",
    "backoff",
]
