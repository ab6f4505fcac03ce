"""The coalescing link: one upstream question per distinct ``Query.key``.

An asker whose question is already on its way upstream waits behind the
first one and gets the same answer (so a burst of one name, or a cache that
went cold, sends one question upstream, not a burst).  The number of
questions on their way is bounded: past ``limit`` the asker is shed
(SERVFAIL) rather than queued without bound behind a dead upstream.
Sans-IO: the resolver starts the forwarding task and answers the askers.
"""

from __future__ import annotations

from enum import Enum
from typing import Generic, TypeVar

T = TypeVar("T")
MAX_INFLIGHT = 4096  # upstream questions in flight at once (unbound's default is 1024 per thread)


class Join(Enum):
    LEAD = "lead"  # the first to ask: forward the question
    WAIT = "wait"  # the same question is on its way: wait for its answer
    SHED = "shed"  # too many questions on their way: fail now


class Coalescer(Generic[T]):
    def __init__(self, limit: int = MAX_INFLIGHT):
        self.limit = limit
        self.waiting: dict[bytes, list[T]] = {}  # question key -> askers behind the first

    def __len__(self) -> int:
        return len(self.waiting)

    def join(self, key: bytes, asker: T) -> Join:
        behind = self.waiting.get(key)
        if behind is not None:
            behind.append(asker)
            return Join.WAIT
        if len(self.waiting) >= self.limit:
            return Join.SHED
        self.waiting[key] = []
        return Join.LEAD

    def settle(self, key: bytes, first: T) -> list[T]:
        """Everyone to answer now that ``key``'s question is settled:
        the first asker, then the rest in order."""
        return [first, *self.waiting.pop(key, ())]
