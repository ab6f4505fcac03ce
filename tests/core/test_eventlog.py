"""EventLog: never blocks its caller, loses nothing on close, reopens for
logrotate, writes to stdout; all against real files, FIFOs and processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from runtime.eventlog import EventLog


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_close_drains_every_event(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    log = EventLog(str(out))
    for i in range(100_000):
        log.emit({"seq": i, "event": {"action": "block"}})
    log.close()
    got = lines(out)
    assert len(got) == 100_000
    assert [e["seq"] for e in got] == list(range(100_000))
    assert log.written == 100_000 and log.errors == 0


def test_concurrent_emitters_lose_nothing(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    log = EventLog(str(out))

    def work(t: int) -> None:
        for i in range(25_000):
            log.emit({"t": t, "i": i})

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    log.close()
    got = lines(out)
    assert len(got) == 100_000
    for t in range(4):  # each emitter's own order is kept
        assert [e["i"] for e in got if e["t"] == t] == list(range(25_000))


def test_emit_never_blocks_on_a_stalled_reader(tmp_path: Path) -> None:
    """The writer is stuck on a full pipe; emit still returns at once."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # lets the writer's open succeed
    try:
        log = EventLog(str(fifo))
        n = 20_000  # ~700 kB: far beyond a 64 kB pipe buffer
        for i in range(n):
            log.emit({"seq": i, "pad": "x" * 16})
        assert log.flush(timeout=0.5) is False  # the writer is blocked on the pipe...
        assert log.written < n  # ...yet every emit above has returned
        os.set_blocking(reader, True)
        chunks: list[bytes] = []

        def drain() -> None:
            while chunk := os.read(reader, 1 << 16):
                chunks.append(chunk)

        th = threading.Thread(target=drain)
        th.start()
        log.close()
        th.join(30)
        got = [json.loads(x) for x in b"".join(chunks).decode().splitlines()]
        assert [e["seq"] for e in got] == list(range(n))
    finally:
        os.close(reader)


def test_reopen_after_logrotate(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    log = EventLog(str(out))
    for i in range(10):
        log.emit({"seq": i})
    assert log.flush()
    out.rename(tmp_path / "events.jsonl.1")  # what logrotate does
    log.emit({"seq": 10})  # still goes to the old file, before the reopen
    log.reopen()
    for i in range(11, 20):
        log.emit({"seq": i})
    log.close()
    assert [e["seq"] for e in lines(tmp_path / "events.jsonl.1")] == list(range(11))
    assert [e["seq"] for e in lines(out)] == list(range(11, 20))


def test_failed_reopen_keeps_writing_to_the_old_file(tmp_path: Path) -> None:
    logdir = tmp_path / "logs"
    logdir.mkdir()
    out = logdir / "events.jsonl"
    log = EventLog(str(out))
    log.emit({"seq": 0})
    assert log.flush()
    kept = tmp_path / "kept.jsonl"
    out.rename(kept)
    logdir.rmdir()  # the path can no longer be opened
    log.reopen()
    log.emit({"seq": 1})
    log.close()
    assert [e["seq"] for e in lines(kept)] == [0, 1]
    assert log.reopen_errors == 1 and log.errors == 0


def test_stdout_target() -> None:
    code = (
        "from runtime.eventlog import EventLog\n"
        "log = EventLog('-')\n"
        "for i in range(1000): log.emit({'seq': i, 'msg': 'tiktök'})\n"
        "log.close()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60, check=True)
    got = [json.loads(line) for line in proc.stdout.decode("utf-8").splitlines()]
    assert [e["seq"] for e in got] == list(range(1000))
    assert got[0]["msg"] == "tiktök"


def test_unserialisable_event_is_counted_not_fatal(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    circular: dict[str, Any] = {}
    circular["self"] = circular
    with EventLog(str(out)) as log:
        log.emit({"seq": 0, "when": object()})  # default=str
        log.emit(circular)
        log.emit({"seq": 2})
    got = lines(out)
    assert [e["seq"] for e in got] == [0, 2]
    assert got[0]["when"].startswith("<object object")
    assert log.unserialisable == 1 and log.errors == 1


def test_emit_after_close_is_counted(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "e.jsonl"))
    log.close()
    log.emit({"late": True})
    assert log.dropped == 1
    assert (tmp_path / "e.jsonl").read_text() == ""


def test_disabled_log_discards() -> None:
    log = EventLog(None)
    assert not log.enabled
    log.emit({"x": 1})
    assert log.flush() is True
    log.close()


def test_unwritable_path_fails_at_construction(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        EventLog(str(tmp_path / "no-such-dir" / "events.jsonl"))


def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    out.write_text('{"seq": -1}\n')
    with EventLog(str(out)) as log:
        log.emit({"seq": 0})
    assert [e["seq"] for e in lines(out)] == [-1, 0]


# (a file log, a dict-only sink, a shape-taking sink) -> what each is given
@pytest.mark.parametrize(("to_file", "dict_sink", "shape_sink"), [
    pytest.param(True, False, False, id="file"),
    pytest.param(True, True, True, id="file-and-store"),
    pytest.param(False, False, True, id="store-only"),
    pytest.param(False, True, False, id="dict-sink-only"),
    pytest.param(True, True, False, id="file-and-dict-sink"),
])
def test_emit_shaped_writes_the_whole_event(tmp_path: Path, to_file: bool, dict_sink: bool,
                                            shape_sink: bool) -> None:
    """A shaped event becomes the line the whole event would (the same id in the line and in
    what the store is handed); a sink that only takes dicts gets the event as a dict."""
    from policies import Observation
    from policies.events import build_event
    from runtime.jsonline import encode
    from tests.core.test_shape import BLOCK, shape_of

    shape = shape_of(BLOCK, "www.tiktok.com", "A", "NXDOMAIN", False)
    assert shape is not None
    path = tmp_path / "events.jsonl"
    dicts: list[dict[str, Any]] = []
    shaped: list[tuple[Any, ...]] = []
    log = EventLog(str(path) if to_file else None, also=dicts.append if dict_sink else None,
                   also_shaped=(lambda *a: shaped.append(a)) if shape_sink else None)
    ts = 1_700_000_000.5
    door = log.shaped_door()
    assert (door == log.emit_shaped) is (to_file or not shape_sink)
    door(shape, ts, "10.0.0.5", 5353, None)
    log.close()
    line = path.read_text() if to_file else None
    ids = []
    if line is not None:
        ev = json.loads(line)
        ids.append(ev["event"]["id"])
        whole = build_event(BLOCK, Observation.dns("www.tiktok.com", "10.0.0.5"), "dns", timestamp=ts,
                            event_id=ev["event"]["id"], client_port=5353, qtype="A", response="NXDOMAIN")
        assert line == encode(whole).decode()
    if shape_sink:
        assert len(shaped) == 1 and shaped[0][0] is shape and shaped[0][1] == ts
        assert shaped[0][5:] == ((ids[0],) if to_file else ())  # no log: the store's writer makes the id
        assert dicts == []
    elif dict_sink:
        assert len(dicts) == 1 and dicts[0]["source"] == {"ip": "10.0.0.5", "port": 5353}
        if to_file:
            assert dicts[0]["event"]["id"] == ids[0]
    assert log.stats().emitted == (1 if to_file else 0)
