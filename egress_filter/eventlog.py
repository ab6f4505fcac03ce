"""The one event writer: dicts in, JSON lines out, never blocking the caller.

``emit`` puts the event on an unbounded queue (an append, no I/O, no lock
held across I/O); one daemon thread serialises and writes, draining whatever
has piled up in one batch and one flush.  The file is opened in the
constructor, so a bad path fails at start-up, not silently later.  ``close``
drains the queue, so a clean shutdown loses no event.  ``reopen`` (on SIGHUP,
after logrotate moved the file) opens the path anew between two lines; if
that fails the old handle is kept, so events still land somewhere.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from typing import IO, Any

_STOP = object()
_REOPEN = object()
_BATCH = 4096


class EventLog:
    def __init__(self, target: str | None):
        """``target``: a path (appended to), ``-`` for stdout, or None to discard.

        Raises ``OSError`` when the path cannot be opened for appending."""
        self.target = target
        self.written = 0
        self.errors = 0
        self.dropped = 0  # emitted after close()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        if target is not None:
            out = self._open()
            self._thread = threading.Thread(target=self._run, args=(out,), name="egress-eventlog",
                                            daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def emit(self, event: dict[str, Any]) -> None:
        """Queue one event; returns at once whatever the disk is doing."""
        if self._thread is None:
            return
        if self._closed:
            self.dropped += 1
            return
        self._queue.put(event)

    def reopen(self) -> None:
        """Reopen the path (logrotate's ``postrotate``: send SIGHUP, call this)."""
        if self._thread is not None and not self._closed:
            self._queue.put(_REOPEN)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything emitted so far is written; False on timeout."""
        if self._thread is None or not self._thread.is_alive():
            return True
        done = threading.Event()
        self._queue.put(done)
        return done.wait(timeout)

    def close(self, timeout: float | None = 60.0) -> None:
        """Write everything queued so far, then stop the writer thread."""
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self) -> IO[str]:
        if self.target == "-":
            return sys.stdout
        return open(self.target or "", "a", encoding="utf-8", buffering=1 << 16)

    def _run(self, out: IO[str]) -> None:
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
        get, get_nowait = self._queue.get, self._queue.get_nowait
        try:
            while True:
                batch = [get()]
                while len(batch) < _BATCH:
                    try:
                        batch.append(get_nowait())
                    except queue.Empty:
                        break
                stop = False
                lines: list[str] = []
                for it in batch:
                    if isinstance(it, dict):
                        try:
                            lines.append(dumps(it))
                        except (TypeError, ValueError):
                            self.errors += 1
                        continue
                    # A control item: write what came before it first.
                    out = self._write(out, lines)
                    lines = []
                    if it is _STOP:
                        stop = True
                    elif it is _REOPEN:
                        out = self._reopen(out)
                    elif isinstance(it, threading.Event):
                        it.set()
                out = self._write(out, lines)
                if stop:
                    return
        finally:
            if out is not sys.stdout:
                out.close()

    def _write(self, out: IO[str], lines: list[str]) -> IO[str]:
        try:
            if lines:
                out.write("\n".join(lines) + "\n")
                self.written += len(lines)
            out.flush()
        except OSError:
            self.errors += len(lines)
        return out

    def _reopen(self, out: IO[str]) -> IO[str]:
        if out is sys.stdout:
            return out
        try:
            new = self._open()
        except OSError:
            self.errors += 1
            return out
        out.close()
        return new
