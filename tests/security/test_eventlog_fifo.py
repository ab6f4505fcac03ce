"""``--log`` naming a FIFO that nobody reads used to hang the start silently,
in ``open()``.  Now the log is opened non-blocking: the server starts, says
why events wait, and delivers them once a reader comes (issue 8)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runtime.eventlog import EventLog
from tests.dns.authority import Authority
from tests.dns.conftest import TEST_DAY, ResolverProcess, policy_text


def read_lines(reader: int, want: int, timeout: float) -> list[dict[str, object]]:
    buf = b""
    deadline = time.monotonic() + timeout
    while buf.count(b"\n") < want and time.monotonic() < deadline:
        try:
            chunk = os.read(reader, 1 << 16)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        if not chunk:
            time.sleep(0.02)  # no writer yet (EOF on an unopened FIFO)
            continue
        buf += chunk
    return [json.loads(line) for line in buf.decode().splitlines()]


def test_dns_starts_with_an_unread_fifo_log_and_delivers_later(tmp_path: Path) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    auth = Authority()
    try:
        start = time.monotonic()
        # ResolverProcess waits at most 20 s for "ready": before the fix it never came.
        server = ResolverProcess(["--policy", str(policy), "--at", TEST_DAY, "--upstream", auth.address,
                                  "--log", str(fifo)], tmp_path)
        try:
            assert time.monotonic() - start < 20
            assert (f"egress-filter: event log {fifo} is a FIFO with no reader yet; events wait for one "
                    "(up to 100000 events, 33554432 bytes), the rest are dropped and counted"
                    in server.stderr().splitlines())
            answer = server.ask("www.tiktok.test")
            assert answer.rcode() == 3  # NXDOMAIN: answered while nobody reads the log
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                got = read_lines(reader, 1, timeout=10)
            finally:
                os.close(reader)
            assert [e["dns"]["question"]["name"] for e in got] == ["www.tiktok.test"]  # type: ignore[index]
        finally:
            assert server.stop() == 0
    finally:
        auth.stop()


@pytest.mark.parametrize("reader_first", [False, True], ids=["no-reader", "reader-open"])
def test_eventlog_open_never_blocks_on_a_fifo(tmp_path: Path, reader_first: bool) -> None:
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK) if reader_first else None
    try:
        start = time.monotonic()
        log = EventLog(str(fifo))
        assert time.monotonic() - start < 1.0
        log.emit({"seq": 1})
        if reader is None:
            reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        assert read_lines(reader, 1, timeout=10) == [{"seq": 1}]
        log.close(timeout=2)
        assert log.written == 1 and log.dropped == 0
    finally:
        if reader is not None:
            os.close(reader)


def test_fifo_reader_that_goes_away_and_comes_back(tmp_path: Path) -> None:
    """A log shipper restarting: the lines in flight when it left are counted
    as write errors, the writer waits for the next reader, and every line that
    reader gets is whole."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    first = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    log = EventLog(str(fifo))
    log.emit({"seq": 0})
    assert read_lines(first, 1, timeout=10) == [{"seq": 0}]
    os.close(first)  # the reader goes away
    for i in range(1, 2001):
        log.emit({"seq": i, "pad": "z" * 100})
    deadline = time.monotonic() + 10
    while log.write_errors == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.write_errors > 0  # the batch that met EPIPE
    second = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        got = read_lines(second, 2001 - log.write_errors - 1, timeout=10)
        log.close(timeout=5)
        got += read_lines(second, 1, timeout=2)  # the loss warning written at close, if not before
    finally:
        os.close(second)
    events = [e for e in got if "seq" in e]
    warnings = [e for e in got if "seq" not in e]
    assert log.written == len(events) + 1 and log.written + log.write_errors == 2001
    assert [w["egress"]["lost"] for w in warnings] == [log.write_errors]  # type: ignore[index]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)  # type: ignore[type-var]


def test_dns_metrics_count_the_events_waiting_for_a_reader(tmp_path: Path) -> None:
    import urllib.request

    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    auth = Authority()
    try:
        server = ResolverProcess(["--policy", str(policy), "--at", TEST_DAY, "--upstream", auth.address,
                                  "--log", str(fifo), "--metrics", "127.0.0.1:0"], tmp_path)
        try:
            for i in range(3):
                assert server.ask(f"w{i}.tiktok.test").rcode() == 3
            assert server.metrics_url is not None
            with urllib.request.urlopen(server.metrics_url, timeout=10) as resp:
                text = resp.read().decode()
            values = {ln.split()[0]: float(ln.split()[1]) for ln in text.splitlines()
                      if ln.startswith("egress_dns_events_")}
            assert values["egress_dns_events_queued"] == 3  # nobody reads the FIFO yet
            assert values["egress_dns_events_dropped_total"] == 0
            assert values["egress_dns_events_written_total"] == 0
        finally:
            assert server.stop() == 0
    finally:
        auth.stop()
    err = server.stderr().splitlines()
    assert f"egress-filter: event log {fifo}: 3 of 3 events lost: 3 dropped (the sink did not keep up)" in err
