"""The exports loaded by the real engines, on loopback, held to one table.

Each engine (our own resolver on the policy itself, Unbound with the
``unbound`` export, Unbound with the ``rpz`` zone as an ``rpz:`` zonefile,
dnsmasq with the ``dnsmasq`` export, BIND 9 with the ``bind`` export's
response-policy zone) runs as a subprocess on a
free loopback port, with a config this test writes, forwarding what it does
not block to a catch-all loopback upstream (upstream.py).  Every name of
cases.NAMES must come back as the core decides: NXDOMAIN or a null address
when blocked, the upstream's answer otherwise.  Engines are stopped by PID.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import pytest

from policies import Action
from policies.export import render, zone_name

from . import cases
from .upstream import UPSTREAM_A, CatchAll

START_TIMEOUT = 15.0


@pytest.fixture(scope="module")
def upstream() -> Iterator[CatchAll]:
    server = CatchAll()
    yield server
    server.stop()


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (the engines bind both)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free loopback port")


def ask(port: int, name: str) -> str:
    """'blocked' (NXDOMAIN, a null address, or no address at all), or the
    address answered.  The upstream answers every name with an address, so an
    empty NOERROR comes from the engine: dnsmasq answers NODATA, not NXDOMAIN,
    for a blocked name with a host-record below it (the name exists)."""
    q = dns.message.make_query(name, "A")
    r = dns.query.udp(q, "127.0.0.1", port=port, timeout=3)
    if r.rcode() == dns.rcode.NXDOMAIN:
        return "blocked"
    if r.rcode() != dns.rcode.NOERROR:
        return f"rcode {dns.rcode.to_text(r.rcode())}"
    addrs = [rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1]
    return "blocked" if addrs in ([], ["0.0.0.0"]) else ",".join(addrs)


class Engine:
    def __init__(self, argv: list[str], port: int, log: Path):
        self.port = port
        self.log = log
        self.proc = subprocess.Popen(argv, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"{argv[0]} exited {self.proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                ask(port, "ready.probe.test")
                return
            except (dns.exception.Timeout, OSError):
                if time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError(f"{argv[0]} did not answer:\n{log.read_text()[-3000:]}") from None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def write(path: Path, lines: Iterator[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def unbound_conf(tmp: Path, port: int, up: int, body: str, modules: str) -> list[str]:
    conf = tmp / "unbound.conf"
    conf.write_text(f"""server:
    interface: 127.0.0.1
    port: {port}
    do-ip6: no
    do-daemonize: no
    use-syslog: no
    logfile: ""
    chroot: ""
    username: ""
    pidfile: ""
    directory: "{tmp}"
    module-config: "{modules}"
    do-not-query-localhost: no
    access-control: 127.0.0.0/8 allow
    local-zone: "test." nodefault
    cache-max-ttl: 1
    verbosity: 1
{body}
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@{up}
""")
    check = subprocess.run(["unbound-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return ["unbound", "-d", "-c", str(conf)]


def start_unbound(tmp: Path, day: dt.date, up: int, switches: str = "") -> Engine:
    policy = cases.policy(switches)
    export = write(tmp / "export.conf", render(policy, "unbound", at=day))
    port = free_port()
    return Engine(unbound_conf(tmp, port, up, f'    include: "{export}"', "iterator"), port, tmp / "log")


def start_unbound_rpz(tmp: Path, day: dt.date, up: int, switches: str = "") -> Engine:
    policy = cases.policy(switches)
    zone = write(tmp / "zone.rpz", render(policy, "rpz", at=day))
    port = free_port()
    body = f"""rpz:
    name: "{zone_name('default')}."
    zonefile: "{zone}"
    rpz-log: yes
    rpz-log-name: "egress-filter"
server:"""
    return Engine(unbound_conf(tmp, port, up, body, "respip iterator"), port, tmp / "log")


def start_dnsmasq(tmp: Path, day: dt.date, up: int, switches: str = "") -> Engine:
    policy = cases.policy(switches)
    export = write(tmp / "dnsmasq.conf", render(policy, "dnsmasq", at=day))
    port = free_port()
    argv = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-poll", "--log-facility=-",
            "--listen-address=127.0.0.1", f"--port={port}", "--bind-interfaces", "--cache-size=0",
            f"--server=127.0.0.1#{up}", f"--conf-file={export}", "--pid-file", "--user=root"]
    return Engine(argv, port, tmp / "log")


def start_bind(tmp: Path, day: dt.date, up: int, switches: str = "") -> Engine:
    policy = cases.policy(switches)
    zone = write(tmp / f"{zone_name('default')}.zone", render(policy, "rpz", at=day))
    snippet = write(tmp / "rpz.conf", render(policy, "bind", at=day, zone_file=str(zone)))
    port = free_port()
    conf = tmp / "named.conf"
    conf.write_text(f"""options {{
    directory "{tmp}";
    listen-on port {port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    forwarders {{ 127.0.0.1 port {up}; }};
    forward only;
    dnssec-validation no;
    max-cache-ttl 1;
    response-policy {{ zone "{zone_name('default')}" log yes; }};
}};
controls {{ }};
include "{snippet}";
""")
    check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return Engine(["named", "-g", "-c", str(conf), "-n", "1"], port, tmp / "log")


Start = Callable[[Path, dt.date, int, str], Engine]
def start_ours(tmp: Path, day: dt.date, up: int, switches: str = "") -> Engine:
    """Our own resolver on the same policy: the table holds the engines to what it answers."""
    policy = tmp / "policy.yaml"
    policy.write_text(cases.policy_text(switches))
    port = free_port()
    return Engine([sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(policy), "--at",
                   day.isoformat(), "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{up}",
                   "--reload-interval", "3600"], port, tmp / "log")


ENGINES: list[tuple[str, str, Start]] = [
    ("egress-filter", sys.executable, start_ours),
    ("unbound-local-zone", "unbound", start_unbound),
    ("unbound-rpz", "unbound", start_unbound_rpz),
    ("dnsmasq", "dnsmasq", start_dnsmasq),
    ("bind9-rpz", "named", start_bind),
]


@pytest.mark.parametrize(("day", "column"), cases.DAYS)
@pytest.mark.parametrize(("engine", "binary", "start"), [pytest.param(*e, id=e[0]) for e in ENGINES])
def test_engine_answers_as_the_core_decides(tmp_path: Path, upstream: CatchAll, engine: str, binary: str,
                                            start: Start, day: dt.date,
                                            column: int) -> None:
    assert shutil.which(binary), f"{binary} is not installed: run .ci/install-tools"
    view = cases.policy().view(day).groups["default"]
    want = [(name, "blocked" if view.decide_name(name).action is Action.BLOCK else UPSTREAM_A)
            for name, _ in cases.expected(day, column)]
    assert [(n, v == "blocked") for n, v in want] == cases.expected(day, column)
    server = start(tmp_path, day, upstream.port, "")
    try:
        got = [(name, ask(server.port, name)) for name, _ in want]
    finally:
        server.stop()
    assert got == want
    # RPZ has no log-only action: a log-only name is passthru, and the engine's log records the hit.
    log = server.log.read_text()
    if engine == "unbound-rpz" and day == cases.DOWNLOADS_DAY:  # rpz-log: yes
        assert "rpz: applied [egress-filter] *.chat.test. rpz-passthru 127.0.0.1@" in log
        assert " www.chat.test. A IN" in log
        assert "rpz: applied [egress-filter] dl.chat.test. rpz-nxdomain" in log
    if engine == "bind9-rpz" and day == cases.DOWNLOADS_DAY:  # response-policy { zone ... log yes; }
        assert ("rpz QNAME PASSTHRU rewrite www.chat.test/A/IN via www.chat.test.default.rpz.egress-filter"
                in log)
        assert ("rpz QNAME NXDOMAIN rewrite dl.chat.test/A/IN via dl.chat.test.default.rpz.egress-filter"
                in log)


@pytest.mark.parametrize(("switches", "names"), cases.BUILTIN_CASES)
@pytest.mark.parametrize(("engine", "binary", "start"), [pytest.param(*e, id=e[0]) for e in ENGINES])
def test_engine_enforces_the_builtin_rules(tmp_path: Path, upstream: CatchAll, engine: str, binary: str,
                                           start: Start, switches: str,
                                           names: list[tuple[str, bool]]) -> None:
    """The built-in names (DoH endpoints, the canary, Private Relay, DDR) are in
    each export as the policy's ``builtins:`` switches them, and the engine
    answers them NXDOMAIN (what the canary and Private Relay need) or forwards them."""
    assert shutil.which(binary), f"{binary} is not installed: run .ci/install-tools"
    policy = cases.policy(switches)
    view = policy.view(cases.FULL_DAY).groups["default"]
    assert [(n, view.decide_name(n).action is Action.BLOCK) for n, _ in names] == names
    server = start(tmp_path, cases.FULL_DAY, upstream.port, switches)
    try:
        got = [(n, rcode(server.port, n)) for n, _ in names]
    finally:
        server.stop()
    # Our resolver never sends a single-label name (a search-list name) to the
    # public upstreams (dns_blocker/local.py, as Pi-hole's "never forward
    # non-FQDNs"): it answers NXDOMAIN whatever the policy says.
    local = engine == "egress-filter"
    assert got == [(n, "NXDOMAIN" if blocked or (local and "." not in n) else UPSTREAM_A)
                   for n, blocked in names]


def rcode(port: int, name: str) -> str:
    """NXDOMAIN, or the address the upstream answered."""
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=3)
    if r.rcode() != dns.rcode.NOERROR:
        return dns.rcode.to_text(r.rcode())
    return ",".join(rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1) or "NODATA"
