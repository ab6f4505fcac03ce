"""Local records, conditional forwarding and local domains (issue 14), end to end.

A real resolver process with ``settings.dns.local`` and ``settings.dns.forward``
in its policy, a public upstream and a "corporate" one (two real loopback
authorities), and real questions.  Shown: local A/AAAA/CNAME/PTR answers
(and PTRs made from A records) never leave the resolver; a forward domain's
names go to its own upstream only; names under a local domain and
single-label names are NXDOMAIN here unless a record or forward covers
them; the policy's verdict still comes first.  Mistakes in either key are
``file:line: field: message`` at load.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import pytest

from policies import PolicyError, load_policy

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess, addresses, ede, rcode

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]

SETTINGS = """\
settings:
  dns:
    local:
      - nas.lan 192.168.1.10
      - 192.168.1.11 printer.lan
      - nas.lan AAAA fd00::10
      - files.lan CNAME nas.lan
      - away.lan CNAME www.example.test
      - 99.1.168.192.in-addr.arpa PTR gateway.lan
      - www.tiktok.test 10.9.9.9
      - chat.wechat.test 10.8.8.8
    forward:
      short.example.test: {corp}
      office.lan: [{corp}]
      2.168.192.in-addr.arpa: {corp}
      tiktokcdn.test: {corp}
"""


def texts(msg: dns.message.Message) -> list[str]:
    return sorted(f"{rrset.name} {rd.to_text()}" for rrset in msg.answer for rd in rrset)


V6_PTR = "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa"  # fd00::10

# (id, name, qtype, rcode, answer records, who was asked: "public", "corp" or None)
CASES = [
    pytest.param("nas.lan", "A", "NOERROR", ["nas.lan. 192.168.1.10"], None, id="local-a"),
    pytest.param("NAS.lan.", "AAAA", "NOERROR", ["NAS.lan. fd00::10"], None, id="local-aaaa-any-case"),
    pytest.param("printer.lan", "A", "NOERROR", ["printer.lan. 192.168.1.11"], None, id="hosts-line"),
    pytest.param("printer.lan", "AAAA", "NOERROR", [], None, id="local-nodata"),
    pytest.param("files.lan", "A", "NOERROR", ["files.lan. nas.lan.", "nas.lan. 192.168.1.10"], None,
                 id="local-cname-followed"),
    pytest.param("files.lan", "CNAME", "NOERROR", ["files.lan. nas.lan."], None, id="local-cname-asked"),
    pytest.param("away.lan", "A", "NOERROR", ["away.lan. www.example.test."], None,
                 id="local-cname-to-elsewhere"),
    pytest.param("10.1.168.192.in-addr.arpa", "PTR", "NOERROR", ["10.1.168.192.in-addr.arpa. nas.lan."],
                 None, id="ptr-from-a-record"),
    pytest.param(V6_PTR, "PTR", "NOERROR", [f"{V6_PTR}. nas.lan."], None, id="ptr-from-aaaa-record"),
    pytest.param("99.1.168.192.in-addr.arpa", "PTR", "NOERROR", ["99.1.168.192.in-addr.arpa. gateway.lan."],
                 None, id="explicit-ptr"),
    pytest.param("www.google.com.lan", "A", "NXDOMAIN", [], None, id="search-suffix-under-lan"),
    pytest.param("nothing.home.arpa", "A", "NXDOMAIN", [], None, id="home-arpa"),
    pytest.param("fileserver", "A", "NXDOMAIN", [], None, id="single-label"),
    pytest.param("7.7.10.in-addr.arpa", "PTR", "NXDOMAIN", [], None, id="private-reverse-zone"),
    pytest.param("short.example.test", "A", "NOERROR", ["short.example.test. 192.0.2.2"], "corp",
                 id="forward-domain"),
    pytest.param("host.office.lan", "A", "NXDOMAIN", [], "corp", id="forward-under-a-local-domain"),
    pytest.param("5.2.168.192.in-addr.arpa", "PTR", "NXDOMAIN", [], "corp", id="forward-reverse-zone"),
    pytest.param("www.example.test", "A", "NOERROR", ["www.example.test. 192.0.2.1"], "public",
                 id="public-name"),
    pytest.param("img.wechat.test", "A", "NOERROR", ["img.wechat.test. 192.0.2.66"], "public",
                 id="logged-public-name"),
]


@pytest.mark.parametrize(("name", "qtype", "want", "records", "asked"), CASES)
def test_where_each_name_is_answered(name: str, qtype: str, want: str, records: list[str], asked: str | None,
                                     resolver: Start, authority: Authority, corp: Authority,
                                     write_policy: Callable[..., Path]) -> None:
    policy = write_policy(settings=SETTINGS.format(corp=corp.address))
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    m = r.ask(name, qtype, edns=0)
    assert rcode(m) == want
    assert texts(m) == records
    plain = name.lower().rstrip(".")
    assert authority.count(plain) == (1 if asked == "public" else 0)
    assert corp.count(plain) == (1 if asked == "corp" else 0)
    if asked is None:
        assert m.flags & dns.flags.AA, "local answers are authoritative"


@pytest.mark.parametrize(("name", "asked"), [pytest.param("www.tiktok.test", None, id="local-record"),
                                             pytest.param("edge.tiktokcdn.test", None, id="forward-domain")])
def test_the_policy_decides_first(name: str, asked: None, resolver: Start, authority: Authority,
                                  corp: Authority, write_policy: Callable[..., Path]) -> None:
    policy = write_policy(settings=SETTINGS.format(corp=corp.address))
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    m = r.ask(name, "A", edns=0)
    assert rcode(m) == "NXDOMAIN" and addresses(m) == []
    assert "TikTok" in ede(m)[0][1]
    assert authority.count(name) == 0 and corp.count(name) == 0


def test_a_logged_local_name_is_answered_and_logged(resolver: Start, authority: Authority, corp: Authority,
                                                    write_policy: Callable[..., Path]) -> None:
    policy = write_policy(settings=SETTINGS.format(corp=corp.address))
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    assert addresses(r.ask("chat.wechat.test")) == ["10.8.8.8"]
    (event,) = r.events(expect=1)
    assert event["event"]["action"] == "log" and event["egress"]["local"] is True
    assert event["dns"]["question"]["name"] == "chat.wechat.test"


def test_local_domains_can_be_replaced(resolver: Start, authority: Authority,
                                       write_policy: Callable[..., Path]) -> None:
    policy = write_policy(settings="settings:\n  dns:\n    local_domains: [corp.test]\n")
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    assert rcode(r.ask("a.corp.test")) == "NXDOMAIN" and authority.count("a.corp.test") == 0
    assert rcode(r.ask("a.lan")) == "NXDOMAIN" and authority.count("a.lan") == 1, "lan is no longer local"


# (id, settings.dns lines, the problem reported)
BAD = [
    pytest.param("local: [nas.lan]", "settings.dns.local[0]: 'nas.lan': expected 'NAME ADDRESS'",
                 id="no-value"),
    pytest.param("local: ['nas.lan MX mail.lan']", "settings.dns.local[0]: 'MX' is not a local record type",
                 id="unsupported-type"),
    pytest.param("local: ['nas.lan AAAA 192.168.1.1']", "'192.168.1.1' is not an IPv6 address",
                 id="wrong-family"),
    pytest.param("local: ['bad_name!.lan 10.0.0.1']", "'bad_name!.lan' is not a valid domain name",
                 id="bad-name"),
    pytest.param("local: ['a.lan CNAME b.lan', 'a.lan 10.0.0.1']",
                 "settings.dns.local[1]: 'a.lan' has a CNAME, so it can have no other record",
                 id="cname-and-a"),
    pytest.param("local: ['a.lan 10.0.0.1', 'a.lan 10.0.0.1']", "settings.dns.local[1]: 'a.lan 10.0.0.1' is "
                 "listed twice", id="duplicate"),
    pytest.param("forward: {corp.example: 'quic://10.0.0.1'}",
                 "settings.dns.forward.corp.example: 'quic://10.0.0.1': unsupported scheme",
                 id="bad-upstream"),
    pytest.param("forward: {corp.example: []}", "settings.dns.forward.corp.example: at least one upstream",
                 id="no-upstream"),
    pytest.param("forward: [corp.example]", "settings.dns.forward: expected a mapping", id="not-a-mapping"),
    pytest.param("local_domains: ['not a domain']", "settings.dns.local_domains[0]: 'not a domain' is not a "
                 "valid domain name", id="bad-local-domain"),
    pytest.param("local_domains: lan", "settings.dns.local_domains: expected a list",
                 id="local-domains-not-a-list"),
    pytest.param("block_single_label: sometimes",
                 "settings.dns.block_single_label: expected true or false, got 'sometimes'",
                 id="single-label-not-a-bool"),
    pytest.param("block_single_label: 0", "settings.dns.block_single_label: expected true or false, got '0'",
                 id="single-label-a-number"),
    pytest.param("block_single_label: [false]", "settings.dns.block_single_label: expected true or false",
                 id="single-label-a-list"),
]


@pytest.mark.parametrize(("lines", "message"), BAD)
def test_mistakes_are_reported_at_load(lines: str, message: str, write_policy: Callable[..., Path]) -> None:
    path = write_policy(settings=f"settings:\n  dns:\n    {lines}\n")
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    found = [str(i) for i in err.value.issues]
    line = 1 + path.read_text().splitlines().index(f"    {lines}")
    assert any(f"{path}:{line}: " in f and message in f for f in found), found
