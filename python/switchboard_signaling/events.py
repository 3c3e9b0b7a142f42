"""Typed events: what a switchboard server sends a client, as frozen
dataclasses, and the schema's enums as ``IntEnum``s built from the generated
bindings (so they follow ``proto/``). SDP arrives as text, already inflated.

An address is a peer id (``int``) or a user name (``str``), as in the
protocol's ``Address``: the sender when the server delivers a signal, the
target when a client sends one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import FrozenSet, Optional, Tuple, Union

from . import frame, sdp
from . import signal_pb2 as pb

Address = Union[int, str]


class _SchemaEnum(enum.IntEnum):
    """An enum of the schema that also takes values a newer server may send:
    they become members named ``UNKNOWN_<n>`` instead of an exception."""

    @classmethod
    def _missing_(cls, value):
        if not isinstance(value, int) or isinstance(value, bool):
            return None
        member = int.__new__(cls, value)
        member._name_ = f"UNKNOWN_{value}"
        member._value_ = value
        return member


def _from_schema(name: str, values, prefix: str):
    return _SchemaEnum(name, [(n[len(prefix) :], v) for n, v in values.items()], module=__name__)


#: ``ErrorCode.FORBIDDEN == pb.ERROR_CODE_FORBIDDEN``, and so on for every code.
ErrorCode = _from_schema("ErrorCode", pb.ErrorCode, "ERROR_CODE_")
RoomMode = _from_schema("RoomMode", pb.RoomMode, "ROOM_MODE_")
LeaveReason = _from_schema("LeaveReason", pb.LeaveReason, "LEAVE_REASON_")
Capability = _from_schema("Capability", pb.Capability, "CAPABILITY_")


@dataclass(frozen=True)
class Member:
    """A room member: its peer id, display name, logged-in user name (None
    when it has none) and capabilities."""

    peer_id: int
    display_name: str = ""
    user: Optional[str] = None
    capabilities: FrozenSet[Capability] = frozenset()


@dataclass(frozen=True)
class Candidate:
    """One ICE candidate, as in ``RTCIceCandidateInit``."""

    candidate: str
    sdp_mid: Optional[str] = None
    sdp_m_line_index: Optional[int] = None
    username_fragment: Optional[str] = None

    def to_proto(self) -> pb.IceCandidate:
        c = pb.IceCandidate(candidate=self.candidate)
        if self.sdp_mid is not None:
            c.sdp_mid = self.sdp_mid
        if self.sdp_m_line_index is not None:
            c.sdp_m_line_index = self.sdp_m_line_index
        if self.username_fragment is not None:
            c.username_fragment = self.username_fragment
        return c

    @classmethod
    def from_proto(cls, c: pb.IceCandidate) -> "Candidate":
        return cls(
            c.candidate,
            c.sdp_mid if c.HasField("sdp_mid") else None,
            c.sdp_m_line_index if c.HasField("sdp_m_line_index") else None,
            c.username_fragment if c.HasField("username_fragment") else None,
        )


class Event:
    """Base class of everything `recv` returns."""

    __slots__ = ()


@dataclass(frozen=True)
class Joined(Event):
    """This client joined `room` (also after a reconnect). `members` are the
    others, in join order; `initiator` is true for the later joiner of a
    pair room, who makes the offer."""

    room: str
    mode: RoomMode
    capacity: int
    members: Tuple[Member, ...] = ()
    initiator: bool = False


@dataclass(frozen=True)
class PeerJoined(Event):
    room: str
    member: Member
    initiator: bool = False


@dataclass(frozen=True)
class PeerLeft(Event):
    room: str
    peer_id: int
    reason: LeaveReason


@dataclass(frozen=True)
class Left(Event):
    """This client left `room` (its own Leave, a second pair room, a kick)."""

    room: str


@dataclass(frozen=True)
class RoomFull(Event):
    room: str
    capacity: int


@dataclass(frozen=True)
class LoginResult(Event):
    """The answer to a Login (also after a reconnect): `error` is None on
    success, else NAME_TAKEN, FORBIDDEN or UNAUTHENTICATED."""

    name: str
    success: bool
    error: Optional[ErrorCode] = None


@dataclass(frozen=True)
class Offer(Event):
    """An offer from `peer`, its SDP inflated when it came compressed."""

    peer: Address
    sdp: str
    room: Optional[str] = None
    app_data: str = ""


@dataclass(frozen=True)
class Answer(Event):
    peer: Address
    sdp: str
    room: Optional[str] = None
    app_data: str = ""


@dataclass(frozen=True)
class IceCandidates(Event):
    """One batch of candidates from `peer`, in order; `end_of_candidates`:
    it has gathered all of them."""

    peer: Address
    candidates: Tuple[Candidate, ...] = ()
    end_of_candidates: bool = False
    room: Optional[str] = None
    app_data: str = ""


@dataclass(frozen=True)
class HangUp(Event):
    peer: Address


@dataclass(frozen=True)
class Pong(Event):
    nonce: int


@dataclass(frozen=True)
class Error(Event):
    """An Error frame: `request_seq` is the seq of the frame it answers (the
    one `send` and friends returned), 0 when it answers none."""

    code: ErrorCode
    message: str = ""
    request_seq: int = 0


@dataclass(frozen=True)
class Skipped(Event):
    """A frame this client could not read (an unknown type from a newer
    server, a payload that does not decode, SDP that does not inflate); it
    was skipped and the connection goes on. `type` is the frame's type byte;
    None for the rest of a message whose frame layer failed."""

    reason: str
    type: Optional[int] = None


@dataclass(frozen=True)
class Disconnected(Event):
    """The connection was lost; the client is reconnecting."""

    reason: str
    close_code: Optional[int] = None


@dataclass(frozen=True)
class Reconnected(Event):
    """The connection is back, with a new peer id; the login and the rooms
    are being restored (their LoginResult and Joined follow)."""

    peer_id: int


def address(a: pb.Address) -> Address:
    return a.user if a.WhichOneof("kind") == "user" else a.peer_id


def to_address(a: Address) -> pb.Address:
    if isinstance(a, str):
        return pb.Address(user=a)
    return pb.Address(peer_id=a)


def member(m: pb.Member) -> Member:
    return Member(m.peer_id, m.display_name, m.user or None, frozenset(map(Capability, m.capabilities)))


def decode(f: frame.Frame, max_sdp: int = 65_536) -> Event:
    """The event for a frame from the server (not Welcome or Ping, which the
    connection handles). Raises protobuf's `DecodeError`, `ValueError`
    (`sdp.CompressionError`, `UnicodeDecodeError`) or
    `KeyError` for a frame this client cannot read."""
    t = f.type
    if t == pb.MESSAGE_TYPE_JOINED:
        m = pb.Joined.FromString(f.payload)
        return Joined(m.room, RoomMode(m.mode), m.capacity, tuple(map(member, m.members)), m.initiator)
    if t == pb.MESSAGE_TYPE_PEER_JOINED:
        m = pb.PeerJoined.FromString(f.payload)
        return PeerJoined(m.room, member(m.member), m.initiator)
    if t == pb.MESSAGE_TYPE_PEER_LEFT:
        m = pb.PeerLeft.FromString(f.payload)
        return PeerLeft(m.room, m.peer_id, LeaveReason(m.reason))
    if t == pb.MESSAGE_TYPE_LEFT:
        return Left(pb.Left.FromString(f.payload).room)
    if t == pb.MESSAGE_TYPE_ROOM_FULL:
        m = pb.RoomFull.FromString(f.payload)
        return RoomFull(m.room, m.capacity)
    if t == pb.MESSAGE_TYPE_LOGIN_RESULT:
        m = pb.LoginResult.FromString(f.payload)
        return LoginResult(m.name, m.success, ErrorCode(m.error) if m.error else None)
    if t in (pb.MESSAGE_TYPE_OFFER, pb.MESSAGE_TYPE_ANSWER):
        m = pb.SessionDescription.FromString(f.payload)
        text = sdp.inflate(m.sdp, max_sdp) if f.flags & frame.DEFLATE_SDP else m.sdp.decode()
        kind = Offer if t == pb.MESSAGE_TYPE_OFFER else Answer
        return kind(address(m.peer), text, m.room or None, m.app_data)
    if t == pb.MESSAGE_TYPE_ICE:
        m = pb.IceCandidates.FromString(f.payload)
        candidates = tuple(map(Candidate.from_proto, m.candidates))
        return IceCandidates(address(m.peer), candidates, m.end_of_candidates, m.room or None, m.app_data)
    if t == pb.MESSAGE_TYPE_HANG_UP:
        return HangUp(address(pb.HangUp.FromString(f.payload).peer))
    if t == pb.MESSAGE_TYPE_PONG:
        return Pong(pb.Pong.FromString(f.payload).nonce)
    if t == pb.MESSAGE_TYPE_ERROR:
        m = pb.Error.FromString(f.payload)
        return Error(ErrorCode(m.code), m.message, m.request_seq)
    raise KeyError(f"no event for message type 0x{t:02x}")


__all__ = [
    "Address",
    "Answer",
    "Candidate",
    "Capability",
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
]
