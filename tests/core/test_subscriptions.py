"""List subscriptions (issue 14): ``lists: {url: https://..., refresh: ...}`` against a real HTTPS server.

A local HTTPS server with its own test CA (tests/dns/encrypted.py's
``TestCA``) serves the list; a real ``PolicyHolder`` with its real
downloader and file watcher loads it.  Shown: the first copy arrives and is
enforced; an invalid copy, an HTTP error and an empty copy each keep the
last good copy (and are logged); a good new copy replaces it atomically; at
start the cached copy is used while the server is down.  Mistakes in an
entry are ``file:line: field: message`` at load.
"""

from __future__ import annotations

import datetime as dt
import http.server
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from policies import Action, PolicyError, load_policy
from runtime.holder import PolicyHolder
from tests.core.conftest import MINIMAL_APP
from tests.dns.encrypted import TestCA


class ListServer:
    """HTTPS on 127.0.0.1: ``status`` and ``body`` are what GET /list.txt answers next."""

    def __init__(self, ca: TestCA):
        self.status, self.body, self.requests = 200, b"", 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                status, body = (outer.status, outer.body) if self.path == "/list.txt" else (404, b"")
                self.send_response(status)
                self.send_header("content-type", "text/plain")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.cert_path, ca.key_path)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                       daemon=True)
        self.thread.start()

    def serve(self, status: int, body: bytes) -> None:
        self.status, self.body = status, body

    def stop(self) -> None:
        """Stop serving (again: nothing)."""
        if self.thread.is_alive():
            self.httpd.shutdown()
            self.httpd.server_close()
            self.thread.join(5)


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "ca")


@pytest.fixture
def server(ca: TestCA) -> Iterator[ListServer]:
    srv = ListServer(ca)
    try:
        yield srv
    finally:
        srv.stop()


def write_policy(tmp_path: Path, entry: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\napps:\n" + MINIMAL_APP + "    domains: [demo.example]\n"
                    f"    lists:\n      - {entry}\n", encoding="utf-8")
    return path


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def blocked(h: PolicyHolder, name: str) -> bool:
    return h.view.decide_name(name).action is Action.BLOCK


def test_subscription_lifecycle(tmp_path: Path, ca: TestCA, server: ListServer,
                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    entry = (f"{{url: 'https://127.0.0.1:{server.port}/list.txt', refresh: 1s, ca: '{ca.ca_path}', "
             "path: cache/demo.txt}")
    policy = write_policy(tmp_path, entry)
    cache = tmp_path / "cache" / "demo.txt"
    server.serve(200, b"# the first copy\nsub-one.example\n")
    h = PolicyHolder(policy, at=dt.date(2021, 1, 1))
    try:
        assert not blocked(h, "sub-one.example"), "nothing until the first copy arrives"
        assert blocked(h, "demo.example")
        h.start(interval=0.05)
        assert wait_for(lambda: blocked(h, "sub-one.example")), "the first copy is enforced"
        assert cache.read_bytes() == b"# the first copy\nsub-one.example\n"
        assert h.downloader is not None

        # Each bad download keeps the last good copy, and says so.
        for status, body, why in [(200, b"not a name at all!\n", "refused: line 1"),
                                  (503, b"busy", "HTTP 503"),
                                  (200, b"# nothing\n", "refused: no names in it"),
                                  (200, b"\xff\xfe binary", "not UTF-8")]:
            failures = h.downloader.failures
            server.serve(status, body)
            assert wait_for(lambda f=failures: h.downloader.failures > f, 30), why  # type: ignore[union-attr]
            assert why in caplog.text and "keeping the last good copy" in caplog.text
            assert cache.read_bytes() == b"# the first copy\nsub-one.example\n"
            assert blocked(h, "sub-one.example")

        server.serve(200, b"sub-two.example\n")
        assert wait_for(lambda: blocked(h, "sub-two.example"), 30), "a good new copy replaces the old"
        assert not blocked(h, "sub-one.example")
        assert not list(cache.parent.glob(".download-*")), "no temporary file left behind"
    finally:
        h.stop()

    # At start, with the server gone, the cached copy is used.
    server.stop()
    h2 = PolicyHolder(policy, at=dt.date(2021, 1, 1))
    try:
        assert blocked(h2, "sub-two.example")
        h2.start(interval=0.05)
        assert h2.downloader is not None
        assert wait_for(lambda: h2.downloader.failures > 0, 30)  # type: ignore[union-attr]
        assert blocked(h2, "sub-two.example"), "an outage never empties the policy"
    finally:
        h2.stop()


def test_untrusted_certificate_is_a_failed_download(tmp_path: Path, server: ListServer) -> None:
    policy = write_policy(tmp_path, f"{{url: 'https://127.0.0.1:{server.port}/list.txt', refresh: 1s}}")
    server.serve(200, b"sub-one.example\n")
    h = PolicyHolder(policy, at=dt.date(2021, 1, 1))
    try:
        h.start(interval=0.05)
        assert h.downloader is not None
        assert wait_for(lambda: h.downloader.failures > 0)  # type: ignore[union-attr]
        assert server.requests == 0 and not blocked(h, "sub-one.example")
        assert not (tmp_path / ".lists-cache").exists() or not any((tmp_path / ".lists-cache").iterdir())
    finally:
        h.stop()


# (id, the lists entry, what the error says)
BAD = [
    pytest.param("{url: 'http://lists.example/a.txt'}",
                 "lists[0].url: 'http://lists.example/a.txt' is not an https:// URL", id="not-https"),
    pytest.param("{url: 'https://lists.example/a.txt', refresh: soon}", "lists[0].refresh: 'soon' is not a "
                 "duration", id="bad-refresh"),
    pytest.param("{url: 'https://lists.example/a.txt', refresh: 0s}", "of at least 1s",
                 id="refresh-too-short"),
    pytest.param("{as: hosts}", "lists[0]: needs a path (a list file) or a url (a subscription)",
                 id="neither-path-nor-url"),
    pytest.param("{url: 'https://lists.example/a.txt', every: 1h}", "lists[0].every: unknown key",
                 id="unknown-key"),
]


@pytest.mark.parametrize(("entry", "message"), BAD)
def test_bad_entries_are_reported_at_load(tmp_path: Path, entry: str, message: str) -> None:
    policy = write_policy(tmp_path, entry)
    with pytest.raises(PolicyError) as err:
        load_policy(policy)
    line = len(policy.read_text().splitlines())
    found = [str(i) for i in err.value.issues]
    assert any(f"{policy}:{line}: apps[demo]." in f and message in f for f in found), found


def test_a_bare_url_is_a_subscription_with_the_defaults(tmp_path: Path) -> None:
    policy = load_policy(write_policy(tmp_path, "'https://lists.example/a.txt'"))
    (sub,) = policy.subscriptions
    assert sub.url == "https://lists.example/a.txt" and sub.refresh == 86_400
    assert Path(sub.cache).parent == tmp_path / ".lists-cache" and str(Path(sub.cache)) in policy.files


def test_a_reload_that_adds_a_subscription_starts_the_downloads(tmp_path: Path, ca: TestCA,
                                                               server: ListServer) -> None:
    policy = write_policy(tmp_path, "[]").with_name("policy.yaml")
    policy.write_text(policy.read_text().replace("    lists:\n      - []\n", ""), encoding="utf-8")
    server.serve(200, b"later.example\n")
    h = PolicyHolder(policy, at=dt.date(2021, 1, 1))
    try:
        h.start(interval=0.05)
        assert h.downloader is not None and not h.downloader.running, "no thread without a subscription"
        assert not blocked(h, "later.example")
        entry = f"{{url: 'https://127.0.0.1:{server.port}/list.txt', refresh: 1h, ca: '{ca.ca_path}'}}"
        text = write_policy(tmp_path, entry).read_text()
        new = policy.stat().st_mtime_ns + 10_000_000
        policy.write_text(text, encoding="utf-8")
        os.utime(policy, ns=(new, new))
        assert wait_for(lambda: blocked(h, "later.example"), 30)
        assert h.downloader.running and server.requests == 1, "refresh 1h: one download"
    finally:
        h.stop()
