"""RFC 7766 section 6.2.3: a client may send its queries over TCP and then close its side
(shutdown(SHUT_WR)); the server still answers every query read, then closes.  Unbound and BIND
do.  Asked of a real resolver process over loopback, with queries that are answered at once
(a block), and ones that wait for the loopback upstream (the case that used to be dropped)."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess

Start = Callable[..., ResolverProcess]

CASES = [
    pytest.param(["www.tiktok.test"], ["NXDOMAIN"], 0.0, id="blocked-answered-at-once"),
    pytest.param(["fine.example.test"], ["NOERROR"], 0.0, id="upstream-answer-after-eof"),
    pytest.param(["short.example.test"], ["NOERROR"], 0.5, id="slow-upstream-answer-after-eof"),
    pytest.param(["www.example.test", "www.tiktok.test", "short.example.test"],
                 ["NOERROR", "NXDOMAIN", "NOERROR"], 0.0, id="pipelined-mixed"),
]


def _read_answers(sock: socket.socket, n: int, deadline: float) -> list[dns.message.Message]:
    buf = b""
    out: list[dns.message.Message] = []
    while len(out) < n and time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
            size = struct.unpack("!H", buf[:2])[0]
            out.append(dns.message.from_wire(buf[2 : 2 + size]))
            buf = buf[2 + size :]
    return out


@pytest.mark.e2e
@pytest.mark.parametrize(("names", "rcodes", "delay"), CASES)
def test_answers_after_the_client_half_closes(resolver: Start, authority: Authority,
                                              write_policy: Callable[..., Path], names: list[str],
                                              rcodes: list[str], delay: float) -> None:
    authority.delay = delay  # held back at the upstream: the answer comes after the EOF
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    queries = [dns.message.make_query(n, "A") for n in names]
    with socket.create_connection((r.host, r.port), timeout=5) as sock:
        sock.sendall(b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries)))
        sock.shutdown(socket.SHUT_WR)
        answers = _read_answers(sock, len(queries), time.monotonic() + 8)
        sock.settimeout(5)
        rest = sock.recv(1)  # then the server closes its side too
    got = sorted((a.id, dns.rcode.to_text(a.rcode())) for a in answers)
    assert got == sorted((q.id, rc) for q, rc in zip(queries, rcodes, strict=True))
    assert rest == b""
    assert r.ask("www.example.test").rcode() == dns.rcode.NOERROR  # and keeps serving
