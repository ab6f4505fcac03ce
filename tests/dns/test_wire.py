"""The wire-level hot path against dnspython's encoder and against random bytes."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_blocker.cache import AnswerCache
from dns_blocker.scrub import records
from dns_blocker.wire import Malformed, age_ttls, name_wire, parse_query, read_name, scan_answer, splice

QUERIES = [
    # (name, qtype, edns, want name, want edns, want udp size)
    ("www.TikTok.com", "A", False, "www.tiktok.com", False, 512),
    ("www.tiktok.com.", "AAAA", 0, "www.tiktok.com", True, 1232),
    ("a.b.c.d.e.f.example", "HTTPS", 0, "a.b.c.d.e.f.example", True, 1232),
    (".", "NS", False, "", False, 512),
    ("xn--bcher-kva.example", "TXT", 0, "xn--bcher-kva.example", True, 1232),
]


@pytest.mark.parametrize(("name", "qtype", "edns", "want", "want_edns", "size"), QUERIES,
                         ids=["mixed-case", "aaaa-edns", "deep", "root", "idna"])
def test_parse_query(name: str, qtype: str, edns: int | bool, want: str, want_edns: bool, size: int) -> None:
    wire = dns.message.make_query(name, qtype, use_edns=edns).to_wire()
    q = parse_query(wire)
    assert q is not None
    assert (q.name, q.edns, q.udp_size) == (want, want_edns, size)
    assert q.qtype == dns.rdatatype.from_text(qtype)
    assert q.key[:-1] == wire[12 : q.qend].lower()


def test_cache_key_separates_do_and_cd_bits() -> None:
    plain = dns.message.make_query("x.example", "A", use_edns=0)
    do = dns.message.make_query("x.example", "A", use_edns=0, want_dnssec=True)
    cd = dns.message.make_query("x.example", "A", use_edns=0)
    cd.flags |= dns.flags.CD
    keys = {parse_query(m.to_wire()).key for m in (plain, do, cd)}  # type: ignore[union-attr]
    assert len(keys) == 3


def _answer(ttl_a: int, rcode: int = 0, soa: tuple[int, int] | None = None) -> tuple[bytes, int]:
    q = dns.message.make_query("www.example", "A")
    r = dns.message.make_response(q)
    r.set_rcode(dns.rcode.Rcode(rcode))
    if rcode == 0 and soa is None:
        r.answer.append(dns.rrset.from_text("www.example.", ttl_a, "IN", "CNAME", "edge.cdn.example."))
        r.answer.append(dns.rrset.from_text("edge.cdn.example.", ttl_a + 50, "IN", "A", "192.0.2.1"))
    if soa is not None:
        r.authority.append(dns.rrset.from_text("example.", soa[0], "IN", "SOA",
                                               f"ns.example. h.example. 1 2 3 4 {soa[1]}"))
    wire = r.to_wire()
    return wire, 12 + len(b"\x03www\x07example\x00") + 4


SCANS = [
    # (ttl, rcode, soa, lifetime, cnames)
    (300, 0, None, 300, ("edge.cdn.example",)),
    (300, 3, (60, 30), 30, ()),  # RFC 2308: min(SOA TTL, SOA MINIMUM)
    (300, 3, (20, 900), 20, ()),
    (300, 0, (60, 45), 45, ()),  # NODATA
    (300, 3, None, 0, ()),  # a negative answer without SOA is not cached
    (300, 2, None, 0, ()),  # SERVFAIL is not cached
]


@pytest.mark.parametrize(("ttl", "rcode", "soa", "lifetime", "cnames"), SCANS,
                         ids=["positive", "nxdomain-soa-min", "nxdomain-soa-ttl", "nodata", "nxdomain-no-soa",
                              "servfail"])
def test_scan_answer(ttl: int, rcode: int, soa: tuple[int, int] | None, lifetime: int,
                     cnames: tuple[str, ...]) -> None:
    wire, qend = _answer(ttl, rcode, soa)
    info = scan_answer(wire, qend)
    assert info.lifetime == lifetime
    assert info.cnames == cnames


def test_cached_answer_ttls_count_down_and_id_is_spliced() -> None:
    wire, qend = _answer(300)
    info = scan_answer(wire, qend)
    cache = AnswerCache(10)
    cache.put(b"k", wire, info.ttl_slots, info.cnames, info.lifetime, now=100.0)
    entry = cache.get(b"k", 160.0)
    assert entry is not None
    asker = dns.message.make_query("WWW.example", "A")
    out = splice(entry.answer, asker.to_wire(), qend)
    age_ttls(out, entry.ttl_slots, 60)
    msg = dns.message.from_wire(bytes(out))
    assert msg.id == asker.id
    assert [rrset.ttl for rrset in msg.answer] == [240, 290]
    assert msg.question[0].name.to_text() == "WWW.example."
    assert cache.get(b"k", 400.1) is None, "expired with the smallest answer TTL"


def test_cache_is_bounded() -> None:
    cache = AnswerCache(32)
    for i in range(1000):
        cache.put(str(i).encode(), b"x" * 12, (), (), 60, now=0.0)
    assert len(cache) <= 32
    assert cache.get(b"999", 1.0) is not None


def test_read_name_rejects_loops_and_forward_pointers() -> None:
    loop = b"\x00" * 12 + b"\xc0\x0c"
    with pytest.raises(Malformed):
        read_name(loop, 12)
    forward = b"\x00" * 12 + b"\xc0\x0e\x01a\x00"
    with pytest.raises(Malformed):
        read_name(forward, 12)
    ok = b"\x00" * 12 + b"\x01a\x00" + b"\x01b\xc0\x0c"
    assert read_name(ok, 15) == ("b.a", 19)


# One record's owner, as it sits after a 12-byte header and the question "a." IN A
# (offsets 12-18), in a message with one answer record (a response) or one
# additional record (a query).  The rule: pointers go strictly backwards.
_QUESTION = b"\x01a\x00\x00\x01\x00\x01"
_RR_TAIL = b"\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04\x7f\x00\x00\x01"
OWNERS = [
    pytest.param(b"\xc0\x0c", True, id="pointer-to-question"),
    pytest.param(b"\x01b\xc0\x0c", True, id="label-then-pointer"),
    pytest.param(b"\xc0\x13", False, id="pointer-to-itself"),
    pytest.param(b"\xc0\x15", False, id="forward-pointer"),
    pytest.param(b"\x01b\xc0\x13", False, id="loop-through-own-label"),
    pytest.param(b"\xc0", False, id="cut-pointer"),
]


def _message(response: bool, owner: bytes) -> bytes:
    flags, counts = (b"\x81\x80", b"\x00\x01\x00\x01\x00\x00\x00\x00") if response else \
        (b"\x01\x00", b"\x00\x01\x00\x00\x00\x00\x00\x01")
    return b"\x12\x34" + flags + counts + _QUESTION + owner + _RR_TAIL


@pytest.mark.parametrize(("owner", "ok"), OWNERS)
def test_every_reader_has_the_same_compression_rule(owner: bytes, ok: bool) -> None:
    """The answer scan, the scrubber's record walk and a query's record walk
    all read owner names through ``name_wire``, so they accept and reject the same names."""
    answer = _message(True, owner)
    query = _message(False, owner)
    readers = [lambda: name_wire(answer, 19), lambda: scan_answer(answer, 19), lambda: records(answer, 19),
               lambda: parse_query(query)]
    for read in readers:
        if ok:
            read()
        else:
            with pytest.raises(Malformed):
                read()


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_ever_raise_malformed(data: bytes) -> None:
    for fn in (parse_query, lambda d: scan_answer(d, 12), lambda d: read_name(d, 12)):
        try:
            fn(data)
        except Malformed:
            pass
