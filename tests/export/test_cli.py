"""``egress-filter export`` end to end: real files, real exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from . import cases


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(cases.POLICY)
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egress_filter.cli", "export", *args],
                          capture_output=True, text=True, timeout=60)


def test_output_file_and_moment(policy_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "zone.rpz"
    r = run("--format", "rpz", "--policy", str(policy_file), "--at", "2020-01-15", "--output", str(out),
            "--serial", "42")
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    text = out.read_text()
    assert "@ SOA localhost. hostmaster.localhost. 42 300 60 86400 60" in text
    assert "*.chat.test CNAME rpz-passthru. ; log app=chat framework=EO_1 rule=domain:chat.test" in text
    assert set(tmp_path.iterdir()) == {policy_file, out}  # no temporary file left behind


def test_phase_group_and_legal_status(policy_file: Path) -> None:
    r = run("--format", "hosts", "--policy", str(policy_file), "--phase", "none")
    assert r.returncode == 0 and "# phases: chat=none, legacy=none, video=none\n" in r.stdout
    # phase none blocks no app; the built-in rules hold whatever the apps' phases
    blocked = [ln for ln in r.stdout.splitlines() if ln.startswith("0.0.0.0")]
    assert blocked and all("rule=builtin:" in ln for ln in blocked)
    r = run("--format", "adblock", "--policy", str(policy_file), "--at", "2020-03-01", "--group", "lab",
            "--legal-status", "in-force")
    assert r.returncode == 0
    assert "! group: lab; date: 2020-03-01; legal status: in force; mode: monitor" in r.stdout
    assert "this group is in monitor mode: nothing is blocked" in r.stdout


def test_bind_writes_conf_and_zone(policy_file: Path, tmp_path: Path) -> None:
    conf = tmp_path / "rpz.conf"
    r = run("--format", "bind", "--policy", str(policy_file), "--output", str(conf))
    zone = tmp_path / "default.rpz.egress-filter.zone"
    assert r.returncode == 0 and r.stderr == f"wrote {conf} and {zone}\n"
    assert f'zone "default.rpz.egress-filter" {{ type primary; file "{zone}"; ' in conf.read_text()
    assert "$ORIGIN default.rpz.egress-filter." in zone.read_text()


@pytest.mark.parametrize(("args", "code", "message"), [
    pytest.param(["--format", "bind"], 1, "--format bind writes two files", id="bind-needs-output"),
    pytest.param(["--format", "rpz", "--group", "nope"], 1, "unknown group 'nope' (groups: default, lab)",
                 id="unknown-group"),
    pytest.param(["--format", "rpz", "--output", "/nonexistent-dir/x"], 1,
                 "cannot write /nonexistent-dir/x: No such file or directory", id="unwritable"),
    pytest.param(["--format", "pdf"], 2, "invalid choice: 'pdf'", id="unknown-format"),
])
def test_errors(policy_file: Path, args: list[str], code: int, message: str) -> None:
    r = run(*args, "--policy", str(policy_file))
    assert r.returncode == code and message in r.stderr, r.stderr
