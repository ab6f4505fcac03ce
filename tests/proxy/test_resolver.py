"""One resolver: in ``egress-filter run`` the proxy resolves upstream names
through the DNS filter started beside it, never the system resolver.

The DNS filter's upstream is the loopback test authority (tests/dns/authority.py):
``alias.example.test`` is a CNAME into ``tiktokcdn.test`` (TikTok, blocked),
``origin.example.test`` (added here) is 127.0.0.1, where a plain HTTP origin
listens, and ``nowhere.example.test`` does not exist.  None of these names
resolves through the system resolver, so a 200 from the origin proves the
proxy asked our DNS; the DNS filter's events (``log_all`` on) show the proxy
asking.  Without a resolver that answers, a name the system resolver *would*
resolve (``localhost``) is refused with 502 rather than looked up elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from dnslib import QTYPE, RR, A

from tests.dns import authority as auth_module
from tests.dns.authority import Authority
from tests.dns.conftest import TEST_DAY, policy_text

from .conftest import Origin, PlainOrigin, free_port, require, wait_for_port
from .helpers import FULL, stop

pytestmark = pytest.mark.e2e

SETTINGS = "settings:\n  dns:\n    log_all: true\n"


@dataclass
class Run:
    proxy: str
    events: Path
    stderr: Path

    def dns_asked(self, name: str, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The DNS filter's events about ``name`` (waiting for one)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [e for e in self.read() if e["egress"]["component"] == "dns"
                     and e["egress"]["value"].rstrip(".") == name]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def read(self) -> list[dict[str, Any]]:
        if not self.events.exists():
            return []
        return [json.loads(line) for line in self.events.read_text().splitlines() if line.startswith("{")]


def _udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def authority() -> Iterator[Authority]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("origin.example.test", "dl.shared-cdn.example"):
            mp.setitem(auth_module.RECORDS, name, [RR(name, QTYPE.A, rdata=A("127.0.0.1"), ttl=300)])
        auth = Authority()
        try:
            yield auth
        finally:
            auth.stop()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Run]:
    d = tmp_path_factory.mktemp("one-resolver")
    policy = d / "policy.yaml"
    policy.write_text(policy_text(settings=SETTINGS), encoding="utf-8")
    dns_port, proxy_port = _udp_port(), free_port()
    events, stderr = d / "events.jsonl", d / "run.stderr"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "egress_filter.cli", "run", "--policy", str(policy), "--at", TEST_DAY,
             "--dns-listen", f"127.0.0.1:{dns_port}", "--proxy-listen", f"127.0.0.1:{proxy_port}",
             "--upstream", authority.address, "--no-db", "--log", str(events)],
            stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            env={**os.environ, "HOME": str(d), "PYTHONUNBUFFERED": "1"})
    try:
        wait_for_port(proxy_port, proc, stderr)
        deadline = time.monotonic() + 30
        while "egress-filter is running" not in stderr.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.1)
        yield Run(f"http://127.0.0.1:{proxy_port}", events, stderr)
    finally:
        stop(proc)


HTTP_CASES = [
    # (name, status, what the body says, the DNS filter's verdict on the name)
    pytest.param("origin.example.test", 200, "origin origin.example.test/one", "allow",
                 id="allowed-name-resolved-by-our-dns"),
    pytest.param("alias.example.test", 502, "alias.example.test is blocked by the DNS filter", "block",
                 id="cname-into-a-blocked-domain-refused"),
    pytest.param("nowhere.example.test", 502, "nowhere.example.test does not resolve (NXDOMAIN)", "allow",
                 id="nxdomain-502"),
]


@pytest.mark.parametrize(("name", "status", "body", "dns_action"), HTTP_CASES)
def test_plain_http_through_run(run: Run, plain_origin: PlainOrigin, name: str, status: int, body: str,
                                dns_action: str) -> None:
    seen = len(plain_origin.seen)
    with httpx.Client(proxy=run.proxy, timeout=10) as client:
        page = client.get(f"http://{name}:{plain_origin.port}/one")
    assert page.status_code == status, page.text
    assert body in page.text
    asked = run.dns_asked(name)
    assert asked, f"the DNS filter was never asked for {name}: {run.stderr.read_text()}"
    assert {e["event"]["action"] for e in asked} == {dns_action}
    assert {e["source"]["ip"] for e in asked} == {"127.0.0.1"}  # the proxy asked
    assert plain_origin.seen[seen:] == ([f"{name} /one"] if status == 200 else [])


def test_https_tunnel_to_a_cname_into_a_blocked_domain_is_closed(run: Run) -> None:
    """CONNECT is answered (the proxy's own verdict allows the name), then the
    dial is refused when the DNS filter blocks it: the tunnel closes."""
    curl = require("curl")
    done = subprocess.run([curl, "-sS", "--max-time", "10", "-x", run.proxy, "-k",
                           "https://alias.example.test/"], capture_output=True, text=True, timeout=30)
    assert done.returncode in (35, 56), done.stderr  # TLS connect error / connection reset
    assert any(e["event"]["action"] == "block" for e in run.dns_asked("alias.example.test"))
    assert "refusing 127.0.0.1's connection to alias.example.test:443" in run.stderr.read_text()


@pytest.fixture(scope="module")
def our_dns(tmp_path_factory: pytest.TempPathFactory, authority: Authority) -> Iterator[Any]:
    """The DNS filter on its own (``egress-filter dns``), for a standalone proxy's --resolver."""
    from tests.dns.conftest import ResolverProcess

    d = tmp_path_factory.mktemp("our-dns")
    dns_policy = d / "dns-policy.yaml"
    dns_policy.write_text(policy_text(settings=SETTINGS), encoding="utf-8")
    dns = ResolverProcess(["--policy", str(dns_policy), "--at", TEST_DAY, "--upstream", authority.address], d)
    try:
        yield dns
    finally:
        dns.stop()


STANDALONE = [
    # (proxy flags, curl flags and URL ({tls}/{plain}: the origins' ports), body, the origin's SNIs)
    pytest.param((), ("--cacert", "{ca}", "https://dl.shared-cdn.example:{tls}/other"),
                 "origin dl.shared-cdn.example/other\n", ["dl.shared-cdn.example"],
                 id="intercepted-tls-keeps-the-name-as-sni"),
    pytest.param(("--proxy-mode", "socks5"),
                 ("--socks5-hostname", "{proxy}", "http://dl.shared-cdn.example:{plain}/s"),
                 "origin dl.shared-cdn.example/s\n", [], id="socks5-hostname-resolved-by-our-dns"),
]


@pytest.mark.parametrize(("flags", "curl_args", "body", "snis"), STANDALONE)
def test_standalone_proxy_with_our_dns(run_proxy: Any, origin: Origin, plain_origin: PlainOrigin,
                                       our_dns: Any, tmp_path: Path, flags: tuple[str, ...],
                                       curl_args: tuple[str, ...], body: str, snis: list[str]) -> None:
    """Dialled at the address our DNS gave, under the name the client asked for (the
    intercepted origin's certificate is verified against its own CA, for that name)."""
    from .helpers import write_policy

    proxy = run_proxy("--policy", str(write_policy(tmp_path)), "--at", FULL,
                      "--resolver", f"{our_dns.host}:{our_dns.port}", *flags)
    before, asked = len(origin.snis), len(our_dns.events())
    where = {"ca": str(proxy.ca), "tls": origin.port, "plain": plain_origin.port,
             "proxy": f"127.0.0.1:{proxy.port}"}
    args = [a.format(**where) for a in curl_args]
    if not flags:
        args = ["-x", proxy.url, *args]
    done = subprocess.run([require("curl"), "-sS", "--max-time", "10", *args], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr + proxy.stderr.read_text()
    assert done.stdout == body
    assert origin.snis[before:] == snis
    assert any(e["egress"]["value"].rstrip(".") == "dl.shared-cdn.example"
               for e in our_dns.events(asked + 1)[asked:])


def test_a_dead_resolver_is_never_replaced_by_the_system_one(run_proxy: Any, plain_origin: PlainOrigin,
                                                             tmp_path: Path) -> None:
    """``localhost`` resolves through /etc/hosts; with --resolver pointing at
    nothing, the proxy still refuses it, saying why."""
    from .helpers import write_policy

    dead = _udp_port()
    proxy = run_proxy("--policy", str(write_policy(tmp_path)), "--resolver", f"127.0.0.1:{dead}",
                      "--set", "egress_resolver_timeout=1")
    with httpx.Client(proxy=proxy.url, timeout=10) as client:
        page = client.get(f"http://localhost:{plain_origin.port}/dead")
    assert page.status_code == 502
    assert "localhost could not be looked up" in page.text
    assert f"(resolver 127.0.0.1:{dead})" in page.text
    assert plain_origin.seen[-1:] != ["localhost /dead"]


BAD_RESOLVERS = [
    pytest.param("dns.example:53", id="a-name"),
    pytest.param("127.0.0.1", id="no-port"),
    pytest.param("127.0.0.1:0", id="port-0"),
]


@pytest.mark.parametrize("spec", BAD_RESOLVERS)
def test_bad_resolver_option_exits_1(tmp_path: Path, spec: str) -> None:
    from .helpers import write_policy

    done = subprocess.run([sys.executable, "-m", "egress_filter.cli", "proxy", "--policy",
                           str(write_policy(tmp_path)), "--listen", f"127.0.0.1:{free_port()}",
                           "--confdir", str(tmp_path / "conf"), "--resolver", spec],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert f"egress_resolver: '{spec}' is not IP:PORT" in done.stderr


def _answer(rcode: int, addresses: tuple[str, ...] = (), ede: tuple[int, str] | None = None) -> Any:
    from dnslib import AAAA, EDNS0, DNSRecord, EDNSOption

    reply = DNSRecord.question("x.example.test").reply()
    reply.header.rcode = rcode
    for a in addresses:
        reply.add_answer(RR("x.example.test", QTYPE.AAAA if ":" in a else QTYPE.A,
                            rdata=AAAA(a) if ":" in a else A(a), ttl=60))
    opts = [EDNSOption(15, ede[0].to_bytes(2, "big") + ede[1].encode())] if ede else []
    reply.add_ar(EDNS0(udp_len=1232, opts=opts))
    return DNSRecord.parse(reply.pack())  # as it comes off the wire


ANSWERS = [
    # (rcode, addresses, EDE, the address or the (outcome, message) of the refusal)
    pytest.param(0, ("192.0.2.1", "192.0.2.2"), None, "192.0.2.1", id="first-address"),
    pytest.param(0, ("2001:db8::1",), None, "2001:db8::1", id="ipv6"),
    pytest.param(3, (), (15, "TikTok (full)"),
                 ("blocked", "is blocked by the DNS filter (NXDOMAIN: TikTok (full))"),
                 id="nxdomain-with-ede-blocked"),
    pytest.param(5, (), (15, ""), ("blocked", "is blocked by the DNS filter (REFUSED)"),
                 id="refused-with-ede"),
    pytest.param(0, ("0.0.0.0",), (15, "x"), ("blocked", "is blocked by the DNS filter (NOERROR: x)"),
                 id="null-answer-with-ede"),
    pytest.param(0, ("::",), None, ("blocked", "is blocked by the DNS filter (null answer)"),
                 id="null-answer-without-ede"),
    pytest.param(3, (), None, ("failed", "does not resolve (NXDOMAIN)"), id="plain-nxdomain"),
    pytest.param(2, (), None, ("failed", "does not resolve (SERVFAIL)"), id="servfail"),
    pytest.param(0, (), None, ("no-address", "does not resolve (no address)"), id="nodata"),
]


@pytest.mark.parametrize(("rcode", "addresses", "ede", "want"), ANSWERS)
def test_answer_to_address(rcode: int, addresses: tuple[str, ...], ede: tuple[int, str] | None,
                           want: str | tuple[str, str]) -> None:
    from proxy_addons.resolver import ResolveError, UpstreamResolver

    answer = _answer(rcode, addresses, ede)
    if isinstance(want, str):
        assert UpstreamResolver._address("x.example.test", answer) == want
        return
    with pytest.raises(ResolveError) as caught:
        UpstreamResolver._address("x.example.test", answer)
    assert (caught.value.outcome, str(caught.value)) == want


RUN_RESOLVER = [
    pytest.param("127.0.0.1:5353", "127.0.0.1:5353", id="loopback"),
    pytest.param("0.0.0.0:53", "127.0.0.1:53", id="ipv4-wildcard"),
    pytest.param("[::]:53", "[::1]:53", id="ipv6-wildcard"),
    pytest.param(":5353", "127.0.0.1:5353", id="bare-port"),
    pytest.param("192.168.1.1:53", "192.168.1.1:53", id="lan-address"),
    pytest.param("[fd00::1]:53", "[fd00::1]:53", id="ipv6-address"),
]


@pytest.mark.parametrize(("listen", "want"), RUN_RESOLVER)
def test_run_points_the_proxy_at_its_dns_listener(listen: str, want: str) -> None:
    from egress_filter.run import resolver_address
    from proxy_addons.resolver import parse_resolver

    assert resolver_address(listen) == want
    assert parse_resolver(want)[1] == int(want.rsplit(":", 1)[1])  # and the proxy accepts it


def test_keep_alive_requests_share_one_upstream_connection(run: Run) -> None:
    """The address is the name again once dialled, so mitmproxy reuses the connection
    for the next request to that name, as it would without the resolver."""
    from .conftest import _Handler, _PlainServer

    connections: list[Any] = []

    class Counting(_Handler):
        def setup(self) -> None:
            connections.append(self.client_address)
            super().setup()

    server = _PlainServer()
    server.RequestHandlerClass = Counting
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="test-counting-origin")
    thread.start()
    try:
        port = server.server_address[1]
        with httpx.Client(proxy=run.proxy, timeout=10) as client:
            pages = [client.get(f"http://origin.example.test:{port}/k{i}") for i in range(3)]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert [p.status_code for p in pages] == [200, 200, 200]
    assert server.seen == [f"origin.example.test /k{i}" for i in range(3)]
    assert len(connections) == 1
