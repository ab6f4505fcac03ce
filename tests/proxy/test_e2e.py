"""End to end: a real proxy process, a local HTTPS origin with its own CA, real
clients (curl, Python's ssl over raw sockets). Hostnames are routed to the
origin with curl's --connect-to, so nothing leaves 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from proxy_addons import compat

from .conftest import REPO, Origin, Proxy, free_port, require
from .helpers import (
    DOWNLOADS,
    ECH_EXT,
    FULL,
    OTHER_STORE_URL,
    TIKTOK_STORE_URL,
    client_hello_body,
    client_hello_record,
    write_policy,
)

pytestmark = pytest.mark.e2e


def curl(
    proxy: Proxy, origin: Origin, url: str, *, ca: Path | None, extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """GET through the proxy with every name routed to the origin; returns
    curl's exit code, status, CONNECT status, headers and body."""
    host = url.split("/")[2]
    cmd = [
        require("curl"),
        "-sS",
        "--max-time",
        "15",
        "--proxy",
        proxy.url,
        "--connect-to",
        f"{host}:443:127.0.0.1:{origin.port}",
        "-D",
        "-",
        "-w",
        "\n%{json}",
        *extra,
        url,
    ]
    if ca is not None:
        cmd[1:1] = ["--cacert", str(ca)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    head, _, tail = out.stdout.rpartition("\n")
    info = json.loads(tail) if tail.startswith("{") else {}
    return {
        "rc": out.returncode,
        "status": info.get("http_code"),
        "connect": info.get("http_connect"),
        "text": head,
        "stderr": out.stderr,
    }


def tls_through(proxy: Proxy, target: tuple[str, int], sni: str, cafile: Path) -> bytes:
    """CONNECT to ``target``, then a TLS handshake with ``sni``; returns the
    certificate the client was shown (DER)."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(
            f"CONNECT {target[0]}:{target[1]} HTTP/1.1\r\nHost: {target[0]}:{target[1]}\r\n\r\n".encode()
        )
        reply = raw.recv(4096)
        assert reply.startswith(b"HTTP/1.1 200"), reply
        context = ssl.create_default_context(cafile=str(cafile))
        with context.wrap_socket(raw, server_hostname=sni) as tls:
            return tls.getpeercert(binary_form=True) or b""


def read_response(sock: ssl.SSLSocket) -> bytes:
    """One HTTP/1.1 response with a content-length, read whole."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += sock.recv(4096)
    return head + b"\r\n\r\n" + body


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    return write_policy(tmp_path)


def test_banned_sni_is_refused_before_any_data(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL)
    before = len(origin.seen)
    r = curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert)
    # The CONNECT to 127.0.0.1 was fine; the SNI was not: closed unanswered (35), not left hanging (28).
    assert r["rc"] == 35 and r["connect"] == 200
    assert len(origin.seen) == before
    [ev] = proxy.events(1)
    assert ev["egress"]["action"] == "block" and ev["egress"]["response"] == "closed"
    assert ev["tls"]["client"]["server_name"] == "www.tiktok.com"


def test_allowed_host_passes_through_with_the_origins_certificate(
    run_proxy: Any, origin: Origin, policy: Path
) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL)
    der = tls_through(proxy, ("127.0.0.1", origin.port), "allowed.example", origin.pki.ca_cert)
    assert hashlib.sha256(der).digest() == origin.pki.fingerprint  # not a mitmproxy certificate
    r = curl(proxy, origin, "https://allowed.example/hello", ca=origin.pki.ca_cert)
    assert (r["rc"], r["status"]) == (0, 200) and "origin allowed.example/hello" in r["text"]
    assert proxy.events() == []


STORE_CASES = [
    ("banned-app-store-url", TIKTOK_STORE_URL, 451, "--http1.1"),
    ("other-app-store-url", OTHER_STORE_URL, 200, "--http1.1"),
    ("banned-app-store-url-http2", TIKTOK_STORE_URL, 451, "--http2"),
    ("other-app-store-url-http2", OTHER_STORE_URL, 200, "--http2"),
]


@pytest.mark.parametrize("url,status,http", [c[1:] for c in STORE_CASES], ids=[c[0] for c in STORE_CASES])
def test_downloads_phase_store_urls(
    run_proxy: Any, origin: Origin, policy: Path, url: str, status: int, http: str
) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", DOWNLOADS)
    # A client offering HTTP/2 is served too (lazy connections: HTTP/2 to the client, HTTP/1.1 to the origin).
    r = curl(proxy, origin, url, ca=proxy.ca, extra=("-H", "accept: application/json", http))
    assert r["rc"] == 0 and r["status"] == status
    if status == 451:
        assert 'rel="blocked-by"' in r["text"]
        body = json.loads(r["text"].rsplit("\n\n", 1)[1])  # curl's output, newlines normalised
        assert body["apps"][0]["name"] == "TikTok" and body["phase"] == "downloads"
        assert body["event_id"] in {e["event"]["id"] for e in proxy.events(1)}
    else:
        assert "origin apps.apple.com/us/app/signal" in r["text"]
        assert proxy.events() == []


def test_full_phase_block_page_when_intercepting(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL, "--block", "page")
    before = len(origin.seen)
    r = curl(proxy, origin, "https://www.tiktok.com/foryou", ca=proxy.ca, extra=("-H", "accept: text/html"))
    assert (r["rc"], r["status"]) == (0, 451)
    [ev] = proxy.events(1)
    assert ev["event"]["id"] in r["text"] and "Executive Order 13942" in r["text"]
    assert "<html" in r["text"] and len(origin.seen) == before


def test_monitor_mode_logs_without_blocking(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL, "--mode", "monitor")
    r = curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert)
    assert (r["rc"], r["status"]) == (0, 200) and "origin www.tiktok.com/" in r["text"]
    [ev] = proxy.events(1)
    assert (ev["egress"]["action"], ev["egress"]["would"]) == ("log", "block")


CONNECT_CASES = [
    ("banned-host", "https://www.tiktok.com/", "www.tiktok.com", "domain:tiktok.com"),
    (
        "doh-resolver",
        "https://dns.google/dns-query?dns=AAABAAABAAAAAAAAA3d3dwdleGFtcGxlA2NvbQAAAQAB",
        "dns.google",
        "builtin:doh",
    ),
    ("doh-resolver-ip", "https://1.1.1.1/dns-query", "1.1.1.1", "builtin:doh"),
]


@pytest.mark.parametrize("url,value,rule", [c[1:] for c in CONNECT_CASES], ids=[c[0] for c in CONNECT_CASES])
def test_connect_to_banned_host_gets_451(
    run_proxy: Any, policy: Path, url: str, value: str, rule: str
) -> None:
    """Nothing here resolves or reaches the internet: the CONNECT is answered before any of that."""
    proxy = run_proxy("--policy", str(policy), "--at", FULL)
    out = subprocess.run(
        [
            require("curl"),
            "-sS",
            "--max-time",
            "10",
            "--proxy",
            proxy.url,
            "-w",
            "%{http_connect}",
            "-o",
            "/dev/null",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode != 0 and out.stdout.strip() == "451"
    [ev] = proxy.events(1)
    assert (ev["egress"]["response"], ev["egress"]["value"], ev["rule"]["name"]) == ("451", value, rule)


def test_ech_clienthello_is_logged_with_its_outer_sni(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL)
    hello = client_hello_record(client_hello_body("public.example", extensions=(ECH_EXT,)))
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
        raw.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
        assert raw.recv(4096).startswith(b"HTTP/1.1 200")
        raw.sendall(hello)
        [ev] = proxy.events(1)
    assert (ev["egress"]["action"], ev["egress"]["ech"], ev["egress"]["outer_sni"]) == (
        "log",
        True,
        "public.example",
    )
    assert ev["rule"]["name"] == "builtin:ech" and ev["egress"]["response"] == "passthrough"


def test_mitmdump_script_usage(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--set", f"egress_policy={policy}", "--set", f"egress_at={FULL}", mitmdump=True)
    r = curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert)
    assert r["rc"] == 35
    r = curl(proxy, origin, "https://allowed.example/", ca=origin.pki.ca_cert)
    assert (r["rc"], r["status"]) == (0, 200)
    assert [e["egress"]["response"] for e in proxy.events(1)] == ["closed"]


def test_sighup_reloads_the_policy_without_dropping_connections(
    run_proxy: Any, origin: Origin, policy: Path
) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL, "--set", "egress_reload_interval=0")
    assert curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert)["rc"] == 35
    # a keep-alive connection passed through before the reload...
    raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
    raw.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
    assert raw.recv(4096).startswith(b"HTTP/1.1 200")
    context = ssl.create_default_context(cafile=str(origin.pki.ca_cert))
    with context.wrap_socket(raw, server_hostname="allowed.example") as kept:
        request = b"GET /kept HTTP/1.1\r\nHost: allowed.example\r\n\r\n"
        kept.sendall(request)
        assert read_response(kept).startswith(b"HTTP/1.1 200")
        policy.write_text(policy.read_text().replace("mode: enforce", "mode: monitor"))
        proxy.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            r = curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert)
            if r["rc"] == 0:
                break
            time.sleep(0.2)
        assert (r["rc"], r["status"]) == (0, 200)  # the new (monitor) policy is in force
        kept.sendall(request)  # ...is still served after it
        assert read_response(kept).endswith(b"origin allowed.example/kept\n")


BAD_INPUT = [
    ("garbage-after-tls-magic", b"\x16\x03\x01\x00\x40" + bytes(range(64))),
    ("truncated-clienthello", client_hello_record(client_hello_body("www.example.org"))[:60]),
    ("oversized-sni", client_hello_record(client_hello_body(raw_sni=b"a" * 63 + (b".a" + b"b" * 62) * 5))),
    ("not-tls-on-443", b"SSH-2.0-OpenSSH_9.2\r\n"),
    ("vanishes-mid-handshake", client_hello_record(client_hello_body("www.tiktok.com"))[:20]),
    ("random-bytes", bytes(range(200, 256)) * 4),
]


def test_bad_input_is_survived(run_proxy: Any, origin: Origin, policy: Path) -> None:
    metrics = free_port()
    proxy = run_proxy("--policy", str(policy), "--at", FULL, "--metrics", f"127.0.0.1:{metrics}")
    for _, payload in BAD_INPUT:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as raw:
            raw.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
            assert raw.recv(4096).startswith(b"HTTP/1.1 200")
            raw.sendall(payload)
            raw.settimeout(1.0)
            try:
                raw.recv(4096)
            except (TimeoutError, ConnectionError):
                pass
        # the proxy keeps serving after each one
        r = curl(proxy, origin, "https://allowed.example/after", ca=origin.pki.ca_cert)
        assert (r["rc"], r["status"]) == (0, 200)
    time.sleep(0.5)
    assert proxy.process.poll() is None
    log = proxy.stderr.read_text()
    assert "Traceback" not in log and "Addon error" not in log
    assert log.count("Cannot parse ClientHello") <= len(BAD_INPUT)  # at most once per bad connection
    assert proxy.events() == []  # nothing banned was decided
    scraped = subprocess.run(
        [require("curl"), "-sS", f"http://127.0.0.1:{metrics}/metrics"],
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout
    failures = next(
        float(line.split()[1])
        for line in scraped.splitlines()
        if line.startswith("egress_proxy_client_tls_failures_total")
    )
    assert failures >= 2  # the garbage and the truncated ClientHello were seen as failed handshakes


BAD_START = [
    ("bad-policy-file", ["--policy", "{bad}"], "bad.yaml:"),
    ("bad-block-option", ["--policy", "{good}", "--set", "egress_block=drop"], "egress_block"),
    ("unknown-set-option", ["--policy", "{good}", "--set", "no_such_option=1"], "no_such_option"),
    ("port-in-use", ["--policy", "{good}", "--listen", "127.0.0.1:{busy}"], "{busy}"),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in BAD_START], ids=[c[0] for c in BAD_START])
def test_bad_start_exits_1_with_a_message(
    tmp_path: Path, policy: Path, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps: [{id: x}]\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = [a.format(bad=bad, good=policy, busy=port) for a in args]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "egress_filter.cli",
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                *argv,
                "--confdir",
                str(tmp_path / "conf"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
    assert out.returncode == 1, out.stderr
    assert message.format(busy=port) in out.stderr


def quic_handshake(port: int, sni: str, timeout: float = 3.0, cafile: Path | None = None,
                   host: str = "127.0.0.1") -> str:
    """A real QUIC client (aioquic): 'connected', or why not.  With ``cafile`` it
    trusts only that CA's certificates, without it any certificate."""
    import asyncio

    from aioquic.asyncio.client import connect
    from aioquic.quic.configuration import QuicConfiguration

    config = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name=sni,
        verify_mode=ssl.CERT_NONE if cafile is None else ssl.CERT_REQUIRED,
    )
    if cafile is not None:
        config.load_verify_locations(str(cafile))

    async def attempt() -> str:
        async with connect(host, port, configuration=config, wait_connected=True):
            return "connected"

    try:
        return asyncio.run(asyncio.wait_for(attempt(), timeout))
    except TimeoutError:
        return "timeout"
    except ConnectionError as exc:
        return f"error {exc!r}"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


QUIC_CASES = [
    ("banned-sni-refused", "www.tiktok.com", ("block", "closed")),
    ("allowed-sni-falls-back-to-tcp", "example.org", None),
]


@pytest.mark.parametrize("sni,event", [c[1:] for c in QUIC_CASES], ids=[c[0] for c in QUIC_CASES])
def test_quic_clienthello_is_judged(
    run_proxy: Any, origin: Origin, policy: Path, sni: str, event: tuple[str, str] | None
) -> None:
    """mitmproxy sees QUIC in reverse, WireGuard and local modes (not transparent: TCP only);
    reverse mode needs no privileges, so it stands in for them here."""
    udp = free_udp_port()
    proxy = run_proxy(
        "--policy",
        str(policy),
        "--at",
        FULL,
        "--proxy-mode",
        "regular",
        "--proxy-mode",
        f"reverse:quic://127.0.0.1:{origin.port}@127.0.0.1:{udp}",
    )
    assert quic_handshake(udp, sni) != "connected"
    if event is None:
        time.sleep(0.5)
        assert proxy.events() == []
    else:
        [ev] = proxy.events(1)
        assert (ev["egress"]["action"], ev["egress"]["response"]) == event
        assert ev["egress"]["transport"] == "quic" and ev["tls"]["client"]["server_name"] == sni
    assert "Traceback" not in proxy.stderr.read_text()


class EchUpstream:
    """A loopback DNS server that answers every HTTPS query with a record carrying
    ``alpn=h2`` and an ECH config, as a resolver of an ECH-enabled site would."""

    def __init__(self) -> None:
        from mitmproxy import dns as mdns
        from mitmproxy.net.dns import https_records

        self._mdns = mdns
        self._record = https_records.pack(
            https_records.HTTPSRecord(1, "", {1: b"\x02h2", 5: b"\x00\x08" + b"ECHCONFG"})
        )
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-dns-upstream")
        self._thread.start()

    def _serve(self) -> None:
        mdns = self._mdns
        while not self._stop:
            try:
                data, peer = self.sock.recvfrom(4096)
            except TimeoutError:
                continue
            query = compat.DNSMessage.unpack(data)
            answer = mdns.ResourceRecord(
                query.questions[0].name, mdns.types.HTTPS, mdns.classes.IN, 60, self._record
            )
            self.sock.sendto(query.succeed([answer]).packed, peer)

    def close(self) -> None:
        self._stop = True
        self._thread.join(5)
        self.sock.close()


ECH_DNS_CASES = [
    ("stripped", [], False),
    ("kept-when-switched-off", ["--set", "egress_strip_ech=false"], True),
]


@pytest.mark.parametrize("args,ech_kept", [c[1:] for c in ECH_DNS_CASES], ids=[c[0] for c in ECH_DNS_CASES])
def test_ech_stripped_from_https_records_in_dns_mode(
    run_proxy: Any, policy: Path, args: list[str], ech_kept: bool
) -> None:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rdatatype

    upstream = EchUpstream()
    try:
        port = free_udp_port()
        # mitmproxy's own strip_ech is off, so what is stripped here is the addon's doing
        run_proxy(
            "--policy",
            str(policy),
            "--at",
            FULL,
            "--proxy-mode",
            "regular",
            "--proxy-mode",
            f"reverse:dns://127.0.0.1:{upstream.port}@127.0.0.1:{port}",
            "--set",
            "strip_ech=false",
            *args,
        )
        # Like any DNS client, retry: the UDP listener may come up a moment after the TCP one.
        query = dns.message.make_query("ech.example.org", "HTTPS")
        for attempt in range(5):
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=port, timeout=2)
                break
            except dns.exception.Timeout:
                if attempt == 4:
                    raise
        [rrset] = reply.answer
        [rdata] = list(rrset)
        assert rdata.rdtype == dns.rdatatype.HTTPS
        keys = {int(k) for k in rdata.params}
        assert 1 in keys  # alpn survives either way
        assert (5 in keys) is ech_kept
    finally:
        upstream.close()


def test_reloads_under_load_drop_no_request(run_proxy: Any, origin: Origin, policy: Path) -> None:
    proxy = run_proxy("--policy", str(policy), "--at", FULL, "--set", "egress_reload_interval=0")
    context = ssl.create_default_context(cafile=str(origin.pki.ca_cert))
    failures: list[str] = []
    served = [0]
    stop = threading.Event()

    def client() -> None:
        while not stop.is_set() and served[0] < 2000:
            try:
                raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
                raw.sendall(f"CONNECT 127.0.0.1:{origin.port} HTTP/1.1\r\n\r\n".encode())
                assert raw.recv(4096).startswith(b"HTTP/1.1 200")
                with context.wrap_socket(raw, server_hostname="allowed.example") as tls:
                    for _ in range(5):
                        tls.sendall(b"GET /busy HTTP/1.1\r\nHost: allowed.example\r\n\r\n")
                        assert read_response(tls).startswith(b"HTTP/1.1 200")
                        served[0] += 1
            except (OSError, AssertionError) as exc:
                failures.append(repr(exc))

    workers = [threading.Thread(target=client, daemon=True) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        for n in range(6):
            time.sleep(0.3)
            mode = "monitor" if n % 2 == 0 else "enforce"
            policy.write_text(
                policy.read_text()
                .replace("mode: enforce", f"mode: {mode}")
                .replace("mode: monitor", f"mode: {mode}")
            )
            proxy.process.send_signal(signal.SIGHUP)
        time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join(15)
    assert failures == [] and served[0] > 20
    assert proxy.process.poll() is None
    assert proxy.stderr.read_text().count("policy reloaded") >= 3  # the reloads really happened meanwhile


def test_mitmdump_with_a_bad_policy_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps: [{id: x}]\n")
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("mitmdump")),
            "-q",
            "--listen-host",
            "127.0.0.1",
            "-p",
            str(free_port()),
            "--set",
            f"confdir={tmp_path / 'conf'}",
            "-s",
            str(REPO / "proxy_addons" / "egress_filter.py"),
            "--set",
            f"egress_policy={bad}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert out.returncode == 1
    text = out.stdout + out.stderr
    assert "OptionsError: egress_policy:" in text and f"{bad}:2: apps[x].schedule" in text
