"""The answers this resolver writes itself, built once with dnslib, served as bytes.

A block answer depends on the question, the block response kind, whether the
asker sent EDNS0, and the decision (the EXTRA-TEXT names its app and phase).
``Templates`` builds each such answer once with dnslib and keeps the bytes;
the hot path then only ``splice``s in the asker's ID and question.
"""

from __future__ import annotations

from enum import StrEnum

from dnslib import AAAA, EDNS0, QTYPE, RR, A, DNSHeader, DNSLabel, DNSQuestion, DNSRecord, EDNSOption

from .wire import NOERROR, NXDOMAIN, REFUSED, T_A, T_AAAA, Query

EDE_OPTION = 15  # RFC 8914
EDE_BLOCKED = 15  # the operator's policy blocks the name
EDE_FILTERED = 17  # blocked at the client's request (unused: our blocks are the operator's)
BLOCK_TTL = 60  # short, so that a phase change reaches stub caches within a minute
EDNS_UDP = 1232


class BlockResponse(StrEnum):
    NXDOMAIN = "nxdomain"
    NULL = "null"
    REFUSED = "refused"


def _labels(query: bytes, q: Query) -> DNSLabel:
    out = []
    pos = 12
    while query[pos]:
        n = query[pos]
        out.append(bytes(query[pos + 1 : pos + 1 + n]))
        pos += 1 + n
    return DNSLabel(out)


def build_answer(query: bytes, q: Query, rcode: int, answers: list[RR], ede: tuple[int, str] | None) -> bytes:
    """A full answer to ``q``; ``ede`` = (info code, EXTRA-TEXT) goes in the OPT
    record, which is present only if the asker sent one (RFC 6891 §7)."""
    rec = DNSRecord(DNSHeader(id=0, qr=1, ra=1, rcode=rcode),
                    q=DNSQuestion(_labels(query, q), q.qtype, q.qclass))
    for rr in answers:
        rec.add_answer(rr)
    if q.edns:
        opts = []
        if ede is not None:
            code, text = ede
            opts.append(EDNSOption(EDE_OPTION, code.to_bytes(2, "big") + text.encode("utf-8")[:400]))
        rec.add_ar(EDNS0(udp_len=EDNS_UDP, opts=opts))
    return bytes(rec.pack())


def block_answer(query: bytes, q: Query, kind: BlockResponse, text: str) -> tuple[bytes, str]:
    """The block answer for ``q`` and the response name that events carry."""
    ede = (EDE_BLOCKED, text)
    if kind is BlockResponse.REFUSED:
        return build_answer(query, q, REFUSED, [], ede), "REFUSED"
    if kind is BlockResponse.NXDOMAIN:
        return build_answer(query, q, NXDOMAIN, [], ede), "NXDOMAIN"
    name = _labels(query, q)
    if q.qtype == T_A:
        rrs = [RR(name, QTYPE.A, q.qclass, BLOCK_TTL, A("0.0.0.0"))]
        return build_answer(query, q, NOERROR, rrs, ede), "0.0.0.0"
    if q.qtype == T_AAAA:
        rrs = [RR(name, QTYPE.AAAA, q.qclass, BLOCK_TTL, AAAA("::"))]
        return build_answer(query, q, NOERROR, rrs, ede), "::"
    return build_answer(query, q, NOERROR, [], ede), "NODATA"


def qtype_name(qtype: int) -> str:
    return _QTYPE_NAMES.get(qtype) or f"TYPE{qtype}"


_QTYPE_NAMES: dict[int, str] = {int(k): str(v) for k, v in QTYPE.forward.items()}
