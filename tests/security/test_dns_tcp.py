"""Red-team findings on DNS over TCP, replayed against a real resolver process.

- slowloris: one byte a second reset the 10 s idle timer forever;
- at a 1,024 file limit, 1,500 such connections made new TCP clients fail,
  upstream TCP fallback SERVFAIL and reload fail with "Too many open files";
- a client that pipelined queries and never read its answers grew the
  server from 30 to 338 MB.

Each connection now has one deadline per message (not moved by later bytes),
stops being read once its unread answers pass a bound and is cut when that
lasts, and connections are capped per client address and overall, the overall
cap leaving a reserve of the file limit.  Every loop here is bounded in count
and time; the resolver runs as its own process, stopped by PID.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import dns.message
import dns.query
import pytest

from tests.dns import conftest as dns_fixtures
from tests.dns.authority import Authority
from tests.dns.conftest import TEST_DAY, ResolverProcess, addresses, rcode

# The resolver's fixtures, shared with tests/dns.
authority = dns_fixtures.authority
resolver = dns_fixtures.resolver
write_policy = dns_fixtures.write_policy

pytestmark = pytest.mark.e2e
Start = Callable[..., ResolverProcess]
TIMEOUT = 2.0  # --tcp-timeout in the deadline tests


def framed(name: str, qid: int = 0x7777) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    wire = q.to_wire()
    return struct.pack("!H", len(wire)) + wire


QUERY = framed("www.example.test")


def start(resolver: Start, authority: Authority, write_policy: Callable[..., Path], *flags: str,
          nofile: int | None = None) -> ResolverProcess:
    return resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                    *flags, nofile=nofile)


def connect(r: ResolverProcess, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection((r.host, r.port), timeout=10, source_address=(source, 0))


def read_answers(s: socket.socket, buf: bytearray) -> tuple[int, bool]:
    """Read what is there now: (complete answers taken from ``buf``, closed by the server)."""
    closed = False
    while select.select([s], [], [], 0)[0]:
        try:
            chunk = s.recv(65535)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            closed = True
            break
        buf += chunk
    n = 0
    while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
        del buf[: 2 + struct.unpack_from("!H", buf)[0]]
        n += 1
    return n, closed


def ask_on(s: socket.socket, rest: bytes = QUERY, wait: float = 3.0) -> list[str] | None:
    """Send ``rest`` (a query, or the rest of one begun) on an open connection: the
    answer's addresses, or None if the server closed it."""
    try:
        s.sendall(rest)
        head = b""
        deadline = time.monotonic() + wait
        while len(head) < 2 and time.monotonic() < deadline:
            chunk = s.recv(2 - len(head))
            if not chunk:
                return None
            head += chunk
        body = b""
        while len(body) < struct.unpack("!H", head)[0] and time.monotonic() < deadline:
            chunk = s.recv(65535)
            if not chunk:
                return None
            body += chunk
    except (ConnectionResetError, BrokenPipeError, TimeoutError):
        return None
    return addresses(dns.message.from_wire(body))


# --- deadlines -------------------------------------------------------------------

class Dripper(NamedTuple):
    steps: tuple[tuple[float, bytes], ...]  # (seconds to wait, then bytes to send)
    answers: int  # answers the client gets
    closed_at: float  # seconds after connect that the server closes it


def drip(data: bytes, every: float) -> tuple[tuple[float, bytes], ...]:
    return tuple((0.0 if i == 0 else every, data[i : i + 1]) for i in range(len(data)))


DEADLINES = [
    pytest.param(Dripper((), 0, TIMEOUT), id="idle-closed-at-the-idle-limit"),
    pytest.param(Dripper(drip(QUERY, 0.3), 0, TIMEOUT), id="slowloris-byte-every-300ms"),
    pytest.param(Dripper(((0.0, QUERY[:2]),), 0, TIMEOUT), id="length-prefix-then-silence"),
    pytest.param(Dripper(((0.0, QUERY[:20]), *drip(QUERY[20:], 0.5)), 0, TIMEOUT),
                 id="half-a-message-then-byte-every-500ms"),
    pytest.param(Dripper(((0.0, QUERY + QUERY[:5]),), 1, TIMEOUT), id="answer-then-partial-message"),
    pytest.param(Dripper(((0.0, QUERY), (1.5, QUERY), *drip(QUERY, 0.3)), 2, 1.5 + TIMEOUT),
                 id="two-answers-then-slowloris"),
    pytest.param(Dripper(((0.0, QUERY), (1.5, QUERY), (1.5, QUERY), (1.5, QUERY)), 4, 4.5 + TIMEOUT),
                 id="whole-queries-every-1.5s-kept-open"),
]


@pytest.mark.parametrize("case", DEADLINES)
def test_tcp_deadline(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                      case: Dripper) -> None:
    r = start(resolver, authority, write_policy, "--tcp-timeout", str(TIMEOUT))
    assert r.ask("www.example.test", tcp=True).answer  # cached: answers below come at once
    buf = bytearray()
    answers = 0
    closed_at: float | None = None
    with connect(r) as s:
        t0 = time.monotonic()
        due = t0
        for wait, data in case.steps:
            due += wait
            while closed_at is None and time.monotonic() < due:
                select.select([s], [], [], max(0.0, due - time.monotonic()))
                n, closed = read_answers(s, buf)
                answers += n
                if closed:
                    closed_at = time.monotonic() - t0
            if closed_at is not None:
                break
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - t0
                break
        end = t0 + case.closed_at + 3.0
        while closed_at is None and time.monotonic() < end:
            select.select([s], [], [], 0.05)
            n, closed = read_answers(s, buf)
            answers += n
            if closed:
                closed_at = time.monotonic() - t0
    assert answers == case.answers
    assert closed_at is not None, "the server never closed the connection"
    assert case.closed_at - 0.2 <= closed_at <= case.closed_at + 1.0, f"closed after {closed_at:.2f} s"
    assert r.proc.poll() is None


# --- caps ------------------------------------------------------------------------

def test_per_client_cap(resolver: Start, authority: Authority, write_policy: Callable[..., Path]) -> None:
    r = start(resolver, authority, write_policy, "--tcp-per-client", "5")
    held = [connect(r) for _ in range(8)]
    try:
        time.sleep(0.3)  # the server has accepted them all, in order
        got = [ask_on(s) for s in held]
        assert got == [["192.0.2.1"]] * 5 + [None] * 3, "exactly 5 from one address, the first 5"
        refused = 3
        with connect(r, "127.0.0.9") as other:
            assert ask_on(other) == ["192.0.2.1"], "another address is not affected"
        held[0].close()
        deadline = time.monotonic() + 3
        again = None
        while again is None and time.monotonic() < deadline:  # the freed slot is taken again
            with connect(r) as s:
                again = ask_on(s)
            refused += again is None
        assert again == ["192.0.2.1"]
    finally:
        for s in held:
            s.close()
    assert r.stop() == 0
    assert f"tcp: {refused} connections refused over the per-client cap, 0 cut" in r.stderr()


def test_overall_cap_cuts_the_oldest(resolver: Start, authority: Authority,
                                     write_policy: Callable[..., Path]) -> None:
    """Over the overall cap the oldest connection is cut, so a newcomer always
    gets in; over the per-client cap the newcomer is turned away."""
    r = start(resolver, authority, write_policy, "--tcp-connections", "10", "--tcp-per-client", "4")
    assert "tcp: at most 10 connections, 4 per client address" in r.stderr()
    held = []
    try:
        for i in range(12):
            held.append(connect(r, f"127.0.1.{1 + i // 4}"))
            held[-1].sendall(QUERY[:1])  # a message begun, never finished
            time.sleep(0.05)  # keep the accept order the connect order
        time.sleep(0.3)
        got = [ask_on(s, QUERY[1:]) for s in held]
        assert got == [None] * 2 + [["192.0.2.1"]] * 10
    finally:
        for s in held:
            s.close()
    assert r.stop() == 0
    assert "tcp: 0 connections refused over the per-client cap, 2 cut over the overall cap" in r.stderr()


CAPS = [
    pytest.param(64, (), "at most 32 connections, 16 per client address", id="nofile-64"),
    pytest.param(200, (), "at most 100 connections, 16 per client address", id="nofile-200"),
    pytest.param(1024, (), "at most 768 connections, 16 per client address", id="nofile-1024"),
    pytest.param(4096, (), "at most 1024 connections, 16 per client address", id="nofile-4096-setting"),
    pytest.param(1024, ("--tcp-connections", "5000"), "at most 768 connections", id="setting-over-the-limit"),
    pytest.param(1024, ("--tcp-connections", "50", "--tcp-per-client", "80"),
                 "at most 50 connections, 50 per client address", id="per-client-within-overall"),
]


@pytest.mark.parametrize(("nofile", "flags", "line"), CAPS)
def test_overall_cap_leaves_a_file_reserve(resolver: Start, authority: Authority,
                                           write_policy: Callable[..., Path], nofile: int,
                                           flags: tuple[str, ...], line: str) -> None:
    r = start(resolver, authority, write_policy, *flags, nofile=nofile)
    assert line in r.stderr()


# --- back-pressure ---------------------------------------------------------------

NON_READERS = 8
PUMP_SECONDS = 12.0
RSS_GROWTH_KIB = 20 << 10  # before the fix: 158 MiB in 12 s


def test_pipelining_non_reader_is_cut_and_memory_stays_flat(
        resolver: Start, authority: Authority, write_policy: Callable[..., Path]) -> None:
    r = start(resolver, authority, write_policy, "--tcp-timeout", "3")
    # A cached allowed name: answered from stored bytes, and no event per answer
    # (the event queue is bounded on its own).
    assert addresses(r.ask("www.example.test", tcp=True)) == ["192.0.2.1"]
    base = peak = r.rss_kib()
    burst = QUERY * 2000
    socks = []
    for _ in range(NON_READERS):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # Small kernel buffers, as an attacker would choose: its unread answers
        # pile up in the server instead of in the two kernels.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.connect((r.host, r.port))
        s.setblocking(False)
        socks.append(s)
    sent = [0] * NON_READERS
    cut_after: list[float | None] = [None] * NON_READERS
    t0 = time.monotonic()
    try:
        while None in cut_after and time.monotonic() - t0 < PUMP_SECONDS:
            for i, s in enumerate(socks):
                if cut_after[i] is not None:
                    continue
                try:
                    # Resume where the last partial send stopped: the stream stays framed.
                    off = sent[i] % len(burst)
                    sent[i] += s.send(burst[off:])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    cut_after[i] = time.monotonic() - t0
            peak = max(peak, r.rss_kib())
            time.sleep(0.01)
    finally:
        for s in socks:
            s.close()
    assert all(n > 100_000 for n in sent), sent
    assert None not in cut_after, f"never cut: {cut_after}"
    assert max(c for c in cut_after if c is not None) < 3 + 2.0
    assert peak - base < RSS_GROWTH_KIB, f"RSS grew {(peak - base) >> 10} MiB"
    hwm = r.rss_kib("VmHWM")  # the true peak, between our samples too
    assert hwm - base < RSS_GROWTH_KIB, f"peak RSS {(hwm - base) >> 10} MiB over the start"
    assert addresses(r.ask("www.example.test", tcp=True)) == ["192.0.2.1"]


PIPELINED_MISSES = 600
UNANSWERED_CAP = 256  # server.TCP_MAX_UNANSWERED


def test_pipelined_misses_are_read_256_at_a_time(resolver: Start, authority: Authority,
                                                 write_policy: Callable[..., Path]) -> None:
    """Questions waiting on a silent upstream: the connection is not read past
    256 unanswered ones (each holds memory and a place upstream), and reading
    resumes as answers go out, so every question is answered in the end."""
    authority.mode = "silent"
    r = start(resolver, authority, write_policy, "--timeout", "0.5")
    stream = b"".join(framed(f"m{i}.example.test", qid=i) for i in range(PIPELINED_MISSES))
    rcodes: dict[int, int] = {}
    with connect(r) as s:
        s.sendall(stream)
        time.sleep(0.3)  # well inside the upstream timeout: nothing answered yet
        assert len({name for name, _t, _tr in authority.asked}) == UNANSWERED_CAP
        buf = b""
        deadline = time.monotonic() + 20
        while len(rcodes) < PIPELINED_MISSES and time.monotonic() < deadline:
            chunk = s.recv(65535)
            assert chunk, f"closed after {len(rcodes)} answers"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack_from("!H", buf)[0]:
                n = struct.unpack_from("!H", buf)[0]
                msg = buf[2 : 2 + n]
                rcodes[struct.unpack_from("!H", msg)[0]] = msg[3] & 0x0F
                buf = buf[2 + n :]
    assert rcodes == {i: 2 for i in range(PIPELINED_MISSES)}, "every question answered, SERVFAIL"
    assert len({name for name, _t, _tr in authority.asked}) == PIPELINED_MISSES


# --- all of it at once, at a 1,024 file limit ---------------------------------------

def closed_count(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server closed: readable means EOF or reset, since
    it never answers a message that was never finished.  poll, not select: the
    descriptors pass FD_SETSIZE."""
    poller = select.poll()
    for s in socks:
        poller.register(s, select.POLLIN)
    return len(poller.poll(0))


ATTACKERS = 100
PER_ATTACKER = 15


def test_under_a_connection_flood_everything_else_still_works(
        resolver: Start, authority: Authority, write_policy: Callable[..., Path]) -> None:
    """1,500 stalled connections from 100 addresses at a 1,024 file limit:
    UDP and TCP clients are answered, the upstream TCP fallback works, a
    reload takes effect, and the server never runs out of descriptors."""
    r = start(resolver, authority, write_policy, "--tcp-timeout", "60", nofile=1024)
    assert "tcp: at most 768 connections" in r.stderr()
    flood: list[socket.socket] = []
    try:
        for i in range(ATTACKERS * PER_ATTACKER):
            s = connect(r, f"127.0.2.{1 + i // PER_ATTACKER}")
            s.sendall(QUERY[:1])
            flood.append(s)
        time.sleep(0.5)
        assert addresses(r.ask("www.example.test")) == ["192.0.2.1"], "UDP"
        assert addresses(r.ask("www.example.test", tcp=True)) == ["192.0.2.1"], "TCP"
        big = r.ask("big.example.test", "TXT", tcp=True, edns=0)
        assert rcode(big) == "NOERROR" and len(big.answer[0]) == 8, "upstream TCP fallback"
        assert authority.count("big.example.test", "tcp") == 1
        write_policy(wechat_full="2020-12-01")
        r.signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while rcode(r.ask("img.wechat.test")) != "NXDOMAIN" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rcode(r.ask("img.wechat.test")) == "NXDOMAIN", "the reload took effect"
        # Cut: all past the cap, and the oldest once more for our first TCP client
        # (the ones after it, one at a time, took the slot it left).
        want_cut = len(flood) - 768 + 1
        cut = 0
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            cut = closed_count(flood)
            if cut >= want_cut:
                break
            time.sleep(0.1)
        assert cut == want_cut
    finally:
        for s in flood:
            s.close()
    assert r.proc.poll() is None
    assert not re.search(r"Too many open files|EMFILE|Traceback", r.stderr()), r.stderr()
