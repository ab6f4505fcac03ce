"""Client groups end to end: the DNS resolver (real loopback sockets, clients
bound to 127.0.0.2/.3/.4), the proxy (real mitmproxy, curl --interface) and
replay (a crafted capture with several clients) answer the same name per the
asker's group, and the start-up notice names the frameworks enforced as
ordered though not in force.

The policy: framework ``ban`` puts TikTok in ``full`` from 2020-01-01 and was
enjoined on 2020-06-01.  Groups: ``default`` (no framework: allowed),
``strict`` 127.0.0.2 (enforced: blocked), ``lab`` 127.0.0.3 (monitor:
logged, answered), ``court`` 127.0.0.4 (legal status in_force: the
injunction counts, allowed).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dns.exception
import dns.message
import dns.query
import pytest

from tests.dns.conftest import REPO, ResolverProcess, addresses, authority, free_port, rcode, resolver  # noqa: F401
from tests.proxy.conftest import Origin, origin, run_proxy  # noqa: F401
from tests.proxy.test_e2e import curl as proxy_curl
from tests.replay import craft

POLICY = """\
version: 2
timezone: UTC
frameworks:
  ban:
    title: The ban
    short: Ban
    kind: executive_order
    schedule:
      tiktok:
        - {from: 2020-01-01, phase: full, source: "1 FR 1"}
    status:
      - {from: 2020-06-01, status: enjoined, source: "Court v. Ban, No. 1"}
clients:
  default: {frameworks: []}
  strict: {networks: [127.0.0.2/32], frameworks: [ban]}
  lab: {networks: [127.0.0.3/32], frameworks: [ban], mode: monitor}
  court: {networks: [127.0.0.4/32], frameworks: [ban], legal_status: in_force}
apps:
  - id: tiktok
    name: TikTok
    owner: ByteDance
    domains: [tiktok.test, tiktokcdn.test]
"""
DAY = "2021-01-01"
NAME = "www.tiktok.test"
ANSWER = ["192.0.2.66"]  # the test authority's address for tiktok.test

# (client address, group, rcode, addresses, event action or None when no event)
CLIENTS = [
    pytest.param("127.0.0.1", "default", "NOERROR", ANSWER, None, id="default-allows"),
    pytest.param("127.0.0.2", "strict", "NXDOMAIN", [], "block", id="strict-blocks"),
    pytest.param("127.0.0.3", "lab", "NOERROR", ANSWER, "log", id="lab-monitors"),
    pytest.param("127.0.0.4", "court", "NOERROR", ANSWER, None, id="court-follows-the-injunction"),
]
EXPECTED = {p.values[0]: p.values[1:] for p in CLIENTS}


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "groups.yaml"
    path.write_text(POLICY)
    return path


def _answer(msg: dns.message.Message) -> tuple[str, list[str]]:
    return rcode(msg), addresses(msg)


@pytest.mark.parametrize("name", [
    pytest.param(NAME, id="the-name"),
    pytest.param("alias.example.test", id="via-cname"),  # CNAME to edge.tiktokcdn.test: judged per group too
])
@pytest.mark.parametrize("order", [
    pytest.param(["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.1"], id="strict-first"),
    pytest.param(["127.0.0.3", "127.0.0.1", "127.0.0.2", "127.0.0.4"], id="lab-first"),
])
def test_dns_answers_per_group_and_never_across(resolver: Callable[..., ResolverProcess],  # noqa: F811
                                                authority: object, policy_file: Path,  # noqa: F811
                                                order: list[str], name: str) -> None:
    r = resolver("--policy", str(policy_file), "--at", DAY,
                 "--upstream", authority.address)  # type: ignore[attr-defined]
    seen = []
    # Each client asks twice over UDP (the second answer comes from the ready
    # answers of the fast path), interleaved with the other groups, then over TCP.
    for _round in range(2):
        for client in order:
            seen.append((client, "udp", _answer(r.ask(name, source=client))))
    for client in order:
        seen.append((client, "tcp", _answer(r.ask(name, source=client, tcp=True))))
    assert seen == [(c, t, EXPECTED[c][1:3]) for c, t, _ in seen]
    logged = [c for c in order for _ in range(3) if EXPECTED[c][3] is not None]
    events = r.events(expect=len(logged))
    got = sorted((e["source"]["ip"], e["egress"]["group"], e["egress"]["action"]) for e in events)
    want = sorted((c, EXPECTED[c][0], EXPECTED[c][3]) for c in logged)
    assert got == want


NOTICE = ("egress-filter dns: Ban was enjoined on 2020-06-01 (Court v. Ban, No. 1); enforcing as ordered; "
          "--legal-status in-force follows the courts")


@pytest.mark.parametrize(("flags", "lines"), [
    pytest.param([], [NOTICE], id="as-ordered-names-the-injunction"),
    pytest.param(["--legal-status", "in-force"], [], id="in-force-says-nothing"),
])
def test_dns_start_notice(resolver: Callable[..., ResolverProcess], authority: object,  # noqa: F811
                          policy_file: Path, flags: list[str], lines: list[str]) -> None:
    r = resolver("--policy", str(policy_file), "--at", DAY,
                 "--upstream", authority.address, *flags)  # type: ignore[attr-defined]
    assert [x for x in r.stderr().splitlines() if "enforcing as ordered" in x] == lines
    # --legal-status in-force turns strict's block into an allow too.
    want = ("NXDOMAIN", []) if not flags else ("NOERROR", ANSWER)
    assert _answer(r.ask(NAME, source="127.0.0.2")) == want


def _capture(tmp_path: Path) -> Path:
    frames = [craft.udp(craft.dns_query(NAME, qid=i), src=c, dst="127.0.0.53")
              for i, c in enumerate(EXPECTED, start=1)]
    return craft.write_pcap(tmp_path / "groups.pcap", craft.link(frames, craft.LINK_RAW), craft.LINK_RAW)


@pytest.mark.parametrize(("flags", "want"), [
    pytest.param([], {c: (v[0], v[3] or "allow") for c, v in EXPECTED.items()}, id="each-client-its-group"),
    pytest.param(["--group", "strict"], {c: ("strict", "block") for c in EXPECTED}, id="group-forces-strict"),
    pytest.param(["--group", "lab"], {c: ("lab", "log") for c in EXPECTED}, id="group-forces-lab"),
    pytest.param(["--legal-status", "in-force"],
                 {"127.0.0.1": ("default", "allow"), "127.0.0.2": ("strict", "allow"),
                  "127.0.0.3": ("lab", "allow"), "127.0.0.4": ("court", "allow")},
                 id="legal-status-in-force"),
])
def test_replay_per_group(tmp_path: Path, policy_file: Path, flags: list[str],
                          want: dict[str, tuple[str, str]]) -> None:
    pcap = _capture(tmp_path)
    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "replay", str(pcap), "--policy",
                          str(policy_file), "--at", DAY, "--format", "jsonl", "--no-progress", *flags],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    events = [json.loads(x) for x in out.stdout.splitlines()]
    assert {e["source"]["ip"]: (e["egress"]["group"], e["egress"]["action"]) for e in events} == want


def test_replay_unknown_group(tmp_path: Path, policy_file: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "replay", str(_capture(tmp_path)),
                          "--policy", str(policy_file), "--group", "nope", "--no-progress"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert (out.returncode, out.stderr.strip()) == (
        2, "egress-filter replay: unknown group 'nope' (groups: court, default, lab, strict)")


# (client address, curl exit code, CONNECT status, HTTP status, event (group, action) or None)
PROXY_CLIENTS = [
    pytest.param("127.0.0.1", 0, 200, 200, None, id="default-allows"),
    pytest.param("127.0.0.2", 35, 200, 0, ("strict", "block"), id="strict-closes-the-tls"),
    pytest.param("127.0.0.3", 0, 200, 200, ("lab", "log"), id="lab-monitors"),
    pytest.param("127.0.0.4", 0, 200, 200, None, id="court-follows-the-injunction"),
]


def test_proxy_decides_per_group(run_proxy: Any, origin: Origin, tmp_path: Path) -> None:  # noqa: F811
    policy = tmp_path / "proxy-groups.yaml"
    policy.write_text(POLICY.replace("tiktok.test", "tiktok.com"))
    proxy = run_proxy("--policy", str(policy), "--at", DAY)
    rows = [p.values for p in PROXY_CLIENTS]
    seen = []
    for _round in range(2):  # interleaved, twice: nothing one group got is reused for another
        for client, *_ in rows:
            r = proxy_curl(proxy, origin, "https://www.tiktok.com/", ca=origin.pki.ca_cert,
                           extra=("--interface", client))
            seen.append((client, r["rc"], r["connect"], r["status"]))
    assert seen == [(c, rc, connect, status) for _ in range(2) for c, rc, connect, status, _ev in rows]
    want = sorted((c, *ev) for _ in range(2) for c, *_x, ev in rows if ev is not None)
    events = proxy.events(len(want))
    got = sorted((e["source"]["ip"], e["egress"]["group"], e["egress"]["action"]) for e in events
                 if e["egress"]["action"] != "allow")
    assert got == want
    notices = [x for x in proxy.stderr.read_text().splitlines() if "enforcing as ordered" in x]
    assert notices == [NOTICE.replace("egress-filter dns:", "egress-filter proxy:")]


@pytest.mark.parametrize(("flags", "lines", "answer"), [
    pytest.param([], [NOTICE.replace("egress-filter dns:", "egress-filter run:")], ("NXDOMAIN", []),
                 id="as-ordered-one-notice-from-run"),
    pytest.param(["--legal-status", "in-force"], [], ("NOERROR", ANSWER), id="in-force-reaches-the-resolver"),
])
def test_run_notice_and_legal_status(authority: Any, policy_file: Path, tmp_path: Path,  # noqa: F811
                                     flags: list[str], lines: list[str],
                                     answer: tuple[str, list[str]]) -> None:
    port = free_port()
    err_path = tmp_path / "run.err"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "egress_filter.cli", "run", "--no-proxy", "--policy",
                                 str(policy_file), "--at", DAY, "--dns-listen", f"127.0.0.1:{port}",
                                 "--upstream", authority.address, "--log", str(tmp_path / "ev.jsonl"),
                                 # No store and no dashboard: run's defaults would put them in the
                                 # real $HOME and on port 8088, which concurrent tests share.
                                 "--no-db", *flags],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                env={**os.environ, "HOME": str(tmp_path)})
    try:
        deadline = time.monotonic() + 30
        while "ready" not in err_path.read_text() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        deadline = time.monotonic() + 30  # the resolver's own answers get their own 30 s
        # "ready" may come from run before its resolver answers on a loaded
        # machine: ask again until the deadline (bounded in count and time).
        got = None
        for _ in range(15):
            try:
                q = dns.message.make_query(NAME, "A")
                got = _answer(dns.query.udp(q, "127.0.0.1", port=port, source="127.0.0.2", timeout=2))
                break
            except (dns.exception.Timeout, BlockingIOError):
                if time.monotonic() > deadline:
                    break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert got == answer
    assert [x for x in err_path.read_text().splitlines() if "enforcing as ordered" in x] == lines
