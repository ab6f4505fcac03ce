"""SQLite schema, the batched writer thread, retention, and the bounded reader queries.

Columns carry the ECS path of the field they hold (``event.action`` →
``event_action``; ``@timestamp`` → ``timestamp``, in epoch milliseconds), and
``doc`` keeps the whole event as JSON, so nothing is lost for an export.
Pages are newest first by row id; an index on one column also holds the
row id, so ``WHERE egress_app = ? ORDER BY id DESC LIMIT n`` walks one
index backwards and stops after n rows, however many rows match.
``put`` only appends the dict to a deque under a lock (bounded; a full queue
drops and counts); the writer thread turns dicts into rows, so the cost on
the caller is one lock and one append.  Dropped counts are also added to the
``counters`` table, so the dashboard shows them whichever process lost them.
Retention deletes at most ``PRUNE_ROWS`` rows per pass (oldest first) and
gives the pages back with ``incremental_vacuum``, so no pass holds the
write lock long.
"""

from __future__ import annotations

import calendar
import os
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from runtime.jsonline import encode as encode_line

DEFAULT_PATH = "~/.local/state/egress-filter/events.db"
DEFAULT_MAX_QUEUE = 100_000
BATCH = 5000
FLUSH_INTERVAL = 0.2  # seconds: the longest an event waits before it can be seen
PRUNE_INTERVAL = 30.0
PRUNE_ROWS = 20_000
MAX_LIMIT = 1000
QUERY_SECONDS = 2.0  # a reader query is interrupted after this long

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
CREATE INDEX IF NOT EXISTS events_name ON events (egress_value);
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


def _ms(stamp: str) -> int:
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




def row_of(ev: dict[str, Any]) -> tuple[Any, ...]:
    """One event dict → the row tuple, in ``COLUMNS`` order."""
    eg = ev.get("egress") or {}
    e = ev.get("event") or {}
    apps = eg.get("apps") or []
    return (_ms(ev.get("@timestamp", "")), e.get("id"), e.get("action") or eg.get("action"), e.get("reason"),
            (ev.get("observer") or {}).get("type") or eg.get("component"), eg.get("kind"), eg.get("value"),
            apps[0] if apps else None, ",".join(apps), eg.get("group"), eg.get("phase"),
            (ev.get("rule") or {}).get("name"), (ev.get("source") or {}).get("ip"), eg.get("response"),
            encode_line(ev)[:-1].decode())


def connect(path: str) -> sqlite3.Connection:
    """Open (creating) the store file in WAL mode with the schema in place."""
    path = os.path.expanduser(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    conn = sqlite3.connect(path, timeout=10.0, check_same_thread=False, isolation_level=None)
    # auto_vacuum must be set before the first table exists; on an old file it is a no-op.
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
    """The writer: ``put`` from any thread, never blocking; one thread writes."""

    def __init__(self, path: str, *, max_queue: int = DEFAULT_MAX_QUEUE,
                 retention: Retention = Retention(), flush_interval: float = FLUSH_INTERVAL,
                 prune_interval: float = PRUNE_INTERVAL):
        """Raises ``sqlite3.Error``/``OSError`` when the file cannot be opened (at start-up)."""
        self.path = os.path.expanduser(path)
        self.max_queue = max(1, max_queue)
        self.retention = retention
        self.flush_interval = flush_interval
        self.prune_interval = prune_interval
        self._conn = connect(self.path)
        # 32 MiB of page cache for the writer (SQLite's default is 2 MiB): the name index takes
        # inserts all over its B-tree, and a big store would otherwise read pages back per batch.
        self._conn.execute("PRAGMA cache_size=-32768")
        self._lock = threading.Lock()
        self._queue: deque[dict[str, Any]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._flushed = threading.Condition(self._lock)
        self.puts = self.written = self.dropped = self.write_errors = self.pruned = 0
        self._dropped_told = 0
        self._last_prune = 0.0
        self._thread = threading.Thread(target=self._run, name="egress-store", daemon=True)
        self._thread.start()

    def put(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.puts += 1
            if len(self._queue) >= self.max_queue or self._stop.is_set():
                self.dropped += 1
                return
            self._queue.append(event)
            if len(self._queue) >= BATCH:
                self._wake.set()

    def collector(self, prefix: str) -> Any:
        from .hook import collector

        return collector(self, prefix)

    def stats(self) -> StoreStats:
        with self._lock:
            return StoreStats(self.puts, self.written, self.dropped, self.write_errors, self.pruned,
                              len(self._queue))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything put so far is written (or lost); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            target = self.puts
            self._wake.set()
            while self.written + self.dropped + self.write_errors < target:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._flushed.wait(min(left, 0.05))
                self._wake.set()
        return True

    def close(self, timeout: float = 5.0) -> None:
        self.flush(timeout)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout + 1.0)
        if not self._thread.is_alive():
            self._conn.close()

    def prune(self) -> int:
        """One retention pass now (normally the writer runs it every ``prune_interval``)."""
        conn = connect(self.path)  # its own connection: the writer's may be mid-transaction
        try:
            return self._prune_pass(conn)
        finally:
            conn.close()

    # --- the writer thread -------------------------------------------------

    def _take(self) -> list[dict[str, Any]]:
        with self._lock:
            n = min(BATCH, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            while True:
                batch = self._take()
                if not batch:
                    break
                self._write(batch)
            self._count_drops()
            now = time.monotonic()
            if now - self._last_prune >= self.prune_interval:
                self._last_prune = now
                try:
                    self._prune_pass(self._conn)
                except sqlite3.Error:
                    pass  # retried on the next pass; a busy file is not fatal
            if self._stop.is_set():
                with self._lock:
                    if not self._queue:
                        self._flushed.notify_all()
                        return

    def _write(self, batch: list[dict[str, Any]]) -> None:
        ok = 0
        try:
            rows = [row_of(ev) for ev in batch]
            with self._conn:
                self._conn.execute("BEGIN IMMEDIATE")
                self._conn.executemany(
                    f"INSERT INTO events ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})", rows)
            ok = len(rows)
        except (sqlite3.Error, TypeError, ValueError, AttributeError):
            ok = 0
        finally:
            with self._lock:
                self.written += ok
                self.write_errors += len(batch) - ok
                self._flushed.notify_all()

    def _count_drops(self) -> None:
        with self._lock:
            new = self.dropped + self.write_errors - self._dropped_told
        if new <= 0:
            return
        try:
            self._conn.execute("INSERT INTO counters VALUES ('dropped', ?) "
                               "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (new,))
            self._dropped_told += new
        except sqlite3.Error:
            pass

    def _prune_pass(self, conn: sqlite3.Connection) -> int:
        gone = 0
        if self.retention.days is not None:
            cutoff = int((time.time() - self.retention.days * 86400) * 1000)
            gone += conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE timestamp < ? "
                                 "ORDER BY timestamp LIMIT ?)", (cutoff, PRUNE_ROWS)).rowcount
        if self.retention.max_bytes is not None:
            page = conn.execute("PRAGMA page_size").fetchone()[0]
            used = (conn.execute("PRAGMA page_count").fetchone()[0]
                    - conn.execute("PRAGMA freelist_count").fetchone()[0]) * page
            if used > self.retention.max_bytes:
                rows = conn.execute("SELECT count(*) FROM events").fetchone()[0] or 1
                # Delete the share of rows that is over the limit (plus 5%), in bounded steps.
                over = int(rows * ((used - self.retention.max_bytes) / used + 0.05)) + 1
                gone += conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events "
                                     "ORDER BY id LIMIT ?)", (min(over, PRUNE_ROWS),)).rowcount
        if gone:
            conn.execute("PRAGMA incremental_vacuum(4096)")
            with self._lock:
                self.pruned += gone
        return gone
