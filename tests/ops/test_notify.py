"""sd_notify (``runtime.notify``): datagrams to a real AF_UNIX socket standing
in for systemd's ``$NOTIFY_SOCKET``, from the function and from real
``egress-filter dns``, ``proxy`` and ``dashboard`` processes."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from runtime import notify

from .helpers import NotifySocket, dns_answers, eventually, free_dns_port, free_port, start, stop, tcp_accepts

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize(("raw", "expected"), [
    pytest.param("/run/systemd/notify", "/run/systemd/notify", id="path"),
    pytest.param("@egress/notify", b"\0egress/notify", id="abstract"),
    pytest.param("@", None, id="bare-at"),
    pytest.param("relative/notify", None, id="relative-path"),
    pytest.param("vsock:2:1234", None, id="vsock-unsupported"),
])
def test_address_forms(raw: str, expected: str | bytes | None) -> None:
    assert notify.address(raw) == expected


@pytest.mark.parametrize(("send", "expected"), [
    pytest.param(lambda: notify.ready(), ["READY=1"], id="ready"),
    pytest.param(lambda: notify.ready("serving on 127.0.0.1:53"),
                 ["READY=1", "STATUS=serving on 127.0.0.1:53"], id="ready-with-status"),
    pytest.param(lambda: notify.stopping(), ["STOPPING=1"], id="stopping"),
    pytest.param(lambda: notify.status("cannot listen\non :53\tnow"), ["STATUS=cannot listen on :53 now"],
                 id="status-is-one-line"),
    pytest.param(lambda: notify.status("x" * 1000), ["STATUS=" + "x" * (notify.MAX_STATUS - 1) + "…"],
                 id="status-is-bounded"),
])
@pytest.mark.parametrize("kind", ["path", "abstract"], ids=["path", "abstract"])
def test_notify_sends_one_datagram(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str,
                                   send: Callable[[], bool], expected: list[str]) -> None:
    where: Path | str = tmp_path / "notify" if kind == "path" else f"egress-test-{os.getpid()}-{kind}"
    sink = NotifySocket(where)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sink.address)
        assert send() is True
        sink.sock.settimeout(2)
        assert sink.sock.recv(65536).decode().split("\n") == expected
    finally:
        sink.close()


def test_reload_sends_reloading_with_monotonic_then_ready(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sink = NotifySocket(tmp_path / "notify")
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sink.address)
        assert notify.around_reload(lambda: True)() is True
        first = sink.wait_for("RELOADING", timeout=2)
        assert 0 < int(first["MONOTONIC_USEC"]) <= os.times().elapsed * 1e6 + 1e9  # a CLOCK_MONOTONIC count
        assert sink.wait_for("READY", timeout=2)["STATUS"] == "policy reloaded"
    finally:
        sink.close()


@pytest.mark.parametrize("value", [
    pytest.param(None, id="unset"),
    pytest.param("", id="empty"),
    pytest.param("/nonexistent/dir/notify", id="nobody-listening"),
])
def test_no_manager_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    else:
        monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert notify.ready() is False
    assert notify.stopping() is False


def _dns(port: int, tmp: Path) -> list[str]:
    return ["dns", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9", "--no-legal-notice"]


def _proxy(port: int, tmp: Path) -> list[str]:
    return ["proxy", "--listen", f"127.0.0.1:{port}", "--log", os.devnull, "--no-legal-notice"]


def _dashboard(port: int, tmp: Path) -> list[str]:
    return ["dashboard", "--listen", f"127.0.0.1:{port}", "--db", str(tmp / "events.db")]


def _dns_answered(port: int) -> bool:
    reply = dns_answers(port, timeout=1.0)
    return reply is not None and reply.rcode() == dns.rcode.NXDOMAIN  # www.tiktok.com, blocked


SERVERS = [
    pytest.param(_dns, free_dns_port, _dns_answered, id="dns"),
    pytest.param(_proxy, free_port, tcp_accepts, id="proxy"),
    pytest.param(_dashboard, free_port, tcp_accepts, id="dashboard"),
]


@pytest.mark.parametrize(("argv", "port_for", "serves"), SERVERS)
def test_server_says_ready_reloading_stopping(tmp_path: Path, argv: Callable[[int, Path], list[str]],
                                             port_for: Callable[[], int],
                                             serves: Callable[[int], bool]) -> None:
    """READY=1 means serving: the first query sent after it is answered.  SIGHUP
    is RELOADING=1 then READY=1 again; SIGTERM is STOPPING=1 and exit 0."""
    sink = NotifySocket(tmp_path / "notify")
    port = port_for()
    proc = start(argv(port, tmp_path), tmp_path, "server", env=sink.env())
    try:
        ready = sink.wait_for("READY", while_alive=proc)
        assert serves(port), "READY=1 came before the server answered"
        assert str(port) in ready.get("STATUS", ""), ready
        proc.send_signal(signal.SIGHUP)
        assert "MONOTONIC_USEC" in sink.wait_for("RELOADING", timeout=30, while_alive=proc)
        assert sink.wait_for("READY", timeout=30, while_alive=proc)["STATUS"] == "policy reloaded"
        assert serves(port)
        proc.send_signal(signal.SIGTERM)
        sink.wait_for("STOPPING", timeout=30)
        assert proc.wait(30) == 0
    finally:
        stop(proc)
        sink.close()


BUSY = [
    pytest.param(_dns, free_dns_port, socket.SOCK_DGRAM, "cannot listen on 127.0.0.1:{port} (--listen)",
                 id="dns-udp-port-busy"),
    pytest.param(_proxy, free_port, socket.SOCK_STREAM,
                 "HTTP(S) proxy cannot listen on 127.0.0.1:{port} (--listen): address already in use",
                 id="proxy-port-busy"),
    pytest.param(_dashboard, free_port, socket.SOCK_STREAM, "cannot start on 127.0.0.1:{port} (--listen)",
                 id="dashboard-port-busy"),
]


@pytest.mark.parametrize(("argv", "port_for", "kind", "says"), BUSY)
def test_busy_port_is_a_status_and_exit_1_never_ready(tmp_path: Path, argv: Callable[[int, Path], list[str]],
                                                      port_for: Callable[[], int], kind: int,
                                                      says: str) -> None:
    sink = NotifySocket(tmp_path / "notify")
    port = port_for()
    squatter = socket.socket(socket.AF_INET, kind)
    squatter.bind(("127.0.0.1", port))
    if kind == socket.SOCK_STREAM:
        squatter.listen()
    proc = start(argv(port, tmp_path), tmp_path, "server", env=sink.env())
    try:
        assert proc.wait(60) == 1
        sink.sock.settimeout(1)
        got = sink.sock.recv(65536).decode()  # the one message: the error, never READY=1
        assert got.startswith("STATUS=") and "READY=1" not in got, got
        assert says.format(port=port) in got, got
        assert "--listen" in got and "regular@" not in got, got
        err = (tmp_path / "server.err").read_text()
        assert "--listen" in err and "regular@" not in err, err
    finally:
        stop(proc)
        squatter.close()
        sink.close()


def test_only_the_first_dns_worker_speaks_to_the_manager(tmp_path: Path) -> None:
    """NotifyAccess=main: with --workers 2 one READY=1 arrives (from the PID systemd started)."""
    sink = NotifySocket(tmp_path / "notify")
    port = free_dns_port()
    proc = start([*_dns(port, tmp_path), "--workers", "2"], tmp_path, "server", env=sink.env())
    try:
        sink.wait_for("READY", while_alive=proc)
        assert _dns_answered(port)
        err = tmp_path / "server.err"
        assert eventually(lambda: err.read_text().count("egress-filter dns: ready (") == 2), err.read_text()
        sink.sock.settimeout(0.5)  # the second worker is serving too, and said nothing here
        with pytest.raises(TimeoutError):
            sink.sock.recv(65536)
    finally:
        stop(proc)
        sink.close()
