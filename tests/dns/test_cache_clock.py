"""The answer cache's expiry on an injected clock: no test waits for a TTL.

The resolver (``dns_blocker.resolver.Resolver``) runs in-process behind its
real UDP listener class (``server.UdpListener``, the ready-answer fast path
included), with a real ``Forwarder`` to the loopback test authority; only the
clock is the test's (``Resolver(..., clock=...)``, ``time.monotonic`` by
default).  Each case asks a question at given clock readings and says, for each
ask, whether the upstream is asked again and which TTL the client sees.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import dns.message
import dns.rcode
import pytest

from dns_blocker.resolver import Resolver
from dns_blocker.server import UdpListener
from dns_blocker.upstream import Forwarder, Upstream
from policies import DnsSettings, PolicyView, load_policy_text

from .authority import NEG_TTL, SHORT_TTL, Authority
from .conftest import TEST_DAY, policy_text

CLIENT = ("127.0.0.1", 40053)
T0 = 1000.0
SOA_TTL = 60  # the TTL of the authority's SOA records (tests/dns/authority.py)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Holder:
    def __init__(self, view: PolicyView) -> None:
        self.view = view

    def subscribe(self, listener: Callable[[str], None]) -> None:
        pass


class NoEvents:
    enabled = False

    def emit(self, event: dict[str, Any]) -> None:
        raise AssertionError("no event log is configured")


class Transport:
    """Stands in for the UDP socket: keeps what the listener sends."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr: Any) -> None:
        assert addr == CLIENT
        self.sent.append(bytes(data))


# (id, name, type, [(seconds after the first ask, upstream asked by then, answer TTL, rcode)])
CASES = [
    pytest.param("short.example.test", "A", [(0.0, 1, SHORT_TTL, "NOERROR"), (0.5, 1, SHORT_TTL, "NOERROR"),
                                             (1.1, 1, SHORT_TTL - 1, "NOERROR"),
                                             (SHORT_TTL - 0.01, 1, SHORT_TTL - 1, "NOERROR"),
                                             (SHORT_TTL, 2, SHORT_TTL, "NOERROR")],
                 id="positive-ttl-counts-down-then-expires"),
    # The authority's SOA has TTL 60 and MINIMUM NEG_TTL: the answer is kept NEG_TTL seconds (RFC 2308),
    # and its SOA's TTL counts down from 60 meanwhile.
    pytest.param("missing.example.test", "A", [(0.0, 1, SOA_TTL, "NXDOMAIN"),
                                               (1.0, 1, SOA_TTL - 1, "NXDOMAIN"),
                                               (NEG_TTL - 0.01, 1, SOA_TTL - NEG_TTL + 1, "NXDOMAIN"),
                                               (NEG_TTL, 2, SOA_TTL, "NXDOMAIN")],
                 id="nxdomain-cached-for-the-soa-minimum"),
    pytest.param("www.example.test", "MX", [(0.0, 1, SOA_TTL, "NOERROR"),
                                            (NEG_TTL - 0.5, 1, SOA_TTL - NEG_TTL + 1, "NOERROR"),
                                            (NEG_TTL + 0.5, 2, SOA_TTL, "NOERROR")],
                 id="nodata-cached-for-the-soa-minimum"),
    pytest.param("www.example.test", "A", [(0.0, 1, 300, "NOERROR"), (299.5, 1, 1, "NOERROR"),
                                           (300.0, 2, 300, "NOERROR")],
                 id="long-ttl-expires-on-the-second"),
]


def ttl(msg: dns.message.Message) -> int:
    rrsets = msg.answer or msg.authority
    return min(r.ttl for r in rrsets)


@pytest.mark.parametrize(("name", "rdtype", "steps"), CASES)
def test_cache_expiry_on_the_injected_clock(authority: Authority, name: str, rdtype: str,
                                            steps: list[tuple[float, int, int, str]]) -> None:
    clock = Clock()
    view = load_policy_text(policy_text(), "policy.yaml").view(dt.date.fromisoformat(TEST_DAY))
    settings = replace(DnsSettings(), timeout=2.0)

    async def run() -> None:
        forwarder = Forwarder([Upstream(authority.host, authority.port)], settings.timeout)
        resolver = Resolver(Holder(view), settings, forwarder, NoEvents(), clock=clock)
        listener = UdpListener(resolver)
        transport = Transport()
        listener.connection_made(transport)  # type: ignore[arg-type]
        try:
            for at, asked, want_ttl, want_rcode in steps:
                clock.now = T0 + at
                q = dns.message.make_query(name, rdtype)
                before = len(transport.sent)
                listener.datagram_received(q.to_wire(), CLIENT)
                for _ in range(400):  # a miss is answered by a task: at most 2 s on the event loop
                    if len(transport.sent) > before:
                        break
                    await asyncio.sleep(0.005)
                assert len(transport.sent) == before + 1, f"no answer at +{at}s"
                msg = dns.message.from_wire(transport.sent[-1])
                assert msg.id == q.id
                got = (authority.count(name), ttl(msg), dns.rcode.to_text(msg.rcode()))
                assert got == (asked, want_ttl, want_rcode), f"at +{at}s"
        finally:
            forwarder.close()

    asyncio.run(run())
