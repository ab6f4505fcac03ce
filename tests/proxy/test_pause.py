"""``egress-filter pause`` on a real proxy process: a banned SNI passes while paused, with
the pause in its event's reason, and is refused again after ``resume``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_holder import wait_for

from .conftest import REPO, Origin
from .helpers import FULL, write_policy
from .test_e2e import curl

pytestmark = pytest.mark.e2e


def pause_cli(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egress_filter.cli", "pause", *args, "--control", str(sock)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("url", [pytest.param("https://www.tiktok.com/", id="banned-sni")])
def test_proxy_pause_and_resume(run_proxy: Any, origin: Origin, tmp_path: Path, url: str) -> None:
    sock = tmp_path / "ctl" / "proxy.sock"
    proxy = run_proxy("--policy", str(write_policy(tmp_path)), "--at", FULL, "--control", str(sock))
    assert wait_for(lambda: sock.exists(), 10), proxy.stderr.read_text()
    assert curl(proxy, origin, url, ca=origin.pki.ca_cert)["rc"] == 35, "refused while enforcing"

    out = pause_cli(sock, "10m")
    assert out.returncode == 0, out.stderr
    r = curl(proxy, origin, url, ca=origin.pki.ca_cert)
    assert r["rc"] == 0 and r["status"] == 200, r
    assert wait_for(lambda: any(e["event"]["action"] == "log" for e in proxy.events()), 5)
    [ev] = [e for e in proxy.events() if e["event"]["action"] == "log"]
    assert ev["egress"]["would"] == "block" and ev["tls"]["client"]["server_name"] == "www.tiktok.com"
    assert ev["event"]["reason"].startswith("enforcement paused until ")
    assert "by uid 0 (root): would be blocked, logged instead" in ev["event"]["reason"]
    [started] = [e for e in proxy.events() if e["event"]["action"] == "enforcement-paused"]
    assert started["observer"]["type"] == "proxy" and started["user"]["name"] == "root"

    assert pause_cli(sock, "--resume").returncode == 0
    assert curl(proxy, origin, url, ca=origin.pki.ca_cert)["rc"] == 35, "refused again"
    assert json.loads(pause_cli(sock, "--status", "--json").stdout)["paused"] is False
    assert wait_for(lambda: any(e["event"]["action"] == "enforcement-resumed" for e in proxy.events()), 5)
