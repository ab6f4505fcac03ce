"""The batched UDP transport against the plain one, and under a burst (issue 13).

Two resolver processes run on the same policy and the same test authority,
one with ``--udp-transport batched`` (recvmmsg/sendmmsg) and one with
``--udp-transport plain``.  Each case is one wire query, sent with the same
ID from the same source to both over real loopback sockets; the answers
must be the same bytes.  A second-second tick can age a cached TTL in one
process and not the other, so a mismatch is asked again (at most three
times) before it counts.

The burst sends 5,000 queries at once from 16 sockets: blocked names,
cached names and names that must go upstream.  Every query must come back
answered, or be counted as dropped by the kernel (UDP RcvbufErrors, read
from /proc/net/snmp before and after) or by the resolver (its stop
report); meanwhile a TCP query and a cache miss must be answered.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import NamedTuple

import dns.flags
import dns.message
import dns.query
import pytest

from .authority import Authority
from .conftest import OUTSIDER, TEST_DAY, ResolverProcess

pytestmark = pytest.mark.e2e


class Pair(NamedTuple):
    batched: ResolverProcess
    plain: ResolverProcess


@pytest.fixture
def pair(resolver: Callable[..., ResolverProcess], write_policy: Callable[..., object],
         authority: Authority) -> Iterator[Pair]:
    # The upstream answers each process's 0x20-mixed question; how far its
    # compressor can then point into that question depends on the random case,
    # so two processes would get answers that differ in compression, not in
    # meaning.  An upstream that lower-cases the question takes that out.
    authority.lower_case = True
    policy = write_policy()
    common = ("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
              "--acl", "127.0.0.1/32", "--acl", "::1/128")
    b = resolver(*common, "--udp-transport", "batched")
    p = resolver(*common, "--udp-transport", "plain")
    assert "(udp batched, tcp)" in b.stderr() and "(udp, tcp)" in p.stderr()
    yield Pair(b, p)


def wire(name: str, rdtype: str = "A", *, edns: int = -1, payload: int = 1232, ident: int = 0x5151,
         rdclass: str = "IN", dnssec: bool = False) -> bytes:
    q = dns.message.make_query(name, rdtype, rdclass, use_edns=edns, payload=payload, want_dnssec=dnssec)
    q.id = ident
    return q.to_wire()


def exchange(data: bytes, port: int, source: str = "127.0.0.1", timeout: float = 4.0) -> bytes | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.settimeout(timeout)
        s.sendto(data, ("127.0.0.1", port))
        try:
            return s.recv(65_535)
        except TimeoutError:
            return None


CASES = [
    pytest.param(wire("www.tiktok.test"), "127.0.0.1", 1, id="blocked"),
    pytest.param(wire("WwW.TikTok.TeSt"), "127.0.0.1", 1, id="blocked-mixed-case"),
    pytest.param(wire("www.example.test"), "127.0.0.1", 1, id="allowed-first-ask"),
    pytest.param(wire("www.example.test", "AAAA"), "127.0.0.1", 2, id="allowed-then-cached"),
    pytest.param(wire("nothing.example.test"), "127.0.0.1", 2, id="negative-cached"),
    pytest.param(wire("use-application-dns.net"), "127.0.0.1", 1, id="canary"),
    pytest.param(wire("www.example.test"), OUTSIDER, 1, id="acl-refused"),
    pytest.param(wire("big.example.test", "TXT"), "127.0.0.1", 2, id="truncated-no-edns"),
    pytest.param(wire("big.example.test", "TXT", edns=0, payload=4096), "127.0.0.1", 2, id="edns-4096"),
    pytest.param(wire("www.example.test", edns=0, dnssec=True), "127.0.0.1", 2, id="edns-do-bit"),
    pytest.param(wire("www.example.test", edns=1), "127.0.0.1", 1, id="edns-badvers"),
    pytest.param(wire("version.bind", "TXT", rdclass="CH"), "127.0.0.1", 1, id="chaos-refused"),
    pytest.param(b"\x12\x34\x01\x00\x00\x01" + bytes(6), "127.0.0.1", 1, id="missing-question-formerr"),
    pytest.param(wire("alias.example.test"), "127.0.0.1", 2, id="cname-into-blocked-app"),
]


@pytest.mark.parametrize(("query", "source", "asks"), CASES)
def test_batched_and_plain_answer_the_same_bytes(pair: Pair, query: bytes, source: str, asks: int) -> None:
    """``asks``: how often the query is sent; the last answer is compared (a
    second ask is served from the cache or the ready answers)."""
    tries = 0
    for _ in range(3):
        tries += 1
        got = []
        for proc in pair:
            out = None
            for _ in range(asks):
                out = exchange(query, proc.port, source)
            got.append(out)
        if got[0] == got[1]:
            break
        time.sleep(0.3)  # a TTL aged in one process and not yet in the other: ask again
    assert got[0] is not None, f"no batched answer after {tries} tries (plain: {got[1]!r})"
    assert got[0] == got[1], f"after {tries} tries"


def rcvbuf_errors() -> int:
    """The host's UDP receive-buffer drops so far (this netns: all loopback traffic)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    header, values = rows[0], rows[1]
    return int(values[header.index("RcvbufErrors")]) + int(values[header.index("InErrors")])


BURST = 5_000
SENDERS = 16


def test_burst_is_answered_or_counted(resolver: Callable[..., ResolverProcess],
                                      write_policy: Callable[..., object], authority: Authority) -> None:
    policy = write_policy()
    proc = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                    "--udp-transport", "batched")
    names = ["www.tiktok.test", "www.example.test", "short.example.test"]
    for name in names:  # warm: the burst's allowed names are cache hits
        assert exchange(wire(name), proc.port) is not None
    socks = []
    for _ in range(SENDERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        socks.append(s)
    # One query in eight goes upstream (a name nobody asked before).
    queries = [wire(f"n{i}.miss.example.test" if i % 8 == 0 else names[i % 3], ident=i)
               for i in range(BURST)]
    side: dict[str, float | None] = {"tcp": None, "miss": None}

    def during() -> None:
        started = time.monotonic()
        q = dns.message.make_query("www.wechat.test", "A")
        dns.query.tcp(q, "127.0.0.1", port=proc.port, timeout=10)
        side["tcp"] = time.monotonic() - started
        started = time.monotonic()
        q = dns.message.make_query("during.miss.example.test", "A")
        dns.query.udp(q, "127.0.0.1", port=proc.port, timeout=10)
        side["miss"] = time.monotonic() - started

    before = rcvbuf_errors()
    helper = threading.Thread(target=during)
    helper.start()
    for i, data in enumerate(queries):
        s = socks[i % SENDERS]
        for _ in range(100):  # our own send buffer full: wait for it, bounded
            try:
                s.sendto(data, ("127.0.0.1", proc.port))
                break
            except BlockingIOError:
                time.sleep(0.001)
    answered: set[int] = set()
    deadline = time.monotonic() + 20
    while len(answered) < BURST and time.monotonic() < deadline:
        idle = True
        for s in socks:
            while True:
                try:
                    r = s.recv(4096)
                except BlockingIOError:
                    break
                idle = False
                answered.add((r[0] << 8) | r[1])  # the ID says which query this answers (IDs < 65,536)
        if idle:
            time.sleep(0.01)
    helper.join(30)
    dropped_by_kernel = rcvbuf_errors() - before
    for s in socks:
        s.close()
    assert proc.stop() == 0
    report = re.search(r"udp: (\d+) answers the kernel did not take, (\d+) over-long", proc.stderr())
    dropped_by_us = int(report.group(1)) + int(report.group(2)) if report else 0
    lost = BURST - len(answered)
    assert lost <= dropped_by_kernel + dropped_by_us, (
        f"{lost} of {BURST} queries unanswered, {dropped_by_kernel} counted by the kernel, "
        f"{dropped_by_us} by the resolver")
    assert side["tcp"] is not None and side["tcp"] < 10, "TCP starved during the burst"
    assert side["miss"] is not None and side["miss"] < 10, "upstream work starved during the burst"


REPEATS = 1_500
REPEATED = [
    pytest.param("www.tiktok.test", "A", id="blocked"),
    pytest.param("use-application-dns.net", "A", id="canary"),
    pytest.param("www.tiktok.test", "AAAA", id="blocked-aaaa"),
]


def blast(port: int, queries: list[bytes]) -> dict[int, bytes]:
    """Every query sent at once from one socket (so that they wait in the resolver's receive
    buffer and are read in batches), then the answers by ID."""
    got: dict[int, bytes] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        for data in queries:
            for _ in range(100):  # our own send buffer full: wait for it, bounded
                try:
                    s.sendto(data, ("127.0.0.1", port))
                    break
                except BlockingIOError:
                    time.sleep(0.001)
        deadline = time.monotonic() + 15
        while len(got) < len(queries) and time.monotonic() < deadline:
            try:
                r = s.recv(65_535)
            except BlockingIOError:
                time.sleep(0.005)
                continue
            got[(r[0] << 8) | r[1]] = r
    return got


@pytest.mark.parametrize(("name", "rdtype"), REPEATED)
def test_repeats_read_in_batches_get_the_plain_bytes_and_are_each_logged(pair: Pair, name: str,
                                                                        rdtype: str) -> None:
    """Repeated questions that arrive together are answered straight from the receive
    buffers (``Batcher.exchange``): the same bytes as the plain transport's for every ID,
    and one event each, as on the plain path."""
    queries = [wire(name, rdtype, ident=i) for i in range(REPEATS)]
    for proc in pair:  # the first answer makes the ready answer
        assert exchange(queries[0], proc.port) is not None
    batched, plain = blast(pair.batched.port, queries), blast(pair.plain.port, queries)
    assert len(batched) == len(plain) == REPEATS
    assert batched == plain
    for proc in pair:
        events = proc.events(expect=REPEATS + 1, timeout=10)
        named = [e for e in events if e.get("dns", {}).get("question", {}).get("name") == name]
        assert len(named) == REPEATS + 1
