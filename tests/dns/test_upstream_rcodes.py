"""An upstream that answers REFUSED (or SERVFAIL, NOTIMP, FORMERR) is counted under that rcode (issue 14).

A real resolver process with its metrics endpoint, and real loopback
upstreams (tests/dns/authority.py) that answer with the rcode asked for:
``egress_dns_upstream_errors_total{reason}`` counts ``refused`` (not
``bad-answer``), the next upstream is asked, and with none left the client
gets SERVFAIL, as from Unbound.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess, addresses, rcode
from .test_encrypted import metric

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]


def errors(r: ResolverProcess, reason: str, upstream: str) -> float:
    labels = rf'reason="{reason}",upstream="{re.escape(upstream)}"'
    return metric(r, rf"egress_dns_upstream_errors_total\{{{labels}\}}")


# (the first upstream's rcode, whether a healthy second upstream is there, the client's rcode, its label)
CASES = [
    pytest.param("refused", False, "SERVFAIL", "refused", id="refused-alone-servfail"),
    pytest.param("refused", True, "NOERROR", "refused", id="refused-then-next-upstream"),
    pytest.param("servfail", False, "SERVFAIL", "servfail", id="servfail-alone"),
    pytest.param("servfail", True, "NOERROR", "servfail", id="servfail-then-next-upstream"),
    pytest.param("notimp", True, "NOERROR", "notimp", id="notimp-then-next-upstream"),
    pytest.param("formerr", False, "SERVFAIL", "formerr", id="formerr-alone"),
]


@pytest.mark.parametrize(("mode", "fallback", "want", "label"), CASES)
def test_an_upstream_rcode_is_counted_under_its_name(mode: str, fallback: bool, want: str, label: str,
                                                     resolver: Start, authority: Authority, corp: Authority,
                                                     write_policy: Callable[..., Path]) -> None:
    authority.mode = mode
    ups = ["--upstream", authority.address] + (["--upstream", corp.address] if fallback else [])
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, *ups, "--metrics", "127.0.0.1:0")
    m = r.ask("www.example.test")
    assert rcode(m) == want
    if fallback:
        assert addresses(m) == ["192.0.2.1"] and corp.count("www.example.test") == 1
    assert authority.count("www.example.test") == 1, "the failing upstream was asked first, once"
    assert errors(r, label, authority.address) == 1
    assert errors(r, "bad-answer", authority.address) == 0
    assert metric(r, r'egress_dns_queries_total\{result="servfail"\}') == (1 if want == "SERVFAIL" else 0)
