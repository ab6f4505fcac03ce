"""``Forwarder.begin`` (a first UDP attempt on callbacks) against ``Forwarder.resolve``.

Each case puts two real upstreams on loopback (tests/dns/authority.py) in a
state, and asks the same question both ways, each of a fresh forwarder: the
answer (or None), which upstream gave it and over which transport, and the
failures observed must be the same.  Then what only ``begin`` has: an error
raised by the callback is reported to the loop and the next answers still
flow; the socket cap fails a question at once; ``close`` drops what is in
flight and leaves no socket open.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import dnslib
import pytest

from dns_blocker.upstream import Forwarder, Upstream
from dns_blocker.wire import Answer, Query, parse_query

from .authority import Authority

TIMEOUT = 0.8  # the whole budget: each of the two upstreams gets 0.4 s at first


def question(name: str, qtype: str = "A") -> Query:
    q = parse_query(bytes(dnslib.DNSRecord.question(name, qtype).pack()))
    assert q is not None
    return q


@pytest.fixture(name="pair")
def _pair() -> Iterator[tuple[Authority, Authority]]:
    first, second = Authority(), Authority()
    try:
        yield first, second
    finally:
        first.stop()
        second.stop()


Outcome = tuple[str | None, int, dict[str, int], list[tuple[str, str | None]]]


def outcome(result: tuple[bytes, Answer] | None, pair: tuple[Authority, Authority], name: str,
            failures: list[tuple[str, str | None]]) -> Outcome:
    """(rcode, answer records, who was asked how often by which transport, the failures seen)."""
    asked = {f"{who}-{tr}": auth.count(name, tr) for who, auth in zip(("first", "second"), pair, strict=True)
             for tr in ("udp", "tcp")}
    if result is None:
        return None, 0, asked, failures
    rec = dnslib.DNSRecord.parse(result[0])
    return dnslib.RCODE[rec.header.rcode], len(rec.rr), asked, failures


def forwarder(pair: tuple[Authority, Authority], failures: list[tuple[str, str | None]]) -> Forwarder:
    ups = [Upstream("127.0.0.1", a.port) for a in pair]
    labels = {u.label: who for u, who in zip(ups, ("first", "second"), strict=True)}
    return Forwarder(ups, TIMEOUT, lambda up, secs, err: failures.append((labels[up], err)) if err else None)


async def by_resolve(pair: tuple[Authority, Authority], q: Query) -> Outcome:
    failures: list[tuple[str, str | None]] = []
    fwd = forwarder(pair, failures)
    try:
        result: tuple[bytes, Answer] | None = await fwd.resolve(q)
    except Exception:  # None: the SERVFAIL the resolver would send
        result = None
    await fwd.aclose()
    return outcome(result, pair, q.name, failures)


async def by_begin(pair: tuple[Authority, Authority], q: Query) -> Outcome:
    failures: list[tuple[str, str | None]] = []
    fwd = forwarder(pair, failures)
    await fwd.start()
    got: asyncio.Future[tuple[bytes, Answer] | None] = asyncio.get_running_loop().create_future()
    fwd.begin(q, got.set_result)
    result = await asyncio.wait_for(got, TIMEOUT + 2)
    assert not fwd.open_sockets, "every socket is closed once the question is settled"
    await fwd.aclose()
    return outcome(result, pair, q.name, failures)


# (first's mode, second's mode, the name, its type) -> the outcome both ways must agree on
CASES = [
    pytest.param("ok", "ok", "www.example.test", "A", ("NOERROR", 1), id="answered-first"),
    pytest.param("ok", "ok", "nothing.example.test", "A", ("NXDOMAIN", 0), id="nxdomain-first"),
    pytest.param("ok", "ok", "big.example.test", "TXT", ("NOERROR", 8), id="truncated-then-tcp"),
    pytest.param("servfail", "ok", "www.example.test", "A", ("NOERROR", 1), id="servfail-then-second"),
    pytest.param("refused", "ok", "www.example.test", "A", ("NOERROR", 1), id="refused-then-second"),
    pytest.param("stop", "ok", "www.example.test", "A", ("NOERROR", 1), id="closed-port-then-second"),
    pytest.param("silent", "ok", "www.example.test", "A", ("NOERROR", 1), id="timeout-then-second"),
    pytest.param("garbage", "ok", "www.example.test", "A", ("NOERROR", 1), id="garbage-dropped-then-second"),
    pytest.param("silent", "silent", "www.example.test", "A", (None, 0), id="both-silent-none"),
    pytest.param("servfail", "refused", "www.example.test", "A", (None, 0), id="both-fail-none"),
]


def put(auth: Authority, mode: str) -> None:
    if mode == "stop":
        auth.stop()
    else:
        auth.mode = mode


@pytest.mark.parametrize(("first", "second", "name", "qtype", "expect"), CASES)
def test_begin_gives_what_resolve_gives(pair: tuple[Authority, Authority], first: str, second: str, name: str,
                                        qtype: str, expect: tuple[str | None, int]) -> None:
    put(pair[0], first)
    put(pair[1], second)
    q = question(name, qtype)
    awaited = asyncio.run(by_resolve(pair, q))
    for auth in pair:
        with auth._lock:
            auth.asked.clear()
    called = asyncio.run(by_begin(pair, q))
    assert called == awaited
    assert called[:2] == expect


def test_an_error_in_the_callback_is_reported_and_the_rest_flow(pair: tuple[Authority, Authority]) -> None:
    async def main() -> tuple[list[dict[str, Any]], list[str]]:
        reported: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: reported.append(ctx))
        fwd = forwarder(pair, [])
        await fwd.start()
        answered: list[str] = []
        both = asyncio.Event()

        def bad(result: tuple[bytes, Answer] | None) -> None:
            raise RuntimeError("a broken asker")

        def good(result: tuple[bytes, Answer] | None) -> None:
            assert result is not None
            answered.append(str(dnslib.DNSRecord.parse(result[0]).q.qname))
            both.set()

        fwd.begin(question("www.example.test"), bad)
        fwd.begin(question("short.example.test"), good)
        await asyncio.wait_for(both.wait(), 3)
        await asyncio.sleep(0.05)
        await fwd.aclose()
        return reported, answered

    reported, answered = asyncio.run(main())
    assert [type(ctx.get("exception")).__name__ for ctx in reported] == ["RuntimeError"]
    assert [a.lower() for a in answered] == ["short.example.test."]


def test_beyond_the_socket_cap_none_at_once(pair: tuple[Authority, Authority]) -> None:
    pair[0].mode = pair[1].mode = "silent"

    async def main() -> list[object]:
        fwd = forwarder(pair, [])
        fwd.max_sockets = 1
        await fwd.start()
        got: list[object] = []
        fwd.begin(question("www.example.test"), got.append)
        fwd.begin(question("short.example.test"), got.append)
        now = list(got)
        await fwd.aclose()
        return now

    assert asyncio.run(main()) == [None], "the second question failed before any wait"


def test_close_drops_the_questions_in_flight(pair: tuple[Authority, Authority]) -> None:
    pair[0].mode = pair[1].mode = "silent"

    async def main() -> tuple[int, int, list[object]]:
        fwd = forwarder(pair, [])
        await fwd.start()
        got: list[object] = []
        for i in range(20):
            fwd.begin(question(f"n{i}.example.test"), got.append)
        in_flight = len(fwd.open_sockets)
        await fwd.aclose()
        await asyncio.sleep(TIMEOUT)  # past every deadline: nothing fires after the close
        return in_flight, len(fwd.open_sockets), got

    in_flight, left, got = asyncio.run(main())
    assert (in_flight, left, got) == (20, 0, [])
