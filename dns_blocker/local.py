"""Local records and conditional forwarding: where a name is answered, after the policy has judged it.

    question (not blocked) ─▶ local record?      ─▶ answered here (AA), A/AAAA/CNAME/PTR, TTL LOCAL_TTL
                           ─▶ under a forward?   ─▶ that domain's own Forwarder (same cache, same rules)
                           ─▶ local domain or a
                              single-label name? ─▶ NXDOMAIN here: never sent to the public upstreams
                                                    (settings.dns.local_domains: [] and
                                                    block_single_label: false turn these off)
                           ─▶ otherwise          ─▶ the public upstreams

The resolver asks ``answer`` after the policy's verdict (a blocked name is
blocked whatever is local) and before its cache, and ``forwarder_for`` when
a miss goes upstream.  Records come from ``settings.dns.local`` (checked by
policies/dns_local.py at load); each A/AAAA record also answers the PTR
question of its address unless a PTR record for that address is given.  A
CNAME is followed through the local records (at most ``CHAIN`` steps), as a
server authoritative for both names would.  Of the forward and local
domains that cover a name, the most specific decides (at the same name a
forward wins, so ``forward: {lan: ...}`` sends ``*.lan`` to the router); a
local record wins over both.  Answers are built from
wire bytes here (names in the tail point at the question, offset 12), so no
client bytes beyond the question are echoed.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple

from policies import DnsSettings
from policies.model import RType

from .upstream import Forwarder
from .wire import BARE_OPT, Query, splice_parts

LOCAL_TTL = 60
CHAIN = 8  # CNAME steps followed through the local records
T_A, T_CNAME, T_PTR, T_AAAA, C_IN = 1, 5, 12, 28, 1
NOERROR, NXDOMAIN = 0, 3
_TYPES = {RType.A: T_A, RType.AAAA: T_AAAA, RType.CNAME: T_CNAME, RType.PTR: T_PTR}
_QUESTION = b"\xc0\x0c"  # a pointer to the question's name


def wire_name(name: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode("ascii") for p in name.split(".") if p) + b"\0"


def _rdata(rtype: RType, value: str) -> bytes:
    if rtype in (RType.A, RType.AAAA):
        return ipaddress.ip_address(value).packed
    return wire_name(value)


def suffixes(name: str) -> Iterator[str]:
    """``a.b.lan``, ``b.lan``, ``lan``: the name and its parents, most specific first."""
    yield name
    i = name.find(".")
    while i >= 0:
        yield name[i + 1 :]
        i = name.find(".", i + 1)


class LocalAnswer(NamedTuple):
    """An answer made here: its bytes (with the asker's ID) and the response name events carry."""

    answer: bytes
    response: str


class LocalAnswers:
    """The local records, forwards and local domains of one resolver (read at start)."""

    def __init__(self, settings: DnsSettings, make_forwarder: Callable[[tuple[str, ...]], Forwarder]):
        self.records: dict[str, list[tuple[int, bytes, str]]] = {}  # name -> (type, rdata, value)
        ptr_given = {r.name for r in settings.local if r.rtype is RType.PTR}
        for r in settings.local:
            self._add(r.name, _TYPES[r.rtype], _rdata(r.rtype, r.value), r.value)
        for r in settings.local:
            if r.rtype in (RType.A, RType.AAAA):
                rev = ipaddress.ip_address(r.value).reverse_pointer
                if rev not in ptr_given and not any(t == T_PTR for t, _, _ in self.records.get(rev, ())):
                    self._add(rev, T_PTR, wire_name(r.name), r.name)
        self.forwards = {f.domain: make_forwarder(f.upstreams) for f in settings.forward}
        self.local_domains = frozenset(settings.local_domains)
        self.block_single_label = settings.block_single_label
        self.answered = 0

    def _add(self, name: str, rtype: int, rdata: bytes, value: str) -> None:
        self.records.setdefault(name, []).append((rtype, rdata, value))

    @property
    def forwarders(self) -> Iterable[Forwarder]:
        return self.forwards.values()

    def forwarder_for(self, name: str) -> Forwarder | None:
        """The most specific forward domain's forwarder, unless a more specific local domain
        covers the name (then the question is answered here, never forwarded)."""
        if not self.forwards:
            return None
        for s in suffixes(name):
            fwd = self.forwards.get(s)
            if fwd is not None:
                return fwd
            if s in self.local_domains:
                return None
        return None

    def answer(self, data: bytes, q: Query) -> LocalAnswer | None:
        """The answer when the question is answered here, else None.
        The most specific of the forward and local domains that cover the name decides;
        at the same name a forward wins."""
        name = q.name
        if name in self.records:
            return LocalAnswer(self._records(data, q), "NOERROR")
        forwards, local = self.forwards, self.local_domains
        for s in suffixes(name):
            if s in forwards:
                return None
            if s in local:
                return LocalAnswer(self._reply(data, q, NXDOMAIN, b"", 0), "NXDOMAIN")
        if self.block_single_label and name and "." not in name:  # a search-list name, never public
            return LocalAnswer(self._reply(data, q, NXDOMAIN, b"", 0), "NXDOMAIN")
        return None

    def _records(self, data: bytes, q: Query) -> bytes:
        rrs: list[bytes] = []
        owner, name = _QUESTION, q.name
        for _ in range(CHAIN):
            have = self.records.get(name, ())
            cname = next(((rd, v) for t, rd, v in have if t == T_CNAME), None)
            if q.qclass == C_IN:
                for t, rd, _v in have:
                    if t == q.qtype:
                        rrs.append(owner + struct.pack("!HHIH", t, C_IN, LOCAL_TTL, len(rd)) + rd)
            if cname is None or q.qtype == T_CNAME or q.qclass != C_IN:
                break
            rd, target = cname
            rrs.append(owner + struct.pack("!HHIH", T_CNAME, C_IN, LOCAL_TTL, len(rd)) + rd)
            owner, name = rd, target
            if name not in self.records:
                break  # the target is not ours: the client follows it itself
        return self._reply(data, q, NOERROR, b"".join(rrs), len(rrs))

    def _reply(self, data: bytes, q: Query, rcode: int, rrs: bytes, count: int) -> bytes:
        self.answered += 1
        # QR and AA; RA and the rcode; RD and CD are the asker's (splice_parts copies them).
        head = b"\0\0" + bytes((0x84, 0x80 | rcode)) + struct.pack("!HHHH", 1, count, 0, 1 if q.edns else 0)
        return bytes(splice_parts(head, rrs + (BARE_OPT if q.edns else b""), data, q.qend))

    async def aclose(self) -> None:
        for fwd in self.forwarders:
            await fwd.aclose()
