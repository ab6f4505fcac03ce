"""Transparent mode, end to end, on a network the test builds and removes.

Three namespaces, joined by veth pairs::

    client 10.88.1.2 ── 10.88.1.1 gateway 10.88.2.1 ── 10.88.2.2 origin
                                                        192.0.2.10 (TikTok's network in the policy)

The gateway forwards IP and, with the nftables rules that docs/proxy.md gives
as the deployment recipe (``GATEWAY_RULES``, the same text), redirects TCP
80/443 and UDP 443 arriving from the client side to ``egress-filter proxy
--mode transparent``, which runs inside the gateway.  The origin serves HTTP
on 80, HTTPS on 443 and QUIC on UDP 443 with its own test CA's certificate
(``netns_origin.py``).  The client is curl with ``--resolve`` and no proxy
setting at all, as a device behind a corporate gateway would be.

What mitmproxy's transparent mode does not do: receive UDP.  Its
``TransparentMode.transport_protocol`` is TCP (mitmproxy 11.0.2 and 12.3.1,
where this test passes), so the proxy opens no UDP socket, the redirected
QUIC Initial reaches a port nothing listens on, the gateway's kernel treats
it as for any closed UDP port (ICMP port unreachable) and no QUIC
ClientHello is ever judged: QUIC is refused at the gateway, and clients fall
back to TCP, where the SNI is judged.
``test_quic_is_refused_at_the_gateway`` pins each step of that, so the day a
mitmproxy listens on UDP in transparent mode this test fails and says so.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.netns import REPO, NsServer, in_ns, ip, namespaces, python_in, veth

from .helpers import FULL, Pki, make_pki, write_policy

pytestmark = pytest.mark.e2e  # needs root, iproute2 and nftables (.ci/install-tools)

CLIENT, GATEWAY_LAN, GATEWAY_WAN, ORIGIN = "10.88.1.2", "10.88.1.1", "10.88.2.1", "10.88.2.2"
BANNED_NET_ORIGIN = "192.0.2.10"  # the test policy's TikTok networks: 192.0.2.0/24
PROXY_PORT = 8080
ALLOWED, BANNED = "allowed.example", "www.tiktok.com"
ORIGIN_CA_ISSUER = "CN=egress-filter test origin CA"

# The deployment recipe (docs/proxy.md shows this text); LAN is the client-side interface.
GATEWAY_RULES = """\
table inet egress_filter {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        iifname "LAN" tcp dport { 80, 443 } redirect to :8080
        iifname "LAN" udp dport 443 redirect to :8080
    }
}
"""


@dataclass
class Net:
    client: str
    gateway: str
    origin: str
    lan_dev: str
    origin_log: Path
    proxy_log: Path
    events: Path

    def new_events(self, before: int, count: int = 0, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Events written after the first ``before``; with ``count``, wait until that many are."""
        deadline = time.monotonic() + timeout
        while True:
            lines = self.events.read_text().splitlines() if self.events.exists() else []
            if len(lines) - before >= count or time.monotonic() > deadline:
                return [json.loads(line) for line in lines[before:]]
            time.sleep(0.05)

    def event_count(self) -> int:
        return len(self.events.read_text().splitlines()) if self.events.exists() else 0

    def origin_seen(self) -> list[str]:
        return [line for line in self.origin_log.read_text().splitlines() if line != "ready"]


def nft_rules(lan_dev: str) -> str:
    return GATEWAY_RULES.replace('"LAN"', f'"{lan_dev}"')


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("transparent-pki"), [ALLOWED, BANNED])


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[Net]:
    d = tmp_path_factory.mktemp("transparent")
    with namespaces("egf-tp", "c", "g", "o") as ns:
        tag = ns["c"].rsplit("c", 1)[1]
        c, g, o = ns["c"], ns["g"], ns["o"]
        lan, wan = f"egftl{tag}", f"egftw{tag}"
        veth(c, f"egftc{tag}", f"{CLIENT}/24", g, lan, f"{GATEWAY_LAN}/24")
        veth(o, f"egfto{tag}", f"{ORIGIN}/24", g, wan, f"{GATEWAY_WAN}/24")
        ip("-n", o, "addr", "add", f"{BANNED_NET_ORIGIN}/32", "dev", f"egfto{tag}")
        ip("-n", c, "route", "add", "default", "via", GATEWAY_LAN)
        ip("-n", o, "route", "add", "default", "via", GATEWAY_WAN)
        ip("-n", g, "route", "add", f"{BANNED_NET_ORIGIN}/32", "via", ORIGIN)
        subprocess.run(in_ns(g, "sysctl", "-qw", "net.ipv4.ip_forward=1"), check=True, timeout=10)
        subprocess.run(in_ns(g, "nft", "-f", "-"), input=nft_rules(lan), text=True, check=True,
                       capture_output=True, timeout=10)
        origin_log = d / "origin.log"
        origin = NsServer(python_in(o, "-m", "tests.proxy.netns_origin", str(pki.cert), str(pki.key)),
                          origin_log, lambda: "ready" in origin_log.read_text())
        try:
            policy = write_policy(d)
            proxy_log, events = d / "proxy.log", d / "events.jsonl"
            proxy = NsServer(python_in(g, "-m", "egress_filter.cli", "proxy", "--mode", "transparent",
                                       "--listen", f"{GATEWAY_LAN}:{PROXY_PORT}", "--policy", str(policy),
                                       "--at", FULL, "--confdir", str(d / "mitmproxy"), "--log", str(events)),
                             proxy_log, lambda: "listening at" in proxy_log.read_text())
            try:
                yield Net(c, g, o, lan, origin_log, proxy_log, events)
            finally:
                proxy.stop()
                assert "Traceback" not in proxy_log.read_text(), proxy_log.read_text()
        finally:
            origin.stop()


def curl(net: Net, url: str, name: str, address: str, cafile: Path) -> subprocess.CompletedProcess[str]:
    """curl in the client namespace: no proxy settings, the name pinned to an address."""
    port = "443" if url.startswith("https:") else "80"
    return subprocess.run(
        in_ns(net.client, "curl", "-sv", "--noproxy", "*", "--max-time", "8", "--cacert", str(cafile),
              "--resolve", f"{name}:{port}:{address}", "-o", "-", "-w", "\nstatus=%{http_code}", url),
        capture_output=True, text=True, timeout=20)


def decided(events: list[dict[str, Any]]) -> list[tuple[str, str, str, int]]:
    """(action, decided_by or value, destination ip, destination port) of each event."""
    out = []
    for e in events:
        eg = e["egress"]
        dest = e.get("destination", {})
        by = eg.get("decided_by") or eg["value"]
        out.append((e["event"]["action"], by, dest.get("ip"), dest.get("port")))
    return out


CASES = [
    # (scheme, name in the URL, address it is pinned to, outcome: HTTP status or "closed",
    #  events: (action, decided by, destination ip, destination port))
    pytest.param("https", ALLOWED, ORIGIN, "200", [], id="tls-allowed-passes-through-with-the-origin-cert"),
    pytest.param("https", BANNED, ORIGIN, "closed", [("block", BANNED, ORIGIN, 443)],
                 id="tls-banned-sni-refused"),
    pytest.param("https", ALLOWED, BANNED_NET_ORIGIN, "closed",
                 [("block", BANNED_NET_ORIGIN, BANNED_NET_ORIGIN, 443)],
                 id="tls-allowed-sni-to-a-banned-network-refused"),
    pytest.param("http", ALLOWED, ORIGIN, "200", [], id="http-allowed-host-forwarded"),
    pytest.param("http", BANNED, ORIGIN, "451", [("block", BANNED, ORIGIN, 80)], id="http-banned-host-451"),
    pytest.param("http", ALLOWED, BANNED_NET_ORIGIN, "451",
                 [("block", BANNED_NET_ORIGIN, BANNED_NET_ORIGIN, 80)],
                 id="http-allowed-host-to-a-banned-network-451"),
]


@pytest.mark.parametrize(("scheme", "name", "address", "outcome", "want"), CASES)
def test_transparent(net: Net, pki: Pki, scheme: str, name: str, address: str, outcome: str,
                     want: list[tuple[str, str, str, int]]) -> None:
    before, seen = net.event_count(), len(net.origin_seen())
    done = curl(net, f"{scheme}://{name}/{scheme}", name, address, pki.ca_cert)
    # curl's exit 35: the TLS handshake failed (the proxy closed it at the ClientHello).
    assert done.returncode == (35 if outcome == "closed" else 0), done.stderr
    events = net.new_events(before, len(want))
    assert decided(events) == want
    if outcome == "200":
        assert done.stdout.endswith("status=200")
        assert net.origin_seen()[seen:] == [f"{scheme} {name} /{scheme}"]
        if scheme == "https":
            # Passed through untouched: curl trusts only the origin's CA, and the
            # certificate it got says so (mitmproxy's would be "CN=mitmproxy").
            assert f"issuer: {ORIGIN_CA_ISSUER}" in done.stderr
        return
    if outcome == "451":
        assert done.stdout.endswith("status=451")
    assert net.origin_seen()[seen:] == []  # refused before anything reached the origin
    assert [(e["egress"]["response"], e["source"]["ip"]) for e in events] == [(outcome, CLIENT)]
    if address == BANNED_NET_ORIGIN:
        assert sorted(events[0]["egress"]["names"]) == sorted([name, BANNED_NET_ORIGIN])  # both judged


QUIC = r"""
import sys
from pathlib import Path
from tests.proxy.test_e2e import quic_handshake
print(quic_handshake(443, sys.argv[2], 3.0, Path(sys.argv[3]), host=sys.argv[1]))
"""


def quic_from(ns: str, address: str, sni: str, cafile: Path) -> str:
    done = subprocess.run(python_in(ns, "-c", QUIC, address, sni, str(cafile)), cwd=REPO,
                          capture_output=True, text=True, timeout=30, check=True)
    return done.stdout.strip()


def udp_ports(ns: str) -> set[int]:
    """The local ports of every UDP socket in ``ns`` (IPv4 and IPv6)."""
    ports = set()
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        text = subprocess.run(in_ns(ns, "cat", table), capture_output=True, text=True, check=True,
                              timeout=10).stdout
        ports |= {int(line.split()[1].rsplit(":", 1)[1], 16) for line in text.splitlines()[1:]}
    return ports


QUIC_SNIS = [pytest.param(ALLOWED, id="allowed-sni"), pytest.param(BANNED, id="banned-sni")]


@pytest.mark.parametrize("sni", QUIC_SNIS)
def test_quic_is_refused_at_the_gateway(net: Net, pki: Pki, sni: str) -> None:
    # The control: from the gateway itself (not redirected) the origin completes a QUIC handshake.
    seen = len(net.origin_seen())
    assert quic_from(net.gateway, ORIGIN, sni, pki.ca_cert) == "connected"
    deadline = time.monotonic() + 5
    while net.origin_seen()[seen:] != ["quic"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert net.origin_seen()[seen:] == ["quic"]
    # Why nothing judges it: the transparent-mode proxy has no UDP socket at all.
    assert PROXY_PORT not in udp_ports(net.gateway)
    before, seen = net.event_count(), len(net.origin_seen())
    got = quic_from(net.client, ORIGIN, sni, pki.ca_cert)
    assert got != "connected"
    time.sleep(0.3)
    assert net.origin_seen()[seen:] == []  # redirected to nothing: QUIC never leaves the gateway
    assert net.new_events(before) == []
    # ...and the same client falls back to TCP, where the SNI is judged.
    done = curl(net, f"https://{sni}/fallback", sni, ORIGIN, pki.ca_cert)
    assert done.returncode == (0 if sni == ALLOWED else 35), done.stderr
    assert net.origin_seen()[seen:] == ([f"https {sni} /fallback"] if sni == ALLOWED else [])


def test_the_recipe_is_the_documented_one() -> None:
    """docs/proxy.md shows the gateway rules this test loads, word for word."""
    docs = (REPO / "docs" / "proxy.md").read_text(encoding="utf-8")
    assert GATEWAY_RULES.replace('"LAN"', '"lan0"') in docs
