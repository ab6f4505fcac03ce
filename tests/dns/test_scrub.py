"""The scrubber against answers built by dnspython (which compresses every name it can).

Each case: the question, the three sections as sent, and what must be left of
each.  The kept packet is parsed again by dnspython, so a compression
pointer left pointing into a removed record would fail the case.  Then
random bytes: the scrubber raises ``Malformed`` or returns a packet whose
records are well framed and no more than were sent, never anything else.
"""

from __future__ import annotations

from collections import Counter

import dns.message
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_blocker.scrub import records, scrub
from dns_blocker.wire import Malformed, parse_query

Section = list[str]
# (question, qtype, answer, authority, additional, answer kept, authority kept, additional kept)
CASES = [
    pytest.param("www.example.test", "A", ["www.example.test. 60 IN A 192.0.2.1"], [], [],
                 ["www.example.test. 60 IN A 192.0.2.1"], [], [], id="clean-answer-untouched"),
    pytest.param("a.example.test", "A",
                 ["a.example.test. 60 IN CNAME b.example.test.", "b.example.test. 60 IN CNAME c.other.test.",
                  "c.other.test. 60 IN A 192.0.2.3", "evil.other.test. 60 IN A 10.6.6.6"], [], [],
                 ["a.example.test. 60 IN CNAME b.example.test.", "b.example.test. 60 IN CNAME c.other.test.",
                  "c.other.test. 60 IN A 192.0.2.3"], [], [], id="chain-kept-off-chain-dropped"),
    pytest.param("a.example.test", "A", ["a.example.test. 60 IN AAAA 2001:db8::1",
                                         "a.example.test. 60 IN A 192.0.2.1"], [], [],
                 ["a.example.test. 60 IN A 192.0.2.1"], [], [], id="other-type-dropped"),
    pytest.param("x.sub.example.test", "A",
                 ["sub.example.test. 60 IN DNAME sub.other.test.",
                  "x.sub.example.test. 60 IN CNAME x.sub.other.test.", "x.sub.other.test. 60 IN A 192.0.2.4"],
                 [], [],
                 ["sub.example.test. 60 IN DNAME sub.other.test.",
                  "x.sub.example.test. 60 IN CNAME x.sub.other.test.", "x.sub.other.test. 60 IN A 192.0.2.4"],
                 [], [], id="dname-above-the-chain-kept"),
    pytest.param("a.example.test", "A", ["a.example.test. 60 IN CNAME b.example.test.",
                                         "b.example.test. 60 IN CNAME a.example.test."], [], [],
                 ["a.example.test. 60 IN CNAME b.example.test.",
                  "b.example.test. 60 IN CNAME a.example.test."], [], [], id="cname-loop-ends"),
    pytest.param("nope.example.test", "A", [],
                 ["example.test. 60 IN SOA ns.example.test. h.example.test. 1 2 3 4 5",
                  "bank.test. 60 IN SOA ns.bank.test. h.bank.test. 1 2 3 4 5"], [],
                 [], ["example.test. 60 IN SOA ns.example.test. h.example.test. 1 2 3 4 5"], [],
                 id="negative-soa-of-another-zone-dropped"),
    pytest.param("www.example.test", "A", ["www.example.test. 60 IN A 192.0.2.1"],
                 ["example.test. 60 IN NS ns1.example.test.", ". 60 IN NS evil.test.",
                  "test. 60 IN NS evil.test."],
                 ["ns1.example.test. 60 IN A 192.0.2.53", "evil.test. 60 IN A 10.6.6.6"],
                 ["www.example.test. 60 IN A 192.0.2.1"], ["example.test. 60 IN NS ns1.example.test."],
                 ["ns1.example.test. 60 IN A 192.0.2.53"], id="upward-ns-and-its-glue-dropped"),
    pytest.param("www.example.test", "A", ["www.example.test. 60 IN A 192.0.2.1"],
                 [". 60 IN NS evil.test."], ["evil.test. 60 IN A 10.6.6.6"],
                 ["www.example.test. 60 IN A 192.0.2.1"], [], [], id="root-ns-claims-nothing"),
    pytest.param("test", "SOA", ["test. 60 IN SOA ns.test. h.test. 1 2 3 4 5"],
                 [". 60 IN NS a.root-servers.net."], [],
                 ["test. 60 IN SOA ns.test. h.test. 1 2 3 4 5"], [". 60 IN NS a.root-servers.net."], [],
                 id="root-zone-for-a-top-level-name"),
    pytest.param("nope.example.test", "A", [],
                 ["example.test. 60 IN SOA ns.example.test. h.example.test. 1 2 3 4 5",
                  "a.example.test. 60 IN NSEC z.example.test. A RRSIG NSEC",
                  "a.bank.test. 60 IN NSEC z.bank.test. A"], [],
                 [], ["example.test. 60 IN SOA ns.example.test. h.example.test. 1 2 3 4 5",
                      "a.example.test. 60 IN NSEC z.example.test. A RRSIG NSEC"], [],
                 id="nsec-in-the-zone-kept"),
    pytest.param("example.test", "MX", ["example.test. 60 IN MX 10 mail.example.test."], [],
                 ["mail.example.test. 60 IN A 192.0.2.25", "mail.bank.test. 60 IN A 10.6.6.6"],
                 ["example.test. 60 IN MX 10 mail.example.test."], [],
                 ["mail.example.test. 60 IN A 192.0.2.25"], id="additional-under-the-question-kept"),
    pytest.param("www.example.test", "A", ["www.example.test. 60 CH A www.example.test. 1",
                                           "www.example.test. 60 IN A 192.0.2.1"], [], [],
                 ["www.example.test. 60 IN A 192.0.2.1"], [], [], id="other-class-dropped"),
    pytest.param("www.example.test", "ANY",
                 ["www.example.test. 60 IN A 192.0.2.1", "www.example.test. 60 IN TXT hello",
                  "x.example.test. 60 IN A 1.2.3.4"], [], [],
                 ["www.example.test. 60 IN A 192.0.2.1", "www.example.test. 60 IN TXT \"hello\""], [], [],
                 id="any-keeps-every-type-of-the-name"),
]


def lines(section: list[dns.rrset.RRset]) -> list[str]:
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


def build(qname: str, qtype: str, sections: tuple[Section, Section, Section]) -> tuple[bytes, bytes]:
    query = dns.message.make_query(qname, qtype, use_edns=0)
    reply = dns.message.make_response(query)
    for target, texts in zip((reply.answer, reply.authority, reply.additional), sections, strict=True):
        for text in texts:
            name, ttl, rdclass, rdtype, rdata = text.split(" ", 4)
            target.append(dns.rrset.from_text(name, int(ttl), rdclass, rdtype, rdata))
    return query.to_wire(), reply.to_wire()


@pytest.mark.parametrize(("qname", "qtype", "an", "ns", "ar", "want_an", "want_ns", "want_ar"), CASES)
def test_scrub(qname: str, qtype: str, an: Section, ns: Section, ar: Section, want_an: Section,
               want_ns: Section, want_ar: Section) -> None:
    query, answer = build(qname, qtype, (an, ns, ar))
    q = parse_query(query)
    assert q is not None
    out, dropped = scrub(answer, q)
    msg = dns.message.from_wire(out)
    assert (lines(msg.answer), lines(msg.authority), lines(msg.additional)) == (
        sorted(want_an), sorted(want_ns), sorted(want_ar))
    assert msg.edns == 0, "the OPT record stays"
    assert dropped == (len(an) - len(want_an), len(ns) - len(want_ns), len(ar) - len(want_ar))
    if dropped == (0, 0, 0):
        assert out is answer, "nothing dropped: the same bytes, no copy"


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=300))
def test_scrub_random_tails(tail: bytes) -> None:
    query, answer = build("www.example.test", "A", (["www.example.test. 60 IN A 192.0.2.1"], [], []))
    q = parse_query(query)
    assert q is not None
    # The header claims a few records of each kind; the bytes after the question are random.
    data = answer[:6] + b"\x00\x02\x00\x02\x00\x02" + answer[12 : q.qend] + tail
    try:
        walked = records(data, q.qend)
    except Malformed:
        with pytest.raises(Malformed):  # exactly when its record walk fails, the scrubber refuses
            scrub(data, q)
        return
    out, dropped = scrub(data, q)
    assert len(walked) == 6
    kept = records(out, q.qend)
    assert len(kept) == 6 - sum(dropped)
    assert out[12 : q.qend] == data[12 : q.qend], "the question is kept"
    # What the scrubber kept came in the answer, in the same section (owner, type, class).
    came = Counter((r.section, r.owner_wire, r.rtype, r.rclass) for r in walked)
    assert Counter((r.section, r.owner_wire, r.rtype, r.rclass) for r in kept) <= came
