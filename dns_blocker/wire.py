"""DNS wire format, read and written by hand where speed matters.

Queries come in as bytes.  ``parse_query`` reads the header, the one
question and the OPT record (EDNS0) and nothing else; it never builds
objects per record.  Upstream answers are walked once by ``scan_answer``,
which records where every TTL sits (so a cached answer can be re-served
with its TTLs counted down), the CNAME chain (so it can be judged) and the
cache lifetime (RFC 2308 for negative answers).  Answers that we make
ourselves (blocks, the canary) are built once with dnslib in ``responses``
and re-served as bytes by ``splice``, which writes in the asker's ID, its
question bytes (the 0x20 case of the name) and its RD/CD bits.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import NamedTuple

# RCODEs
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16  # an extended RCODE: its upper 8 bits travel in the OPT record (RFC 6891 §6.1.3)
RCODE_NAMES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
               16: "BADVERS"}

T_A, T_CNAME, T_SOA, T_TXT, T_AAAA, T_OPT = 1, 5, 6, 16, 28, 41
C_CH = 3  # the CHAOS class: where servers are asked who and what they are

# Opcodes that exist but that a recursive resolver does not serve: NOTIMP.
# Unassigned opcodes are garbage: FORMERR.
_KNOWN_OPCODES = frozenset({1, 2, 4, 5, 6})

_HH = struct.Struct("!HH")
_I = struct.Struct("!I")
_COUNTS = struct.Struct("!HHHH")
_RR = struct.Struct("!HHIH")

MAX_NAME = 255  # wire bytes of a name, its root label included (RFC 1035 §2.3.4)
# The flags byte that ends ``Query.key``: what changes the upstream's answer.
KEY_EDNS, KEY_DO, KEY_CD, KEY_RD = 1, 2, 4, 8
# A reply to a client that sent no OPT record must fit 512 bytes (RFC 1035).
CLASSIC_UDP = 512
MAX_TTL = 86_400


class Malformed(ValueError):
    """The packet's header parsed but the rest did not: answer FORMERR."""

    def __init__(self, rcode: int = FORMERR):
        self.rcode = rcode
        super().__init__(RCODE_NAMES.get(rcode, str(rcode)))

    def reply(self, query: bytes) -> bytes:
        """The answer to send: the header alone, since the body is not trusted."""
        return error_reply(query, self.rcode)


class BadVersion(Malformed):
    """A well-formed query with an EDNS version we do not speak (> 0): BADVERS,
    with the question echoed and an OPT record of version 0 (RFC 6891 §6.1.3)."""

    def __init__(self, qend: int):
        self.qend = qend
        super().__init__(BADVERS)

    def reply(self, query: bytes) -> bytes:
        head = query[0:2] + bytes((0x80 | (query[2] & 0x01), 0x80 | (query[3] & 0x10)))
        return head + _COUNTS.pack(1, 0, 0, 1) + query[12 : self.qend] + BADVERS_OPT


class Query(NamedTuple):
    """What the hot path needs from a query; everything else stays in the bytes.

    ``key`` is the question lower-cased plus one byte of flags (``KEY_EDNS``,
    ``KEY_DO``, ``KEY_CD``, ``KEY_RD``): the coalescing and
    cache key, and the bytes ``splice`` writes back (``qend`` marks their end).
    A NamedTuple rather than a frozen dataclass: it is built once per packet,
    and a tuple is several times cheaper to build.
    """

    name: str
    qtype: int
    qclass: int
    qend: int
    edns: bool
    udp_size: int
    key: bytes


def parse_query(data: bytes) -> Query | None:
    """Header, question and OPT record of a query.

    Returns None for what must be dropped (shorter than a header, or a
    response: answering responses invites loops and reflection).  Raises
    ``Malformed`` for what gets FORMERR or NOTIMP.
    """
    n = len(data)
    if n < 12:
        return None
    flags = data[2]
    if flags & 0x80:
        return None
    opcode = (flags >> 3) & 0x0F
    if opcode:
        raise Malformed(NOTIMP if opcode in _KNOWN_OPCODES else FORMERR)
    qd, an, ns, ar = _COUNTS.unpack_from(data, 4)
    if qd != 1:
        raise Malformed()
    pos = 12
    dots = []
    while True:
        if pos >= n:
            raise Malformed()
        ln = data[pos]
        if ln == 0:
            pos += 1
            break
        if ln > 63:  # a pointer (or a reserved label type) cannot start a query's only name
            raise Malformed()
        dots.append(pos)
        pos += 1 + ln
        if pos - 12 >= MAX_NAME:  # the labels so far plus the root byte still to come
            raise Malformed()
    name_end = pos
    qend = pos + 4
    if qend > n:
        raise Malformed()
    qtype, qclass = _HH.unpack_from(data, pos)
    edns = False
    udp_size = CLASSIC_UDP
    do_bit = version = 0
    if an or ns or ar:
        pos = qend
        for section, count in ((1, an), (2, ns), (3, ar)):
            for _ in range(count):
                # An OPT owner is the root; anything else is read in full, so that
                # a compression loop or a forward pointer is caught here.
                pos = pos + 1 if pos < n and data[pos] == 0 else name_wire(data, pos)[1]
                if pos + 10 > n:
                    raise Malformed()
                rtype, rclass, ttl, rdlen = _RR.unpack_from(data, pos)
                pos += 10 + rdlen
                if pos > n:
                    raise Malformed()
                if rtype == T_OPT:
                    if section != 3 or edns:  # one OPT, in the additional section (RFC 6891)
                        raise Malformed()
                    edns = True
                    udp_size = max(CLASSIC_UDP, rclass)
                    do_bit = (ttl >> 15) & 1
                    version = (ttl >> 16) & 0xFF
        if version:
            raise BadVersion(qend)
    # The name's text: its bytes with every length byte but the first made a dot.
    text = bytearray(data[13 : name_end - 1])
    for d in dots[1:]:
        text[d - 13] = 0x2E
    name = text.lower().decode("latin-1")
    cd = (data[3] >> 4) & 1
    rd = data[2] & 1
    key = data[12:qend].lower() + bytes((edns | (do_bit << 1) | (cd << 2) | (rd << 3),))
    return Query(name, qtype, qclass, qend, edns, udp_size, key)


def name_wire(data: bytes, pos: int) -> tuple[bytes, int]:
    """A possibly compressed name → (its uncompressed wire form, case kept; the
    offset after it).

    The resolver's one reader of names in messages (``read_name``, the answer
    scan, the scrubber and the OPT walk of a query all go through it), so
    there is one compression rule: every pointer must point strictly before
    the previous one (a compression loop is then impossible, and so is a
    forward pointer), and the name may not exceed 255 bytes, its root byte
    counted.  Only a query's question name is read apart (``parse_query``),
    because it may not be compressed at all.
    """
    n = len(data)
    out = bytearray()
    end = -1
    limit = pos
    while True:
        if pos >= n:
            raise Malformed()
        ln = data[pos]
        if ln & 0xC0 == 0xC0:
            if pos + 2 > n:
                raise Malformed()
            target = ((ln & 0x3F) << 8) | data[pos + 1]
            if end < 0:
                end = pos + 2
            if target >= limit:
                raise Malformed()
            limit = pos = target
            continue
        if ln > 63 or pos + 1 + ln > n:
            raise Malformed()
        out += data[pos : pos + 1 + ln]
        if len(out) > MAX_NAME:
            raise Malformed()
        if ln == 0:
            return bytes(out), (pos + 1 if end < 0 else end)
        pos += 1 + ln


def wire_labels(wire: bytes) -> list[bytes]:
    """The labels of an uncompressed wire name, case kept; the root is []."""
    out = []
    pos = 0
    while wire[pos]:
        out.append(wire[pos + 1 : pos + 1 + wire[pos]])
        pos += 1 + wire[pos]
    return out


def read_name(data: bytes, pos: int) -> tuple[str, int]:
    """A possibly compressed name → (lower-case text, offset after it); see ``name_wire``."""
    wire, end = name_wire(data, pos)
    return b".".join(wire_labels(wire)).lower().decode("latin-1"), end  # ASCII case only (RFC 4343)


@dataclass(frozen=True, slots=True)
class Answer:
    """An upstream answer, walked once: what the cache and CNAME inspection need."""

    rcode: int
    truncated: bool
    ttl_slots: tuple[tuple[int, int], ...]  # (offset, original TTL) of every non-OPT record
    cnames: tuple[str, ...]  # CNAME targets in the answer section, in order
    lifetime: int  # seconds the answer may be cached; 0 = do not cache


def scan_answer(data: bytes, qend: int) -> Answer:
    """Walk every record of a response whose question ends at ``qend``."""
    n = len(data)
    if n < 12:
        raise Malformed()
    rcode = data[3] & 0x0F
    truncated = bool(data[2] & 0x02)
    an, ns, ar = _COUNTS.unpack_from(data, 4)[1:]
    pos = qend
    slots: list[tuple[int, int]] = []
    cnames: list[str] = []
    answer_ttl: int | None = None
    soa_ttl: int | None = None
    for section, count in ((1, an), (2, ns), (3, ar)):
        for _ in range(count):
            pos = name_wire(data, pos)[1]
            if pos + 10 > n:
                raise Malformed()
            rtype, _rclass, ttl, rdlen = _RR.unpack_from(data, pos)
            rdata = pos + 10
            if rdata + rdlen > n:
                raise Malformed()
            if rtype != T_OPT:
                if ttl & 0x80000000:  # RFC 2181 §8: a TTL with the top bit set means 0
                    ttl = 0
                slots.append((pos + 4, ttl))
                if section == 1:
                    answer_ttl = ttl if answer_ttl is None else min(answer_ttl, ttl)
                    if rtype == T_CNAME:
                        cnames.append(read_name(data, rdata)[0])
                elif section == 2 and rtype == T_SOA and rdlen >= 22:
                    minimum = _I.unpack_from(data, rdata + rdlen - 4)[0]
                    soa_ttl = min(ttl, minimum)
            pos = rdata + rdlen
    lifetime = 0
    if not truncated:
        if rcode == NOERROR and answer_ttl is not None:
            lifetime = answer_ttl
        elif rcode in (NOERROR, NXDOMAIN) and soa_ttl is not None:  # RFC 2308 §5
            lifetime = soa_ttl
    return Answer(rcode, truncated, tuple(slots), tuple(cnames), min(lifetime, MAX_TTL))


def splice(template: bytes, query: bytes, qend: int) -> bytearray:
    """A stored answer made into the answer to ``query``: its ID, its question
    bytes (same length, since the cache key is the lower-cased question) and its
    RD/CD bits."""
    out = bytearray(template)
    out[0:2] = query[0:2]
    out[12:qend] = query[12:qend]
    out[2] = (out[2] & 0xFE) | (query[2] & 0x01)
    out[3] = (out[3] & 0xEF) | (query[3] & 0x10)
    return out


def age_ttls(out: bytearray, slots: tuple[tuple[int, int], ...], age: int) -> None:
    """Count every TTL down by ``age`` seconds, in place."""
    pack = _I.pack_into
    for off, ttl in slots:
        pack(out, off, ttl - age if ttl > age else 0)


# One OPT record with no options: UDP size 1232 (the DNS flag day 2020 value).
BARE_OPT = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"
# The same with extended RCODE 1 (BADVERS = 1 << 4 | header RCODE 0) and version 0.
BADVERS_OPT = b"\x00\x00\x29\x04\xd0\x01\x00\x00\x00\x00\x00"


def error_reply(query: bytes, rcode: int) -> bytes:
    """FORMERR/NOTIMP/REFUSED for a query whose body is not trusted: the ID,
    opcode and RD bit echoed, no question, no records."""
    flags = 0x80 | (query[2] & 0x79)  # QR, opcode and RD echoed
    return query[0:2] + bytes((flags, 0x80 | rcode)) + b"\x00\x00\x00\x00\x00\x00\x00\x00"


def rcode_reply(query: bytes, q: Query, rcode: int) -> bytes:
    """An answer with the question echoed, no records, and an OPT if the asker sent one."""
    flags = 0x80 | (query[2] & 0x01)
    head = query[0:2] + bytes((flags, 0x80 | (query[3] & 0x10) | rcode))
    counts = _COUNTS.pack(1, 0, 0, 1 if q.edns else 0)
    return head + counts + query[12 : q.qend] + (BARE_OPT if q.edns else b"")


def truncated_reply(answer: bytes | bytearray, q: Query, query: bytes) -> bytes:
    """The answer cut to its header and question with TC set: the client retries over TCP."""
    flags = answer[2] | 0x02
    counts = _COUNTS.pack(1, 0, 0, 1 if q.edns else 0)
    return (bytes(query[0:2]) + bytes((flags, answer[3])) + counts + query[12 : q.qend]
            + (BARE_OPT if q.edns else b""))


def splice_parts(head: bytes, tail: bytes, query: bytes, qend: int) -> bytearray:
    """An answer made of a stored header, the asker's question, and a stored
    tail whose names point at offset 12 (so any question fits between)."""
    out = bytearray(head)
    out[0:2] = query[0:2]
    out[2] = (out[2] & 0xFE) | (query[2] & 0x01)
    out[3] = (out[3] & 0xEF) | (query[3] & 0x10)
    out += query[12:qend]
    out += tail
    return out


def question_matches(answer: bytes, query: bytes, qend: int) -> bool:
    """The answer carries our question (case-insensitively): anything else is
    garbage or a spoofing attempt."""
    return (len(answer) >= qend and answer[4:6] == b"\x00\x01"
            and answer[12:qend].lower() == query[12:qend].lower())


# The CH TXT names that ask a server who it is and what it runs (RFC 4892).
IDENTITY_NAMES = ("hostname.bind", "id.server")
VERSION_NAMES = ("version.bind", "version.server")


def chaos_answers(identity: str | None, version: str | None) -> dict[tuple[str, int], bytes]:
    """(name, TXT) → the TXT rdata to answer with; a name left out is REFUSED,
    like Unbound's ``hide-identity``/``hide-version``."""
    out: dict[tuple[str, int], bytes] = {}
    for names, text in ((IDENTITY_NAMES, identity), (VERSION_NAMES, version)):
        if text is not None:
            raw = text.encode("utf-8")[:255]
            for name in names:
                out[(name, T_TXT)] = bytes((len(raw),)) + raw
    return out


def chaos_reply(query: bytes, q: Query, txt: bytes | None) -> bytes:
    """The authoritative CH TXT answer with ``txt`` as its rdata, or REFUSED when there is none."""
    if txt is None:
        return rcode_reply(query, q, REFUSED)
    head = query[0:2] + bytes((0x84 | (query[2] & 0x01), 0x80 | (query[3] & 0x10)))  # QR AA RA; RD CD echoed
    record = b"\xc0\x0c" + _RR.pack(T_TXT, C_CH, 0, len(txt)) + txt
    return (head + _COUNTS.pack(1, 1, 0, 1 if q.edns else 0) + query[12 : q.qend] + record
            + (BARE_OPT if q.edns else b""))
