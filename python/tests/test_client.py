"""The client against the live binary: typed events for a pair negotiation,
typed errors, ICE batching, and a reconnect that restores the login and the
room; and the pieces that need no server (enums, backoff, skipped frames)."""

from __future__ import annotations

import asyncio
import os
import unittest

from support import REPO, ServerTestCase, start_server, stop_server

from switchboard_signaling import (
    Answer,
    Candidate,
    Client,
    Connection,
    ConnectionClosed,
    Disconnected,
    Error,
    ErrorCode,
    Event,
    IceCandidates,
    Joined,
    LeaveReason,
    LoginResult,
    Member,
    Offer,
    PeerJoined,
    PeerLeft,
    Pong,
    Reconnected,
    RoomMode,
    SignalingError,
    Skipped,
    backoff,
    frame,
    sdp,
)
from switchboard_signaling import signal_pb2 as pb

OFFER = (REPO / "tests/data/sdp/chrome-offer.sdp").read_text()
ANSWER = (REPO / "tests/data/sdp/chrome-answer.sdp").read_text()


async def expect(c, kind: type, timeout: float = 5) -> Event:
    """The next event of type `kind`, skipping Pongs; anything else fails."""
    while True:
        got = await asyncio.wait_for(c.recv(), timeout)
        if isinstance(got, kind):
            return got
        if not isinstance(got, Pong):
            raise AssertionError(f"wanted {kind.__name__}, got {got}")


def cand(n: int) -> Candidate:
    return Candidate(f"candidate:{n} 1 udp 2122260223 127.0.0.1 {50000 + n} typ host", "0", 0)


class ClientTest(ServerTestCase):
    def room(self, name: str) -> str:
        return f"py-{name}-{os.getpid()}"

    async def test_a_pair_negotiates_with_typed_events(self):
        a = await Client.connect(self.url)
        b = await Client.connect(self.url)
        try:
            room = self.room("pair")
            await a.join(room, RoomMode.PAIR, display_name="Ann")
            joined = await expect(a, Joined)
            self.assertEqual(
                (joined.room, joined.mode, joined.capacity, joined.members, joined.initiator),
                (room, RoomMode.PAIR, 2, (), False),
            )
            await b.join(room)
            joined = await expect(b, Joined)
            self.assertTrue(joined.initiator)
            self.assertEqual([m.peer_id for m in joined.members], [a.peer_id])
            ann: Member = joined.members[0]
            self.assertEqual(ann.display_name, "Ann")
            self.assertIn(pb.CAPABILITY_DEFLATE_SDP, ann.capabilities)
            peer = await expect(a, PeerJoined)
            self.assertEqual((peer.room, peer.member.peer_id), (room, b.peer_id))
            # b, the initiator, offers; a answers; both trickle candidates.
            await b.offer(a.peer_id, OFFER)
            offer = await expect(a, Offer)
            self.assertEqual(offer, Offer(b.peer_id, OFFER))
            await a.answer(b.peer_id, ANSWER)
            self.assertEqual(await expect(b, Answer), Answer(a.peer_id, ANSWER))
            await a.send_candidate(b.peer_id, cand(1))
            await a.end_of_candidates(b.peer_id)
            ice = await expect(b, IceCandidates)
            self.assertEqual(ice, IceCandidates(a.peer_id, (cand(1),), True))
            await b.ping(7)
            self.assertEqual(await asyncio.wait_for(b.recv(), 5), Pong(7))
            await b.leave(room)
            left = await expect(a, PeerLeft)
            self.assertEqual((left.peer_id, left.reason), (b.peer_id, LeaveReason.LEFT))
        finally:
            await a.close()
            await b.close()
        with self.assertRaises(ConnectionClosed):
            await a.recv()

    async def test_the_server_inflates_for_a_receiver_that_cannot(self):
        a = await Connection.connect(self.url)
        b = await Connection.connect(self.url, deflate=False)
        try:
            self.assertEqual(a.welcome.sdp_dictionary, sdp.DICTIONARY_ID)
            room = self.room("inflate")
            await a.join(room)
            await expect(a, Joined)
            await b.join(room)
            await expect(b, Joined)
            packed, compressed = sdp.deflate_if_smaller(OFFER)
            self.assertTrue(compressed)
            self.assertLess(len(packed), len(OFFER) // 4)
            await a.offer(b.peer_id, OFFER)  # compressed on the wire
            self.assertEqual(await expect(b, Offer), Offer(a.peer_id, OFFER))
        finally:
            await a.close()
            await b.close()

    async def test_errors_are_typed_and_name_their_frame(self):
        a = await Client.connect(self.url)
        try:
            seq = await a.leave("nowhere")
            error = await expect(a, Error)
            self.assertEqual((error.code, error.request_seq), (ErrorCode.NOT_JOINED, seq))
            self.assertIs(error.code, ErrorCode.NOT_JOINED)
            raised = SignalingError.from_event(error)
            self.assertEqual(raised.code, ErrorCode.NOT_JOINED)
            self.assertIn("NOT_JOINED", str(raised))
            await a.login(self.room("taken"))
            self.assertTrue((await expect(a, LoginResult)).success)
            b = await Client.connect(self.url)
            await b.login(self.room("taken"))
            result = await expect(b, LoginResult)
            self.assertEqual((result.success, result.error), (False, ErrorCode.NAME_TAKEN))
            await b.close()
        finally:
            await a.close()

    async def test_a_refused_hello_is_a_typed_error(self):
        with self.assertRaises(SignalingError) as refused:
            await Connection.connect(self.url, access_token="x" * 5000)
        self.assertEqual(refused.exception.code, ErrorCode.UNAUTHENTICATED)

    async def test_candidates_go_in_batches_with_end_of_candidates(self):
        a = await Client.connect(self.url)
        b = await Client.connect(self.url)
        try:
            room = self.room("ice")
            await a.join(room)
            await expect(a, Joined)
            await b.join(room)
            await expect(b, Joined)
            # Three trickled at once leave together when the 20 ms window ends.
            for n in range(3):
                self.assertIsNone(await a.send_candidate(b.peer_id, cand(n)))
            loop = asyncio.get_running_loop()
            sent_at = loop.time()
            batch = await expect(b, IceCandidates)
            self.assertGreaterEqual(loop.time() - sent_at, 0.015)
            self.assertEqual((batch.candidates, batch.end_of_candidates), (tuple(map(cand, range(3))), False))
            # Eight go at once; the rest go with the end marker.
            seqs = [await a.send_candidate(b.peer_id, cand(n)) for n in range(10)]
            self.assertEqual([s is not None for s in seqs], [False] * 7 + [True, False, False])
            await a.end_of_candidates(b.peer_id)
            full = await expect(b, IceCandidates)
            self.assertEqual((full.candidates, full.end_of_candidates), (tuple(map(cand, range(8))), False))
            last = await expect(b, IceCandidates)
            self.assertEqual((last.candidates, last.end_of_candidates), ((cand(8), cand(9)), True))
            # Nothing pending: the bare end marker.
            await a.end_of_candidates(b.peer_id)
            self.assertEqual(await expect(b, IceCandidates), IceCandidates(a.peer_id, (), True))
        finally:
            await a.close()
            await b.close()

    async def test_an_inflate_bomb_stops_at_the_cap(self):
        bomb = sdp.deflate("a" * 1_000_000)
        with self.assertRaises(sdp.CompressionError):
            sdp.inflate(bomb, 65_536)
        with self.assertRaises(sdp.CompressionError):
            sdp.inflate(b"\xff\x00junk")


class Reconnect(unittest.IsolatedAsyncioTestCase):
    async def test_after_the_server_restarts_the_login_and_the_room_are_restored(self):
        server, url = start_server()
        listen = url.removeprefix("ws://").removesuffix("/ws")
        a = b = None
        try:
            a = await Client.connect(url, backoff_initial=0.05, backoff_max=0.4)
            room, name = f"py-reconnect-{os.getpid()}", f"alice-{os.getpid()}"
            await a.login(name)
            self.assertTrue((await expect(a, LoginResult)).success)
            await a.join(room, RoomMode.MESH)
            await expect(a, Joined)
            old_peer = a.peer_id
            # The server dies; a new one, which knows nothing of a, comes up
            # on the same address.
            stop_server(server)
            server = None
            lost = await expect(a, Disconnected)
            self.assertIsNone(lost.close_code)  # killed: no close frame
            self.assertIsNone(await a.offer(old_peer, "v=0\r\n"))  # dropped while away
            server, _ = start_server(listen=listen)
            back = await expect(a, Reconnected, timeout=20)
            self.assertEqual(back.peer_id, a.peer_id)
            self.assertEqual(await expect(a, LoginResult), LoginResult(name, True))
            joined = await expect(a, Joined)
            self.assertEqual((joined.room, joined.mode), (room, RoomMode.MESH))
            # The new server sees a in the room under its name.
            b = await Client.connect(url)
            await b.join(room, RoomMode.MESH)
            members = (await expect(b, Joined)).members
            self.assertEqual([(m.peer_id, m.user) for m in members], [(a.peer_id, name)])
            self.assertEqual((await expect(a, PeerJoined)).member.peer_id, b.peer_id)
        finally:
            for c in (a, b):
                if c is not None:
                    await c.close()
            if server is not None:
                stop_server(server)

    async def test_it_gives_up_after_max_reconnect_attempts(self):
        server, url = start_server()
        a = await Client.connect(url, backoff_initial=0.01, backoff_max=0.02, max_reconnect_attempts=2)
        stop_server(server)
        self.assertIsInstance(await asyncio.wait_for(a.recv(), 5), Disconnected)
        with self.assertRaises(ConnectionClosed) as ended:
            await asyncio.wait_for(a.recv(), 5)
        self.assertIn("gave up after 2 reconnect attempts", str(ended.exception))
        self.assertEqual([e async for e in a], [])
        await a.close()


class FakeSocket:
    """Hands out the given WebSocket messages, then ends like a lost connection."""

    def __init__(self, messages):
        self.messages = list(messages)
        self.sent = []

    async def recv(self):
        if not self.messages:
            import websockets

            raise websockets.ConnectionClosed(None, None)
        return self.messages.pop(0)

    async def send(self, data):
        self.sent.append(data)

    async def close(self):
        pass


class Offline(unittest.IsolatedAsyncioTestCase):
    def test_the_enums_are_the_schemas(self):
        self.assertEqual(
            {e.name: e.value for e in ErrorCode}, {n[len("ERROR_CODE_") :]: v for n, v in pb.ErrorCode.items()}
        )
        self.assertEqual(ErrorCode.FORBIDDEN, pb.ERROR_CODE_FORBIDDEN)
        self.assertEqual(RoomMode.MESH, pb.ROOM_MODE_MESH)
        # A code from a newer server is kept, not an exception.
        self.assertEqual((ErrorCode(200), ErrorCode(200).name), (200, "UNKNOWN_200"))

    def test_backoff_grows_to_the_cap_with_jitter_in_the_upper_half(self):
        low = [round(backoff(n, 0.1, 1.0, lambda: 0.0), 9) for n in range(6)]
        high = [round(backoff(n, 0.1, 1.0, lambda: 1.0), 9) for n in range(6)]
        self.assertEqual((low, high), ([0.05, 0.1, 0.2, 0.4, 0.5, 0.5], [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]))
        for n in range(40):
            base = min(0.1 * 2 ** min(n, 16), 1.0)
            self.assertTrue(base / 2 <= backoff(n, 0.1, 1.0) <= base)

    async def test_a_frame_the_client_cannot_read_is_skipped_and_reading_goes_on(self):
        pong = frame.encode(pb.MESSAGE_TYPE_PONG, 0, 2, pb.Pong(nonce=5).SerializeToString())
        unknown = frame.encode(0x95, 0, 3, b"\x08\x01")
        bad_payload = frame.encode(pb.MESSAGE_TYPE_JOINED, 0, 4, b"\xff\xff\xff")
        bad_sdp = frame.encode(
            pb.MESSAGE_TYPE_OFFER, frame.DEFLATE_SDP, 5, pb.SessionDescription(sdp=b"junk").SerializeToString()
        )
        truncated = pong + pong[:-1]
        ping = frame.encode(pb.MESSAGE_TYPE_PING, 0, 6, pb.Ping(nonce=9).SerializeToString())
        ws = FakeSocket([unknown + pong, bad_payload, bad_sdp, truncated, ping + pong])
        c = Connection(ws, pb.Welcome(peer_id=1))
        got = [await c.recv() for _ in range(7)]
        self.assertEqual(got[0].type, 0x95)
        self.assertIsInstance(got[0], Skipped)
        self.assertEqual(got[1], Pong(5))
        self.assertEqual([type(g) for g in got[2:5]], [Skipped, Skipped, Pong])
        self.assertEqual((got[5].type, got[6]), (None, Pong(5)))
        # The ping between was answered with a Pong of the same nonce.
        answered = list(frame.split(ws.sent[-1]))
        self.assertEqual([(f.type, pb.Pong.FromString(f.payload).nonce) for f in answered], [(pb.MESSAGE_TYPE_PONG, 9)])
        with self.assertRaises(ConnectionClosed):
            await c.recv()


if __name__ == "__main__":
    unittest.main()
