"""store/writer.py, the writer process: its line protocol, read by a real ``python -m store.writer``
on real pipes, and the server's side when that process dies (every event counted, none lost
silently)."""

from __future__ import annotations

import json
import marshal
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from policies import Observation
from policies.events import build_event
from runtime.shape import event_id_at
from store import Store
from store.db import COLUMNS, row_of
from tests.core.test_shape import BLOCK, shape_of

from .test_store import event

LINE = (json.dumps(event("a.tiktok.test")) + "\n").encode()
ROW = row_of(event("a.tiktok.test"))
SHAPE = shape_of(BLOCK, "a.tiktok.test", "A", "NXDOMAIN", False)
assert SHAPE is not None


def rows(*batch: object, kind: bytes = b"R") -> bytes:
    """An ``R`` batch as ``Store`` sends it (or a ``Q`` batch of shaped records): the header,
    then the marshalled items."""
    blob = marshal.dumps(list(batch))
    return kind + b" %d %d\n" % (len(batch), len(blob)) + blob


def shape(sid: int, blob: bytes = marshal.dumps((SHAPE.pieces, tuple(SHAPE.slots)))) -> bytes:
    return b"S %d %d\n" % (sid, len(blob)) + blob


def shaped(*sids: int) -> bytes:
    return rows(*((sid, 1_700_000_000.5, None, "10.0.0.5", 5353, None) for sid in sids), kind=b"Q")


CASES = [
    pytest.param(b"E 2\n" + LINE + LINE, 0, [b"W 2 0"], 2, 0, id="batch"),
    pytest.param(b"E 2\n" + LINE + b"{not json\n", 0, [b"W 1 1"], 1, 0, id="bad-line-counted"),
    pytest.param(b"E 0\n", 0, [b"W 0 0"], 0, 0, id="empty-batch"),
    pytest.param(b"D 7\n", 0, [], 0, 7, id="drops-into-counters"),
    pytest.param(b"E 3\n" + LINE, 0, [b"W 1 2"], 1, 0, id="stdin-closed-mid-batch"),
    pytest.param(b"E x\n" + LINE, 2, [], 0, 0, id="bad-header-stops"),
    pytest.param(b"E 999999999\n", 2, [], 0, 0, id="oversized-batch-stops"),
    pytest.param(rows(ROW, ROW) + rows(ROW), 0, [b"W 2 0", b"W 1 0"], 3, 0, id="rows"),
    pytest.param(rows(ROW, ("short",), "not a row"), 0, [b"W 1 2"], 1, 0, id="bad-rows-counted"),
    pytest.param(b"R 1 5\nxxxxx", 0, [b"W 0 1"], 0, 0, id="rows-not-marshal-counted"),
    pytest.param(rows(ROW)[:-3], 0, [b"W 0 1"], 0, 0, id="stdin-closed-mid-rows"),
    pytest.param(b"R 1\n", 2, [], 0, 0, id="rows-without-size-stops"),
    pytest.param(b"R 1 999999999999\n", 2, [], 0, 0, id="oversized-rows-stop"),
    pytest.param(b"X 1 5\nxxxxx", 2, [], 0, 0, id="unknown-kind-stops"),
    pytest.param(shape(7) + shaped(7, 7), 0, [b"W 2 0"], 2, 0, id="shaped"),
    pytest.param(shape(7) + shaped(7, 8), 0, [b"W 1 1"], 1, 0, id="unknown-shape-counted"),
    pytest.param(shape(7) + b"C\n" + shaped(7), 0, [b"W 0 1"], 0, 0, id="cleared-shape-counted"),
    pytest.param(shape(7, b"xxxxx") + shaped(7), 0, [b"W 0 1"], 0, 0, id="bad-shape-refused"),
    pytest.param(shape(7, marshal.dumps((("{",), ()))) + shaped(7), 0, [b"W 0 1"], 0, 0,
                 id="shape-not-an-event-refused"),
    pytest.param(shape(7) + rows((7,), "x", kind=b"Q"), 0, [b"W 0 2"], 0, 0, id="bad-records-counted"),
    pytest.param(b"S 7\n", 2, [], 0, 0, id="shape-without-size-stops"),
    pytest.param(shape(7)[:-3], 0, [], 0, 0, id="stdin-closed-mid-shape"),
]


@pytest.mark.parametrize(("stdin", "code", "answers", "rows", "dropped"), CASES)
def test_writer_protocol(tmp_path: Path, stdin: bytes, code: int, answers: list[bytes], rows: int,
                         dropped: int) -> None:
    db = tmp_path / "w.db"
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "store.writer", str(db), "--prune-interval", "3600"],
                          input=stdin, capture_output=True, timeout=30, cwd=root)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout.splitlines() == answers
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == rows
        got = conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
        assert (got[0] if got else 0) == dropped
    finally:
        conn.close()


def test_a_shaped_event_is_the_row_of_the_whole_event(tmp_path: Path) -> None:
    """Through a real ``Store``: the same event put whole and put as its shape (with the
    same id and time) gives the same row; shapes past ``MAX_SHAPES`` are forgotten on both
    sides (``C``) and sent again."""
    import store.db

    db = tmp_path / "s.db"
    s = Store(str(db), flush_interval=0.01)
    names = [f"n{i}.tiktok.test" for i in range(5)]
    try:
        old, store.db.MAX_SHAPES = store.db.MAX_SHAPES, 2
        for round_ in range(2):
            for i, name in enumerate(names):
                sh = shape_of(BLOCK, name, "A", "NXDOMAIN", True)
                assert sh is not None
                ts = 1_700_000_000.25 + round_ * 10 + i
                eid = event_id_at(ts)
                s.put_shaped(sh, ts, "10.0.0.5", 5353 + i, "kids-tablet", eid if i % 2 else None)
                whole = build_event(BLOCK, Observation.dns(name, "10.0.0.5"), "dns", event_id=eid,
                                    timestamp=ts, client_port=5353 + i, qtype="A", response="NXDOMAIN",
                                    client_name="kids-tablet")
                s.put(whole)
        assert s.flush(10.0)
    finally:
        store.db.MAX_SHAPES = old
        s.close()
    conn = sqlite3.connect(db)
    try:
        got = conn.execute(f"SELECT {','.join(COLUMNS)} FROM events ORDER BY id").fetchall()
    finally:
        conn.close()
    assert len(got) == 20
    for by_shape, whole_row in zip(got[::2], got[1::2], strict=True):
        if by_shape[1] != whole_row[1]:  # the writer made this one's id: alike but for it
            assert len(by_shape[1]) == 32 and by_shape[1][:12] == whole_row[1][:12]
            by_shape = tuple(v.replace(by_shape[1], whole_row[1]) if isinstance(v, str) else v
                             for v in by_shape)
        assert by_shape == whole_row


def test_a_dead_writer_loses_nothing_silently(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "d.db"), flush_interval=0.05)
    for i in range(5):
        s.put(event(f"before{i}.tiktok.test"))
    assert s.flush()
    os.kill(s._writer.pid, signal.SIGKILL)
    s._writer.wait(10)
    for i in range(20):
        s.put(event(f"after{i}.tiktok.test"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = s.stats()
        if st.written + st.dropped + st.write_errors == st.put:
            break
        time.sleep(0.05)
    s.close(timeout=1)
    st = s.stats()
    assert (st.put, st.written, st.dropped + st.write_errors) == (25, 5, 20)


def test_the_writer_ignores_ctrl_c_and_stops_with_its_server(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group; the writer waits for its server to close it, so
    the server's last events are still written."""
    s = Store(str(tmp_path / "c.db"), flush_interval=0.05)
    assert os.getsid(s._writer.pid) != os.getsid(0)
    s.put(event("first.tiktok.test"))
    assert s.flush()  # the writer is up
    os.kill(s._writer.pid, signal.SIGINT)
    s.put(event("late.tiktok.test"))
    assert s.flush()
    s.close()
    assert s._writer.returncode == 0
    assert s.stats().written == 2


@pytest.mark.parametrize("batches", [
    pytest.param([rows(ROW), rows(ROW, ROW)], id="two-row-batches"),
    pytest.param([rows(ROW), b"E 1\n" + LINE, rows(ROW)], id="rows-and-lines"),
    pytest.param([b"E 2\n" + LINE + LINE, b"E 1\n" + LINE], id="two-line-batches"),
])
def test_batches_arriving_together_are_all_answered_at_once(tmp_path: Path, batches: list[bytes]) -> None:
    """Several batches in one write, stdin left open: each is answered now, not when the next
    write or the prune interval (an hour here) wakes the writer."""
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-m", "store.writer", str(tmp_path / "t.db"),
                             "--prune-interval", "3600"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            cwd=root)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(b"".join(batches))
        proc.stdin.flush()
        os.set_blocking(proc.stdout.fileno(), False)
        got = b""
        deadline = time.monotonic() + 20
        while got.count(b"\n") < len(batches) and time.monotonic() < deadline:
            time.sleep(0.05)
            got += proc.stdout.read() or b""
        assert got.count(b"\n") == len(batches), got
    finally:
        proc.stdin.close()
        proc.wait(20)
