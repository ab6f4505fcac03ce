"""What the forwarder sends upstream, and when it gives up (issue 8: high, medium, low).

- Source ports: every query in flight has a socket of its own on a random
  port (201 queries, 201 ports), its name in mixed case (0x20); sockets are
  closed when answered, and beyond the cap a question fails at once.
- Coalescing: askers of the same normalised question share one upstream
  query built from the parsed question, so a first asker's 65 KB of junk no
  longer fails the others; questions that differ in RD, CD, DO or type do
  not share.  A client's EDNS size never goes upstream (ours, 1232, does).
- Timeout: the time a failed upstream did not use passes to the next one.
"""

from __future__ import annotations

import resource
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import pytest
from dnslib import DNSRecord

from dns_blocker.upstream import FD_RESERVE, UPSTREAM_UDP, port_range
from tests.dns.authority import Authority
from tests.dns.conftest import ResolverProcess, addresses, free_port, rcode
from tests.dns.conftest import authority as authority
from tests.dns.conftest import resolver as resolver
from tests.dns.conftest import write_policy as write_policy
from tests.security.test_dns_spoof import ask_all

Start = Callable[..., ResolverProcess]


def upstream_names(authority: Authority, tag: str) -> list[tuple[int, str]]:
    """(source port, question name as sent) of the UDP queries the upstream saw for ``tag``."""
    out = []
    for addr, data in list(authority.seen):
        name = str(DNSRecord.parse(data).q.qname)
        if tag in name.lower():
            out.append((addr[1], name))
    return out


def open_fds(r: ResolverProcess) -> int:
    return len(list(Path(f"/proc/{r.proc.pid}/fd").iterdir()))


def test_201_queries_201_source_ports_in_mixed_case(resolver: Start, authority: Authority,
                                                    write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    baseline = open_fds(r)
    authority.delay = 1.0  # all 201 in flight at once
    names = [f"portcheck-n{i}-abcdefgh.example.test" for i in range(201)]
    result: dict[str, dns.message.Message] = {}
    asker = threading.Thread(target=lambda: result.update(ask_all(r, names, "127.0.0.1", 5.0)))
    asker.start()
    deadline = time.monotonic() + 3
    while len(upstream_names(authority, "portcheck")) < 201 and time.monotonic() < deadline:
        time.sleep(0.02)
    in_flight = open_fds(r) - baseline
    asker.join(10)
    seen = upstream_names(authority, "portcheck")
    ports = sorted(port for port, _ in seen)
    low, high = port_range()
    assert len(seen) == 201 and len(set(ports)) == 201, "a socket of its own for each query"
    assert low <= ports[0] and ports[-1] <= high
    assert ports[-1] - ports[0] > (high - low) // 2, f"spread over the range, not in a row: {ports}"
    assert all(name != name.lower() for _, name in seen), "every name went upstream in mixed case"
    assert in_flight >= 201, "the sockets were open together"
    assert len(result) == 201 and all(rcode(m) == "NXDOMAIN" for m in result.values())
    assert open_fds(r) == baseline, "every socket was closed once answered"


def test_beyond_the_socket_cap_servfail_at_once(resolver: Start, authority: Authority,
                                                write_policy: Callable[..., Path]) -> None:
    # A file limit of FD_RESERVE + 64 leaves room for 64 upstream sockets (the resolver inherits the limit).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_RESERVE + 64, hard))
    try:
        r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--timeout", "4")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    authority.delay = 1.5
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for i in range(100):
            q = dns.message.make_query(f"cap{i}.example.test", "A")
            q.id = i
            sock.sendto(q.to_wire(), (r.host, r.port))
        sock.settimeout(1.0)
        early = [dns.message.from_wire(sock.recv(4096)) for _ in range(36)]
    assert time.monotonic() - started < 1.2, "the 36 beyond the cap did not wait for the upstream"
    assert sorted(m.id for m in early) == list(range(64, 100))
    assert all(rcode(m) == "SERVFAIL" for m in early)


def junk_tcp_query(r: ResolverProcess, name: str, out: list[dns.message.Message]) -> None:
    """A valid question followed by zeros up to the largest TCP message (65,535 bytes)."""
    wire = dns.message.make_query(name, "A", use_edns=0).to_wire()
    wire += bytes(65535 - len(wire))
    with socket.create_connection((r.host, r.port), timeout=5) as conn:
        conn.sendall(struct.pack("!H", len(wire)) + wire)
        length = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
        out.append(dns.message.from_wire(conn.recv(length, socket.MSG_WAITALL)))


def test_junk_laden_first_asker_does_not_fail_the_others(resolver: Start, authority: Authority,
                                                         write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--timeout", "3")
    authority.delay = 0.5
    first: list[dns.message.Message] = []
    junk = threading.Thread(target=junk_tcp_query, args=(r, "www.example.test", first))
    junk.start()
    deadline = time.monotonic() + 2
    while not upstream_names(authority, "www.example.test") and time.monotonic() < deadline:
        time.sleep(0.01)
    second = r.ask("www.example.test")  # another client, while the first is on its way upstream
    junk.join(5)
    assert addresses(second) == ["192.0.2.1"]
    assert len(first) == 1 and addresses(first[0]) == ["192.0.2.1"]
    [(_, data)] = [(a, d) for a, d in authority.seen if b"example" in d.lower()]
    assert len(data) == 12 + len(b"\x03www\x07example\x04test\x00") + 4 + 11, "a clean query went upstream"
    assert authority.edns_seen == [(UPSTREAM_UDP, 0)]
    assert authority.count("www.example.test") == 1


# Two askers at once: (first, second, upstream queries wanted).  A query is (name, DO, CD, RD).
COALESCE = [
    pytest.param(("www.example.test", 0, 0, 1), ("WWW.Example.TEST", 0, 0, 1), 1,
                 id="same-question-any-case"),
    pytest.param(("www.example.test", 0, 0, 1), ("www.example.test", 0, 0, 0), 2, id="rd-differs"),
    pytest.param(("www.example.test", 0, 0, 1), ("www.example.test", 0, 1, 1), 2, id="cd-differs"),
    pytest.param(("www.example.test", 0, 0, 1), ("www.example.test", 1, 0, 1), 2, id="do-differs"),
    pytest.param(("www.example.test", 1, 1, 1), ("www.EXAMPLE.test", 1, 1, 1), 1, id="same-flags-all-set"),
]


def query(name: str, do: int, cd: int, rd: int) -> dns.message.Message:
    q = dns.message.make_query(name, "A", use_edns=0, want_dnssec=bool(do))
    q.flags = (dns.flags.RD if rd else 0) | (dns.flags.CD if cd else 0)
    return q


@pytest.mark.parametrize(("one", "two", "upstream_queries"), COALESCE)
def test_coalescing_on_the_normalised_question_and_flags(
        resolver: Start, authority: Authority, write_policy: Callable[..., Path],
        one: tuple[str, int, int, int], two: tuple[str, int, int, int], upstream_queries: int) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--timeout", "3")
    authority.delay = 0.4
    answers: list[dns.message.Message] = []
    threads = [threading.Thread(target=lambda q=q: answers.append(dns.query.udp(q, r.host, 3, r.port)))
               for q in (query(*one), query(*two))]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join(5)
    assert len(answers) == 2 and all(addresses(a) == ["192.0.2.1"] for a in answers)
    assert authority.count("www.example.test") == upstream_queries
    wanted = [one] if upstream_queries == 1 else [one, two]
    sent = [DNSRecord.parse(d).header for _, d in authority.seen]
    assert [(h.rd, h.cd) for h in sent] == [(rd, cd) for _, _, cd, rd in wanted]
    assert authority.edns_seen == [(UPSTREAM_UDP, do) for _, do, _, _ in wanted]


# The client's EDNS (UDP size, DO) -> what the upstream sees (None: no OPT record).
EDNS = [
    pytest.param(None, None, id="no-edns"),
    pytest.param((512, 0), (UPSTREAM_UDP, 0), id="size-512"),
    pytest.param((4096, 1), (UPSTREAM_UDP, 1), id="size-4096-do"),
    pytest.param((65535, 0), (UPSTREAM_UDP, 0), id="size-65535-never-upstream"),
]


@pytest.mark.parametrize(("client", "upstream"), EDNS)
def test_our_own_edns_goes_upstream(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                                    client: tuple[int, int] | None, upstream: tuple[int, int] | None) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    if client is None:
        q = dns.message.make_query("www.example.test", "A")
    else:
        q = dns.message.make_query("www.example.test", "A", use_edns=0, payload=client[0],
                                   want_dnssec=bool(client[1]))
    assert addresses(dns.query.udp(q, r.host, 3, r.port)) == ["192.0.2.1"]
    assert authority.edns_seen == [upstream]


# Two upstreams, a 2 s budget: (first, second, seconds to SERVFAIL: at least, at most).
BUDGET = [
    pytest.param("closed", "slow", 1.8, 2.6, id="refused-first-leaves-all-to-the-slow-second"),
    pytest.param("slow", "slow", 1.8, 2.6, id="two-slow-share-the-budget"),
    pytest.param("closed", "closed", 0.0, 0.5, id="both-refused-fail-fast"),
]


@pytest.mark.parametrize(("first", "second", "at_least", "at_most"), BUDGET)
def test_unused_timeout_passes_to_the_next_upstream(resolver: Start, write_policy: Callable[..., Path],
                                                    first: str, second: str, at_least: float,
                                                    at_most: float) -> None:
    slow = [Authority() for kind in (first, second) if kind == "slow"]
    for auth in slow:
        auth.delay = 10.0
    try:
        free = iter(slow)
        ups = [next(free).address if kind == "slow" else f"127.0.0.1:{free_port()}"
               for kind in (first, second)]
        r = resolver("--policy", str(write_policy()), "--upstream", ups[0], "--upstream", ups[1],
                     "--timeout", "2")
        started = time.monotonic()
        msg = r.ask("www.example.test", timeout=5)
        took = time.monotonic() - started
    finally:
        for auth in slow:
            auth.stop()
    assert rcode(msg) == "SERVFAIL"
    assert at_least <= took <= at_most, f"SERVFAIL after {took:.2f} s"
