"""Record a real capture on loopback while the test's own clients talk to the
test's own servers (TLS with SNI, QUIC with SNI, DNS over UDP, HTTP), then replay it.

tcpdump records (filtered on the servers' ports), started and stopped by PID;
tshark reads the same file for the cross-check.  Both tools are required.
"""

from __future__ import annotations

import asyncio
import http.client
import http.server
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dnslib
import pytest
from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from policies import Action, PolicyView

from . import craft as c
from .conftest import need, replay_all
from .tshark import replay_names, tshark_names


def _self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = c.self_signed(key)
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


class Servers:
    """A TLS server, a QUIC server (aioquic), a DNS server (answers with a CNAME chain) and an
    HTTP server, all on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        cert, key = _self_signed(tmp)
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.loop_thread.start()
        quic_config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
        quic_config.load_cert_chain(cert, key)
        self.quic = asyncio.run_coroutine_threadsafe(
            serve("127.0.0.1", 0, configuration=quic_config), self.loop
        ).result(timeout=10)
        self.tls_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.tls_ctx.load_cert_chain(cert, key)
        self.tls = socket.create_server(("127.0.0.1", 0))
        self.dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.dns.bind(("127.0.0.1", 0))
        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.ports = {
            "quic": self.quic._transport.get_extra_info("sockname")[1],
            "tls": self.tls.getsockname()[1],
            "dns": self.dns.getsockname()[1],
            "http": self.http.server_address[1],
        }
        self.threads = [
            threading.Thread(target=t, daemon=True)
            for t in (self._serve_tls, self._serve_dns, self.http.serve_forever)
        ]
        for t in self.threads:
            t.start()

    def _serve_tls(self) -> None:
        while True:
            try:
                conn, _ = self.tls.accept()
            except OSError:
                return
            try:
                with self.tls_ctx.wrap_socket(conn, server_side=True) as s:
                    s.recv(100)
            except (OSError, ssl.SSLError):
                pass

    def _serve_dns(self) -> None:
        while True:
            try:
                data, peer = self.dns.recvfrom(4096)
            except OSError:
                return
            q = dnslib.DNSRecord.parse(data)
            reply = q.reply()
            name = str(q.q.qname)
            reply.add_answer(dnslib.RR(name, dnslib.QTYPE.CNAME, rdata=dnslib.CNAME("edge." + name), ttl=60))
            reply.add_answer(dnslib.RR("edge." + name, dnslib.QTYPE.A, rdata=dnslib.A("192.0.2.1"), ttl=60))
            self.dns.sendto(reply.pack(), peer)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.quic.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.loop_thread.join(timeout=10)
        self.http.shutdown()
        self.http.server_close()
        self.tls.close()
        self.dns.close()


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


def _start_tcpdump(path: Path, ports: list[int]) -> subprocess.Popen[bytes]:
    tcpdump = need("tcpdump")
    expr = "ip host 127.0.0.1 and (" + " or ".join(f"port {p}" for p in ports) + ")"
    # --immediate-mode: without it packets wait in the ring buffer and are lost at SIGINT.
    proc = subprocess.Popen(
        [tcpdump, "-i", "lo", "--immediate-mode", "-U", "-n", "-s", "0", "-w", str(path), expr],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:  # tcpdump says "listening on lo" once the filter is live
        line = proc.stderr.readline()
        if b"listening on" in line or not line:
            break
    if proc.poll() is not None:
        pytest.fail(f"tcpdump exited: {proc.stderr.read().decode(errors='replace')}")
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def _quic_client(port: int) -> None:
    config = QuicConfiguration(
        is_client=True, alpn_protocols=["h3"], server_name="v16.tiktokv.com", verify_mode=ssl.CERT_NONE
    )
    async with connect("127.0.0.1", port, configuration=config) as client:
        await asyncio.wait_for(client.ping(), 5)


def _talk(ports: dict[str, int]) -> None:
    asyncio.run(asyncio.wait_for(_quic_client(ports["quic"]), 10))
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", ports["tls"]), timeout=5) as raw:
        with client.wrap_socket(raw, server_hostname="www.tiktok.com") as s:
            s.sendall(b"hi")
    query = dnslib.DNSRecord.question("www.wechat.com")
    query.send("127.0.0.1", ports["dns"], timeout=5)
    conn = http.client.HTTPConnection("127.0.0.1", ports["http"], timeout=5)
    conn.request(
        "GET", "/store/apps/details?id=com.zhiliaoapp.musically", headers={"Host": "play.google.com"}
    )
    conn.getresponse().read()
    conn.close()


@pytest.mark.e2e
def test_recorded_capture(servers: Servers, view: PolicyView, tmp_path: Path) -> None:
    path = tmp_path / "lo.pcap"
    ports = servers.ports
    proc = _start_tcpdump(path, list(ports.values()))
    try:
        _talk(ports)
        time.sleep(0.5)  # let tcpdump see the last packets before it is stopped
    finally:
        _stop(proc)
    verdicts, rep = replay_all(view, path, dns_ports=frozenset({53, ports["dns"]}))
    assert rep.damage == []
    got = {(v.sighting.kind.value, v.sighting.value, v.sighting.via): v for v in verdicts}
    assert set(got) == {
        ("sni", "www.tiktok.com", "tls"),
        ("sni", "v16.tiktokv.com", "quic"),
        ("dns", "www.wechat.com", "dns/udp"),
        ("dns", "edge.www.wechat.com", "cname"),
        ("http", "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically", "http"),
    }
    assert got[("sni", "www.tiktok.com", "tls")].decision.action is Action.LOG  # TikTok in 'downloads'
    assert got[("sni", "v16.tiktokv.com", "quic")].decision.action is Action.LOG
    assert got[("dns", "www.wechat.com", "dns/udp")].decision.action is Action.BLOCK
    assert (
        got[
            ("http", "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically", "http")
        ].decision.action
        is Action.BLOCK
    )
    sni = got[("sni", "www.tiktok.com", "tls")].sighting
    assert (sni.client, sni.server, sni.server_port) == ("127.0.0.1", "127.0.0.1", ports["tls"])

    tshark = need("tshark")
    theirs = tshark_names(
        tshark,
        path,
        (
            f"udp.port=={ports['dns']},dns",
            f"udp.port=={ports['quic']},quic",
            f"tcp.port=={ports['tls']},tls",
            f"tcp.port=={ports['http']},http",
        ),
    )
    assert replay_names(verdicts) == theirs
