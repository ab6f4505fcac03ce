"""The bypass controls alone, after the deciding addon (proxy_addons/bypass.py):
allowed QUIC refused for a TCP fallback, ECH configs stripped from DNS answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, dns, tls
from mitmproxy.net.dns import classes as dns_classes
from mitmproxy.net.dns import https_records
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import context
from mitmproxy.test import tflow, tutils

from proxy_addons.bypass import ECH_STRIPPED, BypassControls
from proxy_addons.decisions import PolicyDecisions

from .helpers import DOWNLOADS, FULL, QUIC_EXT, addon_context, client_hello_body, run

QUIC_CASES = [
    # at, egress_quic, sni, extensions, (response, ignored)
    pytest.param(FULL, "fallback", "example.org", (QUIC_EXT,), ("quic-refused", False),
                 id="allowed-quic-refused"),
    pytest.param(DOWNLOADS, "fallback", "www.tiktok.com", (QUIC_EXT,), ("quic-refused", False),
                 id="logged-quic-refused"),
    pytest.param(FULL, "passthrough", "example.org", (QUIC_EXT,), ("passthrough", True),
                 id="passthrough-option"),
    pytest.param(FULL, "fallback", "example.org", (), ("passthrough", True), id="dtls-untouched"),
    pytest.param(FULL, "fallback", "www.tiktok.com", (QUIC_EXT,), ("closed", False),
                 id="blocked-stays-closed"),
    pytest.param(DOWNLOADS, "fallback", "apps.apple.com", (QUIC_EXT,), ("intercepted", False),
                 id="inspected-untouched"),
]


@pytest.mark.parametrize("at,quic,sni,extensions,expected", QUIC_CASES)
def test_quic_fallback(tmp_path: Path, at: str, quic: str, sni: str, extensions: tuple[Any, ...],
                       expected: tuple[str, bool]) -> None:
    decisions = PolicyDecisions()
    bypass = BypassControls(decisions)
    with addon_context(tmp_path, decisions, bypass, egress_at=at, egress_quic=quic) as tctx:
        client = connection.Client(peername=("10.1.2.3", 50000), sockname=("127.0.0.1", 443),
                                   timestamp_start=0, transport_protocol="udp",
                                   state=connection.ConnectionState.OPEN)
        data = tls.ClientHelloData(context.Context(client, tctx.options),
                                   tls.ClientHello(client_hello_body(sni, extensions=extensions)))
        for addon in (decisions, bypass):
            run(tctx, addon, "tls_clienthello", data)
        v = decisions.verdict(data)
        assert v is not None and (v.response, data.ignore_connection) == expected
        if expected[0] == "quic-refused":
            assert not data.context.client.connected  # refused: the ClientHello is never answered


def https_answer() -> dns.ResourceRecord:
    data = https_records.pack(https_records.HTTPSRecord(1, "", {1: b"\x02h2", 5: b"\x00\x45" + bytes(0x45)}))
    return dns.ResourceRecord("example.com", dns_types.HTTPS, dns_classes.IN, 300, data)


STRIP_CASES = [
    pytest.param({}, True, id="stripped-and-marked"),
    pytest.param({"egress_strip_ech": False}, False, id="switched-off"),
]


@pytest.mark.parametrize("options,stripped", STRIP_CASES)
def test_dns_answer_stripped_and_marked(tmp_path: Path, options: dict[str, Any], stripped: bool) -> None:
    decisions = PolicyDecisions()
    bypass = BypassControls(decisions)
    with addon_context(tmp_path, decisions, bypass, egress_at=FULL, **options) as tctx:
        answer = tutils.tdnsresp(questions=[dns.Question("example.com", dns_types.HTTPS, dns_classes.IN)],
                                 answers=[https_answer()])
        f = tflow.tdnsflow(resp=answer)
        run(tctx, bypass, "dns_response", f)
        assert f.response is not None
        assert (f.response.answers[0].https_ech is None) is stripped
        assert f.metadata.get(ECH_STRIPPED, False) is stripped
