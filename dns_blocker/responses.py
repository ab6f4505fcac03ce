"""The answers this resolver writes itself, built once with dnslib, served as bytes.

A block answer depends on the block response kind, the qtype (null answers
only), whether the asker sent EDNS0, and the decision (the EXTRA-TEXT names
its app and phase) -- not on the name.  So each is built once with dnslib
around a stand-in question and kept as a header and a tail; the hot path
puts the asker's ID and question between them (``wire.splice_parts``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from dnslib import AAAA, EDNS0, QTYPE, RR, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNSOption

from .wire import NOERROR, NXDOMAIN, REFUSED, T_A, T_AAAA, Query

EDE_OPTION = 15  # RFC 8914
EDE_BLOCKED = 15  # the operator's policy blocks the name
BLOCK_TTL = 60  # short, so that a phase change reaches stub caches within a minute
EDNS_UDP = 1232


class BlockResponse(StrEnum):
    NXDOMAIN = "nxdomain"
    NULL = "null"
    REFUSED = "refused"


# The stand-in question the templates are built around: "x." IN, 7 bytes.
_STAND_IN = DNSLabel("x")
_STAND_IN_LEN = 7


def answer_parts(qtype: int, qclass: int, edns: bool, rcode: int, rdata: A | AAAA | None,
                 ede: tuple[int, str] | None) -> tuple[bytes, bytes]:
    """An answer built with dnslib around a stand-in question, cut into the
    header and the tail after the question.  The answer record's name is a
    pointer to offset 12, so ``splice_parts`` can put any question between.
    The OPT record (carrying the EDE) is there only if the asker sent one
    (RFC 6891 §7)."""
    rec = DNSRecord(DNSHeader(id=0, qr=1, ra=1, rcode=rcode), q=DNSQuestion(_STAND_IN, qtype, qclass))
    if rdata is not None:
        rec.add_answer(RR(_STAND_IN, qtype, qclass, BLOCK_TTL, rdata))
    if edns:
        opts = []
        if ede is not None:
            code, text = ede
            opts.append(EDNSOption(EDE_OPTION, code.to_bytes(2, "big") + text.encode("utf-8")[:400]))
        rec.add_ar(EDNS0(udp_len=EDNS_UDP, opts=opts))
    wire = bytes(rec.pack())
    head, tail = wire[:12], wire[12 + _STAND_IN_LEN :]
    if rdata is not None and tail[:2] != b"\xc0\x0c":
        raise AssertionError("dnslib did not compress the answer name to the question")
    return head, tail


class BlockParts(NamedTuple):
    """A block answer's template: the asker's ID and question go between ``head`` and ``tail``."""

    head: bytes
    tail: bytes
    response: str  # the response name events carry


def block_parts(q: Query, kind: BlockResponse, text: str) -> BlockParts:
    """The block answer's header and tail for ``q``, and the response name events carry."""
    ede = (EDE_BLOCKED, text)
    if kind is BlockResponse.REFUSED:
        return BlockParts(*answer_parts(q.qtype, q.qclass, q.edns, REFUSED, None, ede), "REFUSED")
    if kind is BlockResponse.NXDOMAIN:
        return BlockParts(*answer_parts(q.qtype, q.qclass, q.edns, NXDOMAIN, None, ede), "NXDOMAIN")
    if q.qtype == T_A:
        return BlockParts(*answer_parts(q.qtype, q.qclass, q.edns, NOERROR, A("0.0.0.0"), ede), "0.0.0.0")
    if q.qtype == T_AAAA:
        return BlockParts(*answer_parts(q.qtype, q.qclass, q.edns, NOERROR, AAAA("::"), ede), "::")
    return BlockParts(*answer_parts(q.qtype, q.qclass, q.edns, NOERROR, None, ede), "NODATA")


def template_qtype(q: Query, kind: BlockResponse) -> int:
    """The part of the qtype a block template depends on (only null answers differ by type)."""
    return q.qtype if kind is BlockResponse.NULL and q.qtype in (T_A, T_AAAA) else 0


def qtype_name(qtype: int) -> str:
    return _QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


_QTYPE_NAMES: dict[int, str] = {int(k): str(v) for k, v in QTYPE.forward.items()}
