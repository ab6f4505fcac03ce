"""`egress-filter check | explain | phases`: exit codes, text and JSON output,
through main(argv) and through the installed entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from egress_filter.cli import main
from policies import BUNDLED, load_policy
from tests.core.conftest import POLICY_FILE, WritePolicy

P = ["--policy", str(POLICY_FILE)]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["check", str(POLICY_FILE)], capsys)
    assert code == 0 and err == ""
    assert out.splitlines() == [
        f"{POLICY_FILE}: OK",
        "  mode: enforce",
        "  apps (3): tiktok, wechat, later",
        "  allow: 4",
        "  domains: 17",
        "  downloads: 4",
        "  hosts: 4",
        "  networks: 1",
        "  sni: 2",
        "  store_ids: 4",
        "  exempt clients: 10.9.0.0/16, 2001:db8:9::/48",
        "  frameworks: policy",
        "  group default: policy (no networks)",
        "  group exempt: policy (10.9.0.0/16, 2001:db8:9::/48)",
        "  legal status: as_ordered",
        "  name: core test policy",
        f"  digest: {load_policy(POLICY_FILE).digest}",
    ]


def test_check_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(POLICY_FILE), "--json"], capsys)
    summary = json.loads(out)
    assert code == 0
    assert summary["apps"] == ["tiktok", "wechat", "later"]
    assert summary["rules"]["domains"] == 17 and summary["mode"] == "enforce"


def test_check_without_a_policy_uses_the_bundled_one(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check"], capsys)
    assert code == 0
    assert out.splitlines()[0] == f"{BUNDLED}: OK"
    assert f"  apps ({len(load_policy().apps)}): tiktok, wechat," in out


BAD_CASES = [
    pytest.param(
        "version: 1\nmode: loud\napps: []\n",
        ["{f}:2: mode: 'loud' is not one of: enforce, monitor"],
        id="bad-mode",
    ),
    pytest.param("version: 1\napps: [\n", ["{f}:3: (yaml): syntax error: "], id="yaml"),
    pytest.param(
        "version: 1\nexempt_clients: [10.0.0.0/40]\nsources: []\napps: []\n",
        [
            "{f}:2: exempt_clients[0]: '10.0.0.0/40' is not a valid CIDR",
            "{f}:3: sources: expected a mapping, got a list",
        ],
        id="two-problems",
    ),
]


@pytest.mark.parametrize(("text", "want"), BAD_CASES)
def test_check_reports_problems_and_exits_1(
    write_policy: WritePolicy, capsys: pytest.CaptureFixture[str], text: str, want: list[str]
) -> None:
    path = write_policy(text)
    code, out, err = run(["check", str(path)], capsys)
    assert code == 1 and out == ""
    lines = err.splitlines()
    assert len(lines) == len(want) + 1
    for line, prefix in zip(lines, want, strict=False):
        assert line.startswith(prefix.format(f=path))
    n = len(want)
    assert lines[-1] == f"egress-filter: {n} problem{'s' if n > 1 else ''} in the policy; nothing was changed"
    assert "Traceback" not in err


def test_check_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["check", str(tmp_path / "nope.yaml")], capsys)
    assert code == 1
    assert (
        err.splitlines()[0] == f"{tmp_path / 'nope.yaml'}:0: (file): cannot read: No such file or directory"
    )


def test_check_through_the_entry_point(write_policy: WritePolicy) -> None:
    path = write_policy("version: 1\napps:\n  - {id: x}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "egress_filter.cli", "check", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[:4] == [
        f"{path}:3: apps[x].name: required key is missing",
        f"{path}:3: apps[x].owner: required key is missing",
        f"{path}:3: apps[x].legal_basis: required key is missing",
        f"{path}:3: apps[x].schedule: required key is missing",
    ]
    ok = subprocess.run(
        [sys.executable, "-m", "egress_filter.cli", "check", str(POLICY_FILE)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0 and ok.stdout.startswith(f"{POLICY_FILE}: OK")


# (argv after `explain`, expected json subset)
EXPLAIN_CASES = [
    pytest.param(
        ["www.tiktok.com", "--at", "2020-11-13", *P],
        {
            "action": "block",
            "apps": ["tiktok"],
            "phase": "full",
            "rule": "domain:tiktok.com",
            "observation": {"kind": "dns", "value": "www.tiktok.com", "client": None},
        },
        id="dns-full",
    ),
    pytest.param(
        ["www.tiktok.com", "--at", "2020-10-01", *P],
        {"action": "log", "phase": "downloads", "at": "2020-10-01"},
        id="dns-downloads",
    ),
    pytest.param(
        ["www.tiktok.com", "--phase", "none", *P], {"action": "allow", "phase": "none"}, id="phase-none"
    ),
    pytest.param(
        ["www.tiktok.com", "--phase", "full", "--client", "10.9.1.1", *P],
        {"action": "log", "would": "block"},
        id="exempt-client",
    ),
    pytest.param(
        ["www.tiktok.com", "--phase", "full", "--mode", "monitor", *P],
        {"action": "log", "would": "block"},
        id="monitor",
    ),
    pytest.param(
        ["apps.apple.com", "--kind", "sni", "--at", "2020-10-01", *P],
        {
            "action": "allow",
            "inspect": True,
            "rule": "builtin:store-host",
            "observation": {"kind": "sni", "value": "apps.apple.com", "client": None},
        },
        id="sni-store-host",
    ),
    pytest.param(
        ["https://apps.apple.com/us/app/tiktok/id835599320", "--at", "2020-10-01", *P],
        {
            "action": "block",
            "apps": ["tiktok"],
            "rule": "store:apple:835599320",
            "observation": {
                "kind": "http",
                "value": "https://apps.apple.com/us/app/tiktok/id835599320",
                "client": None,
            },
        },
        id="http-store-url",
    ),
    pytest.param(
        ["cdn.shared.example/tiktok/app.apk", "--at", "2020-10-01", *P],
        {
            "action": "block",
            "rule": "download:cdn.shared.example/tiktok/",
            "observation": {
                "kind": "http",
                "value": "https://cdn.shared.example/tiktok/app.apk",
                "client": None,
            },
        },
        id="http-without-scheme",
    ),
    pytest.param(
        ["203.0.113.5", "--at", "2020-11-13", *P],
        {
            "action": "block",
            "rule": "network:203.0.113.0/24",
            "observation": {"kind": "ip", "value": "203.0.113.5", "client": None},
        },
        id="ip-guessed",
    ),
    pytest.param(
        ["www.tiktok.com", "--at", "2020-11-13"],
        {"action": "block", "apps": ["tiktok"]},
        id="bundled-tiktok-full",
    ),
    pytest.param(["www.tiktok.com", "--at", "2020-10-01"], {"action": "log"}, id="bundled-tiktok-downloads"),
    pytest.param(
        ["weixin.qq.com", "--at", "2020-09-21"], {"action": "block", "apps": ["wechat"]}, id="bundled-wechat"
    ),
    pytest.param(
        ["example.org", "--at", "2021-03-01"],
        {"action": "allow", "apps": [], "rule": None, "reason": "no rule matched"},
        id="bundled-unrelated",
    ),
]


@pytest.mark.parametrize(("argv", "want"), EXPLAIN_CASES)
def test_explain_json(capsys: pytest.CaptureFixture[str], argv: list[str], want: dict[str, Any]) -> None:
    code, out, err = run(["explain", *argv, "--json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert {"action", "apps", "phase", "rule", "reason"} <= set(got)
    assert {k: got[k] for k in want} == want


def test_explain_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        ["explain", "WWW.TikTok.com.", "--at", "2020-11-13", "--client", "10.9.1.1", *P], capsys
    )
    assert code == 0
    assert out.splitlines() == [
        "LOG  dns WWW.TikTok.com.",
        "  apps:   tiktok",
        "  phase:  full",
        "  rule:   domain:tiktok.com",
        "  at:     2020-11-13",
        "  group:  exempt (legal status: as ordered)",
        "  framework: policy schedule: in force since 2020-11-12, Commerce ID 2020-09-18",
        "  reason: WWW.TikTok.com. belongs to TikTok, in phase full since 2020-11-12, so it would be "
        "blocked; client 10.9.1.1 is exempt, so it is logged instead.",
    ]


USAGE_CASES = [
    pytest.param(["explain", "x.example", "--at", "2020-13-01"], "'2020-13-01' is not a date", id="bad-date"),
    pytest.param(
        ["explain", "x.example", "--at", "2020-10-01", "--phase", "full"],
        "not allowed with",
        id="at-and-phase",
    ),
    pytest.param(["explain", "x.example", "--phase", "total"], "invalid choice", id="bad-phase"),
    pytest.param(["explain", "x.example", "--kind", "smtp"], "invalid choice", id="bad-kind"),
    pytest.param([], "required", id="no-command"),
]


@pytest.mark.parametrize(("argv", "message"), USAGE_CASES)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_explain_with_a_bad_policy_exits_1(
    write_policy: WritePolicy, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_policy("version: 3\napps: []\n")
    code, out, err = run(["explain", "x.example", "--policy", str(path)], capsys)
    assert (code, out) == (1, "")
    assert err.splitlines()[0] == f"{path}:1: version: unsupported version 3 (supported: 1, 2)"


def test_phases_text(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["phases", "--at", "2020-10-01", *P], capsys)
    assert code == 0
    assert out.splitlines() == [
        "Phases at 2020-10-01 for group default (legal status: as ordered; "
        "* marks the frameworks that set the phase):",
        "  TikTok     downloads  since 2020-09-20  Commerce ID 2020-09-18",
        "             next change: full from 2020-11-12",
        "  WeChat     full       since 2020-09-20  Commerce ID 2020-09-18",
        "             no further change",
        "  Later App  none       since -           before the schedule starts",
        "             next change: full from 2021-02-19",
    ]


PHASES_CASES = [
    pytest.param(
        ["--at", "2020-10-01", *P],
        {"tiktok": ("downloads", "2020-09-20", False), "later": ("none", None, False)},
        id="test-policy",
    ),
    pytest.param(["--phase", "full", *P], {"later": ("full", None, True)}, id="override"),
    pytest.param(
        ["--at", "2020-10-01"],
        {
            # 85 FR 60061: the app-store item was postponed from 2020-09-20 to 2020-09-27
            "tiktok": ("downloads", "2020-09-27", False),
            "wechat": ("full", "2020-09-20", False),
            "alipay": ("none", None, False),
        },
        id="bundled-2020-10-01",
    ),
    pytest.param(
        ["--at", "2021-02-19"],
        {"tiktok": ("full", "2020-11-12", False), "wps_office": ("full", "2021-02-19", False)},
        id="bundled-2021-02-19",
    ),
]


@pytest.mark.parametrize(("argv", "want"), PHASES_CASES)
def test_phases_json(
    capsys: pytest.CaptureFixture[str], argv: list[str], want: dict[str, tuple[str, str | None, bool]]
) -> None:
    code, out, _ = run(["phases", *argv, "--json"], capsys)
    assert code == 0
    got = {a["app"]: (a["phase"], a["since"], a["overridden"]) for a in json.loads(out)["apps"]}
    assert {k: got[k] for k in want} == want
    for a in json.loads(out)["apps"]:
        assert a["source"] and a["name"]


@pytest.mark.parametrize("command", ["dns", "proxy", "run"])
def test_serving_commands_take_allow_empty(command: str) -> None:
    from egress_filter.cli import build_parser

    parser = build_parser()
    assert parser.parse_args([command, "--allow-empty"]).allow_empty is True
    assert parser.parse_args([command]).allow_empty is False


def test_run_passes_allow_empty_to_both_servers() -> None:
    from egress_filter.cli import build_parser
    from egress_filter.run import _child_args

    args = build_parser().parse_args(["run", "--allow-empty"])
    assert "--allow-empty" in _child_args(args)
    assert "--allow-empty" not in _child_args(build_parser().parse_args(["run"]))


def test_explain_has_no_allow_empty() -> None:
    from egress_filter.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["explain", "x.example", "--allow-empty"])
