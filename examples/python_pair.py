"""Two of these, started with the same room, negotiate through switchboard:
the later joiner is the initiator and offers, the other answers, both send
an ICE batch with end-of-candidates. Needs `pip install ./python`.

    python examples/python_pair.py ws://127.0.0.1:8080/ws my-room &
    python examples/python_pair.py ws://127.0.0.1:8080/ws my-room
"""

import asyncio
import sys

from switchboard_signaling import signal_pb2 as pb
from switchboard_signaling.client import Connection

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"


async def main(url: str, room: str) -> None:
    c = await Connection.connect(url)
    await c.send("join", pb.Join(room=room, mode=pb.ROOM_MODE_PAIR))
    got_offer = got_answer = got_end = False
    while not (got_end and (got_offer or got_answer)):
        kind, m = await c.recv()
        if kind == "joined" and m.members:  # later joiner: the initiator
            other = m.members[0]
            await c.offer(other.peer_id, SDP, compress=pb.CAPABILITY_DEFLATE_SDP in other.capabilities)
        elif kind == "offer":
            got_offer = True
            await c.offer(m.peer.peer_id, SDP.replace("o=- 1", "o=- 2"), answer=True)
            await send_candidates(c, m.peer.peer_id)
        elif kind == "answer":
            got_answer = True
            await send_candidates(c, m.peer.peer_id)
        elif kind == "ice" and m.end_of_candidates:
            got_end = True
        elif kind == "error":
            sys.exit(f"error: {pb.ErrorCode.Name(m.code)}: {m.message}")
    role = "initiator" if got_answer else "answerer"
    print(f"{role} {c.peer_id}: negotiated in room {room}", flush=True)
    await c.close()


async def send_candidates(c: Connection, to: int) -> None:
    line = "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host"
    batch = pb.IceCandidates(peer=pb.Address(peer_id=to), end_of_candidates=True)
    batch.candidates.add(candidate=line, sdp_mid="0", sdp_m_line_index=0)
    await c.send("ice", batch)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
