"""SQLite schema, the batched writer thread, retention, and the bounded reader queries.

Columns carry the ECS path of the field they hold (``event.action`` →
``event_action``; ``@timestamp`` → ``timestamp``, in epoch milliseconds), and
``doc`` keeps the whole event as JSON, so nothing is lost for an export.
Pages are newest first by row id; an index on one column also holds the
row id, so ``WHERE egress_app = ? ORDER BY id DESC LIMIT n`` walks one
index backwards and stops after n rows, however many rows match.
``put`` only appends the dict to a deque under a lock (bounded; a full queue
drops and counts), so the cost on the caller is one lock and one append; a
feeder thread encodes each event as its JSON line, takes the row's columns
from the dict it already has, and pipes each batch of rows, marshalled, to
the writer process (``store/writer.py``), which inserts them.  Parsing the
JSON again there cost 10 us an event, more than the row and the marshal
(about 2.6 us) cost here, and the writer is what bounds ingest.
Dropped counts are also added to the ``counters`` table, so the dashboard
shows them whichever process lost them.
Retention deletes at most ``PRUNE_ROWS`` rows per pass (oldest first) and
gives the pages back with ``incremental_vacuum``, so no pass holds the
write lock long.
"""

from __future__ import annotations

import calendar
import marshal
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import groupby
from typing import IO, Any, NamedTuple

from runtime.jsonline import encode as encode_line
from runtime.shape import Shape

# A repeated event as ``put_shaped`` queues it, ready to marshal: (sid, ts, event_id, ip, port, name).
Record = tuple[int, float, str | None, str, int, str | None]


class Register(NamedTuple):
    """Queued before the first record of a shape: the writer is told the shape ``sid`` names."""

    sid: int
    shape: Shape


_FORGET = object()  # queued when the shapes reach MAX_SHAPES: both sides forget them (``C``)
Queued = dict[str, Any] | Record | Register | object

DEFAULT_PATH = "~/.local/state/egress-filter/events.db"
DEFAULT_MAX_QUEUE = 100_000
BATCH = 5000
FLUSH_INTERVAL = 0.2  # seconds: the longest an event waits before it can be seen
PRUNE_INTERVAL = 30.0
PRUNE_ROWS = 20_000
MAX_LIMIT = 1000
MAX_SHAPES = 20_000  # shapes the writer keeps (about 1.5 KB each), as many as ready answers per group
QUERY_SECONDS = 2.0  # a reader query is interrupted after this long
# The writer process runs ``-m store.writer`` from the directory that holds this package.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

COLUMNS = ("timestamp", "event_id", "event_action", "event_reason", "observer_type", "egress_kind",
           "egress_value", "egress_app", "egress_apps", "egress_group", "egress_phase", "rule_name",
           "source_ip", "egress_response", "doc")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    timestamp INTEGER NOT NULL,
    event_id TEXT,
    event_action TEXT,
    event_reason TEXT,
    observer_type TEXT,
    egress_kind TEXT,
    egress_value TEXT,
    egress_app TEXT,
    egress_apps TEXT,
    egress_group TEXT,
    egress_phase TEXT,
    rule_name TEXT,
    source_ip TEXT,
    egress_response TEXT,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_time ON events (timestamp);
CREATE INDEX IF NOT EXISTS events_app ON events (egress_app);
CREATE INDEX IF NOT EXISTS events_client ON events (source_ip);
CREATE INDEX IF NOT EXISTS events_action ON events (event_action);
-- No index on egress_value: the name search is a substring match (instr), which no index
-- serves, and the top names are counted within a time window; one cost 4 us an insert,
-- a third of the writer's work.  Stores made before lose it here.
DROP INDEX IF EXISTS events_name;
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Retention:
    days: float | None = 30.0
    max_bytes: int | None = 1 << 30


@dataclass(frozen=True, slots=True)
class StoreStats:
    put: int
    written: int
    dropped: int
    write_errors: int
    pruned: int
    queued: int


_second: tuple[str, int] = ("", 0)  # the last "YYYY-MM-DDTHH:MM:SS" seen and its epoch ms


def stamp_ms(stamp: str) -> int:
    """``@timestamp`` ("YYYY-MM-DDTHH:MM:SS.mmmZ", as ``utc_iso`` writes it) → epoch ms.
    Events come in time order, many per second: the whole second is parsed once."""
    global _second
    head = stamp[:19]
    try:
        if head != _second[0]:
            _second = (head, calendar.timegm(time.strptime(head, "%Y-%m-%dT%H:%M:%S")) * 1000)
        frac = stamp[20:23] if len(stamp) > 20 and stamp[19] == "." else "0"
        return _second[1] + int(frac.ljust(3, "0")[:3])
    except (ValueError, TypeError):
        return int(time.time() * 1000)




def row_of(ev: dict[str, Any], doc: str | None = None) -> tuple[Any, ...]:
    """One event dict → the row tuple, in ``COLUMNS`` order; ``doc`` is its JSON when the caller
    already has it (the writer process receives the line and need not encode it again)."""
    eg = ev.get("egress") or {}
    e = ev.get("event") or {}
    apps = eg.get("apps") or []
    return (stamp_ms(ev.get("@timestamp", "")), e.get("id"), e.get("action") or eg.get("action"),
            e.get("reason"),
            (ev.get("observer") or {}).get("type") or eg.get("component"), eg.get("kind"), eg.get("value"),
            apps[0] if apps else None, ",".join(apps), eg.get("group"), eg.get("phase"),
            (ev.get("rule") or {}).get("name"), (ev.get("source") or {}).get("ip"), eg.get("response"),
            encode_line(ev)[:-1].decode() if doc is None else doc)


def connect(path: str) -> sqlite3.Connection:
    """Open (creating) the store file in WAL mode with the schema in place."""
    path = os.path.expanduser(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    # page_size and auto_vacuum must be set before the first table exists; on an old file
    # they are no-ops.  16 KiB pages: each row carries its whole event (``doc``), and with
    # 4 KiB pages an insert cost 19.6 us against 14.7 us (with the writer's checkpoint
    # interval, bench/dashboard_bench.py's ingest rows).
    conn.execute("PRAGMA page_size=16384")
    conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def open_reader(path: str) -> sqlite3.Connection:
    """A connection for the dashboard (creates an empty store if none exists yet)."""
    conn = connect(path)
    conn.row_factory = sqlite3.Row
    return conn


class Store:
    """The server's side of the store: ``put`` from any thread, never blocking.

    A feeder thread encodes what has piled up and pipes it to the writer process
    (``store.writer``), which inserts it; a reader thread takes the writer's counts back.  So
    the server's interpreter pays one append per event and one JSON encoding per event, off
    the answer path; rows, indexes and retention are the writer's work, on another core."""

    def __init__(self, path: str, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 retention: Retention = Retention(), flush_interval: float = FLUSH_INTERVAL,
                 prune_interval: float = PRUNE_INTERVAL):
        """Raises ``sqlite3.Error``/``OSError`` when the file cannot be opened (at start-up)."""
        self.path = os.path.abspath(os.path.expanduser(path))
        self.max_queue = max(1, max_queue)
        self.retention = retention
        self.flush_interval = flush_interval
        self.prune_interval = prune_interval
        connect(self.path).close()  # a bad path fails here, in the server, at start-up
        self._lock = threading.Lock()
        self._queue: deque[Queued] = deque()
        self._sids: dict[int, tuple[Shape, int]] = {}  # shapes registered (by id()) since the last forget
        self._next_sid = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition(self._lock)
        self.puts = self.written = self.dropped = self.write_errors = self.pruned = 0
        self._dropped_told = 0
        self._writer = subprocess.Popen(
            [sys.executable, "-m", "store.writer", self.path, "--days", str(retention.days or 0),
             "--max-bytes", str(retention.max_bytes or 0), "--prune-interval", str(prune_interval)],
            # Its own session: a Ctrl-C or hang-up for the server's terminal is not for it; it
            # stops when the server closes its stdin, after the server's last events.
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True, start_new_session=True,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(
                p for p in (_PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)})
        self._thread = threading.Thread(target=self._feed, name="egress-store", daemon=True)
        self._acks = threading.Thread(target=self._read_counts, name="egress-store-counts", daemon=True)
        self._thread.start()
        self._acks.start()

    def put(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.puts += 1
            if len(self._queue) >= self.max_queue or self._stop.is_set():
                self.dropped += 1
                return
            self._queue.append(event)
            if len(self._queue) >= BATCH:
                self._wake.set()

    def put_shaped(self, shape: Shape, ts: float, ip: str, port: int, name: str | None,
                   event_id: str | None = None) -> None:
        """A repeated event as its shape and what changes (``runtime.shape``): the writer
        process renders it (``event_id`` None: the writer makes one).  The shape is registered
        here, on first sight, so the feeder only marshals what is queued."""
        with self._lock:
            self.puts += 1
            queue = self._queue
            if len(queue) >= self.max_queue or self._stop.is_set():
                self.dropped += 1
                return
            known = self._sids.get(id(shape))
            if known is None or known[0] is not shape:
                known = self._register(shape)
            queue.append((known[1], ts, event_id, ip, port, name))
            if len(queue) >= BATCH:
                self._wake.set()

    def _register(self, shape: Shape) -> tuple[Shape, int]:
        """Under the lock: a new id for ``shape``, queued (after a forget, when full)."""
        if len(self._sids) >= MAX_SHAPES:
            self._sids.clear()
            self._queue.append(_FORGET)
        sid = self._next_sid
        self._next_sid += 1
        known = self._sids[id(shape)] = (shape, sid)  # holds the shape, so its id() stays its own
        self._queue.append(Register(sid, shape))
        return known

    def collector(self, prefix: str) -> Any:
        from .hook import collector

        return collector(self, prefix)

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(self.puts, self.written, self.dropped, self.write_errors, self.pruned,
                              len(self._queue))  # registrations too: a bound, not a count

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything put so far is written (or lost); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self.puts
            self._wake.set()
            while self.written + self.dropped + self.write_errors < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._acks.is_alive():
                    return False
                self._flushed.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 1.0)
        try:
            self._writer.wait(timeout + 1.0)
        except subprocess.TimeoutExpired:
            self._writer.kill()
            self._writer.wait()
        self._acks.join(1.0)

    def prune(self) -> int:
        """One retention pass now (normally the writer runs one every ``prune_interval``)."""
        conn = connect(self.path)
        try:
            gone = prune_pass(conn, self.retention)
        finally:
            conn.close()
        with self._lock:
            self.pruned += gone
        return gone

    # --- the feeder thread -------------------------------------------------

    def _take(self) -> deque[Queued]:
        """Everything queued, in one swap under the lock."""
        with self._lock:
            taken, self._queue = self._queue, deque()
            return taken

    def _feed(self) -> None:
        pipe = self._writer.stdin
        assert pipe is not None
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while True:
                batch = self._take()
                if not batch:
                    break
                self._send(pipe, batch)
            self._send_drops(pipe)
            if self._stop.is_set():
                with self._lock:
                    if self._queue:
                        self._wake.set()
                        continue
                try:
                    pipe.close()
                except OSError:
                    pass
                return

    def _send(self, pipe: IO[bytes], batch: deque[Queued]) -> None:
        """Each run of whole events, records, registrations and forgets in ``batch``, in order,
        at most ``BATCH`` items to a message."""
        for kind, run in groupby(batch, key=type):
            items: list[Any] = list(run)
            if kind is tuple:
                for i in range(0, len(items), BATCH):
                    self._write(pipe, b"Q", items[i:i + BATCH], 0)
            elif kind is dict:
                for i in range(0, len(items), BATCH):
                    self._send_rows(pipe, items[i:i + BATCH])
            elif kind is Register:
                blobs = [(r.sid, marshal.dumps((r.shape.pieces, r.shape.slots))) for r in items]
                self._raw(pipe, b"".join(b"S %d %d\n" % (sid, len(b)) + b for sid, b in blobs))
            else:  # _FORGET
                self._raw(pipe, b"C\n" * len(items))

    def _raw(self, pipe: IO[bytes], data: bytes) -> None:
        """A message that carries no events (a lost one shows in the records that follow)."""
        try:
            pipe.write(data)
        except (OSError, ValueError):
            pass

    def _send_rows(self, pipe: IO[bytes], batch: list[dict[str, Any]]) -> None:
        rows = []
        for ev in batch:
            try:
                rows.append(row_of(ev, encode_line(ev)[:-1].decode()))
            except (TypeError, ValueError, AttributeError, RecursionError):
                pass
        self._write(pipe, b"R", rows, len(batch) - len(rows))

    def _write(self, pipe: IO[bytes], kind: bytes, items: list[tuple[Any, ...]], bad: int) -> None:
        try:
            blob = marshal.dumps(items)
            pipe.write(kind + b" %d %d\n" % (len(items), len(blob)) + blob)
            pipe.flush()
        except (OSError, ValueError):  # the writer is gone: these are lost, and counted
            bad += len(items)
        if bad:
            with self._lock:
                self.write_errors += bad
                self._flushed.notify_all()

    def _send_drops(self, pipe: IO[bytes]) -> None:
        """Add the drops counted so far to the file's ``counters``, so the dashboard shows them
        whichever process lost them."""
        with self._lock:
            new = self.dropped + self.write_errors - self._dropped_told
        if new <= 0:
            return
        try:
            pipe.write(b"D %d\n" % new)
            pipe.flush()
            self._dropped_told += new
        except (OSError, ValueError):
            pass

    def _read_counts(self) -> None:
        out = self._writer.stdout
        assert out is not None
        for line in out:
            kind, *nums = line.split()
            with self._lock:
                if kind == b"W" and len(nums) == 2:
                    self.written += int(nums[0])
                    self.write_errors += int(nums[1])
                elif kind == b"P" and nums:
                    self.pruned += int(nums[0])
                self._flushed.notify_all()
        with self._lock:  # the writer is gone: what it had not confirmed is lost, and counted
            queued = sum(1 for item in self._queue if type(item) in (dict, tuple))  # events only
            lost = self.puts - self.written - self.dropped - self.write_errors - queued
            if lost > 0:
                self.write_errors += lost
            self._flushed.notify_all()


def prune_pass(conn: sqlite3.Connection, retention: Retention) -> int:
    """Delete at most ``PRUNE_ROWS`` rows over the retention (oldest first); the count deleted."""
    gone = 0
    if retention.days is not None:
        cutoff = int((time.time() - retention.days * 86400) * 1000)
        gone += conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE timestamp < ? "
                             "ORDER BY timestamp LIMIT ?)", (cutoff, PRUNE_ROWS)).rowcount
    if retention.max_bytes is not None:
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        used = (conn.execute("PRAGMA page_count").fetchone()[0]
                - conn.execute("PRAGMA freelist_count").fetchone()[0]) * page
        if used > retention.max_bytes:
            rows = conn.execute("SELECT count(*) FROM events").fetchone()[0] or 1
            # Delete the share of rows that is over the limit (plus 5%), in bounded steps.
            over = int(rows * ((used - retention.max_bytes) / used + 0.05)) + 1
            gone += conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events "
                                 "ORDER BY id LIMIT ?)", (min(over, PRUNE_ROWS),)).rowcount
    if gone:
        conn.execute("PRAGMA incremental_vacuum(4096)")
    return gone
