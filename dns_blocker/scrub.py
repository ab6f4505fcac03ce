"""Scrubbing an upstream answer before it is cached or forwarded.

    answer bytes ─▶ walk every record ─▶ the question's CNAME chain ─▶ its zone
        ─▶ keep: answer records on the chain; the zone's SOA/NS and the DNSSEC
           records under it in the authority section; additional records under
           the zone or under a chain name; one OPT record
        ─▶ nothing dropped: the same bytes back; else a new packet

A forwarder does not see zone cuts, so the question's zone (its bailiwick) is
taken from the answer itself, and conservatively: the owner of an SOA or NS
record in the authority section that is the question name or one of its
ancestors (or of a name on its CNAME chain), the deepest one if several.  The
root counts only for a one-label name, so an ``NS .`` slipped into an answer
cannot claim every name.  With no such record the authority section is
emptied, and only additional records under a chain name stay (the targets of
MX or SRV records under the question).  This is the spirit of Unbound's
scrubber (``scrub_normalize`` keeps the answer records on the CNAME chain,
``scrub_sanitize`` deletes what is outside the zone of the server asked),
with the zone guessed narrowly: Unbound forwarding ``.`` takes the root as
that zone and so keeps every name.

A packet that loses records is written again with every name uncompressed
(the names inside the RDATA of the RFC 1035 types too), since a compression
pointer may point into a record that is gone.  RDATA of other types is copied
as it is: RFC 3597 forbids compression in it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from .wire import T_CNAME, T_OPT, T_SOA, Malformed, Query, name_wire, wire_labels

T_NS, T_DNAME, T_ANY, T_RRSIG, T_NSEC, T_NSEC3 = 2, 39, 255, 46, 47, 50
# The authority records that may stand under the zone in a denial or a signed answer.
_DNSSEC = frozenset({T_RRSIG, T_NSEC, T_NSEC3})
# Types whose RDATA holds names that may be compressed: (bytes before the names, number of names).
_NAMES_IN_RDATA = {2: (0, 1), 3: (0, 1), 4: (0, 1), T_CNAME: (0, 1), 7: (0, 1), 8: (0, 1), 9: (0, 1),
                   12: (0, 1), T_DNAME: (0, 1), T_SOA: (0, 2), 14: (0, 2), 17: (0, 2), 15: (2, 1),
                   18: (2, 1), 21: (2, 1), 36: (2, 1), 26: (2, 2), 33: (6, 1)}
MAX_CHAIN = 16
_COUNTS = struct.Struct("!HHHH")

Labels = tuple[bytes, ...]  # lower-case labels, the root is ()


class Record(NamedTuple):
    section: int  # 1 answer, 2 authority, 3 additional
    owner: Labels
    owner_wire: bytes  # uncompressed, with the case as sent
    rtype: int
    rclass: int
    fixed: int  # offset of TYPE (TYPE, CLASS, TTL, RDLENGTH follow)
    rdata: int
    rdlen: int


class Scrubbed(NamedTuple):
    data: bytes
    dropped: tuple[int, int, int]  # records removed from the answer, authority, additional sections


def labels(wire: bytes) -> Labels:
    """The lower-case labels of an uncompressed wire name."""
    return tuple(label.lower() for label in wire_labels(wire))


def under(name: Labels, zone: Labels) -> bool:
    """``name`` is ``zone`` or below it."""
    return len(name) >= len(zone) and (not zone or name[-len(zone):] == zone)


def records(data: bytes, qend: int) -> list[Record]:
    n = len(data)
    if n < 12 or qend > n:
        raise Malformed()
    an, ns, ar = _COUNTS.unpack_from(data, 4)[1:]
    out = []
    pos = qend
    for section, count in ((1, an), (2, ns), (3, ar)):
        for _ in range(count):
            wire, pos = name_wire(data, pos)
            if pos + 10 > n:
                raise Malformed()
            rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", data, pos)
            if pos + 10 + rdlen > n:
                raise Malformed()
            out.append(Record(section, labels(wire), wire, rtype, rclass, pos, pos + 10, rdlen))
            pos += 10 + rdlen
    return out


def _chain(recs: list[Record], qname: Labels, qclass: int, data: bytes) -> list[Labels]:
    """The question name and the CNAME targets that follow from it, in order."""
    chain = [qname]
    cnames = {r.owner: labels(name_wire(data, r.rdata)[0]) for r in recs
              if r.section == 1 and r.rtype == T_CNAME and r.rclass == qclass}
    while chain[-1] in cnames and len(chain) <= MAX_CHAIN:
        target = cnames[chain[-1]]
        if target in chain:  # a CNAME loop: the chain ends here
            break
        chain.append(target)
    return chain


def _zone(recs: list[Record], chain: list[Labels], qclass: int) -> Labels | None:
    """The deepest SOA/NS owner in the authority section at or above a chain name."""
    best: Labels | None = None
    for r in recs:
        if r.section != 2 or r.rtype not in (T_SOA, T_NS) or r.rclass != qclass:
            continue
        if not r.owner and all(len(name) > 1 for name in chain):
            continue  # the root claims every name: only for a top-level name
        if any(under(name, r.owner) for name in chain) and (best is None or len(r.owner) > len(best)):
            best = r.owner
    return best


def _keep(r: Record, q: Query, chain: list[Labels], zone: Labels | None, opt_seen: bool) -> bool:
    if r.rtype == T_OPT:
        return r.section == 3 and not opt_seen
    if r.rclass != q.qclass:
        return False
    if r.section == 1:
        if r.owner in chain:
            return q.qtype in (r.rtype, T_ANY) or r.rtype in (T_CNAME, T_RRSIG)
        return r.rtype == T_DNAME and any(len(name) > len(r.owner) and under(name, r.owner) for name in chain)
    if r.section == 2:
        if zone is None:
            return False
        return r.owner == zone if r.rtype in (T_SOA, T_NS) else r.rtype in _DNSSEC and under(r.owner, zone)
    return (zone is not None and under(r.owner, zone)) or any(under(r.owner, name) for name in chain)


def _rdata(data: bytes, r: Record) -> bytes:
    """The record's RDATA with the names of RFC 1035 types written out uncompressed."""
    layout = _NAMES_IN_RDATA.get(r.rtype)
    end = r.rdata + r.rdlen
    if layout is None:
        return data[r.rdata : end]
    before, names = layout
    pos = r.rdata + before
    out = bytearray(data[r.rdata : pos])
    for _ in range(names):
        wire, pos = name_wire(data, pos)
        out += wire
    if pos > end:
        raise Malformed()
    out += data[pos:end]
    return bytes(out)


def plainly_clean(data: bytes, q: Query) -> bool:
    """The common answer, checked without building anything: every answer
    record of the question's own type and owned by the question's name (a
    pointer to it), no authority records, at most one additional: the OPT."""
    n = len(data)
    an, ns, ar = _COUNTS.unpack_from(data, 4)[1:]
    if ns or ar > 1:
        return False
    pos = q.qend
    want = struct.pack("!HH", q.qtype, q.qclass)
    for _ in range(an):
        if data[pos : pos + 2] != b"\xc0\x0c" or data[pos + 2 : pos + 6] != want or pos + 12 > n:
            return False
        pos += 12 + ((data[pos + 10] << 8) | data[pos + 11])
    if ar:
        if data[pos : pos + 3] != b"\x00\x00\x29" or pos + 11 > n:
            return False
        pos += 11 + ((data[pos + 9] << 8) | data[pos + 10])
    return pos == n


def scrub(data: bytes, q: Query) -> Scrubbed:
    """``data``, the answer to ``q``, with the records outside the question's chain and zone removed."""
    if len(data) >= 12 and plainly_clean(data, q):
        return Scrubbed(data, (0, 0, 0))
    recs = records(data, q.qend)
    qname = labels(q.key[:-5])  # the key: the question's name in wire form, then type, class, flags
    chain = _chain(recs, qname, q.qclass, data)
    zone = _zone(recs, chain, q.qclass)
    kept: list[Record] = []
    opt_seen = False
    for r in recs:
        if _keep(r, q, chain, zone, opt_seen):
            kept.append(r)
            opt_seen = opt_seen or r.rtype == T_OPT
    if len(kept) == len(recs):
        return Scrubbed(data, (0, 0, 0))
    counts = [sum(1 for r in kept if r.section == s) for s in (1, 2, 3)]
    out = bytearray(data[:6])
    out += struct.pack("!HHH", *counts)
    out += data[12 : q.qend]
    for r in kept:
        rdata = _rdata(data, r)
        out += r.owner_wire
        out += data[r.fixed : r.fixed + 8]
        out += struct.pack("!H", len(rdata))
        out += rdata
    before = [sum(1 for r in recs if r.section == s) for s in (1, 2, 3)]
    return Scrubbed(bytes(out), (before[0] - counts[0], before[1] - counts[1], before[2] - counts[2]))
