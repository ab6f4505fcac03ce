"""One observation, one verdict, in every component (issue 9).

A table of observations (DNS names, SNIs, HTTP URLs, destination IPs) runs
through the three real components on one policy file:

* ``dns``: the resolver process (``egress-filter dns --log-all``) on loopback,
  with a loopback authority as its upstream, asked by dnspython;
* ``proxy``: the proxy process (``egress-filter proxy``), asked by real curl;
  ``tests/proxy/loopback_dns.py`` sends every connection it makes to the
  loopback origins, so nothing leaves 127.0.0.1 even where nothing is blocked;
* ``replay``: ``egress-filter replay --format jsonl`` over a pcap crafted with
  scapy holding the same observations.

Which component sees which kind of observation (``SEES``):

=====  ===  =====  ======
kind   dns  proxy  replay
=====  ===  =====  ======
dns    yes  no     yes
sni    no   yes    yes
http   no   yes    yes
ip     no   yes    yes
=====  ===  =====  ======

The resolver answers names only; the proxy never sees a DNS question.  Where
a component sees the kind, each of its events for the observation carries the
row's action, would-be action, apps and rule, and its client; where it does
not, the test asserts that it wrote no event for it.  The proxy writes no
event for an allowed observation, so there the test asserts that curl reached
the origin instead.  The whole table runs four times: in enforce mode, in
monitor mode (``mode: monitor``: nothing is blocked anywhere, a block becomes
``log`` with ``would: block``), for an exempt client (``127.0.0.3``: the
same downgrade, by the exempt rule), and with every built-in rule switched off
in the policy's ``builtins:`` section (their observations are then allowed).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from tests.dns.authority import Authority
from tests.dns.conftest import ResolverProcess
from tests.proxy.conftest import (  # noqa: F401  (fixtures)
    Origin,
    PlainOrigin,
    ProxyRunner,
    origin,
    plain_origin,
    require,
)
from tests.proxy.helpers import ECH_EXT, client_hello_body, client_hello_record
from tests.proxy.helpers import POLICY as PROXY_POLICY
from tests.replay import craft

pytestmark = pytest.mark.e2e
logging.getLogger("scapy.runtime").setLevel(logging.ERROR)  # no "MAC address not found" for loopback frames

REPO = Path(__file__).resolve().parents[1]
DAY = "2020-12-01"  # TikTok in 'full', WeChat in 'downloads'
CLIENT = "127.0.0.1"
EXEMPT = "127.0.0.3"
LOOPBACK_DNS = REPO / "tests" / "proxy" / "loopback_dns.py"

# The proxy tests' policy (TikTok: domains, networks; WeChat: the App Store id), with a download
# host for WeChat, which is in 'downloads' on DAY.
POLICY = PROXY_POLICY + """\
    downloads:
      - {{host: dl.wechat.com, source: test}}
"""

COMPONENTS = ("dns", "proxy", "replay")
SEES = {
    "dns": frozenset({"dns", "replay"}),
    "sni": frozenset({"proxy", "replay"}),
    "http": frozenset({"proxy", "replay"}),
    "ip": frozenset({"proxy", "replay"}),
}


@dataclass(frozen=True)
class Row:
    id: str
    kind: str  # dns, sni, http, ip
    value: str  # the name, URL or address, as the event's egress.value carries it
    action: str  # in enforce mode, for a client that is not exempt
    apps: tuple[str, ...]
    rule: str | None
    qtype: str = "A"
    ech: bool = False  # a ClientHello with an encrypted_client_hello extension (the name is its outer SNI)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.value)


STORE_URL = "http://apps.apple.com/us/app/wechat/id414478124"
OTHER_STORE_URL = "http://apps.apple.com/us/app/signal-private-messenger/id874139669"

ROWS = [
    Row("dns-app-domain", "dns", "www.tiktok.com", "block", ("tiktok",), "domain:tiktok.com"),
    Row("dns-app-domain-downloads-phase", "dns", "www.wechat.com", "log", ("wechat",), "domain:wechat.com"),
    Row("dns-allowed-name", "dns", "www.example.org", "allow", (), None),
    Row("dns-doh-endpoint", "dns", "dns.google", "block", (), "builtin:doh"),
    Row("dns-doh-canary", "dns", "use-application-dns.net", "block", (), "builtin:canary"),
    Row("dns-private-relay", "dns", "mask.icloud.com", "block", (), "builtin:private-relay"),
    Row("dns-private-relay-h2", "dns", "mask-h2.icloud.com", "block", (), "builtin:private-relay"),
    Row("dns-ddr", "dns", "_dns.resolver.arpa", "block", (), "builtin:ddr", qtype="SVCB"),
    Row("dns-download-host", "dns", "dl.wechat.com", "block", ("wechat",), "download:dl.wechat.com"),
    Row("sni-app-domain", "sni", "www.tiktok.com", "block", ("tiktok",), "domain:tiktok.com"),
    Row("sni-allowed-name", "sni", "allowed.example", "allow", (), None),
    Row("sni-doh-endpoint", "sni", "dns.google", "block", (), "builtin:doh"),
    Row("sni-private-relay", "sni", "mask.icloud.com", "block", (), "builtin:private-relay"),
    Row("sni-download-host", "sni", "dl.wechat.com", "block", ("wechat",), "download:dl.wechat.com"),
    Row("sni-ech-client-hello", "sni", "ech-outer.example", "log", (), "builtin:ech", ech=True),
    Row("http-store-url-banned-app", "http", STORE_URL, "block", ("wechat",), "store:apple:414478124"),
    Row("http-store-url-other-app", "http", OTHER_STORE_URL, "allow", (), None),
    Row("ip-app-network", "ip", "192.0.2.5", "block", ("tiktok",), "network:192.0.2.0/24"),
    Row("ip-doh-resolver", "ip", "1.1.1.1", "block", (), "builtin:doh"),
]


@dataclass(frozen=True)
class Setting:
    """One run of the whole table: the policy's mode and the client that asks."""

    id: str
    mode: str
    client: str
    builtins_off: bool = False  # the policy's builtins: section switches every built-in rule off

    def expect(self, row: Row) -> tuple[str, str, tuple[str, ...], str | None]:
        """(action, would, apps, rule) of every event for ``row`` in this setting."""
        if self.builtins_off and (row.rule or "").startswith("builtin:"):
            return ("allow", "allow", (), None)
        downgrade = self.mode == "monitor" or self.client == EXEMPT
        action = "log" if downgrade and row.action == "block" else row.action
        return (action, row.action, row.apps, row.rule)

    def policy(self) -> str:
        off = "builtins: {doh: false, canary: false, private_relay: false, ddr: false, ech: off}\n"
        return (off if self.builtins_off else "") + POLICY.format(mode=self.mode, exempt=f"{EXEMPT}/32")


SETTINGS = {
    "enforce": Setting("enforce", "enforce", CLIENT),
    "monitor": Setting("monitor", "monitor", CLIENT),
    "exempt-client": Setting("exempt-client", "enforce", EXEMPT),
    "builtins-off": Setting("builtins-off", "enforce", CLIENT, builtins_off=True),
}


@dataclass
class Run:
    """What each component wrote (events by (kind, value)) and what the proxy's clients got."""

    events: dict[str, dict[tuple[str, str], list[dict[str, Any]]]]
    forwarded: set[str]  # names the resolver asked its upstream
    curl: dict[str, tuple[int, str]]  # row id -> (curl's exit code, http status or connect status)


def by_key(events: list[dict[str, Any]]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for ev in events:
        out.setdefault((ev["egress"]["kind"], ev["egress"]["value"]), []).append(ev)
    return out


def expected_events(setting: Setting, component: str, rows: list[Row]) -> int:
    """How many observations ``component`` must log at least (the proxy logs no plain allow)."""
    return sum(1 for r in rows if component in SEES[r.kind]
               and (component != "proxy" or setting.expect(r)[0] != "allow"))


# --- the three components -------------------------------------------------------------


def run_dns(setting: Setting, policy: Path, workdir: Path) -> tuple[list[dict[str, Any]], set[str]]:
    """The resolver's events, and the names it forwarded to its upstream."""
    upstream = Authority()
    resolver = ResolverProcess(["--policy", str(policy), "--at", DAY, "--log-all",
                                "--upstream", f"{upstream.host}:{upstream.port}"], workdir)
    try:
        for row in ROWS:
            if "dns" in SEES[row.kind]:
                q = dns.message.make_query(row.value, row.qtype)
                dns.query.udp(q, resolver.host, port=resolver.port, source=setting.client, timeout=5)
        events = resolver.events(expected_events(setting, "dns", ROWS), timeout=10)
        return events, {name for name, _, _ in upstream.asked}
    finally:
        resolver.stop()
        upstream.stop()


def curl_args(row: Row, setting: Setting) -> list[str]:
    """curl's source address and URL for ``row``: TLS to the name or address (``-k``: where it is
    let through, the loopback origin's certificate does not carry every name), plain HTTP to a URL."""
    args = ["--interface", setting.client]
    if row.kind in ("sni", "ip"):
        return [*args, "-k", f"https://{row.value}/one-verdict"]
    return [*args, row.value]


def hello_through(port: int, sni: str, client: str) -> str:
    """CONNECT to ``sni``:443 from ``client``, then a ClientHello with ECH; the CONNECT's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(client, 0)) as s:
        s.sendall(f"CONNECT {sni}:443 HTTP/1.1\r\nHost: {sni}:443\r\n\r\n".encode())
        reply = s.recv(4096)
        status = reply.split(b" ", 2)[1].decode()
        if status == "200":
            s.sendall(client_hello_record(client_hello_body(sni, extensions=(ECH_EXT,))))
            s.settimeout(5)
            try:
                s.recv(4096)  # the origin's answer, or the connection closed: the hello was judged
            except (TimeoutError, ConnectionResetError):
                pass
        return status


def run_proxy(setting: Setting, policy: Path, workdir: Path, tls: Origin,
              plain: PlainOrigin) -> tuple[list[dict[str, Any]], dict[str, tuple[int, str]]]:
    runner = ProxyRunner(workdir, tls)
    got: dict[str, tuple[int, str]] = {}
    try:
        proxy = runner.start("--policy", str(policy), "--at", DAY, "--set", f"scripts={LOOPBACK_DNS}",
                             env={"EGRESS_TEST_ORIGINS": f"{plain.port},{tls.port}"})
        for row in ROWS:
            if "proxy" not in SEES[row.kind]:
                continue
            if row.ech:  # curl sends no ECH: a ClientHello of our own through a CONNECT tunnel
                got[row.id] = (0, hello_through(proxy.port, row.value, setting.client))
                continue
            out = subprocess.run(
                [require("curl"), "-sS", "--max-time", "10", "--proxy", proxy.url, "-o", "/dev/null",
                 "-w", "%{http_connect} %{http_code}", *curl_args(row, setting)],
                capture_output=True, text=True, timeout=30)
            connect, code = out.stdout.split()
            got[row.id] = (out.returncode, connect if connect not in ("000", "200") else code)
        return proxy.events(expected_events(setting, "proxy", ROWS), timeout=10), got
    finally:
        runner.stop_all()


def capture(setting: Setting, path: Path) -> Path:
    packets: list[Any] = []
    for n, row in enumerate(ROWS):
        sport = 41000 + n
        if row.kind == "dns":
            packets.append(craft.udp(craft.dns_query(row.value, n + 1, row.qtype), sport=sport,
                                     src=setting.client))
        elif row.kind == "sni":
            packets += craft.tcp_segments(craft.client_hello(row.value, ech=row.ech), 1400, sport=sport,
                                          src=setting.client)
        elif row.kind == "ip":
            packets += craft.tcp_segments(craft.client_hello(None), 1400, sport=sport, src=setting.client,
                                          dst=row.value)
        else:
            host, _, path_ = row.value.removeprefix("http://").partition("/")
            request = f"GET /{path_} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: one-verdict\r\n\r\n".encode()
            packets += craft.tcp_segments(request, 1400, sport=sport, dport=80, src=setting.client)
    return craft.write_pcap(path, craft.link(packets, craft.LINK_ETHERNET))


def run_replay(setting: Setting, policy: Path, workdir: Path) -> list[dict[str, Any]]:
    pcap = capture(setting, workdir / "one-verdict.pcap")
    out = subprocess.run(
        [sys.executable, "-m", "egress_filter.cli", "replay", "--policy", str(policy), "--at", DAY,
         "--format", "jsonl", "--no-progress", str(pcap)],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.fixture(scope="module", params=list(SETTINGS), ids=list(SETTINGS))
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        origin: Origin, plain_origin: PlainOrigin) -> Iterator[tuple[Setting, Run]]:  # noqa: F811
    setting = SETTINGS[request.param]
    workdir = tmp_path_factory.mktemp(f"one-verdict-{setting.id}")
    policy = workdir / "policy.yaml"
    policy.write_text(setting.policy(), encoding="utf-8")
    proxy_events, curl = run_proxy(setting, policy, workdir, origin, plain_origin)
    dns_events, forwarded = run_dns(setting, policy, workdir)
    events = {
        "dns": by_key(dns_events),
        "proxy": by_key(proxy_events),
        "replay": by_key(run_replay(setting, policy, workdir)),
    }
    yield setting, Run(events, forwarded, curl)


def verdicts(events: list[dict[str, Any]]) -> set[tuple[str, str, tuple[str, ...], str | None]]:
    return {(e["egress"]["action"], e["egress"]["would"], tuple(e["egress"]["apps"]), e["egress"]["rule"])
            for e in events}


# --- the table ------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
@pytest.mark.parametrize("component", COMPONENTS, ids=list(COMPONENTS))
def test_same_verdict_in_every_component(run: tuple[Setting, Run], component: str, row: Row) -> None:
    setting, result = run
    events = result.events[component].get(row.key, [])
    want = setting.expect(row)
    if component not in SEES[row.kind]:
        assert events == [], f"{component} cannot see a {row.kind} observation, yet logged one"
        return
    if component == "proxy":
        rc, status = result.curl[row.id]
        if want[0] == "allow":
            # The proxy logs no plain allow: the request must have reached an origin instead.
            assert events == [] and status == "200", (rc, status)
            return
        # Blocked: refused with 451 or closed unanswered (curl exit 35/56); logged: served by an origin.
        assert (status == "200") is (want[0] != "block"), (rc, status)
    assert events, f"{component} wrote no event for {row.key}"
    assert verdicts(events) == {want}
    assert {e.get("source", {}).get("ip") for e in events} == {setting.client}


@pytest.mark.parametrize("component", COMPONENTS, ids=list(COMPONENTS))
def test_no_event_outside_the_table(run: tuple[Setting, Run], component: str) -> None:
    """Every event a component wrote is for an observation of the table that it can see."""
    _, result = run
    keys = {r.key for r in ROWS if component in SEES[r.kind]}
    assert set(result.events[component]) - keys == set()


def test_nothing_blocked_in_monitor_mode_or_for_exempt_clients(run: tuple[Setting, Run]) -> None:
    """Blocked names never reach the upstream and blocked requests never an origin; in monitor
    mode and for an exempt client nothing is blocked: every name is forwarded (the canary and DDR
    too) and every proxy request is served.  With the built-ins off, their names go through."""
    setting, result = run
    names = {r.value.lower() for r in ROWS if r.kind == "dns"}
    blocked = {r.value.lower() for r in ROWS if r.kind == "dns" and setting.expect(r)[0] == "block"}
    assert result.forwarded == names - blocked
    assert {r.id for r in ROWS if r.id in result.curl and result.curl[r.id][1] != "200"} == {
        r.id for r in ROWS if r.kind in ("sni", "http", "ip") and setting.expect(r)[0] == "block"}
    actions = {e["egress"]["action"] for c in COMPONENTS for evs in result.events[c].values() for e in evs}
    assert ("block" in actions) is (setting.id in ("enforce", "builtins-off"))
    if setting.id in ("monitor", "exempt-client"):
        assert blocked == set() and {status for _, status in result.curl.values()} == {"200"}
