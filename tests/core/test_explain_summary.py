"""``explain`` and ``phases`` as a new user reads them (issue 14, papercuts).

Through ``main(argv)`` and the installed ``egress-filter`` entry point: an
empty target is a usage error (exit 2); the text's reason is one short
sentence while ``--json`` keeps the whole one; a block that monitor mode or an
exempt client turns into a log never says "so this is blocked"; an opt-in
list group that decided is named; ``phases`` gives each app's next scheduled
change, or "no further change".
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from egress_filter.cli import main
from tests.core.conftest import POLICY_FILE
from tests.core.test_legal import POLICY as LEGAL_POLICY

REPO = Path(__file__).resolve().parents[2]
P = ["--policy", str(POLICY_FILE)]

# Two apps, the two opt-in groups of the bundled policy switched on, and a name that
# both the app itself and a group claim (the app's own rule decides it).
GROUPS_POLICY = """\
version: 1
timezone: UTC
sources: {eo: "EO 1"}
groups:
  parent_company: {enabled: true, description: parent companies}
  ads_tracking: {enabled: true, description: ads}
  off_group: {enabled: false}
apps:
  - id: chat
    name: Chat
    owner: Chat Parent
    legal_basis: {order: EO 1, citation: 1 FR 1}
    schedule:
      - {from: 2020-01-01, phase: full, source: eo}
    domains:
      - chat.example
      - {name: parent.example, group: parent_company}
      - {name: both.example, group: parent_company}
      - both.example
      - {name: off.example, group: off_group}
    hosts:
      - {name: ads.parent.example, group: ads_tracking}
"""


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def groups_policy(tmp_path: Path) -> Path:
    p = tmp_path / "groups.yaml"
    p.write_text(GROUPS_POLICY, encoding="utf-8")
    return p


@pytest.fixture
def legal_policy(tmp_path: Path) -> Path:
    p = tmp_path / "legal.yaml"
    p.write_text(LEGAL_POLICY, encoding="utf-8")
    return p


EMPTY = [
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
    pytest.param("\t\n", id="tab-newline"),
]


@pytest.mark.parametrize("target", EMPTY)
def test_an_empty_target_is_a_usage_error(target: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", target, *P])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == ""
    assert "argument NAME_OR_URL: give a DNS name, SNI, URL or IP address (it is empty)" in err


@pytest.mark.parametrize("extra", [pytest.param([], id="text"), pytest.param(["--json"], id="json")])
def test_an_empty_target_exits_2_from_the_entry_point(extra: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "egress_filter.cli", "explain", "", *P, *extra], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    assert "ALLOW" not in proc.stderr and "it is empty" in proc.stderr


# (argv after `explain`, the one sentence, words the whole reason still carries)
SENTENCES = [
    pytest.param(["www.tiktok.com", "--at", "2020-11-13"],
                 "www.tiktok.com belongs to TikTok, in phase full since 2020-11-12, so it is blocked.",
                 ["Commerce ID 2020-09-18", "so this is blocked"], id="block"),
    pytest.param(["www.tiktok.com", "--at", "2020-10-01"],
                 "www.tiktok.com belongs to TikTok, in phase downloads since 2020-09-20, so it is logged.",
                 ["so this is logged"], id="log-in-downloads"),
    pytest.param(["www.tiktok.com", "--at", "2020-11-13", "--mode", "monitor"],
                 "www.tiktok.com belongs to TikTok, in phase full since 2020-11-12, so it would be blocked; "
                 "monitor mode is on, so it is logged instead.",
                 ["monitor mode: would be blocked, logged instead", "Commerce ID 2020-09-18"], id="monitor"),
    pytest.param(["www.tiktok.com", "--at", "2020-11-13", "--client", "10.9.1.1"],
                 "www.tiktok.com belongs to TikTok, in phase full since 2020-11-12, so it would be blocked; "
                 "client 10.9.1.1 is exempt, so it is logged instead.",
                 ["client 10.9.1.1 is exempt"], id="exempt-client"),
    pytest.param(["safe.tiktok.com", "--at", "2020-11-13"],
                 "safe.tiktok.com is on the allow list, so it is allowed.", ["allow list"], id="allow-list"),
    pytest.param(["example.org", "--at", "2020-11-13"], "No rule matches example.org, so it is allowed.",
                 ["no rule matched"], id="no-rule"),
    pytest.param(["apps.apple.com", "--kind", "sni", "--at", "2020-10-01"],
                 "app-store host: the URL decides, so it is inspected; the name itself is allowed.",
                 ["inspected"], id="store-host-inspected"),
]


@pytest.mark.parametrize(("argv", "sentence", "details"), SENTENCES)
def test_the_reason_is_one_short_sentence(argv: list[str], sentence: str, details: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", *argv, *P], capsys)
    assert code == 0
    assert out.splitlines()[-1] == f"  reason: {sentence}"
    code, out, _ = run(["explain", *argv, *P, "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["summary"] == sentence
    assert all(d in doc["reason"] for d in details), doc["reason"]


# (argv, the verdict, the sentence's ending): every way a block turns into a log
DOWNGRADED = [
    pytest.param(["www.tiktok.com", "--at", "2020-11-13", "--mode", "monitor", *P],
                 "monitor mode is on, so it is logged instead.", id="monitor-flag"),
    pytest.param(["www.tiktok.com", "--at", "2020-11-13", "--client", "10.9.1.1", *P],
                 "client 10.9.1.1 is exempt, so it is logged instead.", id="exempt-client"),
    pytest.param(["dns.google", "--mode", "monitor", *P], "monitor mode is on, so it is logged instead.",
                 id="monitor-builtin"),
]


@pytest.mark.parametrize(("argv", "ending"), DOWNGRADED)
def test_monitor_never_says_blocked(argv: list[str], ending: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, text, _ = run(["explain", *argv], capsys)
    assert code == 0 and text.startswith("LOG  ")
    code, out, _ = run(["explain", *argv, "--json"], capsys)
    doc = json.loads(out)
    assert (doc["action"], doc["would"]) == ("log", "block")
    assert doc["summary"].endswith(ending)
    for said in (text, doc["reason"], doc["summary"]):
        assert "so this is blocked" not in said and "so it is blocked" not in said


def test_a_monitoring_group_says_so(legal_policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", "chat.example", "--policy", str(legal_policy), "--client", "10.1.2.3",
                        "--phase", "full", "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and (doc["action"], doc["would"], doc["group"]) == ("log", "block", "lab")
    assert doc["summary"].endswith(
        "so it would be blocked; group lab is in monitor mode, so it is logged instead.")
    assert "so this is blocked" not in doc["reason"]


# (name, the group that decided or None, the sentence's opt-in part)
GROUP_CASES = [
    pytest.param("www.parent.example", "parent_company", " (opt-in group parent_company)",
                 id="parent-company"),
    pytest.param("ads.parent.example", "ads_tracking", " (opt-in group ads_tracking)", id="ads-tracking"),
    pytest.param("x.both.example", None, "", id="own-rule-beats-group"),
    pytest.param("chat.example", None, "", id="no-group"),
]


@pytest.mark.parametrize(("name", "group", "part"), GROUP_CASES)
def test_the_opt_in_group_that_decided_is_named(name: str, group: str | None, part: str, groups_policy: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["explain", name, "--policy", str(groups_policy), "--at", "2021-01-01"]
    code, out, _ = run([*argv, "--json"], capsys)
    doc = json.loads(out)
    assert code == 0 and doc["action"] == "block" and doc["list_group"] == group
    assert doc["summary"] == f"{name} belongs to Chat{part}, in phase full since 2020-01-01, so it is " \
                             "blocked."
    assert (f"through the opt-in group {group}" in doc["reason"]) is (group is not None)
    code, out, _ = run(argv, capsys)
    assert out.splitlines()[-1] == f"  reason: {doc['summary']}"


def test_a_disabled_group_decides_nothing(groups_policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["explain", "off.example", "--policy", str(groups_policy), "--json"], capsys)
    assert code == 0 and json.loads(out)["action"] == "allow"


# (phases argv after the policy, app, next change as JSON, the text line)
NEXT_CASES = [
    pytest.param(["--at", "2019-12-31"], "chat", {"date": "2020-01-01", "phase": "downloads"},
                 "next change: downloads from 2020-01-01", id="before-the-schedule"),
    pytest.param(["--at", "2020-01-20"], "chat", {"date": "2020-02-01", "phase": "full"},
                 "next change: full from 2020-02-01", id="next-step"),
    pytest.param(["--at", "2020-01-20"], "video", None, "no further change", id="last-step-as-ordered"),
    pytest.param(["--at", "2020-01-20", "--legal-status", "in-force"], "video",
                 {"date": "2020-06-01", "phase": "none"}, "next change: none from 2020-06-01",
                 id="revocation-in-force"),
    pytest.param(["--at", "2020-02-15", "--group", "strict"], "chat",
                 {"date": "2020-03-01", "phase": "downloads"},
                 "next change: downloads from 2020-03-01", id="injunction-falls-back"),
    pytest.param(["--phase", "full"], "chat", None, "no further change", id="phase-override"),
]


@pytest.mark.parametrize(("argv", "app", "want", "line"), NEXT_CASES)
def test_phases_gives_the_next_change(argv: list[str], app: str, want: dict[str, str] | None, line: str,
                                      legal_policy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["phases", "--policy", str(legal_policy), *argv, "--json"], capsys)
    assert (code, err) == (0, "")
    got = next(a for a in json.loads(out)["apps"] if a["app"] == app)
    assert got["next"] == want
    code, out, _ = run(["phases", "--policy", str(legal_policy), *argv], capsys)
    lines = out.splitlines()
    name = {"chat": "Chat", "video": "Video"}[app]
    at = next(i for i, x in enumerate(lines) if x.startswith(f"  {name} "))
    assert lines[at + 1].strip() == line
