"""A stalled log sink (a FIFO whose reader never reads, or reads slowly) must
not grow memory or block the answer path: the queue is bounded in events and
in bytes, overflow is dropped and counted exactly, and a warning event in
the log says how many were lost once the reader drains (issue 8)."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime.eventlog import EventLog

N = 60_000
PAD = "x" * 2000  # ~2 kB a line: 120 MB if nothing bounded the queue
MiB = 1 << 20


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    """A FIFO and a reader fd that has not read anything (yet)."""
    path = tmp_path / "events.fifo"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        yield path, reader
    finally:
        os.close(reader)


def drain(reader: int, out: list[bytes], stop: threading.Event, pause: float = 0.0) -> None:
    """Read until EOF (the writer closed) or ``stop``; ``pause`` between reads
    makes a slow reader."""
    os.set_blocking(reader, False)
    deadline = time.monotonic() + 60
    while not stop.is_set() and time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 1 << 16)
        except BlockingIOError:
            time.sleep(0.005)
            continue
        if not chunk:
            return
        out.append(chunk)
        if pause:
            time.sleep(pause)


def parse(chunks: list[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the events, the eventlog's own loss warnings); every line must parse."""
    events, warnings = [], []
    for line in b"".join(chunks).decode("utf-8").splitlines():
        ev = json.loads(line)
        (warnings if ev.get("egress", {}).get("component") == "eventlog" else events).append(ev)
    return events, warnings


BOUNDS = [
    pytest.param(dict(max_events=100_000, max_bytes=4 * MiB), id="bytes-bound"),
    pytest.param(dict(max_events=1_000, max_bytes=256 * MiB), id="events-bound"),
]


@pytest.mark.parametrize("bounds", BOUNDS)
@pytest.mark.parametrize("pause", [0.0, 0.002], ids=["reader-drains-later", "slow-reader"])
def test_stalled_reader_bounded_and_counted(fifo: tuple[Path, int], bounds: dict[str, int],
                                            pause: float) -> None:
    path, reader = fifo
    log = EventLog(str(path), **bounds)
    base = rss()
    slowest = 0.0
    start = time.monotonic()
    for i in range(N):
        t = time.perf_counter()
        log.emit({"seq": i, "pad": PAD})
        slowest = max(slowest, time.perf_counter() - t)
    took = time.monotonic() - start
    grown = rss() - base
    # emit() never waits for the sink: 60,000 calls in well under a few
    # seconds, none of them stuck (a blocked one would take the poll slice).
    assert took < 20 and slowest < 0.15, (took, slowest)
    assert grown < 48 * MiB, f"RSS grew by {grown / MiB:.0f} MiB"
    stats = log.stats()
    assert stats.queued <= bounds["max_events"] and stats.queued_bytes <= bounds["max_bytes"]
    assert log.dropped > 0

    chunks: list[bytes] = []
    stop = threading.Event()
    th = threading.Thread(target=drain, args=(reader, chunks, stop, pause))
    th.start()
    try:
        assert log.flush(timeout=60)
    finally:
        log.close(timeout=30)
        th.join(60)
        stop.set()
    events, warnings = parse(chunks)
    assert log.emitted == N
    assert log.written == len(events)
    assert log.dropped == N - log.written
    assert log.write_errors == 0
    # Warnings are written when the sink takes them again, at most one per
    # 10 s and a last one at close for what came after: together they give
    # the exact number lost.  The events that made it keep their order.
    assert 1 <= len(warnings) <= 2
    assert sum(w["egress"]["lost"] for w in warnings) == log.dropped
    assert {w["event"]["action"] for w in warnings} == {"events-lost"}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)


def test_reader_that_never_reads_close_keeps_its_deadline(
        fifo: tuple[Path, int], capsys: pytest.CaptureFixture[str]) -> None:
    path, _reader = fifo
    log = EventLog(str(path), max_events=5_000, max_bytes=4 * MiB)
    for i in range(N):
        log.emit({"seq": i, "pad": PAD})
    start = time.monotonic()
    log.close(timeout=1.0)
    assert time.monotonic() - start < 3.0
    assert log.dropped == N - log.written and log.written < N
    assert log.stats().queued == 0
    err = capsys.readouterr().err.splitlines()
    assert err == [f"egress-filter: event log {path}: {log.dropped} of {N} events lost: "
                   f"{log.dropped} dropped (the sink did not keep up)"]


def test_emit_stays_cheap_while_the_sink_stalls(fifo: tuple[Path, int]) -> None:
    """Once the queue is full each emit is a refusal: the answer path pays
    for serialising and counting, nothing more."""
    path, _reader = fifo
    log = EventLog(str(path), max_events=100, max_bytes=MiB)
    for i in range(1_000):
        log.emit({"seq": i})
    start = time.perf_counter()
    for i in range(50_000):
        log.emit({"seq": i, "pad": "y" * 200})
    per_call = (time.perf_counter() - start) / 50_000
    assert per_call < 200e-6, f"{per_call * 1e6:.0f} µs per emit"
    assert log.dropped >= 50_000
    log.close(timeout=0.5)


def test_losses_are_prometheus_counters(fifo: tuple[Path, int]) -> None:
    """The DNS server and the proxy register this collector on their registries."""
    from prometheus_client import CollectorRegistry, generate_latest

    from runtime.eventlog import metrics_collector

    path, _reader = fifo
    log = EventLog(str(path), max_events=10, max_bytes=MiB)
    registry = CollectorRegistry()
    registry.register(metrics_collector("egress_test", lambda: log))
    for i in range(1_000):
        log.emit({"seq": i, "pad": PAD})
    log.close(timeout=0.5)
    text = generate_latest(registry).decode()
    got = {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if not line.startswith("#")}
    assert got["egress_test_events_dropped_total"] == log.dropped == 1_000 - log.written
    assert got["egress_test_events_written_total"] == log.written
    assert got["egress_test_events_write_errors_total"] == 0
    assert got["egress_test_events_queued"] == 0
