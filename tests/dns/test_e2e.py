"""End to end: a real resolver process, a real authoritative upstream, real questions.

Every behaviour of issue 3 over real sockets on loopback: block responses and
their EDE for every qtype, CNAME inspection, logged names, monitor mode,
exempt clients, the canary, the ACL, caching (TTLs, negative answers,
expiry), TCP pipelining, truncation, EDNS0, upstream faults, metrics,
settings precedence and SIGTERM.
"""

from __future__ import annotations

import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import httpx
import pytest

from .authority import SHORT_TTL, Authority
from .conftest import EXEMPT, OUTSIDER, TEST_DAY, ResolverProcess, addresses, ede, free_port, rcode

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]
BLOCKED = "www.tiktok.test"

# (block response, qtype, rcode, answer addresses)
BLOCK_CASES = [
    ("nxdomain", "A", "NXDOMAIN", []),
    ("nxdomain", "AAAA", "NXDOMAIN", []),
    ("nxdomain", "HTTPS", "NXDOMAIN", []),
    ("nxdomain", "SVCB", "NXDOMAIN", []),
    ("nxdomain", "MX", "NXDOMAIN", []),
    ("nxdomain", "TXT", "NXDOMAIN", []),
    ("null", "A", "NOERROR", ["0.0.0.0"]),
    ("null", "AAAA", "NOERROR", ["::"]),
    ("null", "HTTPS", "NOERROR", []),
    ("null", "MX", "NOERROR", []),
    ("null", "TXT", "NOERROR", []),
    ("refused", "A", "REFUSED", []),
    ("refused", "AAAA", "REFUSED", []),
    ("refused", "SVCB", "REFUSED", []),
]


@pytest.mark.parametrize(("kind", "qtype", "want_rcode", "want_addrs"), BLOCK_CASES,
                         ids=[f"{k}-{t}" for k, t, _, _ in BLOCK_CASES])
def test_block_response_and_ede(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                                kind: str, qtype: str, want_rcode: str, want_addrs: list[str]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--block-response", kind)
    msg = r.ask(BLOCKED, qtype)
    assert rcode(msg) == want_rcode
    assert addresses(msg) == want_addrs
    [(code, text)] = ede(msg)
    assert code == 15
    assert "TikTok" in text and "phase full" in text
    assert authority.count(BLOCKED) == 0, "a blocked name must never reach the upstream"
    [ev] = r.events(1)
    assert ev["egress"]["action"] == "block"
    assert ev["egress"]["apps"] == ["tiktok"]
    assert ev["egress"]["phase"] == "full"
    assert ev["dns"]["question"] == {"name": BLOCKED, "type": qtype}
    assert ev["egress"]["response"] == (want_addrs[0] if want_addrs else
                                        "NODATA" if want_rcode == "NOERROR" else want_rcode)
    assert ev["source"]["ip"] == "127.0.0.1"


def test_block_without_edns_has_no_opt_record(resolver: Start, authority: Authority,
                                              write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    msg = r.ask(BLOCKED, edns=False)
    assert rcode(msg) == "NXDOMAIN"
    assert msg.edns == -1, "RFC 6891: no OPT record in the answer to a query without one"


CNAME_CASES = [
    # (question, rcode, addresses, event action, cname in event)
    ("alias.example.test", "NXDOMAIN", [], "block", "edge.tiktokcdn.test"),
    ("alias2.example.test", "NOERROR", ["192.0.2.67"], "log", None),
    ("fine.example.test", "NOERROR", ["192.0.2.1"], None, None),
]


@pytest.mark.parametrize(("name", "want_rcode", "want_addrs", "action", "cname"), CNAME_CASES,
                         ids=["cname-to-blocked-app", "cname-chain-to-logged-app", "cname-to-allowed"])
def test_cname_inspection(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                          name: str, want_rcode: str, want_addrs: list[str], action: str | None,
                          cname: str | None) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    for attempt in ("forwarded", "cached"):
        msg = r.ask(name)
        assert rcode(msg) == want_rcode, attempt
        assert addresses(msg) == want_addrs, attempt
        if action == "block":
            [(code, text)] = ede(msg)
            assert code == 15 and f"via CNAME {cname}" in text
    assert authority.count(name) == 1, "the second answer comes from the cache, judged again"
    events = r.events(2 if action else 0, timeout=1.0 if not action else 5.0)
    if action is None:
        assert events == []
    else:
        assert [e["egress"]["action"] for e in events] == [action, action]
        assert all(e["dns"]["question"]["name"] == name for e in events)
        if cname:
            assert events[0]["egress"]["cname"] == cname


LOG_CASES = [
    # (flags, client, name, answer, would)
    ([], "127.0.0.1", "img.wechat.test", ["192.0.2.66"], "log"),  # WeChat is in 'downloads'
    (["--mode", "monitor"], "127.0.0.1", BLOCKED, ["192.0.2.66"], "block"),
    ([], EXEMPT, BLOCKED, ["192.0.2.66"], "block"),
    (["--mode", "monitor"], "127.0.0.1", "dl.wechat.test", ["192.0.2.66"], "block"),
]


@pytest.mark.parametrize(("flags", "client", "name", "want", "would"), LOG_CASES,
                         ids=["downloads-phase-traffic", "monitor-mode", "exempt-client",
                              "monitor-download-host"])
def test_logged_names_resolve_and_log(resolver: Start, authority: Authority,
                                      write_policy: Callable[..., Path],
                                      flags: list[str], client: str, name: str, want: list[str],
                                      would: str) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address, *flags)
    msg = r.ask(name, source=client)
    assert rcode(msg) == "NOERROR"
    assert addresses(msg) == want
    assert ede(msg) == []
    [ev] = r.events(1)
    assert ev["egress"]["action"] == "log"
    assert ev["egress"]["would"] == would
    assert ev["source"]["ip"] == client
    assert ev["egress"]["response"] == "NOERROR"


def test_download_host_blocked_in_downloads_phase(resolver: Start, authority: Authority,
                                                  write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    msg = r.ask("dl.wechat.test", "AAAA")
    assert rcode(msg) == "NXDOMAIN"
    [(_, text)] = ede(msg)
    assert "WeChat" in text and "phase downloads" in text


def test_allowed_names_not_logged_unless_log_all(resolver: Start, authority: Authority,
                                                 write_policy: Callable[..., Path]) -> None:
    policy = str(write_policy())
    quiet = resolver("--policy", policy, "--at", TEST_DAY, "--upstream", authority.address)
    loud = resolver("--policy", policy, "--at", TEST_DAY, "--upstream", authority.address, "--log-all")
    for r in (quiet, loud):
        assert addresses(r.ask("www.example.test")) == ["192.0.2.1"]
    assert quiet.events(1, timeout=1.0) == []
    [ev] = loud.events(1)
    assert ev["egress"]["action"] == "allow" and ev["dns"]["response_code"] == "NOERROR"


CANARY_CASES = [
    # (policy keyword arguments, flags, upstream asked, logged action, would-be action, client)
    pytest.param({}, [], 0, "block", "block", "127.0.0.1", id="canary-on"),
    pytest.param({}, ["--no-canary"], 1, None, None, "127.0.0.1", id="canary-off-flag"),
    pytest.param({"settings": "builtins: {canary: false}\n"}, [], 1, None, None, "127.0.0.1",
                 id="canary-off-builtins"),
    # Monitor mode blocks nothing: the canary is forwarded and logged as a would-be block.
    pytest.param({"mode": "monitor"}, [], 1, "log", "block", "127.0.0.1", id="canary-monitor-mode"),
    pytest.param({}, [], 1, "log", "block", EXEMPT, id="canary-exempt-client"),
]


@pytest.mark.parametrize(("kw", "flags", "upstream_asked", "action", "enforced", "client"), CANARY_CASES)
def test_doh_canary(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                    kw: dict[str, str], flags: list[str], upstream_asked: int, action: str | None,
                    enforced: str | None, client: str) -> None:
    r = resolver("--policy", str(write_policy(**kw)), "--upstream", authority.address, *flags)
    msg = r.ask("use-application-dns.net", source=client)
    assert rcode(msg) == "NXDOMAIN"
    assert authority.count("use-application-dns.net") == upstream_asked
    if upstream_asked == 0:
        assert ede(msg) and msg.authority == []
    else:
        assert msg.authority, "the upstream's own NXDOMAIN carries its SOA"
    events = r.events(1 if action else 0, timeout=5.0 if action else 1.0)
    if action is None:
        assert events == []
    else:
        [ev] = events
        assert (ev["rule"]["name"], ev["egress"]["action"]) == ("builtin:canary", action)
        assert ev["egress"]["would"] == enforced


ACL_CASES = [
    # (acl flags, client, expected rcode)
    ([], OUTSIDER, "NOERROR"),  # default ACL: all of loopback and the private ranges
    (["--acl", "127.0.0.1/32"], "127.0.0.1", "NOERROR"),
    (["--acl", "127.0.0.1/32"], OUTSIDER, "REFUSED"),
    (["--acl", "10.0.0.0/8"], "127.0.0.1", "REFUSED"),
]


@pytest.mark.parametrize(("flags", "client", "want"), ACL_CASES,
                         ids=["default-acl-loopback", "listed-client", "unlisted-client",
                              "acl-without-loopback"])
@pytest.mark.parametrize("tcp", [False, True], ids=["udp", "tcp"])
def test_acl(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
             flags: list[str], client: str, want: str, tcp: bool) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, *flags)
    msg = r.ask("www.example.test", source=client, tcp=tcp)
    assert rcode(msg) == want
    if want == "REFUSED":
        assert msg.answer == [] and authority.count("www.example.test") == 0


def test_cache_answers_from_the_upstream_once(resolver: Start, authority: Authority,
                                              write_policy: Callable[..., Path]) -> None:
    """The process caches (expiry, TTL ageing and the SOA minimum run on an injected clock in
    tests/dns/test_cache_clock.py, not on sleeps here)."""
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    first = r.ask("short.example.test")
    second = r.ask("short.example.test")
    assert authority.count("short.example.test") == 1
    assert first.answer[0].ttl == SHORT_TTL and second.answer[0].ttl <= SHORT_TTL
    assert addresses(second) == ["192.0.2.2"]


def test_negative_answers_are_cached(resolver: Start, authority: Authority,
                                     write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    assert rcode(r.ask("missing.example.test")) == "NXDOMAIN"
    assert rcode(r.ask("MISSING.example.test")) == "NXDOMAIN"
    assert rcode(r.ask("www.example.test", "MX")) == "NOERROR"  # NODATA
    assert rcode(r.ask("www.example.test", "MX")) == "NOERROR"
    assert authority.count("missing.example.test") == 1
    assert authority.count("www.example.test") == 1


def test_cache_keeps_the_askers_id_and_case(resolver: Start, authority: Authority,
                                            write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    r.ask("www.example.test")
    q = dns.message.make_query("WwW.ExAmPlE.TeSt", "A", use_edns=0)
    msg = dns.query.udp(q, r.host, port=r.port, timeout=3)  # dnspython checks ID and question
    assert msg.id == q.id
    assert msg.question[0].name.to_text() == "WwW.ExAmPlE.TeSt."
    assert authority.count("www.example.test") == 1


def test_policy_reload_changes_verdicts_and_keeps_answers(resolver: Start, authority: Authority,
                                        write_policy: Callable[..., Path]) -> None:
    policy = write_policy()
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--reload-interval", "0.2")
    assert addresses(r.ask("img.wechat.test")) == ["192.0.2.66"]  # downloads phase: logged
    r.ask("www.example.test")
    r.ask("www.example.test")
    assert authority.count("www.example.test") == 1
    write_policy(wechat_full="2020-12-01")  # WeChat reaches 'full' before TEST_DAY
    deadline = time.monotonic() + 5
    while rcode(r.ask("img.wechat.test")) != "NXDOMAIN" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rcode(r.ask("img.wechat.test")) == "NXDOMAIN"
    r.ask("www.example.test")
    # img.wechat.test was cached as a logged answer; the reload blocks it at once,
    # and the upstream answers stay cached (a reload is no cache-cold storm).
    assert authority.count("www.example.test") == 1, "the reload kept the upstream answers"
    assert "policy reloaded" in r.stderr()


def test_sighup_reload_and_bad_file_keeps_last_good(resolver: Start, authority: Authority,
                                                    write_policy: Callable[..., Path]) -> None:
    policy = write_policy()
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--reload-interval", "3600")
    assert rcode(r.ask("img.wechat.test")) == "NOERROR"
    write_policy(wechat_full="2020-12-01")
    r.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while rcode(r.ask("img.wechat.test")) != "NXDOMAIN" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert rcode(r.ask("img.wechat.test")) == "NXDOMAIN"
    policy.write_text("version: 1\napps: [oops\n", encoding="utf-8")
    r.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert rcode(r.ask("img.wechat.test")) == "NXDOMAIN", "a bad file keeps the last good policy"
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    assert "keeping the last good policy" in r.stderr()


def test_reload_under_load_fails_no_query(resolver: Start, authority: Authority,
                                          write_policy: Callable[..., Path]) -> None:
    policy = write_policy()
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--reload-interval", "0.05")
    names = ["www.example.test", BLOCKED, "img.wechat.test", "missing.example.test", "alias.example.test"]
    failures: list[str] = []
    answered = [0]
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set() and i < 20_000:
            name = names[i % len(names)]
            i += 1
            try:
                msg = r.ask(name, timeout=2.0)
            except Exception as exc:  # a timeout here is exactly the failure under test
                failures.append(f"{name}: {exc!r}")
                continue
            if rcode(msg) not in ("NOERROR", "NXDOMAIN"):
                failures.append(f"{name}: {rcode(msg)}")
            answered[0] += 1

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for i in range(12):
            write_policy(wechat_full="2020-12-01" if i % 2 == 0 else None)
            if i % 3 == 0:
                r.signal(signal.SIGHUP)
            time.sleep(0.25)
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert failures == []
    assert answered[0] > 200
    assert r.stderr().count("policy reloaded") >= 6


def test_tcp_pipelined_queries_on_one_connection(resolver: Start, authority: Authority,
                                                 write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address)
    queries = {n: dns.message.make_query(n, "A", use_edns=0) for n in
               ("www.example.test", BLOCKED, "missing.example.test", "short.example.test")}
    wire = b"".join(struct.pack("!H", len(w)) + w for w in (q.to_wire() for q in queries.values()))
    with socket.create_connection((r.host, r.port), timeout=5) as s:
        s.sendall(wire)  # all at once: RFC 7766 pipelining
        got: dict[str, dns.message.Message] = {}
        buf = b""
        while len(got) < len(queries):
            chunk = s.recv(65535)
            assert chunk, "connection closed early"
            buf += chunk
            while len(buf) >= 2 and len(buf) >= 2 + struct.unpack("!H", buf[:2])[0]:
                n = struct.unpack("!H", buf[:2])[0]
                msg = dns.message.from_wire(buf[2 : 2 + n])
                buf = buf[2 + n :]
                got[msg.question[0].name.to_text().rstrip(".")] = msg
    for name, q in queries.items():
        assert got[name].id == q.id
    assert rcode(got[BLOCKED]) == "NXDOMAIN" and ede(got[BLOCKED])
    assert addresses(got["www.example.test"]) == ["192.0.2.1"]
    assert rcode(got["missing.example.test"]) == "NXDOMAIN"


@pytest.mark.parametrize("edns", [False, 0], ids=["no-edns", "edns-1232"])
def test_truncation_falls_back_to_tcp(resolver: Start, authority: Authority,
                                      write_policy: Callable[..., Path], edns: int | bool) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    udp = r.ask("big.example.test", "TXT", edns=edns)
    assert udp.flags & dns.flags.TC, "too big for the client's UDP size: truncated"
    assert authority.count("big.example.test", "tcp") == 1, "the upstream's TC answer was re-asked over TCP"
    whole = r.ask("big.example.test", "TXT", tcp=True, edns=edns)
    assert not whole.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in whole.answer) == 8
    assert authority.count("big.example.test") == 2, "the TCP retry was served from the cache"


def test_edns0_passes_through(resolver: Start, authority: Authority,
                              write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    q = dns.message.make_query("www.example.test", "A", use_edns=0, payload=4000, want_dnssec=True)
    msg = dns.query.udp(q, r.host, port=r.port, timeout=3)
    assert msg.edns == 0 and msg.payload > 0
    assert authority.edns_seen[-1] == (1232, 1), "our UDP size and the client's DO bit went upstream"
    plain = r.ask("www.example.test", edns=False)
    assert plain.edns == -1
    assert authority.edns_seen[-1] is None
    assert authority.count("www.example.test") == 2, "EDNS and plain answers are cached apart"


def test_ipv6_and_several_listeners(resolver: Start, authority: Authority,
                                    write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--listen", "127.0.0.1:0", "--listen", "[::1]:0")
    assert [h for h, _ in r.addresses] == ["127.0.0.1", "::1"]
    for host, port in r.addresses:
        assert addresses(r.ask("www.example.test", host=host, port=port)) == ["192.0.2.1"]
        assert rcode(r.ask(BLOCKED, host=host, port=port, tcp=True)) == "NXDOMAIN"


FAULTS = ["silent", "slow", "garbage", "servfail", "down"]


@pytest.mark.parametrize("fault", FAULTS, ids=FAULTS)
def test_upstream_fault_fails_over_to_next(resolver: Start, write_policy: Callable[..., Path],
                                           fault: str) -> None:
    bad, good = Authority(), Authority()
    try:
        if fault == "down":
            bad.stop()
        else:
            bad.mode = fault
        r = resolver("--policy", str(write_policy()), "--upstream", bad.address, "--upstream", good.address,
                     "--timeout", "2")
        started = time.monotonic()
        msg = r.ask("www.example.test")
        assert addresses(msg) == ["192.0.2.1"]
        assert time.monotonic() - started < 2.5
        assert good.count("www.example.test") == 1
    finally:
        bad.stop()
        good.stop()


@pytest.mark.parametrize("fault", FAULTS, ids=FAULTS)
def test_upstream_fault_gives_servfail_then_recovers(resolver: Start, write_policy: Callable[..., Path],
                                                     fault: str) -> None:
    auth = Authority()
    port = auth.port
    try:
        if fault == "down":
            auth.stop()
        else:
            auth.mode = fault
            auth.slow = 3.0
        r = resolver("--policy", str(write_policy()), "--upstream", f"127.0.0.1:{port}", "--timeout", "1")
        started = time.monotonic()
        msg = r.ask("www.example.test", timeout=5)
        assert rcode(msg) == "SERVFAIL", "never NXDOMAIN when no upstream answers"
        assert time.monotonic() - started < 1.5
        if fault == "down":
            auth = Authority(port=port)
        else:
            auth.mode = "ok"
        time.sleep(0.1 if fault != "slow" else 3.0)  # let the slow thread finish its sleep
        assert addresses(r.ask("www.example.test", timeout=5)) == ["192.0.2.1"]
    finally:
        auth.stop()


def test_metrics_endpoint(resolver: Start, authority: Authority, write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--metrics", "127.0.0.1:0")
    assert r.metrics_url
    r.ask(BLOCKED)
    r.ask("img.wechat.test")
    r.ask("www.example.test")
    r.ask("www.example.test")
    text = httpx.get(r.metrics_url, timeout=5).text
    assert 'egress_dns_decisions_total{action="block",app="tiktok"} 1.0' in text
    assert 'egress_dns_decisions_total{action="log",app="wechat"} 1.0' in text
    assert 'egress_dns_queries_total{result="allow"} 2.0' in text
    assert 'egress_dns_cache_lookups_total{outcome="hit"} 1.0' in text
    assert f'egress_dns_upstream_seconds_count{{upstream="{authority.address}"}} 2.0' in text


def test_settings_precedence(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                             tmp_path: Path) -> None:
    policy = write_policy(settings="settings:\n  dns:\n    block_response: refused\n    canary: false\n")
    from_policy = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    assert rcode(from_policy.ask(BLOCKED)) == "REFUSED"
    config = tmp_path / "dns.yaml"
    config.write_text("block_response: 'null'\ncanary: true\n", encoding="utf-8")
    from_file = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                         "--config", str(config))
    assert addresses(from_file.ask(BLOCKED)) == ["0.0.0.0"]
    # The canary is the core's builtin:canary, which settings.dns.canary switched
    # off for every component; a resolver's config or flag can only switch it off.
    assert not ede(from_file.ask("use-application-dns.net"))
    from_cli = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                        "--config", str(config), "--block-response", "nxdomain")
    assert rcode(from_cli.ask(BLOCKED)) == "NXDOMAIN"


def test_sigterm_drains_in_flight_queries_and_exits_0(resolver: Start, authority: Authority,
                                                      write_policy: Callable[..., Path]) -> None:
    authority.slow_down(1.0)
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--timeout", "4")
    result: list[dns.message.Message] = []
    t = threading.Thread(target=lambda: result.append(r.ask("www.example.test", timeout=6)))
    t.start()
    time.sleep(0.4)
    r.signal(signal.SIGTERM)
    t.join(8)
    assert r.proc.wait(10) == 0
    assert result and addresses(result[0]) == ["192.0.2.1"], "the query in flight was answered"


BAD_CONFIG = [
    (["--upstream", "not-an-ip"], "not an IP address"),
    (["--listen", "127.0.0.1:99999"], "not a port"),
    (["--acl", "10.0.0.0/33"], "not a CIDR"),
    (["--timeout", "0"], "timeout"),
]


@pytest.mark.parametrize(("flags", "message"), BAD_CONFIG, ids=["upstream", "listen", "acl", "timeout"])
def test_bad_settings_exit_1(write_policy: Callable[..., Path], flags: list[str], message: str) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(write_policy()),
                          "--upstream", f"127.0.0.1:{free_port()}", *flags], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 1
    assert message in out.stderr


def test_bad_policy_exits_1(tmp_path: Path) -> None:
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps:\n  - id: x\n", encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(bad),
                          "--upstream", "127.0.0.1:5"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1
    assert f"{bad}:" in out.stderr


def test_workers_share_the_port(resolver: Start, authority: Authority,
                                write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--workers", "2", "--metrics", "127.0.0.1:0")
    deadline = time.monotonic() + 10
    while r.stderr().count("ready") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert r.stderr().count("ready") == 2, "the second worker started"
    n = 200
    for i in range(n):  # each query from a new source port, so SO_REUSEPORT spreads them
        assert rcode(r.ask(f"w{i}.tiktok.test")) == "NXDOMAIN"
    worker_log = r.log_path.with_name(r.log_path.stem + ".w1.jsonl")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        counts = [len(p.read_text().splitlines()) if p.exists() else 0 for p in (r.log_path, worker_log)]
        if sum(counts) == n:
            break
        time.sleep(0.1)
    assert sum(counts) == n and min(counts) > 0, f"both workers answered: {counts}"
    assert r.metrics_url
    text = httpx.get(r.metrics_url, timeout=5).text
    assert f'egress_dns_decisions_total{{action="block",app="tiktok"}} {float(n)}' in text, \
        "the metrics endpoint sums every worker"
    assert r.stop() == 0


BUNDLED_CASES = [
    # (phase, name, rcode, app name in EDE or None when forwarded)
    ("full", "www.tiktok.com", "NXDOMAIN", "TikTok"),
    ("full", "weixin.qq.com", "NXDOMAIN", "WeChat"),
    ("none", "www.tiktok.com", "NXDOMAIN", None),  # forwarded: the test upstream knows no such zone
]


@pytest.mark.parametrize(("phase", "name", "want", "app"), BUNDLED_CASES,
                         ids=["tiktok-full", "wechat-full", "tiktok-none-forwarded"])
def test_bundled_policy(resolver: Start, authority: Authority, phase: str, name: str, want: str,
                        app: str | None) -> None:
    """What `make run` serves: the bundled policy (no --policy), as the banner's dig shows."""
    r = resolver("--phase", phase, "--upstream", authority.address)
    msg = r.ask(name)
    assert rcode(msg) == want
    if app is None:
        assert ede(msg) == [] and authority.count(name) == 1
    else:
        [(code, text)] = ede(msg)
        assert code == 15 and app in text and f"phase {phase}" in text
        assert authority.count(name) == 0


def test_identical_questions_in_flight_go_upstream_once(resolver: Start, authority: Authority,
                                                        write_policy: Callable[..., Path]) -> None:
    authority.slow_down(0.5)
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--timeout", "3")
    answers: list[dns.message.Message] = []
    names = ["WWW.example.test" if i % 2 else "www.example.test" for i in range(20)]
    threads = [threading.Thread(target=lambda n=n: answers.append(r.ask(n))) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(answers) == 20
    assert all(addresses(a) == ["192.0.2.1"] for a in answers)
    assert {a.question[0].name.to_text() for a in answers} == {"WWW.example.test.", "www.example.test."}
    assert authority.count("www.example.test") == 1


# The same query bytes again and again (the UDP fast path answers repeats from
# ready bytes): (flags, [(client, name)], rcodes wanted, event actions wanted).
REPEAT_CASES = [
    ([], [("127.0.0.1", "www.tiktok.test")] * 4, ["NXDOMAIN"] * 4, ["block"] * 4),
    ([], [("127.0.0.1", "www.tiktok.test")] * 2 + [(EXEMPT, "www.tiktok.test")] * 2,
     ["NXDOMAIN", "NXDOMAIN", "NOERROR", "NOERROR"], ["block", "block", "log", "log"]),
    (["--acl", "127.0.0.1/32"], [("127.0.0.1", "www.example.test")] * 3 + [(OUTSIDER, "www.example.test")],
     ["NOERROR", "NOERROR", "NOERROR", "REFUSED"], []),
    (["--log-all"], [("127.0.0.1", "www.example.test")] * 4, ["NOERROR"] * 4, ["allow"] * 4),
    ([], [("127.0.0.1", "use-application-dns.net")] * 3, ["NXDOMAIN"] * 3, ["block"] * 3),
    ([], [("127.0.0.1", "alias.example.test")] * 3 + [(EXEMPT, "alias.example.test")],
     ["NXDOMAIN", "NXDOMAIN", "NXDOMAIN", "NOERROR"], ["block", "block", "block", "log"]),
]


@pytest.mark.parametrize(("flags", "asks", "want", "actions"), REPEAT_CASES,
                         ids=["block-each-repeat-logged", "exempt-client-after-blocks", "acl-after-answers",
                              "log-all-each-cached-repeat", "canary-repeats", "cname-block-then-exempt"])
def test_repeated_query_bytes(resolver: Start, authority: Authority, write_policy: Callable[..., Path],
                              flags: list[str], asks: list[tuple[str, str]], want: list[str],
                              actions: list[str]) -> None:
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address, *flags)
    got = []
    for client, name in asks:
        q = dns.message.make_query(name, "A", use_edns=0)
        q.id = 4242  # byte-identical queries, ID included
        got.append(rcode(dns.query.udp(q, r.host, timeout=4, port=r.port, source=client)))
    assert got == want
    events = r.events(len(actions))
    assert [e["egress"]["action"] for e in events] == actions
    assert [e["source"]["ip"] for e in events] == [c for c, _ in asks][: len(actions)]


def test_repeated_cached_answer_counts_ttl_down(resolver: Start, authority: Authority,
                                                write_policy: Callable[..., Path]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address)
    q = dns.message.make_query("www.example.test", "A")
    ttls = []
    for pause in (0, 0, 0, 1.2, 0, 1.2):
        time.sleep(pause)
        msg = dns.query.udp(q, r.host, timeout=4, port=r.port)
        assert msg.id == q.id and addresses(msg) == ["192.0.2.1"]
        ttls.append(msg.answer[0].ttl)
    assert ttls[0] == ttls[1] == ttls[2] == 300
    assert ttls[2] > ttls[3] == ttls[4] > ttls[5]
    assert authority.count("www.example.test") == 1
