"""The store's writer process: batches in on stdin, rows into SQLite, counts out on stdout.

``Store`` (in the server's process) sends each batch as a header line ``R <n> <bytes>``
followed by ``n`` rows (tuples in ``COLUMNS`` order) marshalled in ``bytes`` bytes, and the
drops it counted as ``D <n>``; a batch may also come as ``E <n>`` followed by ``n`` JSON
lines (events this process turns into rows: what a script or a test can write by hand).
Repeated events come as shapes (``runtime.shape``): ``S <sid> <bytes>`` registers one
(its pieces and slots, marshalled), ``Q <n> <bytes>`` carries ``n`` marshalled
``(sid, ts, event_id, ip, port, name)`` records that this process renders into the same rows
a whole event makes, and ``C`` forgets every shape (the sender's registry was full).
This process inserts each batch in one transaction and answers ``W <written> <failed>`` per
batch and ``P <pruned>`` per retention pass.  It runs beside the resolver or the proxy so
that SQLite's work never holds the server's interpreter lock (issue 12: the store's cost on the DNS path).
It ignores SIGINT and SIGHUP (the server decides when to stop) and exits when stdin closes,
after the last batch is written.  Retention runs every ``--prune-interval`` seconds, also when
no events arrive.
"""

from __future__ import annotations

import argparse
import marshal
import os
import select
import signal
import sqlite3
import sys
import time
from typing import Any, BinaryIO

import orjson

from runtime.shape import Shape, Slot, event_id_at, stamp_at

from .db import COLUMNS, MAX_SHAPES, Retention, connect, prune_pass, row_of, stamp_ms

INSERT = f"INSERT INTO events ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
MAX_BATCH = 100_000  # a header asking for more is a broken sender: stop rather than trust it
MAX_BLOB = 256 << 20  # likewise for a marshalled batch's size
MAX_SID = 1 << 62  # shape ids only grow; one past this is a broken sender


def _unmarshal(blob: bytes) -> list[tuple[Any, ...]]:
    """The rows of a marshalled batch; a row that is not a tuple of ``COLUMNS``' width is
    left out (and so counted as failed).  Only the server that started this process writes
    to its stdin, so marshal's trust in its input is the pipe's."""
    try:
        got = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return []
    if not isinstance(got, list):
        return []
    return [r for r in got if isinstance(r, tuple) and len(r) == len(COLUMNS)]


def _rows(lines: list[bytes]) -> list[tuple[Any, ...]]:
    """The rows of the lines that are events; any other line is counted as failed."""
    rows = []
    for line in lines:
        try:
            rows.append(row_of(orjson.loads(line), line[:-1].decode("utf-8", "replace")))
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            pass
    return rows


def _register(shapes: dict[int, tuple[Shape, tuple[Any, ...]]], sid: int, blob: bytes) -> None:
    """Keep shape ``sid`` with its row's fixed columns, read off one line rendered from it; a
    shape that does not render an event is left out (its events then count as failed)."""
    try:
        pieces, slots = marshal.loads(blob)
        shape = Shape(tuple(pieces), tuple(Slot(s) for s in slots))
        if len(shape.pieces) != len(shape.slots) + 1 or not all(isinstance(p, str) for p in shape.pieces):
            return
        row = row_of(orjson.loads(shape.render("1970-01-01T00:00:00.000Z", "0", "0.0.0.0", 0, None)))
    except (EOFError, ValueError, TypeError, AttributeError, orjson.JSONDecodeError):
        return
    if len(shapes) < MAX_SHAPES:
        shapes[sid] = (shape, row[2:12] + row[13:14])


def _shaped(shapes: dict[int, tuple[Shape, tuple[Any, ...]]], blob: bytes) -> list[tuple[Any, ...]]:
    """The rows of a ``Q`` batch: each record rendered with its shape; a record of an unknown
    shape or of the wrong form is left out (and so counted as failed)."""
    try:
        records = marshal.loads(blob)
    except (EOFError, ValueError, TypeError):
        return []
    if not isinstance(records, list):
        return []
    rows = []
    for record in records:
        try:
            sid, ts, event_id, ip, port, name = record
            shape, fixed = shapes[sid]
            stamp = stamp_at(ts)
            event_id = event_id or event_id_at(ts)
            doc = shape.render(stamp, event_id, ip, port, name)
        except (KeyError, ValueError, TypeError, AttributeError):
            continue
        rows.append((stamp_ms(stamp), event_id, *fixed[:10], ip, fixed[10], doc))
    return rows


def _insert(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> bool:
    try:
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(INSERT, rows)
        return True
    except sqlite3.Error:
        return False


def _add_dropped(conn: sqlite3.Connection, n: int) -> None:
    try:
        conn.execute("INSERT INTO counters VALUES ('dropped', ?) "
                     "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (n,))
    except sqlite3.Error:
        pass  # the dashboard's figure lags; the server's own counter is exact


MAX_LINE = 16 << 20  # a header or JSON line longer than this is cut here (and then fails as bad)
CHUNK = 1 << 20


class _Input:
    """stdin read in chunks into a buffer of our own, so that "is there more?" asks the
    buffer before the pipe: with a buffered file, a batch that arrived in the same read as
    the one before sat unseen behind ``select`` until the next write (or the prune
    interval, 30 s), however idle the pipe.  Holds at most one chunk beyond what is asked."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.eof = False

    def ready(self, timeout: float) -> bool:
        if self.buf or self.eof:
            return True
        readable, _, _ = select.select([self.fd], [], [], timeout)
        return bool(readable)

    def _fill(self) -> bool:
        chunk = os.read(self.fd, CHUNK)
        if not chunk:
            self.eof = True
        self.buf += chunk
        return bool(chunk)

    def readline(self) -> bytes:
        """A line with its newline; at the end of input, what is left (maybe b"")."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0 or len(self.buf) >= MAX_LINE or self.eof or not self._fill():
                end = i + 1 if i >= 0 else min(len(self.buf), MAX_LINE)
                line = bytes(self.buf[:end])
                del self.buf[:end]
                return line
            start = max(0, len(self.buf) - CHUNK)

    def read(self, n: int) -> bytes:
        """``n`` bytes, or fewer at the end of input."""
        while len(self.buf) < n and not self.eof and self._fill():
            pass
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def serve(path: str, keep: Retention, prune_interval: float, inp: BinaryIO, out: BinaryIO) -> int:
    conn = connect(path)
    # 32 MiB of page cache (SQLite's default is 2 MiB): the name index takes inserts all over
    # its B-tree, and a big store would otherwise read pages back for every batch.
    conn.execute("PRAGMA cache_size=-32768")
    # Checkpoint every 4096 pages (64 MiB of 16 KiB pages) rather than SQLite's 1000: fewer,
    # longer checkpoints cost 14.7 us an insert against 19.5 us (bench/dashboard_bench.py).
    conn.execute("PRAGMA wal_autocheckpoint=4096")
    last_prune = -prune_interval  # a first pass at start, as soon as the store opens
    pipe = _Input(inp.fileno())
    shapes: dict[int, tuple[Shape, tuple[Any, ...]]] = {}  # sid -> shape, its row's fixed columns
    while True:
        now = time.monotonic()
        if now - last_prune >= prune_interval:
            last_prune = now
            try:
                pruned = prune_pass(conn, keep)
            except sqlite3.Error:
                pruned = 0  # retried on the next pass; a busy file is not fatal
            if pruned:
                out.write(b"P %d\n" % pruned)
                out.flush()
        if not pipe.ready(max(0.05, prune_interval - (now - last_prune))):
            continue
        header = pipe.readline()
        if not header:
            conn.close()
            return 0
        kind, *nums = header.split()
        n = int(nums[0]) if nums and nums[0].isdigit() else -1
        if kind == b"D" and n >= 0:
            _add_dropped(conn, n)
            continue
        if kind == b"C" and not nums:
            shapes.clear()
            continue
        sized = kind in (b"R", b"S", b"Q")
        size = int(nums[1]) if sized and len(nums) == 2 and nums[1].isdigit() else -1
        if (kind not in (b"E", b"R", b"S", b"Q") or not 0 <= n <= (MAX_SID if kind == b"S" else MAX_BATCH)
                or (sized and not 0 <= size <= MAX_BLOB)):
            sys.stderr.write(f"egress-filter store writer: bad header {header[:40]!r}; stopping\n")
            conn.close()
            return 2
        if sized:
            blob = pipe.read(size)
            short = len(blob) < size
            if kind == b"S":
                if short:
                    conn.close()
                    return 0
                _register(shapes, n, blob)
                continue
            rows = [] if short else _unmarshal(blob) if kind == b"R" else _shaped(shapes, blob)
        else:
            lines = [pipe.readline() for _ in range(n)]
            rows = _rows([line for line in lines if line])
            short = n > sum(1 for line in lines if line)
        ok = _insert(conn, rows) if rows else True
        written = len(rows) if ok else 0
        out.write(b"W %d %d\n" % (written, n - written))
        out.flush()
        if short:  # stdin closed mid-batch: the sender is gone
            conn.close()
            return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m store.writer")
    ap.add_argument("path")
    ap.add_argument("--days", type=float, default=0.0)
    ap.add_argument("--max-bytes", type=int, default=0)
    ap.add_argument("--prune-interval", type=float, default=30.0)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    keep = Retention(days=args.days or None, max_bytes=args.max_bytes or None)
    try:
        return serve(args.path, keep, args.prune_interval, sys.stdin.buffer, sys.stdout.buffer)
    except BrokenPipeError:
        return 0  # the server went away before reading our last count
    finally:
        try:
            sys.stdout.close()
        except OSError:
            pass


if __name__ == "__main__":
    raise SystemExit(main())
