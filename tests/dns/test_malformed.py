"""Bad input over real sockets: each malformed packet gets its protocol answer
(FORMERR, NOTIMP) or is dropped, and a fuzz run of 100,000+ mutated and
random packets leaves the resolver answering valid questions correctly."""

from __future__ import annotations

import random
import re
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import httpx
import pytest

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess, addresses, ede, rcode

pytestmark = pytest.mark.e2e
Start = Callable[..., ResolverProcess]

QUESTION = b"\x03www\x07example\x04test\x00\x00\x01\x00\x01"
BLOCKED_Q = b"\x03www\x06tiktok\x04test\x00\x00\x01\x00\x01"  # tiktok.test is in 'full' on TEST_DAY
OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"


def header(qid: int = 0x1234, flags: int = 0x0100, qd: int = 1, an: int = 0, ns: int = 0,
           ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


MALFORMED = [
    # (id, packet, expected: "drop" or the rcode)
    ("short-header", b"\x12\x34\x01", "drop"),
    ("empty", b"", "drop"),
    ("a-response", header(flags=0x8180) + QUESTION, "drop"),
    ("no-question", header(qd=0), "FORMERR"),
    ("two-questions", header(qd=2) + QUESTION + QUESTION, "FORMERR"),
    ("truncated-name", header() + b"\x03www\x07exam", "FORMERR"),
    ("truncated-qtype", header() + QUESTION[:-3], "FORMERR"),
    ("label-past-end", header() + b"\x3fabc", "FORMERR"),
    ("pointer-in-question", header() + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),
    ("reserved-label-type", header() + b"\x41abc\x00\x00\x01\x00\x01", "FORMERR"),
    ("oversized-name", header() + b"\x3f" + b"a" * 63 + (b"\x3f" + b"b" * 63) * 4 + b"\x00\x00\x01\x00\x01",
     "FORMERR"),
    ("answer-count-without-answers", header(an=3) + QUESTION, "FORMERR"),
    ("additional-count-without-records", header(ar=2) + QUESTION + OPT, "FORMERR"),
    ("two-opt-records", header(ar=2) + QUESTION + OPT + OPT, "FORMERR"),
    ("compression-loop", header(ar=1) + QUESTION + b"\xc0\x21\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",
     "FORMERR"),
    ("forward-pointer", header(ar=1) + QUESTION + b"\xc0\x40\x00\x01\x00\x01\x00\x00\x00\x00\x00\x00",
     "FORMERR"),
    ("rdlength-past-end", header(ar=1) + QUESTION + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x09\x00",
     "FORMERR"),
    ("garbage-opcode-3", header(flags=0x1800) + QUESTION, "FORMERR"),
    ("garbage-opcode-15", header(flags=0x7800) + QUESTION, "FORMERR"),
    ("notify-opcode", header(flags=0x2000) + QUESTION, "NOTIMP"),
    ("update-opcode", header(flags=0x2800) + QUESTION, "NOTIMP"),
]


def exchange(sock: socket.socket, packet: bytes, wait: float) -> bytes | None:
    sock.send(packet)
    ready, _, _ = select.select([sock], [], [], wait)
    return sock.recv(65535) if ready else None


@pytest.mark.parametrize(("packet", "want"), [(p, w) for _, p, w in MALFORMED],
                         ids=[i for i, _, _ in MALFORMED])
def test_malformed_packet(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                          packet: bytes, want: str) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((r.host, r.port))
        reply = exchange(s, packet, 0.5 if want == "drop" else 3.0)
    if want == "drop":
        assert reply is None
    else:
        assert reply is not None
        assert reply[:2] == packet[:2], "the ID is echoed"
        assert reply[2] & 0x80, "QR is set"
        assert (reply[3] & 0x0F) == {"FORMERR": 1, "NOTIMP": 4}[want]
        assert reply[2] & 0x78 == packet[2] & 0x78, "the opcode is echoed"
    assert authority.count("www.example.test") == 0
    assert addresses(r.ask("www.example.test")) == ["192.0.2.1"], "still answering"
    assert r.proc.poll() is None


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    """One fuzz packet: random bytes, or a valid query bit-flipped, cut,
    grown, re-counted or given a pointer."""
    choice = rng.random()
    if choice < 0.2:
        return rng.randbytes(rng.randrange(0, 600))
    p = bytearray(rng.choice(seeds))
    if choice < 0.5:
        for _ in range(rng.randrange(1, 8)):
            i = rng.randrange(len(p))
            p[i] ^= 1 << rng.randrange(8)
    elif choice < 0.6:
        p = p[: rng.randrange(len(p))]
    elif choice < 0.7:
        i = rng.randrange(len(p) + 1)
        p[i:i] = rng.randbytes(rng.randrange(1, 40))
    elif choice < 0.8:
        struct.pack_into("!HHHH", p, 4, *(rng.choice((0, 1, 2, 0xFFFF)) for _ in range(4)))
    elif choice < 0.9:
        i = rng.randrange(12, len(p))
        p[i : i + 2] = bytes((0xC0 | rng.randrange(64), rng.randrange(256)))
    else:
        p[2] = rng.randrange(256)
        p[3] = rng.randrange(256)
    p[0:2] = rng.randbytes(2)
    return bytes(p)


FUZZ_PACKETS = 100_000
FUZZ_SECONDS = 120.0
KEEP_REPLIES = 20_000  # replies checked one by one after the run (bounded memory)


def test_fuzz_then_valid_queries_still_answered(resolver: Start, authority: Authority,
                                               write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--timeout", "0.5", "--metrics", "127.0.0.1:0")
    rng = random.Random(20201112)
    seeds = [dns.message.make_query(n, t, use_edns=e).to_wire()
             for n in ("www.example.test", "www.tiktok.test", "img.wechat.test", "use-application-dns.net")
             for t in ("A", "AAAA", "HTTPS", "TXT") for e in (False, 0)]
    sent = replies = 0
    kept: list[bytes] = []
    deadline = time.monotonic() + FUZZ_SECONDS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.connect((r.host, r.port))
        s.setblocking(False)
        while sent < FUZZ_PACKETS and time.monotonic() < deadline:
            for _ in range(50):  # paced in bursts, so the resolver reads (not the kernel drops) them
                try:
                    s.send(_mutate(rng, seeds))
                    sent += 1
                except BlockingIOError:
                    break
                except ConnectionRefusedError:
                    pytest.fail("the resolver's port closed during the fuzz run")
            while select.select([s], [], [], 0.002)[0]:
                try:
                    reply = s.recv(65535)
                    replies += 1
                    if len(kept) < KEEP_REPLIES:
                        kept.append(reply)
                except (BlockingIOError, ConnectionRefusedError):
                    break
            assert r.proc.poll() is None, "the resolver died"
    assert sent >= FUZZ_PACKETS, f"only {sent} packets in {FUZZ_SECONDS}s"
    assert replies > sent // 4
    # Every reply is a well-formed response: an answer, or FORMERR/NOTIMP as the header alone.
    rcodes: Counter[str] = Counter()
    for reply in kept:
        msg = dns.message.from_wire(reply)
        assert msg.flags & dns.flags.QR, reply
        rcodes[dns.rcode.to_text(msg.rcode())] += 1
        if msg.rcode() in (dns.rcode.FORMERR, dns.rcode.NOTIMP):
            assert (len(msg.question), len(msg.answer), len(msg.authority)) == (0, 0, 0), reply
    assert set(rcodes) <= {"NOERROR", "NXDOMAIN", "SERVFAIL", "FORMERR", "NOTIMP", "REFUSED",
                           "BADVERS"}, rcodes
    assert rcodes["FORMERR"] and rcodes["NOTIMP"] and rcodes["NOERROR"] and rcodes["NXDOMAIN"], rcodes
    time.sleep(1.0)  # let the forwarded ones time out
    assert r.proc.poll() is None
    assert r.metrics_url
    text = httpx.get(r.metrics_url, timeout=5).text
    handled = sum(float(v) for v in re.findall(r'^egress_dns_queries_total\{[^}]*\} (\S+)$', text, re.M))
    assert handled >= sent * 0.5, f"the resolver saw only {handled:.0f} of {sent} packets"
    # Valid questions are still answered correctly, over UDP and TCP.
    assert addresses(r.ask("www.example.test")) == ["192.0.2.1"]
    blocked = r.ask("www.tiktok.test")
    assert rcode(blocked) == "NXDOMAIN" and ede(blocked)[0][0] == 15
    assert addresses(r.ask("img.wechat.test", tcp=True)) == ["192.0.2.66"]
    assert rcode(r.ask("missing.example.test", tcp=True)) == "NXDOMAIN"


def test_flood_of_misses_to_a_dead_upstream_is_shed_not_queued(resolver: Start, authority: Authority,
                                                                write_policy: Callable[..., Path]) -> None:
    """More misses than MAX_INFLIGHT while the upstream is silent: the excess gets
    SERVFAIL at once, and the resolver keeps answering blocked names meanwhile."""
    authority.mode = "silent"
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--timeout", "5")
    sent = 6000
    servfail_fast = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.connect((r.host, r.port))
        started = time.monotonic()
        for i in range(sent):
            s.send(dns.message.make_query(f"n{i}.example.test", "A").to_wire())
            if i % 200 == 199:
                time.sleep(0.01)  # paced, so the kernel does not drop them before the resolver reads
        while select.select([s], [], [], 0.5)[0] and time.monotonic() - started < 4:
            if s.recv(65535)[3] & 0x0F == 2:
                servfail_fast += 1
    assert servfail_fast >= sent - 4096 - 200, f"only {servfail_fast} shed at once"
    blocked = r.ask("www.tiktok.test")
    assert rcode(blocked) == "NXDOMAIN"
    assert r.proc.poll() is None


TCP_GARBAGE = [
    # (id, bytes sent before the client closes its side, the rcodes of the framed replies)
    ("zero-length-message", b"\x00\x00", []),
    ("length-longer-than-data-then-close", b"\x01\x00" + b"\x12\x34\x01\x00", []),
    ("one-byte-then-close", b"\x00", []),
    ("malformed-message", b"\x00\x05\x12\x34\x01\x00\x00", []),
    ("random-bytes", bytes(random.Random(7).randbytes(3000)), None),
    ("header-only-message", b"\x00\x0c" + header(qd=0), ["FORMERR"]),
    # A blocked name, answered at once: a question forwarded upstream is not answered once the
    # client has half-closed (the server closes on EOF; reported to the lead, not fixed here).
    ("formerr-then-blocked-query", b"\x00\x0c" + header(qd=0) + struct.pack("!H", 12 + len(BLOCKED_Q))
     + header() + BLOCKED_Q, ["FORMERR", "NXDOMAIN"]),
]


def _framed_rcodes(data: bytes) -> list[str]:
    """The rcode of each length-framed DNS message in ``data`` (all of it must be whole messages)."""
    out, pos = [], 0
    while pos < len(data):
        size = struct.unpack_from("!H", data, pos)[0]
        msg = dns.message.from_wire(data[pos + 2 : pos + 2 + size])
        assert msg.flags & dns.flags.QR
        out.append(dns.rcode.to_text(msg.rcode()))
        pos += 2 + size
    return out


@pytest.mark.parametrize(("junk", "want"), [(j, w) for _, j, w in TCP_GARBAGE],
                         ids=[i for i, _, _ in TCP_GARBAGE])
def test_tcp_garbage_never_hurts_the_server(resolver: Start, authority: Authority,
                                            write_policy: Callable[..., Path], junk: bytes,
                                            want: list[str] | None) -> None:
    """Each message that arrives whole gets its exact answer (nothing for what is dropped or cut
    short); random bytes get only well-formed replies; the server answers correctly after."""
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    for _ in range(3):
        got = b""
        with socket.create_connection((r.host, r.port), timeout=3) as s:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(3)
            try:
                while chunk := s.recv(65535):
                    got += chunk
            except (ConnectionResetError, TimeoutError):
                pass
        rcodes = _framed_rcodes(got)
        if want is not None:
            assert rcodes == want
    assert r.proc.poll() is None
    assert addresses(r.ask("www.example.test", tcp=True)) == ["192.0.2.1"]
    assert rcode(r.ask("www.tiktok.test", tcp=True)) == "NXDOMAIN"
