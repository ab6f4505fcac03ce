"""What the operations tests share: a real AF_UNIX datagram socket standing in
for systemd's ``$NOTIFY_SOCKET``, free loopback ports, PID checks, and
starting/stopping ``egress-filter`` processes by PID."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import dns.exception
import dns.message
import dns.query

CLI = [sys.executable, "-m", "egress_filter.cli"]


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_dns_port() -> int:
    """A port free for UDP and for TCP (the resolver binds both)."""
    for _ in range(50):
        port = free_port(socket.SOCK_DGRAM)
        with socket.socket() as t:
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise AssertionError("no port free for both UDP and TCP")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie still answers kill(0); it is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


class NotifySocket:
    """A bound datagram socket, as systemd makes one; ``env`` points a child at it."""

    def __init__(self, where: Path | str):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if isinstance(where, Path):
            self.sock.bind(str(where))
            self.address = str(where)
        else:  # an abstract name, written @name in $NOTIFY_SOCKET
            self.sock.bind(b"\0" + where.encode())
            self.address = "@" + where
        self.messages: list[dict[str, str]] = []

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "NOTIFY_SOCKET": self.address, **extra}

    def wait_for(self, key: str, value: str = "1", timeout: float = 60.0,
                 while_alive: subprocess.Popen[bytes] | None = None) -> dict[str, str]:
        """The first message (after those already read) with key=value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.2)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                if while_alive is not None and while_alive.poll() is not None:
                    raise AssertionError(f"the process exited ({while_alive.returncode}) before {key}={value}"
                                         ) from None
                continue
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)
            if fields.get(key) == value:
                return fields
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


def dns_answers(port: int, name: str = "www.tiktok.com", timeout: float = 1.0) -> dns.message.Message | None:
    try:
        return dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=timeout)
    except (OSError, dns.exception.Timeout):
        return None


def tcp_accepts(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex(("127.0.0.1", port)) == 0


def start(args: list[str], tmp: Path, name: str, env: dict[str, str] | None = None,
          session: bool = False) -> subprocess.Popen[bytes]:
    """``egress-filter ARGS`` with stdout and stderr in files under ``tmp``
    (no pipe to fill up), HOME there too (mitmproxy's CA, the store)."""
    out = (tmp / f"{name}.out").open("wb")
    err = (tmp / f"{name}.err").open("wb")
    env = {**(env or os.environ), "HOME": str(tmp)}
    try:
        return subprocess.Popen([*CLI, *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                                start_new_session=session)  # session: its own process group, as in a terminal
    finally:
        out.close()
        err.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM by PID, then SIGKILL; the exit code."""
    if proc.poll() is None:
        proc.terminate()
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout)


def eventually(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False
