"""Squid (Debian's squid-openssl) with the ``squid`` export, under real curl.

A TLS origin and a plain-HTTP origin run on loopback (certificates made here);
Squid listens on a free loopback port with ``ssl-bump`` and includes the
export.  curl through Squid must see: a banned SNI refused without
decrypting (peek at step 1, then terminate: no certificate of Squid's is ever
shown), other TLS spliced through to the origin (curl verifies the origin's
own certificate), and a banned host over plain HTTP denied (403).  Squid is
stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import http.server
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from policies.export import render

from . import cases
from .test_engines import free_port

ORIGIN_BODY = b"origin-ok\n"
NAMES = ["allowed.test", "www.video.test", "ok.video.test", "api.videohost.test", "x.videocdn.test",
         "sub.api.videohost.test"]


def make_cert(directory: Path, stem: str, names: list[str], ca: bool) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False))
    cert = builder.sign(key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(ORIGIN_BODY)))
        self.end_headers()
        self.wfile.write(ORIGIN_BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


class Origin:
    """An HTTP server on loopback, TLS when given a certificate; counts its handshakes."""

    def __init__(self, cert: tuple[Path, Path] | None = None):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        if cert is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture(scope="module")
def squid() -> Iterator[tuple[int, int, int, Path, Path]]:
    """(squid port, TLS origin port, HTTP origin port, origin CA file, work dir)."""
    assert shutil.which("squid"), "squid is not installed: run .ci/install-tools"
    # Squid drops to the 'proxy' user: its files live in a directory it can read.
    work = Path(tempfile.mkdtemp(prefix="egress-squid-"))
    os.chmod(work, 0o755)
    shutil.chown(work, "proxy")  # it writes its logs here
    origin_cert = make_cert(work, "origin", NAMES, ca=True)
    bump_cert = make_cert(work, "bump", ["egress-filter test bump CA"], ca=True)
    for f in (*origin_cert, *bump_cert):
        os.chmod(f, 0o644)
    tls, plain = Origin(origin_cert), Origin()
    proc: subprocess.Popen[bytes] | None = None
    try:
        export = work / "egress-filter.squid"
        export.write_text("".join(f"{ln}\n" for ln in render(cases.policy(), "squid", at=cases.FULL_DAY)))
        hosts = work / "hosts"
        hosts.write_text("".join(f"127.0.0.1 {n}\n" for n in NAMES))
        port = free_port()
        conf = work / "squid.conf"
        # ssl-bump needs a certificate even though nothing is ever decrypted here.
        bump = f"ssl-bump tls-cert={bump_cert[0]} tls-key={bump_cert[1]} generate-host-certificates=off"
        conf.write_text(f"""http_port 127.0.0.1:{port} {bump}
acl localhost src 127.0.0.0/8
acl SSL_ports port {tls.port}
acl Safe_ports port {plain.port} {tls.port}
acl CONNECT method CONNECT
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
include {export}
http_access allow localhost
http_access deny all
hosts_file {hosts}
dns_nameservers 127.0.0.1
cache deny all
pid_filename none
access_log stdio:{work}/access.log
cache_log {work}/cache.log
coredump_dir {work}
shutdown_lifetime 0 seconds
""")
        for f in (export, hosts, conf):
            os.chmod(f, 0o644)
        parse = subprocess.run(["squid", "-k", "parse", "-f", str(conf)], capture_output=True, text=True,
                               timeout=60)
        assert parse.returncode == 0 and "ERROR" not in parse.stderr, parse.stdout + parse.stderr
        log = (work / "squid.out").open("wb")
        proc = subprocess.Popen(["squid", "-N", "-f", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (work / "squid.out").read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, (work / "squid.out").read_text()
                time.sleep(0.2)
        yield port, tls.port, plain.port, origin_cert[0], work
    finally:
        if proc is not None:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        tls.stop()
        plain.stop()
        shutil.rmtree(work, ignore_errors=True)


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["curl", "-sS", "--max-time", "10", "-o", "-", "-w", "\\n%{http_code}", *args],
                          capture_output=True, text=True, timeout=30)


TLS_CASES = [
    # (SNI, what curl sees)
    pytest.param("allowed.test", "spliced", id="unlisted-spliced"),
    pytest.param("ok.video.test", "spliced", id="allow-list-hole-spliced"),
    pytest.param("sub.api.videohost.test", "spliced", id="below-an-exact-host-spliced"),
    pytest.param("www.video.test", "terminated", id="banned-domain-terminated"),
    pytest.param("api.videohost.test", "terminated", id="banned-host-terminated"),
    pytest.param("x.videocdn.test", "terminated", id="banned-sni-glob-terminated"),
]


@pytest.mark.parametrize(("sni", "outcome"), TLS_CASES)
def test_tls_by_sni(squid: tuple[int, int, int, Path, Path], sni: str, outcome: str) -> None:
    port, tls_port, _plain, ca, _work = squid
    # The CONNECT names 127.0.0.1 (no name ACL can match it), the client hello
    # names ``sni``: only the peeked SNI can decide.
    r = curl("--proxy", f"http://127.0.0.1:{port}", "--cacert", str(ca),
             "--connect-to", f"{sni}:{tls_port}:127.0.0.1:{tls_port}", f"https://{sni}:{tls_port}/")
    if outcome == "spliced":  # curl verified the origin's own certificate: nothing was decrypted
        assert (r.returncode, r.stdout) == (0, "origin-ok\n\n200"), r.stderr
    else:  # the handshake is cut; no certificate (Squid's or the origin's) was presented
        assert r.returncode == 35 and r.stdout.endswith("000"), (r.returncode, r.stdout, r.stderr)


HTTP_CASES = [
    pytest.param("allowed.test", 200, id="unlisted"),
    pytest.param("ok.video.test", 200, id="allow-list-hole"),
    pytest.param("www.video.test", 403, id="banned-domain"),
    pytest.param("api.videohost.test", 403, id="banned-host"),
    pytest.param("sub.api.videohost.test", 200, id="below-an-exact-host"),
]


CONNECT_CASES = [
    # (the name curl asks for, the name the CONNECT carries)
    pytest.param("www.video.test", "www.video.test", id="banned-name"),
    pytest.param("allowed.test", "www.video.test", id="banned-name-innocent-sni"),
]


@pytest.mark.parametrize(("sni", "connect"), CONNECT_CASES)
def test_connect_to_a_banned_name_is_cut_before_tls(squid: tuple[int, int, int, Path, Path], sni: str,
                                                    connect: str) -> None:
    """A CONNECT naming a banned host is closed at step 1, before any TLS: no
    certificate, not even Squid's own for an error page; an innocent SNI
    inside does not open it."""
    port, tls_port, _plain, ca, _work = squid
    r = curl("--proxy", f"http://127.0.0.1:{port}", "--cacert", str(ca),
             "--connect-to", f"{sni}:{tls_port}:{connect}:{tls_port}", f"https://{sni}:{tls_port}/")
    assert (r.returncode, r.stdout, r.stderr) == (56, "\n000", "curl: (56) Proxy CONNECT aborted\n")


@pytest.mark.parametrize(("host", "status"), HTTP_CASES)
def test_plain_http_by_host(squid: tuple[int, int, int, Path, Path], host: str, status: int) -> None:
    port, _tls, plain_port, _ca, _work = squid
    r = curl("--proxy", f"http://127.0.0.1:{port}", f"http://{host}:{plain_port}/")
    assert r.returncode == 0 and r.stdout.endswith(f"\n{status}"), (r.stdout, r.stderr)
    if status == 200:
        assert r.stdout == "origin-ok\n\n200"
