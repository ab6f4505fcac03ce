"""Replay judges the core's built-in rules like the live adapters: a crafted
capture with a public DoH resolver's name, iCloud Private Relay's SNI, the
DoH canary, DDR and a resolver's bare address gets the ``builtin:*`` verdicts
the DNS resolver and the proxy give, in enforce and in monitor mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import Action, Mode, PolicyView, load_policy_text

from . import craft as c
from .conftest import DOWNLOADS_DAY, POLICY, replay_all


def capture(tmp_path: Path) -> Path:
    packets = [
        c.udp(c.dns_query("dns.google", 1)),
        c.udp(c.dns_query("use-application-dns.net", 2)),
        c.udp(c.dns_query("_dns.resolver.arpa", 3, "SVCB")),
        *c.tcp_segments(c.client_hello("mask.icloud.com"), 1400, sport=40001),
        *c.tcp_segments(c.client_hello(None), 1400, sport=40002, dst="1.1.1.1"),
        c.udp(c.dns_query("www.example.org", 4)),
    ]
    return c.write_pcap(tmp_path / "builtins.pcap", c.link(packets, c.LINK_ETHERNET))


EXPECTED = [
    # (kind, value, rule)
    ("dns", "dns.google", "builtin:doh"),
    ("dns", "use-application-dns.net", "builtin:canary"),
    ("dns", "_dns.resolver.arpa", "builtin:ddr"),
    ("sni", "mask.icloud.com", "builtin:private-relay"),
    ("ip", "1.1.1.1", "builtin:doh"),
    ("dns", "www.example.org", None),
]


def policy_view(extra: str, mode: Mode | None) -> PolicyView:
    text = POLICY.read_text(encoding="utf-8")
    return load_policy_text(extra + text, str(POLICY), POLICY.parent).view(DOWNLOADS_DAY, mode=mode)


MODES = [
    pytest.param("", None, Action.BLOCK, id="enforce"),
    pytest.param("", Mode.MONITOR, Action.LOG, id="monitor-mode"),
    pytest.param("builtins: {doh: false, canary: false, private_relay: false, ddr: false}\n", None,
                 Action.ALLOW, id="switched-off"),
]


@pytest.mark.parametrize(("extra", "mode", "action"), MODES)
def test_replay_judges_builtins(tmp_path: Path, extra: str, mode: Mode | None, action: Action) -> None:
    verdicts, rep = replay_all(policy_view(extra, mode), capture(tmp_path))
    assert [str(d) for d in rep.damage] == []
    got = [(v.sighting.kind.value, v.sighting.value, v.decision.action, v.decision.rule) for v in verdicts]
    want = [(k, value, Action.ALLOW if rule is None else action, rule if action is not Action.ALLOW else None)
            for k, value, rule in EXPECTED]
    assert got == want
