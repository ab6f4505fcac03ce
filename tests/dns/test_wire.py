"""The wire-level hot path against dnspython's encoder and against random bytes."""

from __future__ import annotations

import struct

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_blocker.cache import AnswerCache
from dns_blocker.scrub import records
from dns_blocker.wire import (
    Malformed,
    age_ttls,
    name_wire,
    parse_query,
    read_name,
    scan_answer,
    splice,
    wire_labels,
)

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


def _dnspython_name(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The oracle: dnspython's reading of the name at ``pos`` (its wire form, case kept, and the
    offset after it), or None where dnspython refuses it.  Its rule is ours: every pointer
    strictly before the previous one, labels of 63 bytes at most, names of 255."""
    try:
        name, used = dns.name.from_wire(data, pos)
    except dns.exception.DNSException:
        return None
    return name.to_wire(), pos + used


def _want_query(data: bytes) -> str:
    """What ``parse_query`` must do with ``data``, by its header (RFC 1035, RFC 6895):
    drop (None), answer FORMERR or NOTIMP, or read the question ("read")."""
    if len(data) < 12 or data[2] & 0x80:
        return "drop"
    opcode = (data[2] >> 3) & 0x0F
    if opcode:
        return "NOTIMP" if opcode in (1, 2, 4, 5, 6) else "FORMERR"
    return "read" if data[4:6] == b"\x00\x01" else "FORMERR"


def _uncompressed_question(data: bytes) -> tuple[bytes, int] | None:
    """dnspython's reading of the question's name, if it uses no pointer and its type and class fit."""
    question = _dnspython_name(data, 12)
    if question is None or question[1] - 12 != len(question[0]) or question[1] + 4 > len(data):
        return None
    return question


def _check_query(data: bytes) -> None:
    want = _want_query(data)
    try:
        q = parse_query(data)
    except Malformed as exc:
        got = dns.rcode.to_text(exc.rcode)
        if want == "read":  # the question or a record is bad, or the EDNS version is unknown
            assert got in ("FORMERR", "BADVERS")
            if data[6:12] == bytes(6):
                assert _uncompressed_question(data) is None, "a well-formed question alone was refused"
        else:
            assert got == want
        return
    if want == "drop":
        assert q is None
        return
    assert want == "read" and q is not None
    question = _uncompressed_question(data)
    assert question is not None
    assert q.qend == question[1] + 4
    assert q.name == b".".join(wire_labels(question[0])).lower().decode("latin-1")
    assert (q.qtype, q.qclass) == struct.unpack_from("!HH", data, question[1])


def _check_name(data: bytes, pos: int) -> None:
    want = _dnspython_name(data, pos)
    if want is None:
        with pytest.raises(Malformed):
            name_wire(data, pos)
        with pytest.raises(Malformed):
            read_name(data, pos)
    else:
        assert name_wire(data, pos) == want
        assert read_name(data, pos) == (b".".join(wire_labels(want[0])).lower().decode("latin-1"), want[1])


def _check_scan(data: bytes) -> None:
    try:
        info = scan_answer(data, 12)
    except Malformed:
        return
    assert info.rcode == data[3] & 0x0F and info.truncated == bool(data[2] & 0x02)
    assert len(info.ttl_slots) <= sum(struct.unpack_from("!HHH", data, 6))
    assert all(12 <= at and at + 4 <= len(data) for at, _ in info.ttl_slots)
    assert info.lifetime >= 0


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_get_the_readers_exact_outcome(data: bytes) -> None:
    """Random bytes: the query parser drops, refuses with the header's rcode, or reads the question
    dnspython reads; the name reader reads what dnspython reads or raises Malformed; the answer scan
    raises Malformed or describes records that lie inside the bytes."""
    _check_query(data)
    _check_name(data, 12)
    _check_scan(data)


HEADERS = st.tuples(
    st.integers(0, 0xFFFF),  # id
    st.sampled_from([0x0100, 0x0000, 0x0110, 0x8180, 0x2000, 0x2800, 0x1800, 0x7800]),  # flags
    st.sampled_from([0, 1, 1, 1, 2]),  # question count
    st.integers(0, 2), st.integers(0, 2), st.integers(0, 2),  # answer, authority, additional counts
)
LABELS = st.lists(st.binary(min_size=0, max_size=70).map(lambda b: bytes((len(b),)) + b), max_size=6)


@settings(max_examples=3000, deadline=None)
@given(header=HEADERS, labels=LABELS, tail=st.binary(max_size=80))
def test_query_shaped_bytes_get_the_exact_outcome(header: tuple[int, ...], labels: list[bytes],
                                                  tail: bytes) -> None:
    """Headers a resolver meets (queries, responses, NOTIFY, UPDATE, unknown opcodes) over
    label-shaped names (some too long) and random records: the same exact outcomes."""
    data = struct.pack("!HHHHHH", *header) + b"".join(labels) + tail
    _check_query(data)
    _check_name(data, 12)


CASE_FOLDING = [
    pytest.param(b"\x03WwW\x00", "www", id="ascii-folded"),
    pytest.param(b"\x02\xc0\xe0\x00", "\xc0\xe0", id="latin-1-kept"),
]


@pytest.mark.parametrize(("wire", "text"), CASE_FOLDING)
def test_names_fold_ascii_case_only(wire: bytes, text: str) -> None:
    """RFC 4343: only A-Z fold; the query parser and the name reader agree (the random-bytes test found
    the name reader folding Latin-1 letters too)."""
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + wire + b"\x00\x01\x00\x01"
    q = parse_query(query)
    assert q is not None and q.name == text
    assert read_name(query, 12) == (text, 12 + len(wire))
