"""The event log on a full disk (a real 256 kB tmpfs): every event lost is
counted, stderr says so once, and once space comes back every line in the
file is whole JSON, with a warning event giving the number lost (issue 8)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime.eventlog import EventLog


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], check=True, timeout=30)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=30)


def fill(path: Path) -> int:
    """Write to ``path`` until the file system is full; the bytes written."""
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        for _ in range(100_000):  # 256 kB / 1 kB at most; bounded anyway
            try:
                n += os.write(fd, b"f" * 1000)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                return n
    finally:
        os.close(fd)
    raise AssertionError("the file system never filled up")


def event(i: int) -> dict[str, object]:
    return {"seq": i, "url": "https://www.tiktok.com/" + "p" * 300}


@pytest.mark.parametrize("room", [0, 1000], ids=["full", "nearly-full"])
def test_full_disk_counts_every_loss_and_tears_no_line(
        small_fs: Path, room: int, capsys: pytest.CaptureFixture[str]) -> None:
    out = small_fs / "events.jsonl"
    log = EventLog(str(out))
    for i in range(100):
        log.emit(event(i))
    assert log.flush()
    filler = small_fs / "filler"
    fill(filler)
    if room:  # a little space: the first lines fit, one is cut part-way
        os.truncate(filler, filler.stat().st_size - room)
    for i in range(100, 2100):
        log.emit(event(i))
    assert log.flush()
    lost = log.write_errors
    assert lost > 0 and log.written + lost == 2100
    filler.unlink()  # space comes back
    for i in range(2100, 2200):
        log.emit(event(i))
    log.close()

    lines = out.read_bytes().split(b"\n")
    assert lines[-1] == b""  # the file ends with a whole line
    parsed = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
    events = [e for e in parsed if e.get("egress", {}).get("component") != "eventlog"]
    warnings = [e for e in parsed if e.get("egress", {}).get("component") == "eventlog"]
    assert len(events) == log.written == 2200 - lost
    assert log.write_errors == lost and log.dropped == 0
    assert [w["egress"]["lost"] for w in warnings] == [lost]
    assert [e["seq"] for e in events][-100:] == list(range(2100, 2200))
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"egress-filter: event log {out}: cannot write (No space left on device); "
        "events are being lost and counted",
        f"egress-filter: event log {out}: {lost} of 2200 events lost: {lost} lost to write errors",
    ]
