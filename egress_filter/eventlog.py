"""The one event writer: dicts in, JSON lines out, never blocking the caller.

``emit`` puts the event on an unbounded queue (a dict append, no I/O); one
daemon thread serialises and writes.  ``close`` drains the queue, so a clean
shutdown loses no event.  ``reopen`` (on SIGHUP, for logrotate) reopens the
file between two lines.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
from typing import IO, Any

_STOP = object()
_REOPEN = object()


class EventLog:
    def __init__(self, target: str | None):
        """``target``: a path (appended to), ``-`` for stdout, or None to discard."""
        self.target = target
        self.written = 0
        self.errors = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        if target is not None:
            self._thread = threading.Thread(target=self._run, name="egress-eventlog", daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None

    def emit(self, event: dict[str, Any]) -> None:
        if self._thread is not None and not self._closed:
            self._queue.put(event)

    def reopen(self) -> None:
        if self._thread is not None:
            self._queue.put(_REOPEN)

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until everything emitted so far is written."""
        if self._thread is None:
            return
        done = threading.Event()
        self._queue.put(done)
        done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is None or self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _open(self) -> IO[str]:
        if self.target == "-":
            return sys.stdout
        return open(self.target or "", "a", encoding="utf-8", buffering=1 << 16)

    def _run(self) -> None:
        out = self._open()
        dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, default=str).encode
        try:
            while True:
                item = self._queue.get()
                batch = [item]
                # Drain what is already queued so a burst costs one flush.
                while len(batch) < 4096:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                stop = False
                for it in batch:
                    if it is _STOP:
                        stop = True
                    elif it is _REOPEN:
                        out.flush()
                        if out is not sys.stdout:
                            out.close()
                            out = self._open()
                    elif isinstance(it, threading.Event):
                        out.flush()
                        it.set()
                    else:
                        try:
                            out.write(dumps(it) + "\n")
                            self.written += 1
                        except (TypeError, ValueError, OSError):
                            self.errors += 1
                try:
                    out.flush()
                except OSError:
                    self.errors += 1
                if stop:
                    return
        finally:
            if out is not sys.stdout:
                out.close()
