"""Red-team findings on the DNS wire format, replayed over real UDP and TCP sockets.

- amplification: a small query offering EDNS size 65535 fetched a 7,931-byte
  UDP answer; UDP answers are now capped at ``max_udp_size`` (1232, DNS Flag
  Day 2020) and bigger ones go out with TC set;
- a 256-byte wire name was accepted (the root byte was checked after the length);
- an EDNS version above 0 was answered as if it were 0 (RFC 6891 wants BADVERS);
- CH-class TXT ``version.bind`` and friends were forwarded upstream;
- the default ACL let in carrier-grade NAT and link-local IPv4 clients.

Each case is one packet with an id, and asserts the exact RCODE, flags and size.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from dns_blocker.resolver import Acl
from policies import DnsSettings
from tests.dns import conftest as dns_fixtures
from tests.dns.authority import Authority
from tests.dns.conftest import TEST_DAY, ResolverProcess

# The resolver's fixtures, shared with tests/dns (a process per test, stopped by PID).
authority = dns_fixtures.authority
resolver = dns_fixtures.resolver
write_policy = dns_fixtures.write_policy

pytestmark = pytest.mark.e2e
Start = Callable[..., ResolverProcess]


def exchange(r: ResolverProcess, packet: bytes, tcp: bool, wait: float = 3.0) -> bytes:
    """Send one raw query and return the raw answer."""
    if tcp:
        with socket.create_connection((r.host, r.port), timeout=wait) as s:
            s.sendall(struct.pack("!H", len(packet)) + packet)
            head = _recv_exactly(s, 2)
            return _recv_exactly(s, struct.unpack("!H", head)[0])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(wait)
        s.connect((r.host, r.port))
        s.send(packet)
        return s.recv(65535)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = s.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += chunk
    return out


def start(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
          *flags: str) -> ResolverProcess:
    return resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                    *flags)


@pytest.fixture
def server(resolver: Start, authority: Authority, write_policy: Callable[..., Path]) -> ResolverProcess:
    """A resolver with the default settings."""
    return start(resolver, authority, write_policy)


OVER_BOTH = pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])


# --- amplification ---------------------------------------------------------------

# The question of big.example.test TXT: 18 bytes of name, 4 of type and class.
BIG_QUESTION = 18 + 4
OPT_LEN = 11


class Amp(NamedTuple):
    flags: tuple[str, ...]
    payload: int | None  # the EDNS size the query offers; None: no OPT record
    tcp: bool
    truncated: bool
    size: int | None  # the exact size of the answer, None: the whole answer (checked against TCP)


AMPLIFICATION = [
    pytest.param(Amp((), 65535, False, True, 12 + BIG_QUESTION + OPT_LEN), id="edns-65535-capped-at-1232"),
    pytest.param(Amp((), 1232, False, True, 12 + BIG_QUESTION + OPT_LEN), id="edns-1232-truncated"),
    pytest.param(Amp((), None, False, True, 12 + BIG_QUESTION), id="no-edns-512"),
    pytest.param(Amp(("--max-udp-size", "4096"), 65535, False, False, None), id="cap-raised-to-4096"),
    pytest.param(Amp(("--max-udp-size", "4096"), 1232, False, True, 12 + BIG_QUESTION + OPT_LEN),
                 id="cap-raised-but-client-offers-1232"),
    pytest.param(Amp((), 65535, True, False, None), id="tcp-whole-answer"),
]


@pytest.mark.parametrize("case", AMPLIFICATION)
def test_udp_answers_are_capped(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                                case: Amp) -> None:
    r = start(resolver, authority, write_policy, *case.flags)
    query = dns.message.make_query("big.example.test", "TXT", use_edns=case.payload is not None,
                                   payload=case.payload or 512)
    query.id = 0x4242
    packet = query.to_wire()
    whole = exchange(r, packet, tcp=True)  # the real size of the answer
    assert len(whole) > 1600
    reply = exchange(r, packet, tcp=case.tcp)
    assert reply[:2] == b"\x42\x42"
    assert bool(reply[2] & 0x02) is case.truncated
    assert reply[3] & 0x0F == dns.rcode.NOERROR
    if case.size is None:
        assert reply == whole
    else:
        assert len(reply) == case.size
        msg = dns.message.from_wire(reply)
        assert msg.answer == [] and (msg.edns == 0) is (case.payload is not None)
    assert authority.count("big.example.test", "udp") == 1  # cached after the first, fetched over TCP


# --- name length -----------------------------------------------------------------

TIKTOK = b"\x06tiktok\x04test\x00"  # 12 bytes, root included


def wire_name(total: int) -> bytes:
    """A name of exactly ``total`` wire bytes (root included) under tiktok.test."""
    rest = total - len(TIKTOK)
    labels = b""
    while rest > 64:
        labels += b"\x3f" + b"a" * 63
        rest -= 64
    return labels + bytes((rest - 1,)) + b"b" * (rest - 1) + TIKTOK


def raw_query(name: bytes, qtype: int = 1, qclass: int = 1, opt: bytes = b"") -> bytes:
    return (struct.pack("!HHHHHH", 0x5151, 0x0100, 1, 0, 0, 1 if opt else 0) + name
            + struct.pack("!HH", qtype, qclass) + opt)


NAMES = [
    pytest.param(254, "NXDOMAIN", id="254-bytes-blocked-normally"),
    pytest.param(255, "NXDOMAIN", id="255-bytes-the-maximum"),
    pytest.param(256, "FORMERR", id="256-bytes-formerr"),
    pytest.param(257, "FORMERR", id="257-bytes-formerr"),
]


@OVER_BOTH
@pytest.mark.parametrize(("length", "want"), NAMES)
def test_name_length(server: ResolverProcess, authority: Authority, length: int, want: str,
                     tcp: bool) -> None:
    name = wire_name(length)
    assert len(name) == length
    reply = exchange(server, raw_query(name), tcp)
    assert reply[:2] == b"\x51\x51" and reply[2] & 0x80
    assert dns.rcode.to_text(reply[3] & 0x0F) == want
    if want == "FORMERR":
        assert len(reply) == 12, "a FORMERR echoes no question"
    else:
        assert reply[12 : 12 + length] == name, "the blocked name is echoed"
    assert authority.asked == {}, "nothing was forwarded"


# --- EDNS version ----------------------------------------------------------------

def opt_record(version: int, size: int = 1232, do: bool = False) -> bytes:
    ttl = (version << 16) | (0x8000 if do else 0)
    return b"\x00" + struct.pack("!HHIH", 41, size, ttl, 0)


WWW = b"\x03www\x07example\x04test\x00"

VERSIONS = [
    pytest.param(0, "NOERROR", id="version-0-answered"),
    pytest.param(1, "BADVERS", id="version-1-badvers"),
    pytest.param(2, "BADVERS", id="version-2-badvers"),
    pytest.param(255, "BADVERS", id="version-255-badvers"),
]


@OVER_BOTH
@pytest.mark.parametrize(("version", "want"), VERSIONS)
def test_edns_version(server: ResolverProcess, authority: Authority, version: int, want: str,
                      tcp: bool) -> None:
    packet = raw_query(WWW, opt=opt_record(version, do=True))
    reply = exchange(server, packet, tcp)
    msg = dns.message.from_wire(reply)
    assert msg.id == 0x5151
    assert dns.rcode.to_text(msg.rcode()) == want
    assert msg.edns == 0, "the answer's OPT record carries the version we speak"
    assert [q.name.to_text() for q in msg.question] == ["www.example.test."]
    if want == "BADVERS":
        # Header RCODE 0, extended RCODE 1 in the OPT record, nothing else.
        assert reply[3] & 0x0F == 0 and reply[len(packet) - 6] == 1
        assert len(reply) == len(packet) and msg.answer == [] and msg.authority == []
        assert authority.asked == {}, "not forwarded"
    else:
        assert [rd.to_text() for rrset in msg.answer for rd in rrset] == ["192.0.2.1"]


# --- server identity (CHAOS class) -------------------------------------------------

class Chaos(NamedTuple):
    flags: tuple[str, ...]
    name: str
    qtype: str
    rcode: str
    txt: str | None


SET = ("--server-identity", "ns1.test", "--server-version", "egress-filter")
CHAOS = [
    pytest.param(Chaos((), "version.bind", "TXT", "REFUSED", None), id="version.bind-hidden-by-default"),
    pytest.param(Chaos((), "version.server", "TXT", "REFUSED", None), id="version.server-hidden-by-default"),
    pytest.param(Chaos((), "hostname.bind", "TXT", "REFUSED", None), id="hostname.bind-hidden-by-default"),
    pytest.param(Chaos((), "id.server", "TXT", "REFUSED", None), id="id.server-hidden-by-default"),
    pytest.param(Chaos(SET, "version.bind", "TXT", "NOERROR", "egress-filter"), id="version.bind-set"),
    pytest.param(Chaos(SET, "VERSION.Server", "TXT", "NOERROR", "egress-filter"),
                 id="version.server-any-case"),
    pytest.param(Chaos(SET, "hostname.bind", "TXT", "NOERROR", "ns1.test"), id="hostname.bind-set"),
    pytest.param(Chaos(SET, "id.server", "TXT", "NOERROR", "ns1.test"), id="id.server-set"),
    pytest.param(Chaos(SET, "version.bind", "A", "REFUSED", None), id="version.bind-not-txt"),
    pytest.param(Chaos(SET, "www.example.test", "TXT", "REFUSED", None), id="other-name-in-chaos"),
    pytest.param(Chaos(SET, "www.tiktok.test", "A", "REFUSED", None), id="blocked-name-in-chaos"),
]


@OVER_BOTH
@pytest.mark.parametrize("case", CHAOS)
def test_chaos_identity_answered_locally(resolver: Start, authority: Authority,
                                         write_policy: Callable[..., Path], case: Chaos, tcp: bool) -> None:
    r = start(resolver, authority, write_policy, *case.flags)
    query = dns.message.make_query(case.name, case.qtype, rdclass="CH", use_edns=0)
    reply = exchange(r, query.to_wire(), tcp)
    msg = dns.message.from_wire(reply)
    assert msg.id == query.id
    assert dns.rcode.to_text(msg.rcode()) == case.rcode
    assert msg.question[0].rdclass == dns.rdataclass.CH
    assert msg.question[0].name.to_text(omit_final_dot=True) == case.name, "the asker's case is echoed"
    if case.txt is None:
        assert msg.answer == []
    else:
        assert msg.flags & dns.flags.AA
        [rrset] = msg.answer
        assert rrset.rdclass == dns.rdataclass.CH and rrset.rdtype == dns.rdatatype.TXT
        assert [b"".join(rd.strings).decode() for rd in rrset] == [case.txt]
    assert authority.asked == {}, "CH queries are never forwarded"


# --- default ACL -------------------------------------------------------------------

ACL = [
    pytest.param("127.0.0.1", True, id="loopback"),
    pytest.param("10.1.2.3", True, id="rfc1918-10"),
    pytest.param("172.16.0.9", True, id="rfc1918-172"),
    pytest.param("192.168.1.10", True, id="rfc1918-192"),
    pytest.param("fd00::1", True, id="ula"),
    pytest.param("100.64.0.1", False, id="cgnat-not-by-default"),
    pytest.param("100.127.255.254", False, id="cgnat-top-not-by-default"),
    pytest.param("169.254.169.254", False, id="link-local-v4-not-by-default"),
    pytest.param("8.8.8.8", False, id="public"),
]


@pytest.mark.parametrize(("client", "allowed"), ACL)
def test_default_acl(client: str, allowed: bool) -> None:
    assert Acl(DnsSettings().acl).allows(client) is allowed


def test_cgnat_allowed_when_listed() -> None:
    assert Acl((*DnsSettings().acl, "100.64.0.0/10")).allows("100.64.0.1")
