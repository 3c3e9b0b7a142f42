"""Two of these, started with the same room, negotiate through switchboard:
the later joiner is the initiator and offers, the other answers, both
trickle a candidate and end-of-candidates. Needs `pip install ./python`.

    python examples/python_pair.py ws://127.0.0.1:8080/ws my-room &
    python examples/python_pair.py ws://127.0.0.1:8080/ws my-room
"""

import asyncio
import sys

from switchboard_signaling import Answer, Candidate, Client, Error, IceCandidates, Joined, Offer

SDP = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
CANDIDATE = Candidate("candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host", sdp_mid="0", sdp_m_line_index=0)


async def main(url: str, room: str) -> None:
    client = await Client.connect(url)
    await client.join(room)
    got_offer = got_answer = got_end = False
    async for event in client:
        if isinstance(event, Joined) and event.initiator:  # the later joiner offers
            await client.offer(event.members[0].peer_id, SDP)
        elif isinstance(event, Offer):
            got_offer = True
            await client.answer(event.peer, SDP.replace("o=- 1", "o=- 2"))
            await trickle(client, event.peer)
        elif isinstance(event, Answer):
            got_answer = True
            await trickle(client, event.peer)
        elif isinstance(event, IceCandidates) and event.end_of_candidates:
            got_end = True
        elif isinstance(event, Error):
            sys.exit(f"error: {event.code.name}: {event.message}")
        if got_end and (got_offer or got_answer):
            break
    role = "initiator" if got_answer else "answerer"
    print(f"{role} {client.peer_id}: negotiated in room {room}", flush=True)
    await client.close()


async def trickle(client: Client, to: int) -> None:
    await client.send_candidate(to, CANDIDATE)  # waits up to 20 ms for more
    await client.end_of_candidates(to)  # the batch goes now, with the end marker


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
