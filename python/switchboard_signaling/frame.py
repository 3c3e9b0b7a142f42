"""The frame layer: a 12-byte big-endian header, then one protobuf payload
(docs/PROTOCOL.md section 2). Sizes are checked before anything is read."""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

from . import signal_pb2 as pb

VERSION = 1
HEADER = struct.Struct(">BBBxII")
DEFLATE_SDP = pb.FRAME_FLAG_DEFLATE_SDP


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    seq: int
    payload: bytes


class FrameError(Exception):
    """A message the frame layer refuses, with the protocol's error code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def encode(type_: int, flags: int, seq: int, payload: bytes) -> bytes:
    return HEADER.pack(VERSION, type_, flags, seq, len(payload)) + payload


def split(data: bytes, max_payload: int = 98_304, max_frames: int = 64) -> Iterator[Frame]:
    """The frames of one WebSocket message, in order."""
    if not data:
        raise FrameError(pb.ERROR_CODE_MALFORMED, "an empty message")
    at = 0
    count = 0
    while at < len(data):
        if count == max_frames:
            raise FrameError(pb.ERROR_CODE_TOO_LARGE, f"more than {max_frames} frames")
        if len(data) - at < HEADER.size:
            raise FrameError(pb.ERROR_CODE_MALFORMED, "the message ends inside a header")
        version, type_, flags, seq, length = HEADER.unpack_from(data, at)
        if version != VERSION:
            raise FrameError(pb.ERROR_CODE_UNSUPPORTED_VERSION, f"version {version}")
        if length > max_payload:
            raise FrameError(pb.ERROR_CODE_TOO_LARGE, f"a payload of {length} bytes")
        start = at + HEADER.size
        if len(data) - start < length:
            raise FrameError(pb.ERROR_CODE_MALFORMED, "the message ends inside a payload")
        yield Frame(type_, flags, seq, bytes(data[start : start + length]))
        at = start + length
        count += 1
