"""Red-team finding: a resolver bound to 0.0.0.0 on a host with two addresses
answered queries to the second address from the first, and clients dropped
the answers.  dnsmasq answered correctly in the same namespace.

The test builds its own network: two namespaces joined by a veth pair, the
server's end holding two IPv4 and two IPv6 addresses on one interface.  The
server runs inside its namespace (``ip netns exec``), bound to the wildcard
addresses; a client in the other namespace asks each address with a
``connect()``ed UDP socket, which only accepts an answer from the address it
asked, and with an unconnected one, which reports where the answer came from.
dnsmasq gets the same questions as a reference.  Clients on carrier-grade NAT
and link-local addresses check the default ACL.  The namespaces go away in a
finalizer, whatever happens.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.dns.conftest import policy_text
from tests.netns import NsServer as Server
from tests.netns import ip

pytestmark = pytest.mark.e2e  # needs root and iproute2 (network namespaces), as CI has

SERVER_V4 = ("10.77.0.1", "10.77.0.2")
SERVER_V6 = ("fd77::1", "fd77::2")
CLIENT_V4, CLIENT_V6 = "10.77.0.10", "fd77::10"
# Networks the default ACL leaves out: carrier-grade NAT and IPv4 link-local.
OUTSIDE = (("100.64.0.1", "100.64.0.10"), ("169.254.77.1", "169.254.77.10"))
PORT = 5353
DNSMASQ_PORT = 5354
PLAIN_PORT = 5373

# Runs in the client's namespace: ask ``host`` once over a connected socket and
# once over an unconnected one; print what came back and from where.
CLIENT = r"""
import json, socket, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
# www.tiktok.test A, ID 0x4d4d
q = bytes.fromhex("4d4d01000001000000000000") + b"\x03www\x06tiktok\x04test\x00\x00\x01\x00\x01"
out = {}
with socket.socket(fam, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    if source:
        s.bind((source, 0))
    s.connect((host, port))
    s.send(q)
    try:
        r = s.recv(4096)
        out["connected"] = r[3] & 0x0F if r[:2] == q[:2] else "wrong id"
    except TimeoutError:
        out["connected"] = None
    except OSError as e:  # ICMP port unreachable: nothing listens (yet)
        out["connected"] = type(e).__name__
with socket.socket(fam, socket.SOCK_DGRAM) as s:
    s.settimeout(2)
    if source:
        s.bind((source, 0))
    s.sendto(q, (host, port))
    try:
        r, src = s.recvfrom(4096)
        out["source"] = src[0]
    except TimeoutError:
        out["source"] = None
    except OSError as e:
        out["source"] = type(e).__name__
print(json.dumps(out))
"""


class Net(NamedTuple):
    server_ns: str
    client_ns: str


@pytest.fixture(scope="module")
def net() -> Iterator[Net]:
    tag = f"{os.getpid() % 100000}"
    srv, cli = f"egf-mh-s{tag}", f"egf-mh-c{tag}"
    vs, vc = f"egfs{tag}", f"egfc{tag}"
    try:
        ip("netns", "add", srv)
        ip("netns", "add", cli)
        ip("link", "add", vs, "type", "veth", "peer", "name", vc)
        ip("link", "set", vs, "netns", srv)
        ip("link", "set", vc, "netns", cli)
        for a in SERVER_V4:
            ip("-n", srv, "addr", "add", f"{a}/24", "dev", vs)
        for a in SERVER_V6:
            ip("-n", srv, "addr", "add", f"{a}/64", "dev", vs, "nodad")
        for server_end, client_end in OUTSIDE:
            ip("-n", srv, "addr", "add", f"{server_end}/24", "dev", vs)
            ip("-n", cli, "addr", "add", f"{client_end}/24", "dev", vc)
        ip("-n", cli, "addr", "add", f"{CLIENT_V4}/24", "dev", vc)
        ip("-n", cli, "addr", "add", f"{CLIENT_V6}/64", "dev", vc, "nodad")
        for ns, dev in ((srv, vs), (cli, vc)):
            ip("-n", ns, "link", "set", "lo", "up")
            ip("-n", ns, "link", "set", dev, "up")
        yield Net(srv, cli)
    finally:
        for ns in (srv, cli):  # deleting a namespace deletes its end of the veth pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def ask(net: Net, host: str, port: int, source: str = "", ns: str = "") -> dict[str, object]:
    cmd = ["ip", "netns", "exec", ns or net.client_ns, sys.executable, "-c", CLIENT, host, str(port), source]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)
    result: dict[str, object] = json.loads(done.stdout)
    return result


def start_ours(net: Net, d: Path, port: int, transport: str) -> Server:
    policy = d / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    log = d / f"ours-{transport}.log"
    return Server(["ip", "netns", "exec", net.server_ns, sys.executable, "-m", "egress_filter.cli", "dns",
                   "--policy", str(policy), "--at", "2021-01-01", "--upstream", "127.0.0.1:9",
                   "--udp-transport", transport,
                   "--listen", f"0.0.0.0:{port}", "--listen", f"[::]:{port}",
                   "--listen", f"{SERVER_V4[1]}:{port + 10}"], log, lambda: "ready" in log.read_text())


def serving(net: Net, directory: Path, port: int, transport: str) -> Iterator[Server]:
    server = start_ours(net, directory, port, transport)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ours(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The default transport: batched (recvmmsg with packet info) on Linux."""
    yield from serving(net, tmp_path_factory.mktemp("multihomed"), PORT, "auto")


@pytest.fixture(scope="module")
def plain(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One recvmsg per datagram: the path where recvmmsg is missing."""
    yield from serving(net, tmp_path_factory.mktemp("multihomed-plain"), PLAIN_PORT, "plain")


@pytest.fixture(scope="module")
def dnsmasq(net: Net, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    if shutil.which("dnsmasq") is None:
        pytest.fail("dnsmasq is missing: .ci/install-tools installs it")
    d = tmp_path_factory.mktemp("multihomed-dnsmasq")
    server = Server(["ip", "netns", "exec", net.server_ns, "dnsmasq", "--keep-in-foreground", "--no-resolv",
                     "--no-hosts", "--conf-file=/dev/null", f"--port={DNSMASQ_PORT}", "--user=root",
                     "--pid-file=", "--address=/tiktok.test/", "--log-facility=-"], d / "dnsmasq.log",
                    # dnsmasq prints nothing reliable once it listens: ask it, from its own namespace,
                    # until it answers (a fixed sleep lost this race on a loaded CI machine).
                    lambda: ask(net, "127.0.0.1", DNSMASQ_PORT, ns=net.server_ns).get("connected") == 3)
    try:
        yield server
    finally:
        server.stop()


ADDRESSES = [pytest.param(a, id=a) for a in (*SERVER_V4, *SERVER_V6)]


@pytest.mark.parametrize("repeat", [1, 2], ids=["first-ask", "repeat-from-the-ready-answers"])
@pytest.mark.parametrize("host", ADDRESSES)
def test_answer_comes_from_the_address_asked(net: Net, ours: Server, host: str, repeat: int) -> None:
    for _ in range(repeat):
        got = ask(net, host, PORT)
    assert got == {"connected": 3, "source": host}  # NXDOMAIN: www.tiktok.test is blocked


@pytest.mark.parametrize("repeat", [1, 2], ids=["first-ask", "repeat-from-the-ready-answers"])
@pytest.mark.parametrize("host", ADDRESSES)
def test_plain_transport_answers_from_the_address_asked(net: Net, plain: Server, host: str, repeat: int
                                                        ) -> None:
    for _ in range(repeat):
        got = ask(net, host, PLAIN_PORT)
    assert got == {"connected": 3, "source": host}


def test_specific_address_listener(net: Net, ours: Server) -> None:
    """A listener bound to one address (the plain transport, no pktinfo) answers from it."""
    assert ask(net, SERVER_V4[1], PORT + 10) == {"connected": 3, "source": SERVER_V4[1]}


@pytest.mark.parametrize("host", ADDRESSES)
def test_dnsmasq_does_the_same(net: Net, dnsmasq: Server, host: str) -> None:
    assert ask(net, host, DNSMASQ_PORT) == {"connected": 3, "source": host}


ACL = [
    pytest.param(CLIENT_V4, SERVER_V4[0], 3, id="private-10/8-answered"),
    pytest.param(CLIENT_V6, SERVER_V6[0], 3, id="ula-answered"),
    pytest.param(OUTSIDE[0][1], OUTSIDE[0][0], 5, id="cgnat-100.64/10-refused"),
    pytest.param(OUTSIDE[1][1], OUTSIDE[1][0], 5, id="link-local-169.254/16-refused"),
]


@pytest.mark.parametrize(("source", "host", "want"), ACL)
def test_default_acl_over_the_wire(net: Net, ours: Server, source: str, host: str, want: int) -> None:
    """The default ACL, from real client addresses: CGNAT and link-local get REFUSED."""
    assert ask(net, host, PORT, source) == {"connected": want, "source": host}
