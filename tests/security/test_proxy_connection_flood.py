"""Slow, silent and flooding proxy clients, kept bounded.

The red team held 500 CONNECT tunnels open for 30 s on an 11-byte truncated
ClientHello, each with an eager upstream connection.  Now a connection has
``egress_handshake_timeout`` seconds from its start to be decided, nothing
is dialled upstream before that, and one address may hold only
``egress_max_connections_per_client`` connections.  Real proxy processes,
raw sockets and curl, on loopback only.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.proxy.conftest import (  # noqa: F401  (fixtures)
    Origin,
    Proxy,
    ProxyRunner,
    free_port,
    origin,
    require,
)
from tests.proxy.helpers import FULL, client_hello_body, client_hello_record, write_policy

pytestmark = pytest.mark.e2e

TRUNCATED_HELLO = client_hello_record(client_hello_body("allowed.example"))[:11]
SLACK = 2.5  # seconds the proxy may take past its deadline on a loaded 2-core machine


@pytest.fixture
def runner(tmp_path: Path, origin: Origin) -> Iterator[ProxyRunner]:  # noqa: F811
    r = ProxyRunner(tmp_path, origin)
    try:
        yield r
    finally:
        r.stop_all()


@pytest.fixture
def upstream() -> Iterator[socket.socket]:
    """A CONNECT target that only counts the connections it is offered."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(512)
        yield s


def dialled(listener: socket.socket) -> int:
    """How many connections reached ``listener`` (accepted here, bounded by the backlog)."""
    listener.setblocking(False)
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def start(runner: ProxyRunner, tmp_path: Path, *sets: str) -> tuple[Proxy, int]:
    metrics = free_port()
    proxy = runner.start("--policy", str(write_policy(tmp_path)), "--at", FULL,
                         "--metrics", f"127.0.0.1:{metrics}", *(f"--set={s}" for s in sets))
    return proxy, metrics


def scrape(port: int) -> dict[str, float]:
    text = subprocess.run([require("curl"), "-sS", f"http://127.0.0.1:{port}/metrics"],
                          capture_output=True, text=True, timeout=10).stdout
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line.startswith("egress_proxy_")}


def closed_at(sock: socket.socket, deadline: float) -> float | None:
    """When the proxy closed ``sock`` (monotonic), or None if it was still open at ``deadline``."""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if sock.recv(4096) == b"":
                return time.monotonic()
        except TimeoutError:
            return None
        except ConnectionError:
            return time.monotonic()
    return None


def connect_tunnel(proxy: Proxy, target: int, source: str = "127.0.0.1") -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5, source_address=(source, 0))
    try:
        sock.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nHost: 127.0.0.1:{target}\r\n\r\n".encode())
        return sock, sock.recv(4096)
    except ConnectionError:
        return sock, b""


def curl_ok(proxy: Proxy, origin: Origin, interface: str) -> tuple[int, str]:  # noqa: F811
    out = subprocess.run(
        [require("curl"), "-sS", "--max-time", "10", "--interface", interface, "--proxy", proxy.url,
         "--cacert", str(origin.pki.ca_cert), "--connect-to", f"allowed.example:443:127.0.0.1:{origin.port}",
         "-o", "/dev/null", "-w", "%{http_code}", "https://allowed.example/fresh"],
        capture_output=True, text=True, timeout=30)
    return out.returncode, out.stdout


# Each opening stalls somewhere different; all must be cut at the deadline.
def _silent(sock: socket.socket, target: int, stop: float) -> None:
    pass


def _connect_then_silent(sock: socket.socket, target: int, stop: float) -> None:
    sock.sendall(f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\n\r\n".encode())
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")


def _truncated_hello(sock: socket.socket, target: int, stop: float) -> None:
    _connect_then_silent(sock, target, stop)
    sock.sendall(TRUNCATED_HELLO)


def _store_hello_then_silent(sock: socket.socket, target: int, stop: float) -> None:
    """A whole ClientHello for a host the proxy intercepts, then no Finished: the TLS
    handshake with the proxy itself is what must complete in time."""
    import ssl

    _connect_then_silent(sock, target, stop)
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="apps.apple.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()  # writes a real ClientHello; the proxy's answer is never read
    sock.sendall(outgoing.read())


def _slowloris_headers(sock: socket.socket, target: int, stop: float) -> None:
    """One byte every 0.2 s: mitmproxy's idle timer would never fire."""
    request = f"CONNECT 127.0.0.1:{target} HTTP/1.1\r\nX-Padding: {'a' * 200}\r\n\r\n".encode()
    for i in range(len(request)):
        if time.monotonic() > stop:
            return
        try:
            sock.sendall(request[i:i + 1])
        except OSError:
            return  # closed by the proxy: what the test checks next
        time.sleep(0.2)


OPENINGS: list[tuple[str, Callable[[socket.socket, int, float], None]]] = [
    ("silent-from-the-start", _silent),
    ("silent-after-connect", _connect_then_silent),
    ("truncated-clienthello-11-bytes", _truncated_hello),
    ("intercepted-hello-then-silent", _store_hello_then_silent),
    ("slowloris-connect-headers", _slowloris_headers),
]


@pytest.mark.parametrize("opening", [o[1] for o in OPENINGS], ids=[o[0] for o in OPENINGS])
def test_an_undecided_connection_is_closed_at_the_deadline(
    runner: ProxyRunner, tmp_path: Path, origin: Origin, upstream: socket.socket,  # noqa: F811
    opening: Callable[[socket.socket, int, float], None],
) -> None:
    timeout = 2
    proxy, metrics = start(runner, tmp_path, f"egress_handshake_timeout={timeout}")
    target = upstream.getsockname()[1]
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
        opening(sock, target, began + timeout + SLACK)
        closed = closed_at(sock, began + timeout + SLACK)
    assert closed is not None, "still open after the deadline"
    assert timeout - 0.3 <= closed - began <= timeout + SLACK
    assert dialled(upstream) == 0  # lazy: nothing was dialled for an undecided tunnel
    values = scrape(metrics)
    assert values["egress_proxy_handshake_timeouts_total"] == 1.0
    assert curl_ok(proxy, origin, "127.0.0.1") == (0, "200")  # and the proxy still serves


DECIDED = [
    ("passed-through", "allowed.example", "/later", False),
    ("intercepted", "apps.apple.com", "/us/app/signal-private-messenger/id874139669", True),
]


@pytest.mark.parametrize("sni,path,intercepted", [c[1:] for c in DECIDED], ids=[c[0] for c in DECIDED])
def test_a_decided_connection_outlives_the_deadline(
    runner: ProxyRunner, tmp_path: Path, origin: Origin, sni: str, path: str, intercepted: bool,  # noqa: F811
) -> None:
    """Once passed through, or once its TLS with the proxy is done, a connection is no
    longer the deadline's business: it may idle, then be served."""
    import ssl

    proxy, metrics = start(runner, tmp_path, "egress_handshake_timeout=1")
    sock, reply = connect_tunnel(proxy, origin.port)
    assert reply.startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(proxy.ca if intercepted else origin.pki.ca_cert))
    with context.wrap_socket(sock, server_hostname=sni) as tls:
        time.sleep(2.0)  # twice the deadline
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        assert tls.recv(4096).startswith(b"HTTP/1.1 200")
    assert scrape(metrics).get("egress_proxy_handshake_timeouts_total") == 0.0


def test_a_flood_from_one_client_is_capped_and_cut(
    runner: ProxyRunner, tmp_path: Path, origin: Origin, upstream: socket.socket,  # noqa: F811
) -> None:
    cap, flood, timeout = 16, 24, 5
    proxy, metrics = start(runner, tmp_path, f"egress_handshake_timeout={timeout}",
                           f"egress_max_connections_per_client={cap}")
    target = upstream.getsockname()[1]
    held: list[tuple[socket.socket, float]] = []
    refused = 0
    try:
        # One at a time, so the order the proxy counts them in is the order they are opened.
        for _ in range(flood):
            began = time.monotonic()
            sock, reply = connect_tunnel(proxy, target)
            if reply.startswith(b"HTTP/1.1 200"):
                sock.sendall(TRUNCATED_HELLO)
                held.append((sock, began))
            else:
                assert reply == b""  # closed unanswered
                refused += 1
                sock.close()
        # Exact only if no deadline fired while the flood was opened (it takes ~0.1 s).
        assert held and time.monotonic() - held[0][1] < timeout - 1
        assert (len(held), refused) == (cap, flood - cap)
        # Another client address is served while this one is at its cap.
        assert curl_ok(proxy, origin, "127.0.0.2") == (0, "200")
        for sock, began in held:
            closed = closed_at(sock, began + timeout + SLACK)
            assert closed is not None and closed - began >= timeout - 0.3
    finally:
        for sock, _ in held:
            sock.close()
    assert dialled(upstream) == 0
    # Once the flood is cut, the same address is served again.
    assert curl_ok(proxy, origin, "127.0.0.1") == (0, "200")
    values = scrape(metrics)
    assert values['egress_proxy_connections_refused_total{reason="per_client_limit"}'] == flood - cap
    assert values["egress_proxy_handshake_timeouts_total"] == cap
    assert values["egress_proxy_client_connections"] == 0.0
    log = proxy.stderr.read_text()
    assert log.count("egress_proxy_connections_refused") == 0  # the metric name is not the message
    assert log.count("holds 16 connections, the most egress_max_connections_per_client allows") == 1
