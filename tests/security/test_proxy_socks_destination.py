"""Where no CONNECT names the destination (SOCKS5 here; transparent and
WireGuard modes alike), the destination is judged anyway: against the SNI at
the ClientHello, against the Host at the request, and, for raw TCP that no
protocol hook sees, at the dial itself (``server_connect``).

Real curl and a raw SOCKS5 client talk to a real ``mitmdump -s`` in SOCKS5
mode; ``tests/proxy/loopback_dns.py``, loaded after the addon, routes every
name to a local server.
"""

from __future__ import annotations

import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator

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
from tests.proxy.helpers import FULL, write_policy

pytestmark = pytest.mark.e2e

DOMAIN = ("block", "domain:tiktok.com", ("tiktok",))


@pytest.fixture(scope="module")
def socks(
    tmp_path_factory: pytest.TempPathFactory, origin: Origin, plain_origin: PlainOrigin  # noqa: F811
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("socks")
    runner = ProxyRunner(directory, origin)
    try:
        yield runner.start(
            "--mode", "socks5",
            "--set", f"egress_policy={write_policy(directory)}", "--set", f"egress_at={FULL}",
            "-s", str(REPO / "tests" / "proxy" / "loopback_dns.py"),
            mitmdump=True, env={"EGRESS_TEST_ORIGINS": f"{plain_origin.port},{origin.port}"})
    finally:
        runner.stop_all()


CURL_CASES = [
    # (id, url, curl args, status curl sees (0: closed unanswered), origin reached, event)
    ("tls-destination-banned-sni-allowed", "https://allowed.example/{id}",
     ("--connect-to", "allowed.example:443:www.tiktok.com:443"), 0, False, DOMAIN),
    ("tls-honest-allowed", "https://allowed.example/{id}", (), 200, True, None),
    ("http-destination-banned-host-allowed", "http://www.tiktok.com/{id}", ("-H", "Host: allowed.example"),
     451, False, DOMAIN),
    ("http-destination-allowed-host-banned", "http://allowed.example/{id}", ("-H", "Host: www.tiktok.com"),
     451, False, DOMAIN),
    ("http-destination-banned-ip-host-allowed", "http://192.0.2.7/{id}", ("-H", "Host: allowed.example"),
     451, False, ("block", "network:192.0.2.0/24", ("tiktok",))),
]


@pytest.mark.parametrize("url,args,status,reached,event", [c[1:] for c in CURL_CASES],
                         ids=[c[0] for c in CURL_CASES])
def test_socks_destination_is_judged(
    socks: Proxy, origin: Origin, plain_origin: PlainOrigin, request: pytest.FixtureRequest,  # noqa: F811
    url: str, args: tuple[str, ...], status: int, reached: bool,
    event: tuple[str, str, tuple[str, ...]] | None,
) -> None:
    case = request.node.callspec.id
    url = url.format(id=case)
    before = len(socks.events())
    out = subprocess.run(
        [require("curl"), "-sS", "--max-time", "10", "--socks5-hostname", f"127.0.0.1:{socks.port}",
         "--cacert", str(origin.pki.ca_cert), "-o", "/dev/null", "-w", "%{http_code}", *args, url],
        capture_output=True, text=True, timeout=30)
    assert int(out.stdout) == status, out.stderr
    assert any(s.endswith(f"/{case}") for s in origin.seen + plain_origin.seen) is reached
    new = socks.events(before + (event is not None))[before:]
    if event is None:
        time.sleep(0.3)
        new = socks.events()[before:]
    assert [(e["egress"]["action"], e["rule"]["name"], tuple(e["egress"]["apps"])) for e in new] == (
        [event] if event else [])
    if new and "--connect-to" in args:  # the SNI said allowed.example; the destination decided
        assert (new[0]["egress"]["names"], new[0]["egress"]["decided_by"]) == (
            ["allowed.example", "www.tiktok.com"], "www.tiktok.com")


def socks_tcp(proxy: Proxy, name: str, port: int, payload: bytes) -> bytes:
    """A raw SOCKS5 CONNECT by name, then ``payload``: what came back before the proxy closed."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        sock.sendall(b"\x05\x01\x00")
        assert sock.recv(2) == b"\x05\x00"
        sock.sendall(b"\x05\x01\x00\x03" + bytes([len(name)]) + name.encode() + struct.pack("!H", port))
        assert sock.recv(10)[:2] == b"\x05\x00"  # lazy: granted before dialling
        sock.sendall(payload)
        received = b""
        try:
            while chunk := sock.recv(4096):
                received += chunk
        except (TimeoutError, ConnectionError):
            pass
        return received


RAW_CASES = [
    ("raw-tcp-to-banned-name", "www.tiktok.com", 0, [("block", "domain:tiktok.com", ("tiktok",), "refused")]),
    ("raw-tcp-to-allowed-name", "allowed.example", 1, []),
]


@pytest.mark.parametrize("name,dials,events", [c[1:] for c in RAW_CASES], ids=[c[0] for c in RAW_CASES])
def test_raw_tcp_is_judged_at_the_dial(
    socks: Proxy, name: str, dials: int, events: list[tuple[str, str, tuple[str, ...], str]]
) -> None:
    greeting = b"SSH-2.0-OpenSSH_9.2\r\n"  # not TLS, not HTTP: only the dial can judge it
    accepted: list[bytes] = []

    def echo_once(upstream: socket.socket) -> None:
        try:
            conn, _ = upstream.accept()
        except TimeoutError:
            return
        with conn:
            data = conn.recv(4096)
            accepted.append(data)
            conn.sendall(data)

    with socket.socket() as upstream:
        upstream.bind(("127.0.0.1", 0))
        upstream.listen(8)
        upstream.settimeout(3)
        server = threading.Thread(target=echo_once, args=(upstream,), daemon=True)
        server.start()
        before = len(socks.events())
        got = socks_tcp(socks, name, upstream.getsockname()[1], greeting)
        server.join(5)
    assert (len(accepted), got) == (dials, greeting if dials else b"")
    new = socks.events(before + len(events))[before:]
    if not events:
        time.sleep(0.3)
        new = socks.events()[before:]
    assert [(e["egress"]["action"], e["rule"]["name"], tuple(e["egress"]["apps"]), e["egress"]["response"])
            for e in new] == events
    assert socks.stderr.read_text().count("Traceback") == 0
