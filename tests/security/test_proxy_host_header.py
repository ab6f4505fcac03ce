"""The Host-header bypass, kept closed: requests whose target and Host header
(or HTTP/2 ``:authority``, or TLS SNI) disagree are judged on every name, and
the strictest verdict wins (block > log > allow).

Real curl talks to a real ``egress-filter proxy`` process.  Names never reach
DNS or the internet: ``tests/proxy/loopback_dns.py``, loaded into the proxy,
sends every upstream connection to a local origin (port 80 to the plain one,
any other to the TLS one), after the addon has decided.  The origins record
every request they serve, so each case checks whether the origin was reached.

What is not observable, and so not tested: an *allowed* SNI on a connection
the policy passes through undecrypted (anything but app-store and shared
download hosts, and banned names in block-page mode) hides its Host header
from the proxy.  Only intercepted connections can be judged on both.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.proxy.conftest import (  # noqa: F401  (fixtures)
    REPO,
    Origin,
    PlainOrigin,
    Proxy,
    ProxyRunner,
    origin,
    plain_origin,
    require,
)
from tests.proxy.helpers import DOWNLOADS, FULL, write_policy

pytestmark = pytest.mark.e2e

TIKTOK = ("tiktok",)
DOMAIN = "domain:tiktok.com"
DOWNLOAD = "download:dl.shared-cdn.example/tiktok/"
STORE = "store:apple:835599320"
NETWORK = "network:192.0.2.0/24"
TIKTOK_STORE = "https://apps.apple.com/us/app/tiktok/id835599320?case={id}"
OTHER_STORE = "https://apps.apple.com/us/app/signal-private-messenger/id874139669?case={id}"


@dataclass(frozen=True)
class Case:
    id: str
    proxy: str  # which proxy: "downloads", "full" (reset) or "page" (full, block page)
    url: str  # "{id}" is replaced by the case id, so the origin's log shows whether it was reached
    args: tuple[str, ...]
    status: int  # what curl sees: the CONNECT status if that failed, else the response (0: closed)
    reached: bool
    event: tuple[str, str, tuple[str, ...]] | None  # (action, rule, apps) of the one event, or none


def host(value: str) -> tuple[str, ...]:
    return ("-H", f"Host: {value}")


H2 = ("--http2",)
H1 = ("--http1.1",)
TUNNEL = ("--proxytunnel",)  # plain HTTP inside a CONNECT tunnel: origin-form requests

CASES = [
    # --- absolute-form plain HTTP: mitmproxy connects to the URL's host -----------------
    Case("abs-url-banned-host-allowed", "full", "http://www.tiktok.com/{id}", host("allowed.example"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-url-allowed-host-banned", "full", "http://allowed.example/{id}", host("www.tiktok.com"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-honest-allowed", "full", "http://allowed.example/{id}", (), 200, True, None),
    Case("abs-url-banned-ip-host-allowed", "full", "http://192.0.2.7/{id}", host("allowed.example"),
         451, False, ("block", NETWORK, TIKTOK)),
    Case("abs-url-upper-trailing-dot", "full", "http://WWW.TIKTOK.COM./{id}", host("allowed.example"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-url-with-port", "full", "http://www.tiktok.com:8080/{id}", host("allowed.example"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-host-upper", "full", "http://allowed.example/{id}", host("WWW.TIKTOK.COM"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-host-trailing-dot", "full", "http://allowed.example/{id}", host("www.tiktok.com."),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-host-port", "full", "http://allowed.example/{id}", host("www.tiktok.com:80"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-host-mixed-dot-port", "full", "http://allowed.example/{id}", host("WwW.TikTok.CoM.:8080"),
         451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-host-two-values", "full", "http://allowed.example/{id}",
         host("allowed.example, www.tiktok.com"), 451, False, ("block", DOMAIN, TIKTOK)),
    Case("abs-log-url-banned-host-allowed", "downloads", "http://www.tiktok.com/{id}",
         host("allowed.example"), 200, True, ("log", DOMAIN, TIKTOK)),
    Case("abs-download-url-host-allowed", "downloads", "http://dl.shared-cdn.example/tiktok/{id}.apk",
         host("allowed.example"), 451, False, ("block", DOWNLOAD, TIKTOK)),
    Case("abs-download-host-url-allowed", "downloads", "http://allowed.example/tiktok/{id}.apk",
         host("dl.shared-cdn.example"), 451, False, ("block", DOWNLOAD, TIKTOK)),
    Case("abs-download-other-path", "downloads", "http://dl.shared-cdn.example/other/{id}.apk",
         host("allowed.example"), 200, True, None),
    Case("abs-block-beats-log", "downloads", "http://dl.shared-cdn.example/tiktok/{id}.apk",
         host("www.tiktok.com"), 451, False, ("block", DOWNLOAD, TIKTOK)),
    # --- origin-form plain HTTP inside a CONNECT tunnel --------------------------------
    Case("tunnel-target-allowed-host-banned", "full", "http://allowed.example/{id}",
         TUNNEL + host("www.tiktok.com"), 451, False, ("block", DOMAIN, TIKTOK)),
    Case("tunnel-target-banned-host-allowed", "full", "http://www.tiktok.com/{id}",
         TUNNEL + host("allowed.example"), 451, False, ("block", DOMAIN, TIKTOK)),
    Case("tunnel-connect-host-header-banned", "full", "http://allowed.example/{id}",
         (*TUNNEL, "--proxy-header", "Host: www.tiktok.com"), 451, False, ("block", DOMAIN, TIKTOK)),
    Case("tunnel-log-host-banned", "downloads", "http://allowed.example/{id}",
         TUNNEL + host("www.tiktok.com"), 200, True, ("log", DOMAIN, TIKTOK)),
    Case("tunnel-download-host-allowed", "downloads", "http://dl.shared-cdn.example/tiktok/{id}.apk",
         TUNNEL + host("allowed.example"), 451, False, ("block", DOWNLOAD, TIKTOK)),
    # --- TLS through CONNECT, intercepted (store and download hosts): SNI vs Host -------
    *[
        Case(f"tls-{name}-{proto}", phase, url, flags + extra, status, reached, event)
        for proto, flags in (("h1", H1), ("h2", H2))
        for name, phase, url, extra, status, reached, event in (
            ("download-sni-host-allowed", "downloads", "https://dl.shared-cdn.example/tiktok/{id}.apk",
             host("allowed.example"), 451, False, ("block", DOWNLOAD, TIKTOK)),
            ("download-other-path-host-port", "downloads", "https://dl.shared-cdn.example/other/{id}.apk",
             host("dl.shared-cdn.example:443"), 200, True, None),
            ("store-sni-host-allowed", "downloads", TIKTOK_STORE, host("allowed.example"),
             451, False, ("block", STORE, TIKTOK)),
            ("store-sni-host-banned", "full", OTHER_STORE, host("www.tiktok.com"),
             451, False, ("block", DOMAIN, TIKTOK)),
            ("store-sni-host-banned-case-dot-port", "full", OTHER_STORE, host("WWW.TikTok.com.:443"),
             451, False, ("block", DOMAIN, TIKTOK)),
            ("store-sni-host-log", "downloads", OTHER_STORE, host("www.tiktok.com"),
             200, True, ("log", DOMAIN, TIKTOK)),
            ("store-honest", "downloads", OTHER_STORE, (), 200, True, None),
            # block page mode intercepts banned SNIs: a Host that looks allowed changes nothing
            ("page-sni-banned-host-allowed", "page", "https://www.tiktok.com/{id}",
             ("--connect-to", "www.tiktok.com:443:allowed.example:443", *host("allowed.example")),
             451, False, ("block", DOMAIN, TIKTOK)),
        )
    ],
    # --- TLS: the CONNECT target and the SNI disagree ------------------------------------
    Case("tls-connect-banned-sni-allowed", "full", "https://allowed.example/{id}",
         ("--connect-to", "allowed.example:443:www.tiktok.com:443"), 451, False, ("block", DOMAIN, TIKTOK)),
    Case("tls-connect-allowed-sni-banned", "full", "https://www.tiktok.com/{id}",
         ("--connect-to", "www.tiktok.com:443:allowed.example:443", *host("allowed.example")),
         0, False, ("block", DOMAIN, TIKTOK)),
]

PROXIES = {
    "downloads": ("--at", DOWNLOADS),
    "full": ("--at", FULL),
    "page": ("--at", FULL, "--block", "page"),
}


@pytest.fixture(scope="module")
def proxies(
    tmp_path_factory: pytest.TempPathFactory, origin: Origin, plain_origin: PlainOrigin  # noqa: F811
) -> Iterator[dict[str, tuple[Proxy, Path]]]:
    """One proxy per policy moment, shared by the cases; each also gets a CA
    bundle trusting both mitmproxy (intercepted) and the origin (passed through)."""
    directory = tmp_path_factory.mktemp("host-header")
    policy = write_policy(directory)
    runner = ProxyRunner(directory, origin)
    env = {"EGRESS_TEST_ORIGINS": f"{plain_origin.port},{origin.port}"}
    script = f"scripts={REPO / 'tests' / 'proxy' / 'loopback_dns.py'}"
    try:
        started = {}
        for name, args in PROXIES.items():
            proxy = runner.start("--policy", str(policy), *args, "--set", script, env=env)
            bundle = directory / f"bundle-{name}.pem"
            bundle.write_text(proxy.ca.read_text() + origin.pki.ca_cert.read_text())
            started[name] = (proxy, bundle)
        yield started
    finally:
        runner.stop_all()


def curl_status(proxy: Proxy, bundle: Path, url: str, args: tuple[str, ...]) -> tuple[int, str, int]:
    """curl through the proxy: (status seen, HTTP version, exit code)."""
    out = subprocess.run(
        [require("curl"), "-sS", "--max-time", "10", "--proxy", proxy.url, "--cacert", str(bundle),
         "-o", "/dev/null", "-w", "%{http_connect} %{http_code} %{http_version}", *args, url],
        capture_output=True, text=True, timeout=30,
    )
    connect, code, version = out.stdout.split()
    seen = int(connect) if int(connect) not in (0, 200) else int(code)
    return seen, version, out.returncode


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_every_name_of_a_request_is_judged(
    proxies: dict[str, tuple[Proxy, Path]],
    origin: Origin,  # noqa: F811
    plain_origin: PlainOrigin,  # noqa: F811
    case: Case,
) -> None:
    proxy, bundle = proxies[case.proxy]
    url = case.url.format(id=case.id)
    before = len(proxy.events())
    status, version, rc = curl_status(proxy, bundle, url, case.args)
    assert status == case.status, (rc, proxy.stderr.read_text()[-3000:])
    if "--http2" in case.args and status != 0:
        assert version == "2"  # the lying name really travelled as :authority
    marker = url.split("/", 3)[3]
    reached = [s for s in origin.seen + plain_origin.seen if s.split(" ", 1)[1].endswith(marker)]
    assert bool(reached) is case.reached, reached
    if case.event is None:
        time.sleep(0.3)  # an event, if any were wrongly written, has had time to land
        assert proxy.events()[before:] == []
    else:
        new = proxy.events(before + 1)[before:]
        assert [(e["egress"]["action"], e["rule"]["name"], tuple(e["egress"]["apps"])) for e in new] == [
            case.event
        ]
        egress = new[0]["egress"]
        if "names" in egress:  # several names were judged: the event says which decided
            assert len(egress["names"]) >= 2 and egress["decided_by"] in egress["names"]


def h1_raw(proxy: Proxy, request: bytes) -> bytes:
    """One raw request to the proxy (absolute-form): the status line that came back."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n", 1)[0]


def h2_raw(proxy: Proxy, bundle: Path, sni: str, headers: list[tuple[str, str]]) -> int:
    """CONNECT to ``sni``:443, TLS with ALPN h2, one GET with exactly ``headers``: the status
    (0: the connection was closed without one, by GOAWAY or by closing the socket)."""
    import h2.config
    import h2.connection
    import h2.events

    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(f"CONNECT {sni}:443 HTTP/1.1\r\nHost: {sni}:443\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(bundle))
    context.set_alpn_protocols(["h2"])
    with context.wrap_socket(raw, server_hostname=sni) as tls:
        assert tls.selected_alpn_protocol() == "h2"
        # no client-side checks: the point is to send what a well-behaved client would not
        config = h2.config.H2Configuration(client_side=True, validate_outbound_headers=False,
                                           normalize_outbound_headers=False)
        conn = h2.connection.H2Connection(config)
        conn.initiate_connection()
        conn.send_headers(1, headers, end_stream=True)
        tls.sendall(conn.data_to_send())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            data = tls.recv(65536)
            if not data:
                return 0
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    return int(dict(event.headers)[b":status"])
                if isinstance(event, h2.events.ConnectionTerminated):
                    # mitmproxy 12's GOAWAY is followed by a close that resets the socket
                    # if we write after it: stop reading here, as a client would.
                    return 0
            tls.sendall(conn.data_to_send())
    raise AssertionError("no response within 10 s")


RAW_CASES = [
    # (id, proxy, how, request, status, event): requests curl will not send
    ("abs-two-separate-host-headers", "full", "h1",
     b"GET http://allowed.example/{id} HTTP/1.1\r\nHost: allowed.example\r\nHost: www.tiktok.com\r\n\r\n",
     451, ("block", DOMAIN, TIKTOK)),
    ("abs-host-userinfo", "full", "h1",
     b"GET http://allowed.example/{id} HTTP/1.1\r\nHost: allowed.example@www.tiktok.com\r\n\r\n",
     451, ("block", DOMAIN, TIKTOK)),
    # mitmproxy's HTTP/2 stack (h2) refuses a Host that disagrees with :authority outright:
    # the connection is closed with a protocol error before any hook, so no event either.
    ("h2-authority-allowed-host-banned", "full", "h2",
     [(":method", "GET"), (":scheme", "https"), (":authority", "apps.apple.com"), (":path", "/{id}"),
      ("host", "www.tiktok.com")], 0, None),
    ("h2-authority-banned-host-allowed", "full", "h2",
     [(":method", "GET"), (":scheme", "https"), (":authority", "www.tiktok.com"), (":path", "/{id}"),
      ("host", "apps.apple.com")], 0, None),
    ("h2-download-path-authority-allowed", "downloads", "h2",
     [(":method", "GET"), (":scheme", "https"), (":authority", "allowed.example"),
      (":path", "/tiktok/{id}.apk")], 451, ("block", DOWNLOAD, TIKTOK)),
]


@pytest.mark.parametrize("which,how,request_,status,event", [c[1:] for c in RAW_CASES],
                         ids=[c[0] for c in RAW_CASES])
def test_requests_curl_will_not_send(
    proxies: dict[str, tuple[Proxy, Path]],
    origin: Origin,  # noqa: F811
    plain_origin: PlainOrigin,  # noqa: F811
    request: pytest.FixtureRequest,
    which: str,
    how: str,
    request_: bytes | list[tuple[str, str]],
    status: int,
    event: tuple[str, str, tuple[str, ...]] | None,
) -> None:
    case = request.node.callspec.id
    proxy, bundle = proxies[which]
    before = len(proxy.events())
    if isinstance(request_, bytes):
        got = h1_raw(proxy, request_.replace(b"{id}", case.encode()))
        assert got.split(b" ")[1] == str(status).encode(), got
    else:
        sni = "apps.apple.com" if which == "full" else "dl.shared-cdn.example"
        headers = [(k, v.format(id=case)) for k, v in request_]
        assert h2_raw(proxy, bundle, sni, headers) == status
    assert not [s for s in origin.seen + plain_origin.seen if case in s]
    if event is None:
        time.sleep(0.3)
    new = proxy.events(before + (event is not None))[before:]
    assert [(e["egress"]["action"], e["rule"]["name"], tuple(e["egress"]["apps"])) for e in new] == (
        [event] if event else [])
    if status == 0:
        assert "mismatched :authority and Host headers" in proxy.stderr.read_text()
