"""Network namespaces for the tests that build their own network (we are root).

``ip`` runs one iproute2 command; ``namespaces`` creates namespaces with
names unique to this test process and deletes them, by name, whatever
happens (deleting a namespace deletes the veth ends and addresses in it);
``NsServer`` is a process started in one (``ip netns exec``), waited for
until it is ready and stopped by PID.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.proxy.helpers import stop

REPO = Path(__file__).resolve().parents[1]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def in_ns(ns: str, *cmd: str) -> list[str]:
    """``cmd`` run inside namespace ``ns``."""
    return ["ip", "netns", "exec", ns, *cmd]


def python_in(ns: str, *args: str) -> list[str]:
    return in_ns(ns, sys.executable, *args)


@contextlib.contextmanager
def namespaces(prefix: str, *roles: str) -> Iterator[dict[str, str]]:
    """One namespace per role, named ``{prefix}-{role}{pid}``, each with its
    loopback up; all deleted by name at the end."""
    tag = os.getpid() % 100000
    names = {role: f"{prefix}-{role}{tag}" for role in roles}
    try:
        for name in names.values():
            ip("netns", "add", name)
            ip("-n", name, "link", "set", "lo", "up")
        yield names
    finally:
        for name in names.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def veth(a_ns: str, a_dev: str, a_addr: str, b_ns: str, b_dev: str, b_addr: str) -> None:
    """A veth pair between two namespaces, addressed (CIDR) and up."""
    ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev)
    for ns, dev, addr in ((a_ns, a_dev, a_addr), (b_ns, b_dev, b_addr)):
        ip("link", "set", dev, "netns", ns)
        ip("-n", ns, "addr", "add", addr, "dev", dev)
        ip("-n", ns, "link", "set", dev, "up")


class NsServer:
    """A process in a namespace (``cmd`` already wrapped with ``in_ns``), stopped by PID."""

    def __init__(self, cmd: list[str], log: Path, ready: Callable[[], bool], timeout: float = 30.0):
        self.log = log
        self.err = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=self.err,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout
        try:
            while not ready():
                assert self.proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, f"not ready after {timeout} s: {log.read_text()}"
                time.sleep(0.05)
            assert self.proc.poll() is None, log.read_text()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        stop(self.proc)
        self.err.close()
