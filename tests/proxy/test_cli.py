"""`egress-filter proxy` flags → mitmproxy options (the process itself is run in test_e2e)."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from egress_filter.cli import build_parser
from policies import ProxySettings
from proxy_addons.cli import build_options, parse_listen

FLAG_CASES = [
    (
        "defaults-from-policy-settings",
        [],
        {
            "listen_host": "127.0.0.1",
            "listen_port": 8080,
            "mode": ["regular"],
            "egress_mode": None,
            "egress_at": None,
        },
    ),
    ("monitor-is-enforcement-mode", ["--mode", "monitor"], {"egress_mode": "monitor", "mode": ["regular"]}),
    ("other-mode-is-proxy-mode", ["--mode", "transparent"], {"egress_mode": None, "mode": ["transparent"]}),
    (
        "proxy-mode-flag",
        ["--proxy-mode", "wireguard", "--mode", "enforce"],
        {"egress_mode": "enforce", "mode": ["wireguard"]},
    ),
    (
        "two-proxy-modes",
        ["--proxy-mode", "regular", "--proxy-mode", "socks5@1080"],
        {"mode": ["regular", "socks5@1080"]},
    ),
    ("listen-v6", ["--listen", "[::1]:3128"], {"listen_host": "::1", "listen_port": 3128}),
    ("at-date", ["--at", "2020-11-13"], {"egress_at": "2020-11-13"}),
    (
        "phase-and-block",
        ["--phase", "full", "--block", "page"],
        {"egress_phase": "full", "egress_block": "page"},
    ),
    ("log-all", ["--log-all"], {"egress_log_all": True}),
    ("no-log-all", [], {"egress_log_all": False, "egress_pac_listen": None, "egress_pac_direct": []}),
    (
        "pac",
        ["--pac-listen", "8081", "--pac-proxy", "proxy.lan:3128", "--pac-direct", "lan", "--pac-direct",
         "10.9.0.0/16"],
        {"egress_pac_listen": "8081", "egress_pac_proxy": "proxy.lan:3128",
         "egress_pac_direct": ["lan", "10.9.0.0/16"]},
    ),
    (
        "log-metrics-confdir",
        ["--log", "ev.jsonl", "--metrics", "127.0.0.1:9100", "--confdir", "/tmp/c"],
        {"egress_log": "ev.jsonl", "egress_metrics": "127.0.0.1:9100", "confdir": "/tmp/c"},
    ),
]


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(["proxy", *argv])


@pytest.mark.parametrize("argv,expected", [c[1:] for c in FLAG_CASES], ids=[c[0] for c in FLAG_CASES])
def test_flags_become_options(argv: list[str], expected: dict[str, Any]) -> None:
    opts, sets = build_options(parse(argv), ProxySettings())
    assert {k: opts.get(k) for k in expected} == expected
    assert sets == []


def test_set_is_passed_through_in_order() -> None:
    _, sets = build_options(
        parse(["--set", "ssl_insecure=true", "--set", "egress_block_doh=false"]), ProxySettings()
    )
    assert sets == ["ssl_insecure=true", "egress_block_doh=false"]


def test_policy_settings_supply_listen_and_mode() -> None:
    opts, _ = build_options(parse([]), ProxySettings(listen="0.0.0.0:3128", mode="transparent"))
    assert (opts["listen_host"], opts["listen_port"], opts["mode"]) == ("0.0.0.0", 3128, ["transparent"])


@pytest.mark.parametrize(
    "text",
    ["8080", "host:", "host:99999", "host:http"],
    ids=["no-host", "no-port", "port-range", "port-name"],
)
def test_bad_listen(text: str) -> None:
    with pytest.raises(ValueError, match="--listen"):
        parse_listen(text)


def test_at_and_phase_exclude_each_other() -> None:
    with pytest.raises(SystemExit) as info:
        parse(["--at", "2020-11-13", "--phase", "full"])
    assert info.value.code == 2
