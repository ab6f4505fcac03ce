"""Fixtures for the end-to-end tests: a local HTTPS origin with its own CA, and
real `egress-filter proxy` (or `mitmdump -s`) processes on free loopback ports,
each with its own temporary mitmproxy confdir, stopped by PID at teardown."""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .helpers import Pki, make_pki, stop

REPO = Path(__file__).resolve().parents[2]
ORIGIN_NAMES = ["www.tiktok.com", "apps.apple.com", "allowed.example", "dl.shared-cdn.example", "example.org"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Origin:
    port: int
    pki: Pki
    seen: list[str] = field(default_factory=list)  # "host path" of every request served
    snis: list[str] = field(default_factory=list)  # the SNI of every TLS handshake ("" for none)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        if length:
            self.rfile.read(length)
        host = (self.headers.get("host") or "").split(":")[0]
        self.server.seen.append(f"{host} {self.path}")
        body = f"origin {host}{self.path}\n".encode()
        self.send_response(200)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _PlainServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[str] = []


class _TlsServer(_PlainServer):
    def __init__(self, context: ssl.SSLContext):
        super().__init__()
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        # The handshake happens in the handler thread, so a client that stalls
        # (or sends garbage) never holds up the accept loop.
        return self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the bad-input tests send garbage on purpose


def start_origin(directory: Path) -> tuple[Origin, _TlsServer, threading.Thread]:
    pki = make_pki(directory, ORIGIN_NAMES)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.cert, pki.key)
    snis: list[str] = []
    context.sni_callback = lambda _sock, name, _ctx: snis.append(name or "")
    server = _TlsServer(context)
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="test-origin")
    thread.start()
    origin = Origin(server.server_address[1], pki, server.seen, snis)
    return origin, server, thread


@pytest.fixture(scope="module")
def origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Origin]:
    o, server, thread = start_origin(tmp_path_factory.mktemp("origin"))
    try:
        yield o
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass(frozen=True)
class PlainOrigin:
    port: int
    seen: list[str]  # "host path" of every request served


@pytest.fixture(scope="module")
def plain_origin() -> Iterator[PlainOrigin]:
    """The plain-HTTP twin of ``origin``, for absolute-form proxy requests."""
    server = _PlainServer()
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="test-plain-origin")
    thread.start()
    try:
        yield PlainOrigin(server.server_address[1], server.seen)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@dataclass
class Proxy:
    port: int
    confdir: Path
    log: Path
    stderr: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def events(self, count: int | None = None, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The event log; with ``count``, wait until at least that many are written."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.log.read_text().splitlines() if self.log.exists() else []
            if count is None or len(lines) >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines]
            time.sleep(0.05)


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is required for this test (install it with .ci/install-tools)")
    return path


def _listeners(port: int) -> set[str]:
    """The socket inodes listening on TCP ``port`` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _owns(pid: int, inodes: set[str]) -> bool:
    """Whether process ``pid`` (or a child of it) holds one of these sockets."""
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            pids += [int(c) for c in task.read_text().split()]
        except OSError:
            pass
    wanted = {f"socket:[{i}]" for i in inodes}
    for p in pids:
        try:
            fds = os.listdir(f"/proc/{p}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{p}/fd/{fd}") in wanted:
                    return True
            except OSError:
                pass
    return False


class PortTaken(AssertionError):
    """Another process listens on the port the proxy was given (free_port's race with another
    test, in another xdist worker, that picked the same port): start again on another."""


def wait_for_port(port: int, process: subprocess.Popen[bytes], stderr: Path, timeout: float = 30.0) -> None:
    """Until ``process`` itself listens on ``port``.  A connection alone is not enough: a
    listener of another test's on the same port (a PAC server, once) answered curl with its
    own 404 in the proxy's place."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        exited = process.poll() is not None
        listening = _listeners(port)
        if not exited and listening and _owns(process.pid, listening):
            return
        if exited or listening:  # gone, or someone else holds the port: did our bind fail?
            text = stderr.read_text()
            if "address already in use" in text.lower():
                raise PortTaken(f"port {port} was taken before the proxy bound it:\n{text}")
            if exited:
                raise AssertionError(f"the proxy exited with {process.returncode}:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"the proxy did not listen on {port} within {timeout}s:\n{stderr.read_text()}")


PORT_TRIES = 3  # free ports tried before a start fails


class ProxyRunner:
    """Starts real proxy processes in ``directory``, each on a free port with
    its own confdir and event log; ``stop_all`` stops them by PID."""

    def __init__(self, directory: Path, origin: Origin) -> None:
        self.directory = directory
        self.origin = origin
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, mitmdump: bool = False, env: dict[str, str] | None = None) -> Proxy:
        for _ in range(PORT_TRIES - 1):
            try:
                return self._start(args, mitmdump, env)
            except PortTaken:
                continue
        return self._start(args, mitmdump, env)

    def _start(self, args: tuple[str, ...], mitmdump: bool, env: dict[str, str] | None) -> Proxy:
        n = len(self.started)
        port = free_port()
        confdir = self.directory / f"mitmproxy-conf-{n}"
        log = self.directory / f"events-{n}.jsonl"
        stderr = self.directory / f"proxy-{n}.stderr"
        # mitmproxy checks the origin's certificate against the origin's own CA.
        trust = f"ssl_verify_upstream_trusted_ca={self.origin.pki.ca_cert}"
        if mitmdump:
            cmd = [
                str(Path(sys.executable).with_name("mitmdump")),
                "-q",
                "--listen-host",
                "127.0.0.1",
                "-p",
                str(port),
                "--set",
                f"confdir={confdir}",
                "--set",
                trust,
                "-s",
                str(REPO / "proxy_addons" / "egress_filter.py"),
                "--set",
                f"egress_log={log}",
                *args,
            ]
        else:
            cmd = [
                sys.executable,
                "-m",
                "egress_filter.cli",
                "proxy",
                "--listen",
                f"127.0.0.1:{port}",
                "--confdir",
                str(confdir),
                "--log",
                str(log),
                "--set",
                trust,
                *args,
            ]
        with open(stderr, "wb") as err:
            process = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            )
        self.started.append(process)
        wait_for_port(port, process, stderr)
        return Proxy(port, confdir, log, stderr, process)

    def stop_all(self) -> None:
        for process in self.started:
            stop(process)


@pytest.fixture
def run_proxy(tmp_path: Path, origin: Origin) -> Iterator[Any]:
    runner = ProxyRunner(tmp_path, origin)
    try:
        yield runner.start
    finally:
        runner.stop_all()


LOOPBACK_DNS = f"scripts={REPO / 'tests' / 'proxy' / 'loopback_dns.py'}"


def start_routed(run_proxy: Any, origin: Origin, plain_origin: PlainOrigin, *args: str) -> Proxy:
    """A proxy with ``loopback_dns.py``: every dial goes to the local origins."""
    env = {"EGRESS_TEST_ORIGINS": f"{plain_origin.port},{origin.port}"}
    proxy: Proxy = run_proxy(*args, "--set", LOOPBACK_DNS, env=env)
    return proxy


def curl_status(proxy: Proxy, ca: Path, url: str, *args: str) -> tuple[int, str]:
    """curl through the proxy: the status it saw (the CONNECT's when that failed,
    else the response's) and its stderr."""
    out = subprocess.run(
        [require("curl"), "-sS", "--max-time", "15", "--proxy", proxy.url, "--cacert", str(ca),
         "-o", "/dev/null", "-w", "%{http_connect} %{http_code}", *args, url],
        capture_output=True, text=True, timeout=30,
    )
    connect, code = (int(c) for c in out.stdout.split())
    return (connect if connect not in (0, 200) else code), out.stderr
