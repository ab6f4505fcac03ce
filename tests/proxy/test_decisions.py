"""The deciding addon alone (proxy_addons/decisions.py), with no other addon loaded:
it enforces every block by itself (so a block never depends on the page or
telemetry addon) and hands its verdict on, in ``flow.metadata`` on flows and
through ``verdict(data)`` on the flowless hooks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mitmproxy import connection, http, tls
from mitmproxy.proxy import context, server_hooks
from mitmproxy.test import tflow, tutils

from proxy_addons.decisions import PolicyDecisions
from proxy_addons.verdict import KEY, flow_verdict

from .helpers import BEFORE, DOWNLOADS, FULL, TIKTOK_STORE_URL, addon_context, client_hello_body, run


def client(ip: str = "10.1.2.3") -> connection.Client:
    return connection.Client(peername=(ip, 50000), sockname=("127.0.0.1", 8080), timestamp_start=0,
                             state=connection.ConnectionState.OPEN)


REQUEST_CASES = [
    # at, url, (action, rule prefix, response) of the verdict or None, status of the answer
    pytest.param(DOWNLOADS, TIKTOK_STORE_URL, ("block", "store:", "451"), 451, id="store-url-blocked"),
    pytest.param(DOWNLOADS, "http://www.tiktok.com/", ("log", "domain:", "forwarded"), None, id="logged"),
    pytest.param(FULL, "https://example.org/", None, None, id="allowed-leaves-nothing"),
    pytest.param(BEFORE, "https://dns.google/dns-query?dns=AAAB", ("block", "builtin:doh", "451"), 451,
                 id="doh-builtin"),
]


@pytest.mark.parametrize("at,url,verdict,status", REQUEST_CASES)
def test_request_verdict_in_metadata(tmp_path: Path, at: str, url: str,
                                     verdict: tuple[str, str, str] | None, status: int | None) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=at) as tctx:
        f = tflow.tflow()
        f.request = http.Request.make("GET", url)
        run(tctx, decisions, "request", f)
        v = flow_verdict(f)
        if verdict is None:
            assert v is None and KEY not in f.metadata and f.response is None
            return
        assert v is not None and v.decision.rule is not None
        assert (v.decision.action.value, v.decision.rule.startswith(verdict[1]), v.response) == (
            verdict[0], True, verdict[2])
        assert v.event_id is not None
        if status is None:
            assert f.response is None
        else:  # the empty 451 the block page fills in, with the event id already
            assert f.response is not None and f.response.status_code == status
            assert f.response.headers["X-Egress-Filter-Event"] == v.event_id


HELLO_CASES = [
    pytest.param(FULL, {}, "www.tiktok.com", ("block", "closed"), False, id="blocked-closed"),
    pytest.param(FULL, {"egress_block": "page"}, "www.tiktok.com", ("block", "451"), True,
                 id="page-intercepted"),
    pytest.param(DOWNLOADS, {}, "www.tiktok.com", ("log", "passthrough"), True, id="logged-passes"),
    pytest.param(DOWNLOADS, {}, "apps.apple.com", ("allow", "intercepted"), True, id="store-inspected"),
    pytest.param(FULL, {}, "example.org", ("allow", "passthrough"), True, id="allowed-passes"),
]


@pytest.mark.parametrize("at,options,sni,verdict,readable", HELLO_CASES)
def test_clienthello_verdict_for_the_addons_after(tmp_path: Path, at: str, options: dict[str, Any], sni: str,
                                                  verdict: tuple[str, str], readable: bool) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=at, **options) as tctx:
        hello = tls.ClientHello(client_hello_body(sni))
        data = tls.ClientHelloData(context.Context(client(), tctx.options), hello)
        data.context.server = connection.Server(address=("198.51.100.7", 443))
        run(tctx, decisions, "tls_clienthello", data)
        v = decisions.verdict(data)
        assert v is not None and (v.decision.action.value, v.response) == verdict
        assert data.context.client.connected is readable
        assert data.ignore_connection is (verdict[1] == "passthrough")
        other = tls.ClientHelloData(context.Context(client(), tctx.options), data.client_hello)
        assert decisions.verdict(other) is None  # only the hook call running now


def test_page_blocked_connection_repeats_its_verdict(tmp_path: Path) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=FULL, egress_block="page") as tctx:
        data = tls.ClientHelloData(context.Context(client(), tctx.options),
                                   tls.ClientHello(client_hello_body("www.tiktok.com")))
        run(tctx, decisions, "tls_clienthello", data)
        hello = decisions.verdict(data)
        f = tflow.tflow()
        f.client_conn = data.context.client
        f.request = http.Request.make("GET", "https://example.org/")  # whatever it asks for
        run(tctx, decisions, "request", f)
        v = flow_verdict(f)
        assert hello is not None and v is not None and v.repeat and v.event_id == hello.event_id
        run(tctx, decisions, "client_disconnected", data.context.client)
        assert decisions._page_blocks == {}


SERVER_CASES = [
    pytest.param(("192.0.2.10", 443), True, id="banned-network-refused"),
    pytest.param(("www.tiktok.com", 8443), True, id="banned-name-refused"),
    pytest.param(("198.51.100.1", 22), False, id="other-dialled"),
]


@pytest.mark.parametrize("address,refused", SERVER_CASES)
def test_server_connect(tmp_path: Path, address: tuple[str, int], refused: bool) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=FULL) as tctx:
        data = server_hooks.ServerConnectionHookData(connection.Server(address=address), client())
        run(tctx, decisions, "server_connect", data)
        v = decisions.verdict(data)
        assert (data.server.error is not None) is refused
        assert (v is not None and v.response == "refused") is refused


def test_connect_blocked_without_the_page_addon(tmp_path: Path) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=FULL) as tctx:
        f = tflow.tflow(req=tutils.treq(method=b"CONNECT", scheme=b"", host="www.tiktok.com", port=443,
                                        authority=b"www.tiktok.com:443", path=b""))
        run(tctx, decisions, "http_connect", f)
        v = flow_verdict(f)
        assert f.response is not None and f.response.status_code == 451 and f.response.content == b""
        assert v is not None and v.response == "451" and v.server == ("www.tiktok.com", 443)


CONNECT_PAGE_CASES = [
    # connection_strategy, whether the CONNECT is accepted for the page
    pytest.param("lazy", True, id="lazy-accepted-for-the-page"),
    pytest.param("eager", False, id="eager-bare-451"),  # eager would dial the banned host: answer at once
]


@pytest.mark.parametrize("strategy,accepted", CONNECT_PAGE_CASES)
def test_page_mode_connect_is_accepted_and_intercepted(tmp_path: Path, strategy: str, accepted: bool) -> None:
    decisions = PolicyDecisions()
    with addon_context(tmp_path, decisions, egress_at=FULL, egress_block="page") as tctx:
        # mitmproxy's proxyserver addon owns this option; egress-filter sets it to lazy when running.
        tctx.options.add_option("connection_strategy", str, strategy, "eager or lazy")
        f = tflow.tflow(req=tutils.treq(method=b"CONNECT", scheme=b"", host="www.tiktok.com", port=443,
                                        authority=b"www.tiktok.com:443", path=b""))
        f.client_conn = client()
        run(tctx, decisions, "http_connect", f)
        connect = flow_verdict(f)
        assert connect is not None and connect.response == "451" and not connect.repeat
        if not accepted:
            assert f.response is not None and f.response.status_code == 451
            return
        assert f.response is None  # mitmproxy answers 200; lazy: nothing is dialled
        # The ClientHello inside, whatever its SNI, is intercepted under the CONNECT's verdict.
        data = tls.ClientHelloData(context.Context(f.client_conn, tctx.options),
                                   tls.ClientHello(client_hello_body("example.org")))
        run(tctx, decisions, "tls_clienthello", data)
        hello = decisions.verdict(data)
        assert hello is not None and hello.repeat and hello.event_id == connect.event_id
        assert not data.ignore_connection and not data.establish_server_tls_first
        assert data.context.client.connected
        inner = tflow.tflow()
        inner.client_conn = f.client_conn
        inner.request = http.Request.make("GET", "https://www.tiktok.com/")
        run(tctx, decisions, "request", inner)
        v = flow_verdict(inner)
        assert inner.response is not None and inner.response.status_code == 451
        assert v is not None and v.repeat and v.event_id == connect.event_id
