"""The cache link (step 6): an upstream answer still alive, served again.

A hit is the stored answer with this query's ID and question spliced in and
every TTL counted down by the entry's age.  Its CNAME targets are judged
again for the asking client's group (``Verdicts.after_chain``): a blocked
target makes the hit a block (a ``ChainVerdict``), a logged one makes it a
log.  Only answers without a CNAME chain, to a group that is not exempt, are
``shared`` (the ready-answer link may keep them for the group).  A miss is
``None``: the next links (coalescing, upstream) take the question.  Sans-IO:
the clock is injected, the resolver sends, counts and logs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple

from policies import Decision
from policies.decide import GroupView

from ..cache import AnswerCache
from ..wire import RCODE_NAMES, Answer, Query, age_ttls, splice
from .verdict import ChainVerdict, Verdicts


class Cached(NamedTuple):
    """A cache hit, ready to send."""

    out: bytearray  # the answer with the asker's ID and question, TTLs counted down
    until: float  # monotonic time until which these bytes stay exact
    response: str  # the RCODE's name, for the event
    decision: Decision  # the verdict after the CNAME chain was judged
    shared: bool  # the same bytes would go to any client of the group


class CacheLink:
    def __init__(self, cache: AnswerCache, clock: Callable[[], float] = time.monotonic):
        self.cache = cache
        self.clock = clock

    def __len__(self) -> int:
        return len(self.cache)

    def lookup(self, data: bytes, q: Query, gv: GroupView, d: Decision,
               client: str) -> Cached | ChainVerdict | None:
        """The cached answer to ``q`` for this asker, a block via a CNAME target, or None (a miss)."""
        now = self.clock()
        entry = self.cache.get(q.key, now)
        if entry is None:
            return None
        if entry.cnames:
            judged = Verdicts.after_chain(gv, entry.cnames, d, client)
            if isinstance(judged, ChainVerdict):
                return judged
            d = judged
        out = splice(entry.answer, data, q.qend)
        age = int(now - entry.stored)
        if age:
            age_ttls(out, entry.ttl_slots, age)
        # These bytes stay exact until the TTLs tick down once more.
        until = min(entry.expires, entry.stored + age + 1)
        response = RCODE_NAMES.get(out[3] & 0x0F, "NOERROR")
        return Cached(out, until, response, d, not entry.cnames and not gv.group.exempt)

    def store(self, q: Query, answer: bytes, info: Answer) -> None:
        """Keep an upstream answer for as long as its TTLs allow."""
        self.cache.put(q.key, answer, info.ttl_slots, info.cnames, info.lifetime, self.clock())
