"""The policy benchmark still runs end to end (small sizes, real dnsmasq and
dnsperf); its figures are not judged here: targets live in the benchmark."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.bench  # apart from the unit suite: `pytest -m bench` (`make test` runs it)
ROOT = Path(__file__).resolve().parents[2]


def test_policy_bench_runs_against_dnsmasq(tmp_path: Path) -> None:
    md = tmp_path / "bench.md"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.policy_bench",
            "--names",
            "2000",
            "--queries",
            "2000",
            "--rounds",
            "1",
            "--dnsperf-seconds",
            "1",
            "--out",
            str(tmp_path / "data"),
            "--markdown",
            str(md),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    text = md.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert [r.split(" | ")[0] for r in rows] == [
        "| measure",
        "| load + compile, 2,000 domains (s)",
        "| process start to ready (s)",
        "| RSS, whole process (MB)",
        "| decisions per CPU-second, one core, 20% banned",
        "| the same, 3 client groups + 5 frameworks, 1,024 clients",
    ]
    assert "Dnsmasq version" in text and "RCODE 3" in text  # the peer answered the listed probe: NXDOMAIN
    conf = (tmp_path / "data" / "dnsmasq.conf").read_text().splitlines()
    assert len(conf) == 2000 and all(line.startswith("address=/") for line in conf)
