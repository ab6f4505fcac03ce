"""The compatibility seam (proxy_addons/compat.py), on whichever mitmproxy is installed:
each name it resolves is the one this mitmproxy really uses, and the addon's
QUIC default follows what the seam found (tests/proxy/test_quic_passthrough.py
checks that finding against a real relay)."""

from __future__ import annotations

import struct
import types
from pathlib import Path
from typing import Any

import pytest
from mitmproxy import dns
from mitmproxy.net.dns import classes as dns_classes
from mitmproxy.net.dns import https_records
from mitmproxy.net.dns import types as dns_types
from mitmproxy.test import taddons, tutils

from proxy_addons import compat
from proxy_addons.egress_filter import EgressFilter

from .helpers import run, write_policy


def test_dns_message_is_the_class_mitmproxy_builds() -> None:
    assert type(tutils.tdnsresp()) is compat.DNSMessage


def test_unpack_dns_round_trips_an_https_answer() -> None:
    record = https_records.pack(https_records.HTTPSRecord(1, "", {1: b"\x02h2", 5: b"ECH"}))
    answer = dns.ResourceRecord("example.com", dns_types.HTTPS, dns_classes.IN, 60, record)
    sent = tutils.tdnsresp(
        questions=[dns.Question("example.com", dns_types.HTTPS, dns_classes.IN)], answers=[answer]
    )
    got = compat.unpack_dns(sent.packed)
    assert [q.name for q in got.questions] == ["example.com"]
    assert [(a.name, a.type, a.https_alpn, a.https_ech) for a in got.answers] == [
        ("example.com", dns_types.HTTPS, (b"h2",), "RUNI")  # base64 of b"ECH"
    ]
    assert got.packed == sent.packed


BAD_DNS = [
    pytest.param(b"", struct.error, id="empty"),
    pytest.param(b"\x00\x01\x01", struct.error, id="short-header"),
    pytest.param(b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\x07example", struct.error,
                 id="truncated-question"),
]


@pytest.mark.parametrize("data,error", BAD_DNS)
def test_unpack_dns_raises_what_the_addon_catches(data: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        compat.unpack_dns(data)


def test_an_unknown_mitmproxy_is_named_at_import() -> None:
    bare = types.ModuleType("mitmproxy.dns")
    with pytest.raises(ImportError, match=r"^mitmproxy.dns has none of DNSMessage, Message: "):
        compat._first(bare, "DNSMessage", "Message")


def test_newest_spelling_wins() -> None:
    both = types.ModuleType("m")
    both.DNSMessage, both.Message = "new", "old"  # type: ignore[attr-defined]
    assert compat._first(both, "DNSMessage", "Message") == "new"


def test_quic_default_follows_the_seam(tmp_path: Path) -> None:
    addon = EgressFilter()
    with taddons.context(addon) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addon, egress_policy=str(write_policy(tmp_path)),  # type: ignore[no-untyped-call]
                       egress_log=str(tmp_path / "events.jsonl"), egress_reload_interval=0)
        opts: Any = tctx.options
        assert opts.egress_quic == ("passthrough" if compat.QUIC_PASSTHROUGH else "fallback")
        run(tctx, addon, "done")
