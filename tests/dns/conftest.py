"""Fixtures for the resolver's tests: a real upstream, a real resolver process, a real client.

``authority`` is tests.dns.authority.Authority on a free loopback port.
``resolver(...)`` starts ``python -m egress_filter.cli dns`` with the given
flags (and optionally a lowered file limit, ``nofile=``) on ``127.0.0.1:0``
(the process prints the port it got), always with
``--upstream`` pointing at a test authority (never the internet), and stops
it by PID at teardown.  ``write_policy`` writes a small policy whose
schedules put TikTok in ``full`` and WeChat in ``downloads`` on TEST_DAY.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import dns.query
import dns.rcode
import pytest

from .authority import Authority

REPO = Path(__file__).resolve().parents[2]
TEST_DAY = "2021-01-01"
EXEMPT = "127.0.0.3"
OUTSIDER = "127.0.0.2"

POLICY = """\
version: 1
timezone: UTC
mode: {mode}
exempt_clients: ["{exempt}/32"]
sources:
  eo13942: "Executive Order 13942, 85 FR 48637"
  eo13943: "Executive Order 13943, 85 FR 48641"
{settings}
apps:
  - id: tiktok
    name: TikTok
    owner: ByteDance
    legal_basis: {{order: "EO 13942", citation: "85 FR 48637"}}
    schedule:
      - {{from: 2020-09-20, phase: downloads, source: eo13942}}
      - {{from: 2020-11-12, phase: full, source: eo13942}}
    domains: [tiktok.test, tiktokcdn.test]
  - id: wechat
    name: WeChat
    owner: Tencent
    legal_basis: {{order: "EO 13943", citation: "85 FR 48641"}}
    schedule:
      - {{from: 2020-09-20, phase: downloads, source: eo13943}}
{wechat_full}
    domains: [wechat.test]
    downloads:
      - {{host: dl.wechat.test}}
"""


def policy_text(mode: str = "enforce", settings: str = "", wechat_full: str | None = None) -> str:
    full = f"      - {{from: {wechat_full}, phase: full, source: eo13943}}" if wechat_full else ""
    return POLICY.format(mode=mode, exempt=EXEMPT, settings=settings, wechat_full=full)


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    def write(name: str = "policy.yaml", **kw: Any) -> Path:
        path = tmp_path / name
        tmp = path.with_suffix(".tmp")
        tmp.write_text(policy_text(**kw), encoding="utf-8")
        os.replace(tmp, path)  # atomic, so the watcher never reads half a file
        return path
    return write


def serve_authority() -> Iterator[Authority]:
    auth = Authority()
    try:
        yield auth
    finally:
        auth.stop()


authority = pytest.fixture(serve_authority, name="authority")
# A second upstream: the "corporate" one of the forwarding tests, the healthy next one of the failover tests.
corp = pytest.fixture(serve_authority, name="corp")


class ResolverProcess:
    def __init__(self, args: list[str], workdir: Path, nofile: int | None = None):
        self.workdir = workdir
        self.stderr_path = workdir / f"resolver-{time.monotonic_ns()}.err"
        self.log_path = workdir / f"events-{time.monotonic_ns()}.jsonl"
        if "--log" not in args:
            args = [*args, "--log", str(self.log_path)]
        cmd = [sys.executable, "-m", "egress_filter.cli", "dns", *args]
        if "--listen" not in args:
            cmd += ["--listen", "127.0.0.1:0"]
        self._err = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err, preexec_fn=None if nofile is None else
                                     lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile)))
        self.addresses: list[tuple[str, int]] = []
        self.metrics_url: str | None = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = self.stderr()
            if "ready" in text:
                for host, port in re.findall(r"listening on \[?([0-9a-f.:]+?)\]?:(\d+) ", text):
                    self.addresses.append((host, int(port)))
                m = re.search(r"metrics on (http://\S+)", text)
                self.metrics_url = m.group(1) if m else None
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"resolver did not start:\n{self.stderr()}")

    @property
    def host(self) -> str:
        return self.addresses[0][0]

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def rss_kib(self, field: str = "VmRSS") -> int:
        """The process's resident set (VmRSS; VmHWM for its peak) from /proc, in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.M).group(1))  # type: ignore[union-attr]

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def ask(self, name: str, rdtype: str = "A", *, tcp: bool = False, source: str | None = None,
            edns: int | bool = 0, timeout: float = 4.0, host: str | None = None,
            port: int | None = None) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, use_edns=edns)
        where = host or self.host
        if tcp:
            return dns.query.tcp(q, where, timeout=timeout, port=port or self.port, source=source)
        return dns.query.udp(q, where, timeout=timeout, port=port or self.port, source=source,
                             ignore_trailing=False)

    def events(self, expect: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Event lines written so far (waiting until at least ``expect`` appear)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = []
            if self.log_path.exists():
                # The last piece is a line still being written (no newline yet): leave it.
                whole = self.log_path.read_text().split("\n")[:-1]
                lines = [json.loads(x) for x in whole if x.strip()]
            if len(lines) >= expect or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
        return int(self.proc.returncode)


@pytest.fixture
def resolver(tmp_path: Path) -> Iterator[Callable[..., ResolverProcess]]:
    started: list[ResolverProcess] = []

    def start(*args: str, nofile: int | None = None) -> ResolverProcess:
        """``nofile``: the process's RLIMIT_NOFILE (soft and hard), set before exec."""
        assert "--upstream" in args, "tests must name a loopback upstream"
        proc = ResolverProcess(list(args), tmp_path, nofile)
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            proc.stop()


def ede(msg: dns.message.Message) -> list[tuple[int, str]]:
    return [(int(o.code), o.text or "") for o in msg.options if isinstance(o, dns.edns.EDEOption)]


def rcode(msg: dns.message.Message) -> str:
    return dns.rcode.to_text(msg.rcode())


def addresses(msg: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype in (1, 28))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
