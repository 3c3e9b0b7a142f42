"""The ICE batcher on passed time: 20 ms from the first candidate, 8 at once,
everything with the end marker when gathering completes."""

import unittest

from switchboard_signaling import signal_pb2 as pb
from switchboard_signaling.ice import IceBatcher


def cand(n: int) -> pb.IceCandidate:
    return pb.IceCandidate(candidate=f"candidate:{n} 1 udp 1 127.0.0.1 {50000 + n} typ host")


class IceBatcherTest(unittest.TestCase):
    def test_the_window_runs_from_the_first_candidate(self):
        b = IceBatcher()
        self.assertIsNone(b.add(cand(1), 1.000))
        self.assertIsNone(b.add(cand(2), 1.015))  # a trickle does not postpone it
        self.assertAlmostEqual(b.deadline(), 1.020)
        self.assertIsNone(b.poll(1.019))
        batch = b.poll(1.020)
        self.assertEqual([c.candidate for c in batch.candidates], [cand(1).candidate, cand(2).candidate])
        self.assertFalse(batch.end_of_candidates)
        self.assertIsNone(b.deadline())

    def test_eight_go_at_once_and_finish_carries_the_end_marker(self):
        b = IceBatcher()
        sent = [b.add(cand(n), 0.0) for n in range(9)]
        self.assertEqual(sum(s is not None for s in sent), 1)
        self.assertEqual(len(sent[7].candidates), 8)
        last = b.finish()
        self.assertEqual((len(last.candidates), last.end_of_candidates), (1, True))
        bare = b.finish()
        self.assertEqual((len(bare.candidates), bare.end_of_candidates), (0, True))


if __name__ == "__main__":
    unittest.main()
