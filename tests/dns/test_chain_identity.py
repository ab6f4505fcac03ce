"""The identity link alone: CH TXT questions answered from the configured texts, checked with dnspython."""

from __future__ import annotations

import dns.message
import dns.rcode
import dns.rdataclass
import pytest

from dns_blocker.chain.identity import Identity
from dns_blocker.wire import parse_query


def _ask(name: str, rdclass: str = "CH", rdtype: str = "TXT") -> bytes:
    return dns.message.make_query(name, rdtype, rdclass).to_wire()


@pytest.mark.parametrize(("identity", "version", "name", "rdclass", "want"), [
    pytest.param("ns1", "9.9", "hostname.bind", "CH", "ns1", id="hostname"),
    pytest.param("ns1", "9.9", "id.server", "CH", "ns1", id="id-server"),
    pytest.param("ns1", "9.9", "version.bind", "CH", "9.9", id="version"),
    pytest.param(None, "9.9", "hostname.bind", "CH", "REFUSED", id="identity-hidden"),
    pytest.param("ns1", None, "version.server", "CH", "REFUSED", id="version-hidden"),
    pytest.param("ns1", "9.9", "other.bind", "CH", "REFUSED", id="unknown-ch-name"),
    pytest.param("ns1", "9.9", "hostname.bind", "IN", None, id="in-class-passes-on"),
])
def test_reply(identity: str | None, version: str | None, name: str, rdclass: str, want: str | None) -> None:
    data = _ask(name, rdclass)
    q = parse_query(data)
    assert q is not None
    out = Identity(identity, version).reply(data, q)
    if want is None:
        assert out is None
        return
    assert out is not None
    msg = dns.message.from_wire(out)
    assert msg.id == dns.message.from_wire(data).id
    if want == "REFUSED":
        assert msg.rcode() == dns.rcode.REFUSED and not msg.answer
    else:
        assert msg.rcode() == dns.rcode.NOERROR
        (rrset,) = msg.answer
        assert rrset.rdclass == dns.rdataclass.CH
        assert [b"".join(r.strings).decode() for r in rrset] == [want]
