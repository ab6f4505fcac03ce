"""The forwarding link alone, against fake upstreams (the next link): the route
picks the forward domain's upstreams, an answer is cached and handed back, a
failure is None and caches nothing, and a cancelled question caches nothing."""

from __future__ import annotations

import asyncio

import dnslib
import pytest

from dns_blocker.cache import AnswerCache
from dns_blocker.chain.cache import CacheLink
from dns_blocker.chain.forward import Forward, Upstreams
from dns_blocker.upstream import Overloaded, UpstreamError
from dns_blocker.wire import Answer, Query, parse_query, scan_answer


class FakeUpstreams:
    """Answers every question with one A record of ``ttl`` seconds, or raises ``error``."""

    def __init__(self, ttl: int = 300, error: Exception | None = None, hang: bool = False):
        self.ttl = ttl
        self.error = error
        self.hang = hang
        self.asked: list[str] = []

    async def resolve(self, q: Query) -> tuple[bytes, Answer]:
        self.asked.append(q.name)
        if self.hang:
            await asyncio.sleep(30)
        if self.error is not None:
            raise self.error
        rec = dnslib.DNSRecord.question(q.name).reply()
        rec.header.id = 0
        rec.add_answer(dnslib.RR(q.name, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.9"), ttl=self.ttl))
        wire = bytes(rec.pack())
        return wire, scan_answer(wire, q.qend)


def question(name: str) -> Query:
    q = parse_query(bytes(dnslib.DNSRecord.question(name).pack()))
    assert q is not None
    return q


CORP = "corp.example"


# (name, what the public upstreams do, ttl) -> (who was asked, answered?, cached?)
@pytest.mark.parametrize(("name", "error", "ttl", "asked", "answered", "cached"), [
    pytest.param("www.example.org", None, 300, "public", True, True, id="public-answer-cached"),
    pytest.param("db.corp.example", None, 300, "corp", True, True, id="forward-domain-routed"),
    pytest.param("www.example.org", None, 0, "public", True, False, id="ttl-0-not-cached"),
    pytest.param("www.example.org", UpstreamError("down"), 300, "public", False, False, id="failure-is-none"),
    pytest.param("www.example.org", Overloaded("busy"), 300, "public", False, False, id="overloaded-is-none"),
])
def test_ask(name: str, error: Exception | None, ttl: int, asked: str, answered: bool, cached: bool) -> None:
    public, corp = FakeUpstreams(ttl, error), FakeUpstreams(ttl)
    cache = CacheLink(AnswerCache(100))

    def route(qname: str) -> Upstreams | None:
        return corp if qname.endswith("." + CORP) else None

    link = Forward(public, cache, route)
    q = question(name)
    got = asyncio.run(link.ask(q))
    assert {"public": public, "corp": corp}[asked].asked == [name]
    assert (public.asked if asked == "corp" else corp.asked) == []
    assert (got is not None) == answered
    if got is not None:
        assert dnslib.DNSRecord.parse(got.answer).rr[0].ttl == ttl
        assert got.info.lifetime == ttl
    assert len(cache) == int(cached)


def test_cancelled_question_caches_nothing() -> None:
    cache = CacheLink(AnswerCache(100))
    link = Forward(FakeUpstreams(hang=True), cache)

    async def run() -> None:
        task = asyncio.create_task(link.ask(question("slow.example")))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert len(cache) == 0
