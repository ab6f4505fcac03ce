"""The forwarding link (step 8): ask the upstreams once, keep the answer in the cache.

The question goes to the forward domain's upstreams when one covers the name
(``route``: ``LocalAnswers.forwarder_for``), else to the public upstreams.
What goes upstream is the forwarder's own clean query, built from the parsed
question (``Query.key``), never from the asker's bytes.  A usable answer is
stored in the cache link and returned as a ``Forwarded``; when no upstream
answers (``UpstreamError``) the result is None and the askers get SERVFAIL.
The coalescing link in front makes sure each question is asked once; the
resolver answers every asker of it.  The resolver uses ``begin``, which hands
the result to a callback (the upstreams' first try runs without a task);
``ask`` awaits the same result.  Sans-IO: the upstreams (the next link)
are injected, this link owns no socket.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol

from ..upstream import UpstreamError
from ..wire import Answer, Query
from .cache import CacheLink


class Upstreams(Protocol):
    """The next link: a ``Forwarder`` (dns_blocker/upstream.py)."""

    async def resolve(self, q: Query) -> tuple[bytes, Answer]: ...

    def begin(self, q: Query, done: Callable[[tuple[bytes, Answer] | None], None]) -> None: ...


class Forwarded(NamedTuple):
    """An upstream's answer: its bytes (to be spliced for each asker) and what was read from them."""

    answer: bytes
    info: Answer


def no_route(name: str) -> Upstreams | None:
    return None


class Forward:
    def __init__(self, upstreams: Upstreams, cache: CacheLink,
                 route: Callable[[str], Upstreams | None] = no_route):
        self.upstreams = upstreams
        self.cache = cache
        self.route = route

    def begin(self, q: Query, done: Callable[[Forwarded | None], None]) -> None:
        """``ask`` with ``done`` called on the result instead of awaited: the
        resolver's way, so that a question answered at the first try costs no
        task (``Forwarder.begin``)."""
        upstreams = self.route(q.name) or self.upstreams
        upstreams.begin(q, lambda result: done(self._kept(q, result)))

    async def ask(self, q: Query) -> Forwarded | None:
        """The answer to ``q`` from its upstreams (cached), or None when none gave one."""
        upstreams = self.route(q.name) or self.upstreams
        try:
            return self._kept(q, await upstreams.resolve(q))
        except UpstreamError:
            return None

    def _kept(self, q: Query, result: tuple[bytes, Answer] | None) -> Forwarded | None:
        """An upstream's answer, stored in the cache on its way back (None stays None)."""
        if result is None:
            return None
        answer, info = result
        self.cache.store(q, answer, info)
        return Forwarded(answer, info)
