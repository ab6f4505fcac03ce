"""Property: a zone served by ``egress-filter dns --rpz`` and transferred into
Unbound and BIND 9 gives the verdicts ``egress-filter explain`` gives.

One primary (our resolver, a subprocess), an Unbound secondary (``rpz:`` with
``primary:`` and ``allow-notify:``, unsigned) and a BIND 9 secondary (``type
secondary`` with TSIG, in ``response-policy``) run for the whole test, on
free loopback ports, forwarding to the catch-all upstream.  For each policy
Hypothesis generates, the test writes it over the primary's policy file and
sends SIGHUP; the primary's NOTIFY makes each engine transfer the new zone
(IXFR, or AXFR when it falls back).  Each policy carries one sentinel domain
of its own, so "the engine blocks this policy's sentinel and answers the last
one's" says the new zone is in.  Then every name the policy lists, a name
below each, and random names on and off label boundaries (``ab.t`` is not
below ``b.t``) are asked of each engine, and each answer must be the one ``explain``
(run in-process, ``--json``) gives: NXDOMAIN when it says block, the
upstream's address otherwise.  Examples are bounded (``MAX_EXAMPLES``, no
shrinking, each wait under a deadline) so the test stays near a minute.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from egress_filter.cli import main as cli_main

from .test_engines import Engine, ask, free_port, unbound_conf
from .test_rpz_primary import KEY, ZONE, bind_secondary, until
from .upstream import UPSTREAM_A, CatchAll

MAX_EXAMPLES = 30
DAY = "2021-01-01"
TRANSFER_DEADLINE = 20.0  # seconds from SIGHUP to the new zone answering in Unbound

LABELS = ("a", "b", "ab", "ba", "c")  # "ab" and "ba" end in "b" and "a" off a label boundary
names = st.lists(st.sampled_from(LABELS), min_size=1, max_size=3).map(lambda ls: ".".join(ls) + ".t")
name_lists = st.lists(names, max_size=4, unique=True)
probes = st.lists(st.lists(st.sampled_from((*LABELS, "d")), min_size=1, max_size=4).map(
    lambda ls: ".".join(ls) + ".t"), min_size=5, max_size=20)


@st.composite
def policies(draw: st.DrawFn) -> tuple[list[str], list[str], list[str], list[str], list[str],
                                       list[str], list[str]]:
    """(allow domains, allow hosts, app0's domains, app0's hosts, app1's domains,
    app1's download hosts, app2's domains): the parts of ``policy_text``."""
    return (draw(st.lists(names, max_size=2, unique=True)), draw(st.lists(names, max_size=2, unique=True)),
            draw(name_lists), draw(name_lists), draw(name_lists), draw(name_lists), draw(name_lists))


def policy_text(parts: tuple[list[str], ...], sentinel: str) -> str:
    """app0 in phase full (with the sentinel), app1 in downloads (its hosts are download hosts),
    app2 in none; an allow list."""
    allow_d, allow_h, d0, h0, d1, h1, d2 = parts

    def yl(xs: list[str]) -> str:
        return "[" + ", ".join(xs) + "]"

    return (
        "version: 2\nframeworks:\n  f:\n    title: F\n    kind: company_rule\n    schedule:\n"
        "      app0: [{from: 2020-01-01, phase: full, source: s}]\n"
        "      app1: [{from: 2020-01-01, phase: downloads, source: s}]\n"
        "clients:\n  default: {frameworks: [f]}\n"
        f"allow:\n  domains: {yl(allow_d)}\n  hosts: {yl(allow_h)}\n"
        "apps:\n"
        f"  - {{id: app0, name: App 0, owner: O, domains: {yl([*d0, sentinel])}, hosts: {yl(h0)}}}\n"
        f"  - id: app1\n    name: App 1\n    owner: O\n    domains: {yl(d1)}\n"
        f"    downloads: [{', '.join('{host: ' + h + '}' for h in h1)}]\n"
        f"  - {{id: app2, name: App 2, owner: O, domains: {yl(d2)}}}\n")


def explain_blocks(policy: Path, name: str) -> bool:
    """``egress-filter explain --json`` for a DNS name: is it BLOCK?"""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["explain", "--policy", str(policy), "--at", DAY, "--kind", "dns", "--json", name])
    assert rc == 0, out.getvalue()
    return bool(json.loads(out.getvalue())["action"] == "block")


class Pair:
    """The primary, its Unbound (unsigned) and BIND (TSIG) secondaries, and the
    sentinel of the policy they serve."""

    def __init__(self, tmp: Path, upstream: CatchAll):
        self.tmp = tmp
        self.policy = tmp / "policy.yaml"
        self.count = 0
        self.sentinel = self._sentinel()
        self.policy.write_text(policy_text(([], [], [], [], [], [], []), self.sentinel))
        self.uport, self.bport = free_port(), free_port()
        port = free_port()
        self.primary = Engine(
            [sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(self.policy), "--at", DAY,
             "--listen", f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream.port}", "--rpz",
             "--rpz-allow-unsigned", "127.0.0.1/32", "--tsig-key", KEY,
             "--rpz-notify", f"127.0.0.1:{self.uport}", "--rpz-notify", f"127.0.0.1:{self.bport}",
             "--reload-interval", "3600"], port, tmp / "primary.log")
        self.engines: list[Engine] = []
        body = f"""rpz:
    name: "{ZONE}"
    primary: 127.0.0.1@{port}
    allow-notify: 127.0.0.1
    zonefile: "{tmp / 'secondary.rpz'}"
server:"""
        try:
            self.engines.append(Engine(unbound_conf(tmp, self.uport, upstream.port, body, "respip iterator"),
                                       self.uport, tmp / "unbound.log"))
            self.engines.append(bind_secondary(tmp, self.bport, upstream.port, port))
            for engine in self.engines:
                until(TRANSFER_DEADLINE, lambda e=engine: ask(e.port, self.sentinel) == "blocked",
                      "the first transfer", engine.log)
        except BaseException:
            self.stop()
            raise

    def _sentinel(self) -> str:
        self.count += 1
        return f"s{self.count}.sentinel.t"

    def serve(self, parts: tuple[list[str], ...]) -> None:
        """Serve a new policy and wait until Unbound holds its zone."""
        old, new = self.sentinel, self._sentinel()
        self.policy.write_text(policy_text(parts, new))
        os.kill(self.primary.proc.pid, signal.SIGHUP)

        for engine in self.engines:
            def holds_new_zone(port: int = engine.port) -> bool:
                return ask(port, new) == "blocked" and ask(port, old) == UPSTREAM_A

            until(TRANSFER_DEADLINE, holds_new_zone, f"the zone of policy {self.count} in {engine.log.stem}",
                  engine.log)
        self.sentinel = new

    def stop(self) -> None:
        for engine in self.engines:
            engine.stop()
        self.primary.stop()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    upstream = CatchAll()
    try:
        p = Pair(tmp_path_factory.mktemp("rpz-property"), upstream)
        yield p
        p.stop()
    finally:
        upstream.stop()


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(parts=policies(), extra=probes)
def test_unbound_after_a_transfer_answers_as_explain(pair: Pair, parts: tuple[list[str], ...],
                                                     extra: list[str]) -> None:
    pair.serve(parts)
    keys = sorted({n for group in parts for n in group})
    asked = sorted({*keys, *(f"x.{k}" for k in keys), *extra})
    want = [(n, "blocked" if explain_blocks(pair.policy, n) else UPSTREAM_A) for n in asked]
    for engine in pair.engines:
        got = [(n, ask(engine.port, n)) for n in asked]
        assert got == want, (engine.log.stem, pair.policy.read_text())
