"""``replay --format sqlite`` writes the store's schema: the same events as ``--format jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from egress_filter.cli import main
from store import open_reader
from store import query as q
from tests.replay.cases import CASES
from tests.replay.conftest import POLICY


@pytest.mark.parametrize("case_id", [
    pytest.param("http-keepalive-body-and-chunked", id="http-pcap"),
    pytest.param("dns-udp-cname-chain", id="dns-pcap"),
])
def test_sqlite_matches_jsonl(tmp_path: Path, capsys: pytest.CaptureFixture[str], case_id: str) -> None:
    capture = next(x for x in CASES if x.id == case_id).build(tmp_path)
    assert main(["replay", "--policy", str(POLICY), str(capture), "--at", "2020-11-10", "--format", "jsonl",
                 "--no-progress"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    db = tmp_path / "replay.db"
    assert main(["replay", "--policy", str(POLICY), str(capture), "--at", "2020-11-10", "--format", "sqlite",
                 "--output", str(db), "--no-progress"]) == 0
    conn = open_reader(str(db))
    stored = q.events(conn, q.Filters(limit=1000))["events"]
    conn.close()
    for ev in stored:
        ev.pop("_id")
    assert lines  # the case has verdicts to store
    assert list(reversed(stored)) == lines


def test_sqlite_needs_output(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    capture = next(x for x in CASES if x.id == "dns-udp-cname-chain").build(tmp_path)
    assert main(["replay", "--policy", str(POLICY), str(capture), "--format", "sqlite"]) == 2
    assert "--output" in capsys.readouterr().err
