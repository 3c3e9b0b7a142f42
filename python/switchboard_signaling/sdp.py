"""SDP compression: raw DEFLATE with preset dictionary 1 (docs/PROTOCOL.md
section 7). The dictionary ships inside the package."""

from __future__ import annotations

import zlib
from importlib import resources

DICTIONARY_ID = 1
DICTIONARY = resources.files(__package__).joinpath("sdp_dictionary_v1.txt").read_bytes()


class CompressionError(ValueError):
    """Not exactly one raw DEFLATE stream, or one that inflates past the cap."""


def deflate(sdp: str) -> bytes:
    c = zlib.compressobj(level=6, wbits=-15, zdict=DICTIONARY)
    return c.compress(sdp.encode()) + c.flush()


def deflate_if_smaller(sdp: str) -> tuple[bytes, bool]:
    """The SDP to send and whether it is compressed (only when it is smaller)."""
    plain = sdp.encode()
    packed = deflate(sdp)
    return (packed, True) if len(packed) < len(plain) else (plain, False)


def inflate(data: bytes, max_sdp: int = 65_536) -> str:
    """Inflates at most `max_sdp` bytes; a bomb stops there."""
    d = zlib.decompressobj(wbits=-15, zdict=DICTIONARY)
    try:
        out = d.decompress(data, max_sdp + 1)
    except zlib.error as e:
        raise CompressionError(str(e)) from e
    if len(out) > max_sdp:
        raise CompressionError(f"inflates past {max_sdp} bytes")
    if not d.eof or d.unused_data:
        raise CompressionError("not exactly one complete DEFLATE stream")
    return out.decode()
