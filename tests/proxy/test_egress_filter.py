"""The whole addon chain (``EgressFilter`` and its sub-addons, called in order as
mitmproxy calls them) with mitmproxy's own helpers (taddons, tflow, tutils), the
way mitmproxy's test/mitmproxy/addons tests are written.  Each sub-addon has its
own module too: test_decisions, test_bypass, test_block_page, test_telemetry."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mitmproxy import connection, dns, exceptions, http, tls
from mitmproxy.net.dns import classes as dns_classes
from mitmproxy.net.dns import https_records
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import context
from mitmproxy.test import taddons, tflow, tutils

from proxy_addons import compat
from proxy_addons.egress_filter import EgressFilter

from .helpers import (
    BEFORE,
    DOWNLOADS,
    ECH_EXT,
    FULL,
    OTHER_STORE_URL,
    QUIC_EXT,
    TIKTOK_STORE_URL,
    client_hello_body,
    run,
    write_policy,
)

ADDON = Path(__file__).resolve().parents[2] / "proxy_addons" / "egress_filter.py"


class Harness:
    """One addon in a taddons context, its event log, and helpers to drive hooks."""

    def __init__(self, tctx: taddons.context, addon: EgressFilter, log: Path):
        self.tctx, self.addon, self.log = tctx, addon, log

    def run(self, name: str, *args: Any) -> None:
        """Call the hook ``name`` on the addon and its sub-addons, in mitmproxy's order."""
        run(self.tctx, self.addon, name, *args)

    def events(self) -> list[dict[str, Any]]:
        self.addon.telemetry.events.flush()
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def hello(
        self,
        sni: str | None,
        *,
        server: tuple[str, int] | None = ("198.51.100.7", 443),
        client_ip: str = "10.1.2.3",
        udp: bool = False,
        raw_sni: bytes | None = None,
        extensions: tuple[tuple[int, bytes], ...] = (),
    ) -> tls.ClientHelloData:
        client = connection.Client(
            peername=(client_ip, 50000),
            sockname=("127.0.0.1", 8080),
            timestamp_start=1_600_000_000,
            transport_protocol="udp" if udp else "tcp",
            state=connection.ConnectionState.OPEN,
        )
        ctx = context.Context(client, self.tctx.options)
        ctx.server = connection.Server(address=server)
        hello = tls.ClientHello(client_hello_body(sni, raw_sni=raw_sni, extensions=extensions))
        data = tls.ClientHelloData(ctx, hello)
        self.run("tls_clienthello", data)
        return data


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Any]:
    def make(**options: Any) -> Harness:
        policy = write_policy(
            tmp_path, mode=options.pop("policy_mode", "enforce"), exempt=options.pop("exempt", "")
        )
        addon = EgressFilter()
        tctx = taddons.context(addon)  # type: ignore[no-untyped-call]
        log = tmp_path / "events.jsonl"
        opts = {"egress_policy": str(policy), "egress_log": str(log), "egress_reload_interval": 0}
        opts.update(options)
        tctx.configure(addon, **opts)  # type: ignore[no-untyped-call]
        made.append(Harness(tctx, addon, log))
        return made[-1]

    made: list[Harness] = []
    yield make
    for h in made:
        h.run("done")


def outcome(data: tls.ClientHelloData) -> str:
    if data.ignore_connection:
        return "passthrough"
    if not data.context.client.connected:
        return "closed"
    return "intercepted"


# --- ClientHello --------------------------------------------------------------------

HELLO_CASES = [
    # id, at, options, hello kwargs, outcome, event (action, response, kind) or None
    ("unrelated-passes-through", FULL, {}, {"sni": "example.org"}, "passthrough", None),
    ("banned-sni-full-closed", FULL, {}, {"sni": "www.tiktok.com"}, "closed", ("block", "closed", "sni")),
    (
        "banned-sni-downloads-logged",
        DOWNLOADS,
        {},
        {"sni": "www.tiktok.com"},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    ("banned-sni-before-schedule", BEFORE, {}, {"sni": "www.tiktok.com"}, "passthrough", None),
    ("sni-glob-full-closed", FULL, {}, {"sni": "v16m.tiktokcdn.com"}, "closed", ("block", "closed", "sni")),
    ("store-host-downloads-intercepted", DOWNLOADS, {}, {"sni": "apps.apple.com"}, "intercepted", None),
    ("store-host-before-passes", BEFORE, {}, {"sni": "apps.apple.com"}, "passthrough", None),
    (
        "shared-download-host-intercepted",
        DOWNLOADS,
        {},
        {"sni": "dl.shared-cdn.example"},
        "intercepted",
        None,
    ),
    (
        "monitor-mode-logs",
        FULL,
        {"egress_mode": "monitor"},
        {"sni": "www.tiktok.com"},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    (
        "page-mode-intercepts",
        FULL,
        {"egress_block": "page"},
        {"sni": "www.tiktok.com"},
        "intercepted",
        ("block", "451", "sni"),
    ),
    (
        "no-sni-banned-network",
        FULL,
        {},
        {"sni": None, "server": ("192.0.2.10", 443)},
        "closed",
        ("block", "closed", "ip"),
    ),
    ("no-sni-other-network", FULL, {}, {"sni": None, "server": ("198.51.100.1", 443)}, "passthrough", None),
    (
        "no-sni-connect-name",
        FULL,
        {},
        {"sni": None, "server": ("www.tiktok.com", 443)},
        "closed",
        ("block", "closed", "sni"),
    ),
    ("no-sni-no-server", FULL, {}, {"sni": None, "server": None}, "passthrough", None),
    ("doh-resolver-closed", BEFORE, {}, {"sni": "dns.google"}, "closed", ("block", "closed", "sni")),
    ("doh-blocking-off", BEFORE, {"egress_block_doh": False}, {"sni": "dns.google"}, "passthrough", None),
    (
        "doh-resolver-ip-closed",
        BEFORE,
        {},
        {"sni": None, "server": ("1.1.1.1", 443)},
        "closed",
        ("block", "closed", "ip"),
    ),
    (
        "doh-monitor-logged",
        BEFORE,
        {"egress_mode": "monitor"},
        {"sni": "cloudflare-dns.com"},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    # The core's built-in rules reach the proxy through the same decisions.
    ("private-relay-closed", BEFORE, {}, {"sni": "mask.icloud.com"}, "closed", ("block", "closed", "sni")),
    (
        "doh-exempt-client-logged",
        BEFORE,
        {"exempt": "10.9.0.0/16"},
        {"sni": "dns.google", "client_ip": "10.9.1.1"},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    ("doh-resolver-ip-web-port", BEFORE, {}, {"sni": None, "server": ("1.1.1.1", 80)}, "passthrough", None),
    (
        "ech-logged-with-outer-sni",
        BEFORE,
        {},
        {"sni": "public.example", "extensions": (ECH_EXT,)},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    (
        "ech-logging-off",
        BEFORE,
        {"egress_log_ech": False},
        {"sni": "public.example", "extensions": (ECH_EXT,)},
        "passthrough",
        None,
    ),
    (
        "quic-banned-closed",
        FULL,
        {},
        {"sni": "www.tiktok.com", "udp": True, "extensions": (QUIC_EXT,)},
        "closed",
        ("block", "closed", "sni"),
    ),
    # Where mitmproxy cannot pass QUIC through (mitmproxy#8338), allowed QUIC falls back to TCP
    (
        "quic-unrelated-falls-back",
        FULL,
        {"egress_quic": "fallback"},
        {"sni": "example.org", "udp": True, "extensions": (QUIC_EXT,)},
        "closed",
        None,
    ),
    (
        "quic-logged-falls-back",
        DOWNLOADS,
        {"egress_quic": "fallback"},
        {"sni": "www.tiktok.com", "udp": True, "extensions": (QUIC_EXT,)},
        "closed",
        ("log", "quic-refused", "sni"),
    ),
    (
        "quic-passthrough-option",
        FULL,
        {"egress_quic": "passthrough"},
        {"sni": "example.org", "udp": True, "extensions": (QUIC_EXT,)},
        "passthrough",
        None,
    ),
    # DTLS (UDP without QUIC transport parameters) passes through: mitmproxy relays it fine
    ("dtls-unrelated-passes-through", FULL, {}, {"sni": "example.org", "udp": True}, "passthrough", None),
    (
        "quic-store-host-intercepted",
        DOWNLOADS,
        {},
        {"sni": "apps.apple.com", "udp": True, "extensions": (QUIC_EXT,)},
        "intercepted",
        None,
    ),
    (
        "exempt-client-logged",
        FULL,
        {"exempt": "10.9.0.0/16"},
        {"sni": "www.tiktok.com", "client_ip": "10.9.1.1"},
        "passthrough",
        ("log", "passthrough", "sni"),
    ),
    (
        "oversized-sni-judged-by-ip",
        FULL,
        {},
        {"sni": None, "raw_sni": b"a" * 300 + b".tiktok.com", "server": ("192.0.2.99", 443)},
        "closed",
        ("block", "closed", "ip"),
    ),
]


@pytest.mark.parametrize(
    "at,options,kwargs,expected,event", [c[1:] for c in HELLO_CASES], ids=[c[0] for c in HELLO_CASES]
)
def test_tls_clienthello(
    harness: Any,
    at: str,
    options: dict[str, Any],
    kwargs: dict[str, Any],
    expected: str,
    event: tuple[str, str, str] | None,
) -> None:
    h = harness(egress_at=at, **options)
    data = h.hello(**kwargs)
    assert outcome(data) == expected
    if expected != "passthrough":
        assert data.establish_server_tls_first is False
    events = h.events()
    if event is None:
        assert events == []
        return
    assert len(events) == 1
    ev = events[0]
    assert (ev["egress"]["action"], ev["egress"]["response"], ev["egress"]["kind"]) == event
    assert ev["egress"]["component"] == "proxy"
    if ECH_EXT in kwargs.get("extensions", ()):
        assert ev["egress"]["ech"] is True and ev["egress"]["outer_sni"] == kwargs["sni"]
    if kwargs.get("udp"):
        assert ev["egress"]["transport"] == "quic"


def test_other_addon_ignored_connection_is_left_alone(harness: Any) -> None:
    h = harness(egress_at=FULL)
    ctx = context.Context(
        connection.Client(
            peername=("10.0.0.1", 1),
            sockname=("", 0),
            timestamp_start=0,
            state=connection.ConnectionState.OPEN,
        ),
        h.tctx.options,
    )
    data = tls.ClientHelloData(ctx, tls.ClientHello(client_hello_body("www.tiktok.com")))
    data.ignore_connection = True
    h.run("tls_clienthello", data)
    assert data.context.client.connected and h.events() == []


# --- HTTP requests -----------------------------------------------------------------


def make_flow(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    http2: bool = False,
) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request = http.Request.make(
        method, url, body, http.Headers([(k.encode(), v.encode()) for k, v in (headers or {}).items()])
    )
    if http2:
        f.request.http_version = "HTTP/2.0"
    return f


REQUEST_CASES = [
    # id, at, options, url, request kwargs, status (None: untouched), event (action, response) or None
    ("banned-store-url-downloads", DOWNLOADS, {}, TIKTOK_STORE_URL, {}, 451, ("block", "451")),
    ("other-store-url-passes", DOWNLOADS, {}, OTHER_STORE_URL, {}, None, None),
    ("banned-store-url-before", BEFORE, {}, TIKTOK_STORE_URL, {}, None, None),
    (
        "itunes-lookup-api",
        DOWNLOADS,
        {},
        "https://itunes.apple.com/lookup?id=835599320",
        {},
        451,
        ("block", "451"),
    ),
    (
        "play-details-page",
        FULL,
        {},
        "https://play.google.com/store/apps/details?id=com.zhiliaoapp.musically",
        {},
        451,
        ("block", "451"),
    ),
    (
        "play-client-form-body",
        DOWNLOADS,
        {},
        "https://android.clients.google.com/fdfe/purchase",
        {
            "method": "POST",
            "body": b"doc=com.zhiliaoapp.musically&ot=1",
            "headers": {"content-type": "application/x-www-form-urlencoded"},
        },
        451,
        ("block", "451"),
    ),
    ("banned-host-plain-http-full", FULL, {}, "http://www.tiktok.com/foryou", {}, 451, ("block", "451")),
    (
        "banned-host-plain-http-downloads",
        DOWNLOADS,
        {},
        "http://www.tiktok.com/foryou",
        {},
        None,
        ("log", "forwarded"),
    ),
    (
        "download-path-blocked",
        DOWNLOADS,
        {},
        "https://dl.shared-cdn.example/tiktok/app.apk",
        {},
        451,
        ("block", "451"),
    ),
    (
        "download-host-other-path",
        DOWNLOADS,
        {},
        "https://dl.shared-cdn.example/other/app.apk",
        {},
        None,
        None,
    ),
    (
        "monitor-store-url",
        DOWNLOADS,
        {"egress_mode": "monitor"},
        TIKTOK_STORE_URL,
        {},
        None,
        ("log", "forwarded"),
    ),
    (
        "doh-host",
        BEFORE,
        {},
        "https://dns.google/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
        {},
        451,
        ("block", "451"),
    ),
    (
        "doh-any-host-wire-format",
        BEFORE,
        {},
        "https://doh.example.net/dns-query",
        {"method": "POST", "headers": {"content-type": "application/dns-message"}, "body": b"\x00" * 17},
        451,
        ("block", "451"),
    ),
    (
        "doh-get-custom-path",
        BEFORE,
        {},
        "https://doh.example.net/q?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
        {"headers": {"accept": "application/dns-message"}},
        451,
        ("block", "451"),
    ),
    (
        "not-doh-json-post",
        BEFORE,
        {},
        "https://api.example.net/dns-query",
        {"method": "POST", "headers": {"content-type": "application/json"}, "body": b"{}"},
        None,
        None,
    ),
    (
        "doh-blocking-off",
        BEFORE,
        {"egress_block_doh": False},
        "https://dns.google/resolve?name=example.com",
        {},
        None,
        None,
    ),
    ("http2-allowed-untouched", FULL, {}, "https://example.org/index.html", {"http2": True}, None, None),
]


@pytest.mark.parametrize(
    "at,options,url,kwargs,status,event", [c[1:] for c in REQUEST_CASES], ids=[c[0] for c in REQUEST_CASES]
)
def test_request(
    harness: Any,
    at: str,
    options: dict[str, Any],
    url: str,
    kwargs: dict[str, Any],
    status: int | None,
    event: tuple[str, str] | None,
) -> None:
    h = harness(egress_at=at, **options)
    f = make_flow(url, **kwargs)
    before = f.request.get_state()  # type: ignore[no-untyped-call]
    h.run("request", f)
    if status is None:
        assert f.response is None
        assert f.request.get_state() == before  # type: ignore[no-untyped-call]  # allowed: unchanged
    else:
        assert f.response is not None and f.response.status_code == status
    events = h.events()
    if event is None:
        assert events == []
        return
    assert [(e["egress"]["action"], e["egress"]["response"]) for e in events] == [event]
    if status == 451:
        assert events[0]["event"]["id"] == f.response.headers["X-Egress-Filter-Event"]  # type: ignore[union-attr]


WEBSOCKET_CASES = [
    pytest.param("example.org", None, id="allowed-handshake-untouched"),
    pytest.param("www.tiktok.com", 451, id="banned-handshake-refused"),
]


@pytest.mark.parametrize("host,status", WEBSOCKET_CASES)
def test_websocket_handshake(harness: Any, host: str, status: int | None) -> None:
    """The handshake request, before any answer: judged like any request, upgrade headers and all."""
    h = harness(egress_at=FULL)
    f = tflow.twebsocketflow()
    f.response = None  # the request hook runs before the origin's 101
    f.request.host = host
    h.run("request", f)
    assert f.websocket is not None
    if status is None:
        assert f.response is None and h.events() == []
    else:
        assert f.response is not None and f.response.status_code == status
        assert [e["egress"]["response"] for e in h.events()] == ["451"]


def test_request_already_answered_is_skipped(harness: Any) -> None:
    h = harness(egress_at=FULL)
    f = make_flow("http://www.tiktok.com/")
    f.response = tutils.tresp()
    h.run("request", f)
    assert f.response.status_code == 200 and h.events() == []


BLOCK_PAGE_CASES = [
    ("browser-html", {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}, "text/html"),
    ("api-json", {"accept": "application/json"}, "application/json"),
    ("no-accept", {}, "text/html"),
]


@pytest.mark.parametrize(
    "headers,content_type", [c[1:] for c in BLOCK_PAGE_CASES], ids=[c[0] for c in BLOCK_PAGE_CASES]
)
def test_block_page(harness: Any, headers: dict[str, str], content_type: str) -> None:
    h = harness(egress_at=DOWNLOADS, egress_blocked_by="https://it.example/blocked")
    f = make_flow(TIKTOK_STORE_URL, headers=headers)
    h.run("request", f)
    resp = f.response
    assert resp is not None and resp.status_code == 451
    assert resp.reason == "Unavailable For Legal Reasons"
    assert resp.headers["link"] == '<https://it.example/blocked>; rel="blocked-by"'
    assert resp.headers["content-type"].startswith(content_type)
    event_id = h.events()[0]["event"]["id"]
    text = resp.get_text() or ""
    if content_type == "application/json":
        body = json.loads(text)
        assert body["event_id"] == event_id
        assert body["apps"] == [{"id": "tiktok", "name": "TikTok"}]
        assert body["order"] == "Executive Order 13942" and body["phase"] == "downloads"
    else:
        for needle in (event_id, "TikTok", "Executive Order 13942", "downloads", "451"):
            assert needle in text


# --- CONNECT -------------------------------------------------------------------------

CONNECT_CASES = [
    ("banned-host-full", FULL, "www.tiktok.com", 451),
    ("banned-host-downloads-left-to-tls", DOWNLOADS, "www.tiktok.com", None),
    ("banned-network-ip", FULL, "192.0.2.5", 451),
    ("unrelated-host", FULL, "example.org", None),
    ("store-host-left-to-tls", DOWNLOADS, "apps.apple.com", None),
    ("doh-resolver", BEFORE, "dns.google", 451),
]


@pytest.mark.parametrize("at,host,status", [c[1:] for c in CONNECT_CASES], ids=[c[0] for c in CONNECT_CASES])
def test_http_connect(harness: Any, at: str, host: str, status: int | None) -> None:
    h = harness(egress_at=at)
    f = tflow.tflow(
        req=tutils.treq(
            method=b"CONNECT", scheme=b"", host=host, port=443, authority=f"{host}:443".encode(), path=b""
        )
    )
    h.run("http_connect", f)
    if status is None:
        assert f.response is None and h.events() == []
    else:
        assert f.response is not None and f.response.status_code == status
        assert [e["egress"]["response"] for e in h.events()] == ["451"]


def test_page_mode_serves_page_on_the_blocked_connection(harness: Any) -> None:
    h = harness(egress_at=FULL, egress_block="page")
    data = h.hello("www.tiktok.com")
    f = tflow.tflow()
    f.client_conn = data.context.client
    f.request = http.Request.make(
        "GET", "https://www.tiktok.com/", b"", http.Headers(accept="application/json")
    )
    h.run("request", f)
    assert f.response is not None and f.response.status_code == 451
    events = h.events()
    assert len(events) == 1  # the page cites the ClientHello's event, no second event
    assert json.loads(f.response.get_text() or "")["event_id"] == events[0]["event"]["id"]
    h.run("client_disconnected", data.context.client)
    assert h.addon.decisions._page_blocks == {}


# --- ECH in DNS answers ---------------------------------------------------------------------


def https_answer(with_ech: bool) -> dns.ResourceRecord:
    params = {1: b"\x02h2"}
    if with_ech:
        params[5] = b"\x00\x45" + bytes(0x45)
    data = https_records.pack(https_records.HTTPSRecord(1, "", params))
    return dns.ResourceRecord("example.com", dns_types.HTTPS, dns_classes.IN, 300, data)


ECH_CASES = [
    ("dns-mode-stripped", {}, "dns", True),
    ("dns-mode-off", {"egress_strip_ech": False}, "dns", False),
    ("doh-answer-stripped", {"egress_block_doh": False}, "doh", True),
    ("doh-answer-off", {"egress_block_doh": False, "egress_strip_ech": False}, "doh", False),
]


@pytest.mark.parametrize("options,where,stripped", [c[1:] for c in ECH_CASES], ids=[c[0] for c in ECH_CASES])
def test_ech_stripped_from_https_records(
    harness: Any, options: dict[str, Any], where: str, stripped: bool
) -> None:
    h = harness(egress_at=BEFORE, **options)
    answer = tutils.tdnsresp(
        questions=[dns.Question("example.com", dns_types.HTTPS, dns_classes.IN)], answers=[https_answer(True)]
    )
    if where == "dns":
        f = tflow.tdnsflow(resp=answer)
        h.run("dns_response", f)
        assert f.response is not None
        out = f.response.answers[0]
    else:
        hf = make_flow("https://doh.example.net/dns-query", method="POST")
        hf.response = http.Response.make(200, answer.packed, {"content-type": "application/dns-message"})
        h.run("response", hf)
        out = compat.unpack_dns(hf.response.content or b"").answers[0]
    assert (out.https_ech is None) is stripped
    assert out.https_alpn == (b"h2",)  # the rest of the record survives


def test_garbled_doh_answer_passes_unchanged(harness: Any) -> None:
    h = harness(egress_at=BEFORE, egress_block_doh=False)
    f = make_flow("https://doh.example.net/dns-query", method="POST")
    f.response = http.Response.make(200, b"\x00\x01garbage", {"content-type": "application/dns-message"})
    h.run("response", f)
    assert f.response.content == b"\x00\x01garbage"


# --- options ----------------------------------------------------------------------------

OPTION_ERRORS = [
    ("bad-date", {"egress_at": "2020-13-45"}, "egress_at"),
    ("bad-phase", {"egress_phase": "partial"}, "egress_phase"),
    ("bad-mode", {"egress_mode": "audit"}, "egress_mode"),
    ("bad-block", {"egress_block": "drop"}, "egress_block"),
    ("bad-metrics", {"egress_metrics": "nowhere"}, "egress_metrics"),
    ("at-and-phase", {"egress_at": FULL, "egress_phase": "full"}, "exclude each other"),
    ("missing-policy", {"egress_policy": "/nonexistent/policy.yaml"}, "cannot read"),
    ("negative-interval", {"egress_reload_interval": -1}, "egress_reload_interval"),
    ("bad-quic", {"egress_quic": "drop"}, "egress_quic"),
    ("negative-handshake-timeout", {"egress_handshake_timeout": -1}, "egress_handshake_timeout"),
    ("negative-connection-cap", {"egress_max_connections_per_client": -5},
     "egress_max_connections_per_client"),
]


@pytest.mark.parametrize("options,message", [c[1:] for c in OPTION_ERRORS], ids=[c[0] for c in OPTION_ERRORS])
def test_bad_options_raise_options_error(harness: Any, options: dict[str, Any], message: str) -> None:
    h = harness()
    with pytest.raises(exceptions.OptionsError, match=message):
        h.tctx.configure(h.addon, **options)


def test_bad_policy_file_raises_options_error_with_position(harness: Any, tmp_path: Path) -> None:
    h = harness()
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps:\n  - id: Not An Id\n", encoding="utf-8")
    with pytest.raises(exceptions.OptionsError, match=r"bad\.yaml:3") as info:
        h.tctx.configure(h.addon, egress_policy=str(bad))
    assert info.value.__cause__ is not None  # raised from the PolicyError


def test_phase_option_changes_decisions_without_reloading(harness: Any) -> None:
    h = harness(egress_at=BEFORE)
    assert outcome(h.hello("www.tiktok.com")) == "passthrough"
    h.tctx.configure(h.addon, egress_at=None, egress_phase="full")
    assert outcome(h.hello("www.tiktok.com")) == "closed"


def test_reload_picks_up_a_new_policy_and_keeps_the_last_good(harness: Any, tmp_path: Path) -> None:
    h = harness(egress_at=FULL)
    assert outcome(h.hello("www.tiktok.com")) == "closed"
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy.read_text().replace("mode: enforce", "mode: monitor"))
    assert h.addon.holder is not None and h.addon.holder.reload()
    assert outcome(h.hello("www.tiktok.com")) == "passthrough"
    policy.write_text("version: 1\napps: [")
    assert not h.addon.holder.reload()
    assert outcome(h.hello("www.tiktok.com")) == "passthrough"  # still the last good (monitor) policy


def test_reloaded_settings_apply_and_bad_ones_keep_the_previous(harness: Any, tmp_path: Path) -> None:
    h = harness(egress_at=FULL)
    policy = tmp_path / "policy.yaml"
    good = policy.read_text()
    policy.write_text(good + "settings:\n  proxy:\n    block: page\n")
    assert h.addon.holder is not None and h.addon.holder.reload()
    assert h.addon.decisions.settings.block == "page" and outcome(h.hello("www.tiktok.com")) == "intercepted"
    policy.write_text(good + "settings:\n  proxy:\n    metrics: 'not an address'\n")
    assert h.addon.holder.reload()  # a valid policy file...
    # ...but its settings fail: the last good ones (page) stay, all of them
    assert h.addon.decisions.settings.block == "page"
    assert h.addon.telemetry.metrics.address is None


def test_file_change_is_reloaded_by_the_watcher(harness: Any, tmp_path: Path) -> None:
    h = harness(egress_at=FULL, egress_reload_interval=1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy.read_text().replace("mode: enforce", "mode: monitor") + "\n# changed\n")
    deadline = time.monotonic() + 10
    while outcome(h.hello("www.tiktok.com")) != "passthrough" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert outcome(h.hello("www.tiktok.com")) == "passthrough"


def test_metrics_served(harness: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = harness(egress_at=FULL, egress_metrics=f"127.0.0.1:{port}")
    h.hello("www.tiktok.com")
    h.hello("example.org")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'egress_proxy_decisions_total{action="block",kind="sni"} 1.0' in text
    assert 'egress_proxy_tls_connections_total{outcome="passthrough"} 1.0' in text
    assert 'egress_proxy_tls_connections_total{outcome="closed"} 1.0' in text


def test_metrics_on_a_busy_port_is_refused_and_the_old_server_stays(harness: Any) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    h = harness(egress_at=FULL, egress_metrics=f"127.0.0.1:{port}")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(exceptions.OptionsError, match="cannot listen"):
            h.tctx.configure(h.addon, egress_metrics=f"127.0.0.1:{busy.getsockname()[1]}")
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200


def test_script_exposes_one_addon(tmp_path: Path) -> None:
    """What `mitmdump -s proxy_addons/egress_filter.py --set egress_policy=...` does."""
    with taddons.context() as tctx:  # type: ignore[no-untyped-call]
        # --set values for options a script has yet to declare are deferred, as on the command line.
        tctx.options.update_defer(
            egress_policy=str(write_policy(tmp_path)),
            egress_at=FULL,
            egress_log=str(tmp_path / "e.jsonl"),
            egress_reload_interval=0,
        )
        module = tctx.script(str(ADDON))
        [addon] = module.addons
        assert type(addon).__name__ == "EgressFilter"
        assert addon.holder is not None and addon.holder.view.phases["tiktok"].phase.value == "full"
        run(tctx, addon, "done")


HOOKS_OF = [
    pytest.param("decisions", {"load", "configure", "running", "done", "http_connect", "request",
                               "server_connect", "tls_clienthello", "tls_failed_client",
                               "client_disconnected"}, id="decisions"),
    pytest.param("bypass", {"load", "configure", "tls_clienthello", "response", "dns_response"}, id="bypass"),
    pytest.param("page", {"load", "http_connect", "request"}, id="block-page"),
    pytest.param("telemetry", {"load", "configure", "done", "http_connect", "request", "server_connect",
                               "tls_clienthello", "tls_failed_client", "response", "error", "dns_response"},
                 id="telemetry"),
    pytest.param("pac", {"load", "configure", "done"}, id="pac"),
]


@pytest.mark.parametrize("attribute,expected", HOOKS_OF)
def test_each_addon_answers_only_its_hooks(attribute: str, expected: set[str]) -> None:
    """mitmproxy calls any method named like a hook (``update``, ``add_log``...):
    a helper method must never take a hook's name by accident."""
    from mitmproxy import hooks

    addon = getattr(EgressFilter(), attribute)
    public = {m for m in dir(addon) if not m.startswith("_") and callable(getattr(addon, m))}
    assert public & set(hooks.all_hooks) == expected
