"""`egress-filter run`: one `egress-filter pause` covers both servers (run relays it to each
child's control socket), and each server logs it with who asked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.core.test_holder import wait_for
from tests.dns.authority import Authority
from tests.dns.conftest import TEST_DAY, policy_text

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[1]


def _free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pause(sock: Path, *args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "pause", *args, "--json",
                          "--control", str(sock)], cwd=REPO, capture_output=True, text=True, timeout=30)
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


def _events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().split("\n")[:-1] if x.startswith("{")]


@pytest.mark.parametrize("name", [pytest.param("www.tiktok.test", id="blocked-name")])
def test_one_pause_covers_both_children(tmp_path: Path, name: str) -> None:
    auth = Authority()
    dns_port, proxy_port = _free_port(socket.SOCK_DGRAM), _free_port(socket.SOCK_STREAM)
    sock, log = tmp_path / "ctl" / "run.sock", tmp_path / "events.jsonl"
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    proc = subprocess.Popen(
        [sys.executable, "-m", "egress_filter.cli", "run", "--policy", str(policy), "--at", TEST_DAY,
         "--dns-listen", f"127.0.0.1:{dns_port}", "--proxy-listen", f"127.0.0.1:{proxy_port}",
         "--upstream", auth.address, "--log", str(log), "--no-db", "--control", str(sock)],
        cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "HOME": str(tmp_path)})
    try:
        def ask() -> str:
            try:
                m = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=dns_port, timeout=1)
            except (OSError, dns.exception.Timeout):
                return "no answer"
            return str(dns.rcode.to_text(m.rcode()))

        def both_ready() -> bool:
            st = _pause(sock, "--status") if sock.exists() else {}
            return set(st.get("servers", {})) == {"dns", "proxy"} and bool(st.get("ok"))

        assert wait_for(lambda: ask() == "NXDOMAIN", 30)
        assert wait_for(both_ready, 60), "both children answer on their control sockets"
        assert oct(sock.stat().st_mode & 0o777) == "0o600"

        doc = _pause(sock, "10m")
        assert doc["ok"] is True and {n: s["paused"] for n, s in doc["servers"].items()} == \
            {"dns": True, "proxy": True}
        assert ask() == "NOERROR"
        assert wait_for(lambda: {e["observer"]["type"] for e in _events(log)
                                 if e["event"]["action"] == "enforcement-paused"} == {"dns", "proxy"}, 5)
        for ev in (e for e in _events(log) if e["event"]["action"] == "enforcement-paused"):
            assert ev["user"] == {"id": "0", "name": "root"}
            assert ev["egress"]["pause"]["relay"] == "uid 0 (root)"
            assert "by uid 0 (root)" in ev["event"]["reason"]

        doc = _pause(sock, "--resume")
        assert doc["ok"] is True and not any(s["paused"] for s in doc["servers"].values())
        assert ask() == "NXDOMAIN"
    finally:
        proc.send_signal(signal.SIGINT)  # run stops its children by PID
        try:
            code = proc.wait(20)
        finally:
            if proc.poll() is None:  # only if run itself hung: kill it by PID
                proc.kill()
                proc.wait()
            auth.stop()
    assert code == 0
    assert not sock.exists(), "run removes its socket"
