"""`egress-filter run` (what `make run` starts): both servers come up on the
bundled policy, answer as the policy says, and one SIGINT stops both by PID."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import httpx
import pytest

from tests.ops.helpers import pid_alive

pytestmark = pytest.mark.e2e


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for the servers")


def test_run_starts_both_servers_and_ctrl_c_stops_them(tmp_path: Path) -> None:
    dns_port = _free_port(socket.SOCK_DGRAM)
    proxy_port = _free_port(socket.SOCK_STREAM)
    dash_port = _free_port(socket.SOCK_STREAM)
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "HOME": str(tmp_path)}  # mitmproxy's CA goes to a temporary ~/.mitmproxy
    proc = subprocess.Popen(
        [sys.executable, "-m", "egress_filter.cli", "run",
         "--dns-listen", f"127.0.0.1:{dns_port}", "--proxy-listen", f"127.0.0.1:{proxy_port}",
         "--dashboard-listen", f"127.0.0.1:{dash_port}",
         "--upstream", "127.0.0.1:9", "--log", str(events)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        query = dns.message.make_query("www.tiktok.com", "A")

        def dns_answers() -> bool:
            try:
                dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=0.5)
                return True
            except (OSError, dns.exception.Timeout):
                return False

        def proxy_listens() -> bool:
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", proxy_port)) == 0

        _wait_for(dns_answers)
        _wait_for(proxy_listens)

        reply = dns.query.udp(query, "127.0.0.1", port=dns_port, timeout=2)
        assert reply.rcode() == dns.rcode.NXDOMAIN

        with httpx.Client(proxy=f"http://127.0.0.1:{proxy_port}", timeout=5) as client:
            page = client.get("http://www.tiktok.com/", headers={"Accept": "application/json"})
        assert page.status_code == 451
        assert page.json()["apps"][0]["id"] == "tiktok"

        # The store is on by default (under $HOME), shared by both servers, served by the dashboard.
        stored: set[str] = set()

        def both_stored() -> bool:
            try:
                doc = httpx.get(f"http://127.0.0.1:{dash_port}/api/events?app=tiktok", timeout=2).json()
            except httpx.HTTPError:
                return False
            stored.update(e["egress"]["component"] for e in doc["events"])
            return stored >= {"dns", "proxy"}

        _wait_for(both_stored)
        assert (tmp_path / ".local/state/egress-filter/events.db").exists()

        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", err)]
    assert len(pids) == 3, err  # dns, proxy, dashboard
    assert f"http://127.0.0.1:{dash_port}/" in err
    assert not any(pid_alive(p) for p in pids)
    logged = events.read_text()
    assert '"component":"dns"' in logged and '"component":"proxy"' in logged
    assert "www.tiktok.com" in logged


def test_run_with_a_bad_policy_exits_1_before_starting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps: []\ncolour: red\n")
    done = subprocess.run([sys.executable, "-m", "egress_filter.cli", "run", "--policy", str(bad)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"{bad}:3: colour: unknown key" in done.stderr
    assert "egress-filter is running" not in done.stderr
