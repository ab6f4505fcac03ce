"""``phases``, ``timeline``, ``explain`` and ``check --upgrade`` on frameworks and groups."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from egress_filter.cli import main
from policies import Observation, load_policy
from tests.core.conftest import POLICY_FILE
from tests.core.test_legal import POLICY


@pytest.fixture
def v2(tmp_path: Path) -> Path:
    p = tmp_path / "legal.yaml"
    p.write_text(POLICY, encoding="utf-8")
    return p


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


PHASES_CASES = [
    pytest.param([], "default", "as_ordered", "downloads", ["order-a"], id="default-group"),
    pytest.param(["--legal-status", "in-force"], "default", "in_force", "none", [], id="in-force-flag"),
    pytest.param(["--group", "strict"], "strict", "in_force", "none", [], id="group-setting"),
    pytest.param(["--client", "10.1.2.3"], "lab", "as_ordered", "none", [], id="client-picks-group"),
    pytest.param(["--group", "strict", "--legal-status", "as_ordered"], "strict", "as_ordered", "downloads",
                 ["order-a"], id="flag-beats-group"),
]


@pytest.mark.parametrize(("extra", "group", "ls", "phase", "frameworks"), PHASES_CASES)
def test_phases_json(v2: Path, capsys: pytest.CaptureFixture[str], extra: list[str], group: str, ls: str,
                     phase: str, frameworks: list[str]) -> None:
    code, out, err = run(["phases", "--policy", str(v2), "--at", "2020-01-20", "--json", *extra], capsys)
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert (doc["group"], doc["legal_status"]) == (group, ls)
    chat = next(a for a in doc["apps"] if a["app"] == "chat")
    assert (chat["phase"], chat["frameworks"]) == (phase, frameworks)
    if group != "lab":
        assert chat["status"][0]["status"] == "enjoined" and chat["status"][0]["source"] == "Court 1, No. 1"


def test_phases_text_names_each_framework_status(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["phases", "--policy", str(v2), "--at", "2021-01-01", "--group", "strict"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("Phases at 2021-01-01 for group strict (legal status: in force;")
    assert "    Order A: revoked since 2020-06-01, Order Z" in "\n".join(lines)
    assert "  * Rule B: in force since 2020-02-10, memo 7" in "\n".join(lines)


def test_unknown_group_is_a_usage_error(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["phases", "--policy", str(v2), "--group", "nope"], capsys)
    assert code == 1
    assert err.strip() == "egress-filter: unknown group 'nope' (groups: default, exempt, lab, stat, strict)"


def test_timeline_lists_every_dated_entry_in_order(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["timeline", "--policy", str(v2), "--json"], capsys)
    assert code == 0
    got = [(e["date"], e["framework"], e["event"], e["apps"]) for e in json.loads(out)["timeline"]]
    assert got == [
        ("2020-01-01", "Order A", "listed; phase downloads starts", ["chat"]),
        ("2020-01-01", "Order A", "listed; phase full starts", ["video"]),
        ("2020-01-01", "scoped", "listed; phase full starts", ["video"]),
        ("2020-01-15", "Order A", "enjoined (downloads phase)", ["chat"]),
        ("2020-02-01", "Order A", "phase full starts", ["chat"]),
        ("2020-02-01", "scoped", "stayed (full phase)", ["video"]),
        ("2020-02-10", "Rule B", "listed; phase downloads starts", ["chat"]),
        ("2020-03-01", "Order A", "enjoined (full phase)", ["chat"]),
        ("2020-06-01", "Order A", "revoked", []),
    ]


TIMELINE_FILTERS = [
    pytest.param(["--app", "video"], 4, id="app"),
    pytest.param(["--framework", "rule-b"], 1, id="framework"),
]


@pytest.mark.parametrize(("extra", "n"), TIMELINE_FILTERS)
def test_timeline_filters(v2: Path, capsys: pytest.CaptureFixture[str], extra: list[str], n: int) -> None:
    code, out, _ = run(["timeline", "--policy", str(v2), "--json", *extra], capsys)
    assert code == 0 and len(json.loads(out)["timeline"]) == n


def test_timeline_text_shows_sources(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["timeline", "--policy", str(v2), "--framework", "order-a"], capsys)
    assert code == 0
    assert out.splitlines()[8:10] == ["2020-03-01  Order A: enjoined (full phase) [Chat]",
                                     "            source: Court 2, No. 2"]


def test_explain_json_names_group_frameworks_and_digest(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", "chat.example", "--policy", str(v2), "--at", "2020-03-05",
                        "--client", "10.1.3.5", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0
    assert (doc["group"], doc["legal_status"], doc["action"]) == ("strict", "in_force", "log")
    assert [f["id"] for f in doc["frameworks"]] == ["rule-b"]
    assert doc["policy"] == {"name": "legal test", "digest": load_policy(v2).digest}


def test_explain_group_flag(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", "chat.example", "--policy", str(v2), "--at", "2020-03-05",
                        "--group", "lab"], capsys)
    assert code == 0
    assert "  group:  lab (legal status: as ordered)" in out.splitlines()


NAMES = ["www.tiktok.com", "weixin.qq.com", "tiktokcdn.com", "example.org", "later.example"]


def test_check_upgrade_decides_like_the_version_1_policy(tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(POLICY_FILE), "--upgrade"], capsys)
    assert code == 0 and out.startswith("# Upgraded to version 2")
    upgraded = POLICY_FILE.with_name("upgraded-for-test.yaml")  # list files resolve beside it
    try:
        upgraded.write_text(out, encoding="utf-8")
        old, new = load_policy(POLICY_FILE), load_policy(upgraded)
        assert list(new.frameworks) == ["policy"] and "default" in new.clients
        for day in ("2020-09-01", "2020-10-01", "2020-11-13", "2026-12-02"):
            at = dt.date.fromisoformat(day)
            for name in NAMES:
                a = old.view(at).decide(Observation.dns(name, "10.9.1.1"))
                b = new.view(at).decide(Observation.dns(name, "10.9.1.1"))
                assert (a.action, a.apps, a.phase, a.rule, a.group) == (
                    b.action, b.apps, b.phase, b.rule, b.group)
    finally:
        upgraded.unlink(missing_ok=True)


def test_check_upgrade_leaves_a_version_2_policy(v2: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["check", str(v2), "--upgrade"], capsys)
    assert code == 0 and out == POLICY
