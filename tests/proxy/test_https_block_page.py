"""The block page a browser can show for HTTPS (``--block page``).

A browser shows nothing of an answer to its CONNECT (Chromium says
ERR_TUNNEL_CONNECTION_FAILED), so in page mode a CONNECT to a blocked host is
accepted, the TLS inside is intercepted with mitmproxy's CA, and the requests
get the 451 page.  Nothing is dialled for the blocked host: the proxy loads
``loopback_dns.py``, which sends every dial on port 443 to a listener that
counts the connections it accepts.  Allowed TLS still passes through
undecrypted, with the origin's own certificate.

Real processes: ``egress-filter proxy``, curl, and Debian's headless Chromium
(selenium + chromedriver) with mitmproxy's CA trusted in a fresh profile.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .conftest import LOOPBACK_DNS, Origin, Proxy, require
from .helpers import FULL, write_policy

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
APP_NAME = 'TikTok <b>Lite</b> & "Co"'  # shown on the page: it must come out as text, escaped


class DialCounter:
    """A TCP listener that counts the connections it accepts and keeps the
    first bytes of each (a dial for a name carries it in its ClientHello)."""

    MAX_KEPT = 200

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self.first_bytes: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="dial-counter")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
        if len(self.first_bytes) < self.MAX_KEPT:
            self.first_bytes.append(data)

    def dialled_for(self, name: str) -> int:
        return sum(name.encode() in data for data in self.first_bytes)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def dials() -> Iterator[DialCounter]:
    counter = DialCounter()
    try:
        yield counter
    finally:
        counter.close()


def policy_with_app_name(directory: Path) -> Path:
    path = write_policy(directory)
    text = path.read_text(encoding="utf-8").replace("name: TikTok\n", f"name: '{APP_NAME}'\n", 1)
    path.write_text(text, encoding="utf-8")
    return path


def page_proxy(run_proxy: Any, tmp_path: Path, dials: DialCounter, block: str) -> Proxy:
    """A proxy in ``block`` mode whose every dial on 443 goes to the counter."""
    proxy: Proxy = run_proxy(
        "--policy", str(policy_with_app_name(tmp_path)), "--at", FULL, "--block", block,
        "--set", LOOPBACK_DNS, env={"EGRESS_TEST_ORIGINS": f"{dials.port},{dials.port}"},
    )
    return proxy


@dataclass(frozen=True)
class CurlCase:
    block: str
    url: str
    routed: bool  # --connect-to the origin: CONNECT 127.0.0.1:<origin>, the SNI is the URL's host
    trust: str  # "proxy": mitmproxy's CA; "origin": the origin's own CA only
    rc: int
    connect: int
    status: int
    issuer: str  # who signed the certificate curl was shown ("" when no TLS was spoken)
    event: str | None  # egress.response of the one event, or None for no event


CURL_CASES = [
    pytest.param(CurlCase("page", "https://www.tiktok.com/foryou", False, "proxy", 0, 200, 451,
                          "mitmproxy", "451"), id="page-blocked-connect-gets-the-page"),
    pytest.param(CurlCase("reset", "https://www.tiktok.com/foryou", False, "proxy", 56, 451, 0,
                          "", "451"), id="reset-blocked-connect-gets-bare-451"),
    pytest.param(CurlCase("page", "https://allowed.example/hello", True, "origin", 0, 200, 200,
                          "egress-filter test origin CA", None), id="page-allowed-passes-through"),
    pytest.param(CurlCase("reset", "https://allowed.example/hello", True, "origin", 0, 200, 200,
                          "egress-filter test origin CA", None), id="reset-allowed-passes-through"),
]


@pytest.mark.parametrize("case", CURL_CASES)
def test_curl_block_page_reset_and_passthrough(
    run_proxy: Any, origin: Origin, tmp_path: Path, dials: DialCounter, case: CurlCase
) -> None:
    proxy = page_proxy(run_proxy, tmp_path, dials, case.block)
    ca = proxy.ca if case.trust == "proxy" else origin.pki.ca_cert
    host = case.url.split("/")[2]
    cmd = [require("curl"), "-v", "-sS", "--max-time", "15", "--proxy", proxy.url, "--cacert", str(ca),
           "-H", "accept: text/html", "-w", "\n%{http_connect} %{http_code}", case.url]
    if case.routed:
        cmd[1:1] = ["--connect-to", f"{host}:443:127.0.0.1:{origin.port}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    body, _, codes = out.stdout.rpartition("\n")
    connect, status = (int(c) for c in codes.split())
    assert (out.returncode, connect, status) == (case.rc, case.connect, case.status), out.stderr[-2000:]
    issuers = [line for line in out.stderr.splitlines() if "issuer:" in line]
    if case.issuer:
        assert issuers and case.issuer in issuers[0], out.stderr[-2000:]
    else:
        assert issuers == []
    assert dials.accepted == 0  # nothing dialled for the blocked host; the allowed one went to the origin
    events = proxy.events(1 if case.event else None)
    if case.event is None:
        assert events == [] and f"origin {host}/hello" in body
        return
    [ev] = events
    assert (ev["egress"]["action"], ev["egress"]["response"], ev["egress"]["value"]) == (
        "block", case.event, "www.tiktok.com")
    if case.status == 451:
        assert ev["event"]["id"] in body and "TikTok &lt;b&gt;Lite&lt;/b&gt; &amp; &quot;Co&quot;" in body
        assert "<b>Lite</b>" not in body


def spki_hash(pem: Path) -> str:
    """What Chromium's --ignore-certificate-errors-spki-list takes: base64(SHA-256(SPKI))."""
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


@pytest.fixture
def chromium_through(tmp_path: Path) -> Iterator[Any]:
    """Start headless Chromium with a fresh profile, through a proxy, trusting its CA."""
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("chromium and chromium-driver are required (.ci/install-tools installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    drivers: list[Any] = []

    def start(proxy: Proxy) -> Any:
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1100,900", "--disable-background-networking",
                    f"--user-data-dir={tmp_path / f'chromium-{len(drivers)}'}",
                    f"--proxy-server={proxy.url}",
                    f"--ignore-certificate-errors-spki-list={spki_hash(proxy.ca)}"):
            opts.add_argument(arg)
        drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
        drv.set_page_load_timeout(30)
        drivers.append(drv)
        return drv

    try:
        yield start
    finally:
        for drv in drivers:
            drv.quit()


BROWSER_CASES = [
    pytest.param("https://www.tiktok.com/foryou", "www.tiktok.com", id="blocked-host-https"),
    pytest.param("https://m.tiktok.com/@someone/video/1?lang=en", "m.tiktok.com",
                 id="blocked-subdomain-path"),
]


@pytest.mark.parametrize("url,host", BROWSER_CASES)
def test_chromium_shows_the_451_page_for_https(
    run_proxy: Any, tmp_path: Path, dials: DialCounter, chromium_through: Any, url: str, host: str
) -> None:
    from selenium.webdriver.common.by import By

    proxy = page_proxy(run_proxy, tmp_path, dials, "page")
    drv = chromium_through(proxy)
    drv.get(url)
    text = drv.find_element(By.TAG_NAME, "body").text
    out = tmp_path / "screenshots"
    out.mkdir(exist_ok=True)
    shot = out / f"block-page-{host}.png"
    assert drv.save_screenshot(str(shot)) and shot.stat().st_size > 1000
    assert drv.title == "451 Unavailable For Legal Reasons", text
    assert "451 Unavailable For Legal Reasons" in text
    # Escaped: the name is shown as text...
    assert f"This network blocks {APP_NAME} to comply with Executive Order 13942." in text
    assert drv.find_elements(By.CSS_SELECTOR, "p strong b") == []  # ...and not parsed as markup
    assert f"{APP_NAME} is in phase 'full' since 2020-11-12" in text  # the reason
    assert host in text
    events = [e for e in proxy.events(1) if e["egress"]["value"] == host]
    assert events and all(e["egress"]["response"] == "451" for e in events)
    assert any(e["event"]["id"] in text for e in events)
    # The page came from the proxy: nothing was dialled for the blocked host
    # (Chromium's own background connections were, and were let through).
    assert dials.dialled_for("tiktok.com") == 0
