"""An asyncio connection to a switchboard server: Hello and Welcome, sequence
numbers, Pings answered, SDP inflated, frames the codec refuses skipped."""

from __future__ import annotations

from typing import Any

import websockets
from google.protobuf.message import DecodeError

from . import envelope, frame, sdp
from . import signal_pb2 as pb


class SignalingError(Exception):
    """An Error frame, or a refusal before Welcome: code, message, request_seq."""

    def __init__(self, code: int, message: str, request_seq: int = 0):
        super().__init__(f"{pb.ErrorCode.Name(code)}: {message}")
        self.code = code
        self.request_seq = request_seq


class Connection:
    def __init__(self, ws: Any, welcome: pb.Welcome):
        self.ws = ws
        self.welcome = welcome
        self.peer_id = welcome.peer_id
        self._seq = 1  # the Hello was frame 1
        self._pending: list[tuple[str, Any, int]] = []

    @classmethod
    async def connect(cls, url: str, *, deflate: bool = True, access_token: str = "") -> "Connection":
        ws = await websockets.connect(url, max_size=None)
        caps = [pb.CAPABILITY_ICE_BATCH] + ([pb.CAPABILITY_DEFLATE_SDP] if deflate else [])
        hello = pb.Hello(protocol_version=1, capabilities=caps, user_agent="switchboard-python/0.1", access_token=access_token)
        await ws.send(frame.encode(pb.MESSAGE_TYPE_HELLO, 0, 1, hello.SerializeToString()))
        for f in frame.split(await ws.recv()):
            if f.type == pb.MESSAGE_TYPE_ERROR:
                e = pb.Error.FromString(f.payload)
                await ws.close()
                raise SignalingError(e.code, e.message, e.request_seq)
            if f.type == pb.MESSAGE_TYPE_WELCOME:
                return cls(ws, pb.Welcome.FromString(f.payload))
        raise SignalingError(pb.ERROR_CODE_MALFORMED, "no Welcome")

    def _next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1  # skips 0 when it wraps
        return self._seq

    async def send(self, kind: str, message: Any, flags: int = 0) -> int:
        """Sends one frame (envelope type name, protobuf message); returns its seq."""
        seq = self._next_seq()
        type_ = envelope.TYPES[kind][0]
        await self.ws.send(frame.encode(type_, flags, seq, message.SerializeToString()))
        return seq

    async def offer(self, to_peer: int, text: str, answer: bool = False, compress: bool = True) -> int:
        """An Offer (or Answer), compressed when it is smaller and `compress`:
        pass whether the receiver has CAPABILITY_DEFLATE_SDP (its Member
        entry says so); the server inflates for receivers without it."""
        data, packed = sdp.deflate_if_smaller(text) if compress else (text.encode(), False)
        return await self.send(
            "answer" if answer else "offer",
            pb.SessionDescription(peer=pb.Address(peer_id=to_peer), sdp=data),
            frame.DEFLATE_SDP if packed else 0,
        )

    async def recv(self) -> tuple[str, Any]:
        """The next message as (type name, protobuf message); Errors come as
        ("error", pb.Error). Offers and answers arrive with plain SDP."""
        while True:
            if self._pending:
                kind, message, flags = self._pending.pop(0)
                if kind == "ping":
                    await self.send("pong", pb.Pong(nonce=message.nonce))
                    continue
                if flags & frame.DEFLATE_SDP:
                    message.sdp = sdp.inflate(message.sdp, self.welcome.limits.max_sdp_bytes or 65_536).encode()
                return kind, message
            data = await self.ws.recv()
            if not isinstance(data, bytes):
                continue
            try:
                for f in frame.split(data, 1 << 20, 1 << 10):
                    try:
                        kind = envelope.NAMES[f.type]
                        self._pending.append((kind, envelope.TYPES[kind][1].FromString(f.payload), f.flags))
                    except (KeyError, DecodeError):
                        continue  # a frame this client cannot read is skipped
            except frame.FrameError:
                pass  # the rest of this message is untrustworthy; the frames before it stand

    async def close(self) -> None:
        await self.ws.close()
