"""ICE batching, sans IO with time passed in (docs/PROTOCOL.md section 8):
a batch goes 20 ms after its first candidate, or at once with 8, and the
pending ones go at once with end_of_candidates when gathering completes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from . import signal_pb2 as pb


@dataclass
class IceBatcher:
    window: float = 0.020
    max_batch: int = 8
    _pending: list = field(default_factory=list)
    _first_at: Optional[float] = None

    def add(self, candidate: pb.IceCandidate, now: float) -> Optional[pb.IceCandidates]:
        """Queues a candidate; returns a batch to send when it fills one."""
        if self._first_at is None:
            self._first_at = now
        self._pending.append(candidate)
        return self._take(False) if len(self._pending) >= self.max_batch else None

    def deadline(self) -> Optional[float]:
        """When `poll` has a batch to give, if any is pending."""
        return None if self._first_at is None else self._first_at + self.window

    def poll(self, now: float) -> Optional[pb.IceCandidates]:
        """The pending batch once its window from the first candidate is over."""
        if self._first_at is not None and now >= self._first_at + self.window:
            return self._take(False)
        return None

    def finish(self) -> pb.IceCandidates:
        """Gathering is complete: everything pending, with end_of_candidates."""
        return self._take(True)

    def _take(self, end: bool) -> pb.IceCandidates:
        batch = pb.IceCandidates(candidates=self._pending, end_of_candidates=end)
        self._pending = []
        self._first_at = None
        return batch
