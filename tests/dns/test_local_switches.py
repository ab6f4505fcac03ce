"""Local-domain and single-label NXDOMAIN can be switched off (issue 14).

``settings.dns.local_domains: []`` (no local domains) and
``settings.dns.block_single_label: false`` (Pi-hole's "Never forward
non-FQDNs" unchecked, dnsmasq without ``domain-needed``), each on its own and
together, in a real resolver process with a real loopback upstream: what
the switch turns off goes to the upstream, the rest is still answered here.
A ``--config`` file may not set them; a wrong value is ``file:line: field:
message`` at load (the BAD table of tests/dns/test_local.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from .authority import Authority
from .conftest import REPO, TEST_DAY, ResolverProcess, rcode

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]

NAMES = ("fileserver", "printer.lan", "nas.home.arpa", "7.7.10.in-addr.arpa", "nas")
LOCAL = "    local: ['nas 192.168.1.10']\n"  # a single-label local record: answered here either way

# (id, settings.dns lines, the names that must reach the upstream; the others are answered here)
CASES = [
    pytest.param("", (), id="defaults"),
    pytest.param("    block_single_label: true\n", (), id="single-label-on-explicitly"),
    pytest.param("    block_single_label: false\n", ("fileserver",), id="single-label-off"),
    pytest.param("    local_domains: []\n", ("printer.lan", "nas.home.arpa", "7.7.10.in-addr.arpa"),
                 id="no-local-domains"),
    pytest.param("    local_domains: []\n    block_single_label: false\n",
                 ("fileserver", "printer.lan", "nas.home.arpa", "7.7.10.in-addr.arpa"), id="both-off"),
    pytest.param("    local_domains: [home.arpa]\n    block_single_label: false\n",
                 ("fileserver", "printer.lan", "7.7.10.in-addr.arpa"), id="one-local-domain-left"),
]


@pytest.mark.parametrize(("lines", "forwarded"), CASES)
def test_what_reaches_the_upstream(lines: str, forwarded: tuple[str, ...], resolver: Start,
                                   authority: Authority, write_policy: Callable[..., Path]) -> None:
    policy = write_policy(settings=f"settings:\n  dns:\n{LOCAL}{lines}")
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    for name in NAMES:
        m = r.ask(name, "PTR" if name.endswith(".arpa") else "A", edns=0)
        asked = authority.count(name)
        assert asked == (1 if name in forwarded else 0), (name, asked)
        if name == "nas":
            assert rcode(m) == "NOERROR"
            assert [rd.to_text() for rs in m.answer for rd in rs] == ["192.168.1.10"]
        else:  # the upstream has none of these names either: NXDOMAIN, from it or from here
            assert rcode(m) == "NXDOMAIN"


def test_a_config_file_may_not_set_it(tmp_path: Path, authority: Authority) -> None:
    config = tmp_path / "dns.yaml"
    config.write_text("block_single_label: false\n", encoding="utf-8")
    proc = subprocess.run([sys.executable, "-m", "egress_filter.cli", "dns", "--config", str(config),
                           "--listen", "127.0.0.1:0", "--upstream", authority.address], cwd=REPO,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert (f"{config}: block_single_label: set it in the policy's settings.dns, where it is checked"
            in proc.stderr)
