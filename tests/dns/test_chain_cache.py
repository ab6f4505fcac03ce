"""The cache link alone, with an injected clock and a real policy: a miss goes to
the next link, a hit is this asker's answer with its TTLs counted down, an
expired entry is a miss, and a CNAME chain is judged again for the asker."""

from __future__ import annotations

import dnslib
import pytest

from dns_blocker.cache import AnswerCache
from dns_blocker.chain.cache import Cached, CacheLink
from dns_blocker.chain.verdict import ChainVerdict
from dns_blocker.wire import parse_query, scan_answer
from policies import Action, Kind, load_policy_text

from .test_chain_verdict import EXEMPT, PLAIN, POLICY


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(name: str, qid: int) -> bytes:
    return _with_id(dnslib.DNSRecord.question(name), qid)


def _with_id(rec: dnslib.DNSRecord, qid: int) -> bytes:
    rec.header.id = qid
    return bytes(rec.pack())


def answer(name: str, ttl: int, cname: str | None) -> bytes:
    rec = dnslib.DNSRecord.question(name).reply()
    rec.header.id = 1
    if cname:
        rec.add_answer(dnslib.RR(name, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME(cname), ttl=ttl))
        rec.add_answer(dnslib.RR(cname, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=ttl))
    else:
        rec.add_answer(dnslib.RR(name, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=ttl))
    return bytes(rec.pack())


def lookup(link: CacheLink, name: str, client: str, qid: int = 0x4242) -> Cached | ChainVerdict | None:
    v = load_policy_text(POLICY).view()
    gv = v.group(client)
    data = query(name, qid)
    q = parse_query(data)
    assert q is not None
    return link.lookup(data, q, gv, gv.decide_name(name, Kind.DNS, client), client)


def store(link: CacheLink, name: str, ttl: int, cname: str | None = None) -> None:
    data = query(name, 1)
    q = parse_query(data)
    assert q is not None
    wire = answer(name, ttl, cname)
    link.store(q, wire, scan_answer(wire, q.qend))


# (stored: (ttl, cname) or None, seconds later, client) -> what the link gives:
# None (a miss: the next link's), "block via TARGET", or (action, ttl left, shared)
@pytest.mark.parametrize(("stored", "later", "client", "want"), [
    pytest.param(None, 0, PLAIN, None, id="miss-goes-to-next"),
    pytest.param((300, None), 0, PLAIN, ("allow", 300, True), id="hit-fresh"),
    pytest.param((300, None), 7.9, PLAIN, ("allow", 293, True), id="hit-ttl-counted-down"),
    pytest.param((300, None), 300, PLAIN, None, id="expired-is-a-miss"),
    pytest.param((300, None), 0, EXEMPT, ("allow", 300, False), id="exempt-not-shared"),
    pytest.param((60, "cdn.blocked.example"), 0, PLAIN, "block via cdn.blocked.example", id="cname-blocked"),
    pytest.param((60, "logged.example"), 0, PLAIN, ("log", 60, False), id="cname-logged"),
    pytest.param((60, "cdn.free.example"), 0, PLAIN, ("allow", 60, False), id="cname-allowed-not-shared"),
    pytest.param((60, "cdn.blocked.example"), 0, EXEMPT, ("log", 60, False), id="cname-blocked-exempt"),
])
def test_lookup(stored: tuple[int, str | None] | None, later: float, client: str,
                want: str | tuple[str, int, bool] | None) -> None:
    clock = Clock()
    link = CacheLink(AnswerCache(100), clock)
    if stored is not None:
        store(link, "www.free.example", *stored)
    clock.now += later
    got = lookup(link, "www.free.example", client)
    if want is None:
        assert got is None
    elif isinstance(want, str):
        assert isinstance(got, ChainVerdict)
        assert got.decision.action is Action.BLOCK
        assert f"block via {got.target}" == want
    else:
        assert isinstance(got, Cached)
        reply = dnslib.DNSRecord.parse(bytes(got.out))
        assert reply.header.id == 0x4242
        assert (got.decision.action.value, reply.rr[-1].ttl, got.shared) == want
        assert got.response == "NOERROR"
        assert clock.now < got.until <= clock.now + 1  # exact until the TTLs tick once more


def test_hit_keeps_the_askers_case() -> None:
    link = CacheLink(AnswerCache(100), Clock())
    store(link, "www.free.example", 300)
    got = lookup(link, "WwW.FrEe.example", PLAIN, qid=7)
    assert isinstance(got, Cached)
    assert str(dnslib.DNSRecord.parse(bytes(got.out)).q.qname) == "WwW.FrEe.example."
