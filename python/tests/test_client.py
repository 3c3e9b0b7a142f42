"""The client against the live binary: a pair room, a compressed offer
inflated on arrival, an answer, a ping answered, a refused Hello raised."""

from __future__ import annotations

import asyncio
import os
import unittest

from switchboard_signaling import sdp
from switchboard_signaling import signal_pb2 as pb
from switchboard_signaling.client import Connection, SignalingError
from support import REPO, ServerTestCase

OFFER = (REPO / "tests/data/sdp/chrome-offer.sdp").read_text()


async def expect(c: Connection, kind: str):
    while True:
        got, message = await asyncio.wait_for(c.recv(), 5)
        if got == kind:
            return message
        if got == "error":
            raise AssertionError(f"wanted {kind}, got Error {message}")


class ClientTest(ServerTestCase):
    async def test_a_pair_negotiates_with_compressed_sdp(self):
        a = await Connection.connect(self.url)
        b = await Connection.connect(self.url, deflate=False)
        self.assertEqual(a.welcome.sdp_dictionary, sdp.DICTIONARY_ID)
        room = f"py-{os.getpid()}"
        await a.send("join", pb.Join(room=room, mode=pb.ROOM_MODE_PAIR))
        await expect(a, "joined")
        await b.send("join", pb.Join(room=room, mode=pb.ROOM_MODE_PAIR))
        joined = await expect(b, "joined")
        self.assertEqual([m.peer_id for m in joined.members], [a.peer_id])  # the others
        # b cannot inflate: the server inflates a's compressed offer for it.
        packed, compressed = sdp.deflate_if_smaller(OFFER)
        self.assertTrue(compressed)
        self.assertLess(len(packed), len(OFFER) // 4)
        await a.offer(b.peer_id, OFFER)
        offer = await expect(b, "offer")
        self.assertEqual((offer.peer.peer_id, offer.sdp.decode()), (a.peer_id, OFFER))
        await b.offer(a.peer_id, "v=0\r\n", answer=True)
        answer = await expect(a, "answer")
        self.assertEqual((answer.peer.peer_id, answer.sdp), (b.peer_id, b"v=0\r\n"))
        await a.send("ping", pb.Ping(nonce=7))
        self.assertEqual((await expect(a, "pong")).nonce, 7)
        await a.close()
        await b.close()

    async def test_an_inflate_bomb_stops_at_the_cap(self):
        bomb = sdp.deflate("a" * 1_000_000)
        with self.assertRaises(sdp.CompressionError):
            sdp.inflate(bomb, 65_536)
        with self.assertRaises(sdp.CompressionError):
            sdp.inflate(b"\xff\x00junk")

    async def test_a_refused_hello_is_a_typed_error(self):
        with self.assertRaises(SignalingError) as refused:
            await Connection.connect(self.url, access_token="x" * 5000)
        self.assertEqual(refused.exception.code, pb.ERROR_CODE_UNAUTHENTICATED)


if __name__ == "__main__":
    unittest.main()
