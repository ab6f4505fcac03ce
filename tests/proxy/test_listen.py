"""Squid's port: ``--listen 0.0.0.0:3128`` is accepted when asked for, and warned about.

"Never answer the open internet by default": the proxy listens on loopback
unless a non-loopback address is given explicitly (``--listen``, a mode's
``@HOST:PORT``, or ``settings.proxy.listen``); ``:PORT`` means loopback,
not every interface, as it would in mitmproxy.  Every listener off loopback
gets a warning on stderr.  Each case runs the real proxy in a namespace of
its own (only ``lo``, which also holds 10.99.0.1), so a wildcard
listener is never reachable from anywhere else, and checks where it really
listens by connecting to both addresses from inside that namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.netns import NsServer, ip, namespaces, python_in

from .helpers import write_policy

pytestmark = pytest.mark.e2e  # needs root and iproute2

PORT = 3128
LAN = "10.99.0.1"
WARNING = "not on loopback"

# Runs in the namespace: 'open' or 'closed' for each address given.
PROBE = r"""
import socket, sys
out = []
for host in sys.argv[1:]:
    with socket.socket() as s:
        s.settimeout(2)
        out.append("open" if s.connect_ex((host, int(PORT))) == 0 else "closed")
print(" ".join(out))
""".replace("PORT", str(PORT))


@pytest.fixture
def ns() -> Iterator[str]:
    with namespaces("egf-listen", "p") as names:
        name = names["p"]
        ip("-n", name, "addr", "add", f"{LAN}/32", "dev", "lo")  # a second, non-loopback, address
        yield name


def probe(ns: str) -> str:
    done = subprocess.run(python_in(ns, "-c", PROBE, "127.0.0.1", LAN), capture_output=True, text=True,
                          timeout=20, check=True)
    return done.stdout.strip()


LISTENS = [
    # (flags, what 127.0.0.1 and 10.99.0.1 see, warned about)
    pytest.param(["--listen", f"127.0.0.1:{PORT}"], "open closed", None, id="loopback-quiet"),
    pytest.param(["--listen", f":{PORT}"], "open closed", None, id="bare-port-means-loopback"),
    pytest.param(["--listen", f"0.0.0.0:{PORT}"], "open open", f"0.0.0.0:{PORT} (regular)",
                 id="squid-style-wildcard-warned"),
    pytest.param(["--listen", f"{LAN}:{PORT}"], "closed open", f"{LAN}:{PORT} (regular)",
                 id="lan-address-warned"),
    pytest.param(["--listen", "127.0.0.1:8080", "--proxy-mode", f"regular@0.0.0.0:{PORT}"], "open open",
                 f"0.0.0.0:{PORT} (regular)", id="mode-spec-wildcard-warned"),
]


@pytest.mark.parametrize(("flags", "reachable", "warned"), LISTENS)
def test_listen_address(ns: str, tmp_path: Path, flags: list[str], reachable: str, warned: str | None
                        ) -> None:
    policy = write_policy(tmp_path)
    log = tmp_path / "proxy.log"
    cmd = python_in(ns, "-m", "egress_filter.cli", "proxy", "--policy", str(policy),
                    "--confdir", str(tmp_path / "conf"), "--log", str(tmp_path / "events.jsonl"), *flags)
    server = NsServer(cmd, log, lambda: "listening at" in log.read_text())  # mitmproxy's line
    try:
        assert probe(ns) == reachable
    finally:
        server.stop()
    text = log.read_text()  # the whole log: the warning comes once the servers are up
    warnings = [line for line in text.splitlines() if WARNING in line]
    if warned is None:
        assert warnings == [], text
    else:
        assert len(warnings) == 1, text
        assert f"listens on {warned}" in warnings[0]
        assert "Firewall it to your LAN" in warnings[0]
