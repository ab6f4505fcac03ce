"""``egress-filter run`` reports the truth: "is running" (and READY=1 to its
own manager) only after every server said READY=1; a server that cannot
start makes run stop the others by PID and exit 1 with that server's error."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import dns.rcode
import pytest

from .helpers import (
    NotifySocket,
    dns_answers,
    eventually,
    free_dns_port,
    free_port,
    pid_alive,
    start,
    stop,
    tcp_accepts,
)

pytestmark = pytest.mark.e2e

BANNER = "egress-filter is running"


def _run_args(dns_port: int, proxy_port: int, dash_port: int, tmp: Path) -> list[str]:
    return ["run", "--dns-listen", f"127.0.0.1:{dns_port}", "--proxy-listen", f"127.0.0.1:{proxy_port}",
            "--dashboard-listen", f"127.0.0.1:{dash_port}", "--upstream", "127.0.0.1:9",
            "--log", str(tmp / "events.jsonl"), "--db", str(tmp / "events.db")]


def _started(err: str) -> dict[str, int]:
    return {name: int(pid) for name, pid in re.findall(r"started the (\w+) server, pid (\d+)", err)}


def test_banner_and_ready_only_after_every_server_is_ready(tmp_path: Path) -> None:
    sink = NotifySocket(tmp_path / "notify")
    ports = free_dns_port(), free_port(), free_port()
    proc = start(_run_args(*ports, tmp_path), tmp_path, "run", env=sink.env())
    try:
        ready = sink.wait_for("READY", while_alive=proc)
        # At READY=1, every server already answers: no retry loop here.
        reply = dns_answers(ports[0])
        assert reply is not None and reply.rcode() == dns.rcode.NXDOMAIN
        assert tcp_accepts(ports[1]) and tcp_accepts(ports[2])
        err = (tmp_path / "run.err").read_text()
        children = _started(err)
        assert set(children) == {"dns", "proxy", "dashboard"}, err
        assert all(f"{n} pid {p}" in ready["STATUS"] for n, p in children.items()), ready
        banner = err.index(BANNER)
        for line in ("egress-filter dns: ready", "egress-filter proxy: listening on",
                     "egress-filter dashboard: serving"):
            assert -1 < err.find(line) < banner, f"{line!r} should come before the banner:\n{err}"
        assert f"reload the policy: kill -HUP {children['proxy']}" in err  # the proxy's real PID

        proc.send_signal(signal.SIGHUP)  # RELOADING=1, then READY=1 once every server reloaded
        assert "MONOTONIC_USEC" in sink.wait_for("RELOADING", timeout=30, while_alive=proc)
        again = sink.wait_for("READY", timeout=60, while_alive=proc)
        assert again["STATUS"] == "policy reloaded by every server"

        proc.send_signal(signal.SIGTERM)
        sink.wait_for("STOPPING", timeout=30)
        assert proc.wait(30) == 0
        assert eventually(lambda: not any(pid_alive(p) for p in children.values()), 10)
    finally:
        stop(proc)
        sink.close()


BUSY = [
    pytest.param("dns", 0, socket.SOCK_DGRAM, "cannot listen on 127.0.0.1:{port} (--dns-listen): ",
                 id="dns-port-busy"),
    pytest.param("proxy", 1, socket.SOCK_STREAM, "proxy cannot listen on 127.0.0.1:{port} (--proxy-listen): ",
                 id="proxy-port-busy"),
    pytest.param("dashboard", 2, socket.SOCK_STREAM,
                 "cannot start on 127.0.0.1:{port} (--dashboard-listen): ",
                 id="dashboard-port-busy"),
]


@pytest.mark.parametrize(("server", "which", "kind", "error"), BUSY)
def test_a_server_that_cannot_start_stops_the_others(tmp_path: Path, server: str, which: int, kind: int,
                                                     error: str) -> None:
    sink = NotifySocket(tmp_path / "notify")
    ports = [free_dns_port(), free_port(), free_port()]
    squatter = socket.socket(socket.AF_INET, kind)
    squatter.bind(("127.0.0.1", ports[which]))
    if kind == socket.SOCK_STREAM:
        squatter.listen()
    proc = start(_run_args(*ports, tmp_path), tmp_path, "run", env=sink.env())
    try:
        assert proc.wait(90) == 1
        err = (tmp_path / "run.err").read_text()
        flag = {"dns": "--dns-listen", "proxy": "--proxy-listen", "dashboard": "--dashboard-listen"}[server]
        where = f"{flag} 127.0.0.1:{ports[which]}"
        headline = f"egress-filter run: the {server} server ({where}) failed to start: "
        assert headline in err, err
        line = err[err.index(headline):].splitlines()[0]
        assert error.format(port=ports[which]) in line, line
        assert "regular@" not in err, err
        assert " --listen" not in line, line  # the child's flag, translated to run's
        assert BANNER not in err
        children = _started(err)
        assert server in children, err
        assert not any(pid_alive(p) for p in children.values()), children  # run waited for each
        sink.sock.settimeout(1)
        told = sink.sock.recv(65536).decode()  # run's manager hears the error, and never READY=1
        assert "READY=1" not in told and f"the {server} server ({flag}" in told, told
    finally:
        stop(proc)
        squatter.close()
        sink.close()


def test_a_server_that_never_says_ready_is_a_timeout(tmp_path: Path) -> None:
    ports = free_dns_port(), free_port(), free_port()
    proc = start([*_run_args(*ports, tmp_path), "--start-timeout", "0.01"], tmp_path, "run")
    try:
        assert proc.wait(60) == 1
        err = (tmp_path / "run.err").read_text()
        assert re.search(r"server \(--\w+-listen 127\.0\.0\.1:\d+\) failed to start: "
                         r"was not ready within 0\.01 s \(--start-timeout\)", err), err
        assert BANNER not in err
        assert not any(pid_alive(p) for p in _started(err).values())
    finally:
        stop(proc)


def _kill_dns(proc: subprocess.Popen[bytes], children: dict[str, int]) -> None:
    os.kill(children["dns"], signal.SIGKILL)


def _ctrl_c(proc: subprocess.Popen[bytes], children: dict[str, int]) -> None:
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal does: the whole foreground group


@pytest.mark.parametrize(("event", "code", "says"), [
    pytest.param(_ctrl_c, 0, None, id="ctrl-c-to-the-group-is-a-clean-stop"),
    pytest.param(_kill_dns, 1, "the dns server exited with code -9; stopping", id="a-server-dies-later"),
])
def test_after_ready_run_stops_every_server(tmp_path: Path, event: Callable[..., None], code: int,
                                            says: str | None) -> None:
    sink = NotifySocket(tmp_path / "notify")
    ports = free_dns_port(), free_port(), free_port()
    proc = start(_run_args(*ports, tmp_path), tmp_path, "run", env=sink.env(), session=True)
    try:
        sink.wait_for("READY", while_alive=proc)
        children = _started((tmp_path / "run.err").read_text())
        event(proc, children)
        assert proc.wait(60) == code, (tmp_path / "run.err").read_text()
        err = (tmp_path / "run.err").read_text()
        if says:
            assert says in err, err
        else:
            assert "exited with code" not in err and "Traceback" not in err, err
        assert not any(pid_alive(p) for p in children.values()), children
    finally:
        stop(proc)
        sink.close()
