"""The one event writer: dicts in, whole JSON lines out, never blocking the caller.

``emit`` serialises the event (so its size is known) and puts the line on a
queue bounded in events and in bytes; when the sink has stalled and the queue
is full, the event is dropped and counted, never waited for.  One daemon
thread writes what has piled up in batches.  A sink that is not a regular
file (a FIFO, a pipe on stdout) is only written when ``poll`` says it takes
data, so the writer can always notice a shutdown deadline.

Every line lands whole or not at all: when a write to a regular file fails
part-way (a full disk), the file is truncated back to its last whole line;
on a pipe, the rest of a half-written line is sent first once the pipe takes
data again.  Lost events are counted (``dropped``: the queue was full or the
log was closed; ``write_errors``: a write failed), reported in the log itself
by a rate-limited ``eventlog`` warning event once the sink accepts again, by a
rate-limited stderr line on write errors, and by one stderr line at ``close``.

The path is opened in the constructor, so a bad path fails at start-up.  A
FIFO with no reader yet is not an error: it is opened non-blocking, and the
writer retries until a reader comes (events queue meanwhile, within bounds).
``reopen`` (on SIGHUP, after logrotate moved the file) opens the path anew
between two lines; if that fails the old sink is kept.

``emit_shaped`` takes a repeated event as its ``Shape`` and the values that
change (``runtime.shape``): the line is rendered from the shape (a fraction of
building and encoding the event), and the store, when there is one, is handed
the shape with the same event id, for its writer process to render.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import select
import stat
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from policies.events import ECS_VERSION, SCHEMA_VERSION, utc_iso

from .jsonline import encode as encode_line
from .shape import Shape, ShapedDoor, ShapedSink, event_id_at, line_at

_STOP = object()
_REOPEN = object()
_BATCH_EVENTS = 4096
_BATCH_BYTES = 1 << 20
_PIPE_CHUNK = select.PIPE_BUF  # a pipe that polls writable takes this much without blocking
_POLL_SLICE = 0.2  # seconds the writer waits on a stalled sink before looking at the clock again
DEFAULT_MAX_EVENTS = 100_000
DEFAULT_MAX_BYTES = 32 << 20
DEFAULT_WARN_INTERVAL = 10.0
PROG = "egress-filter"


@dataclass(frozen=True, slots=True)
class Sink:
    """An open event-log target: its fd and whether it is a regular file
    (which can be truncated back, and never stalls in ``poll``)."""

    fd: int
    regular: bool
    owned: bool  # ours to close (not stdout)


class FifoHasNoReader(OSError):
    """The log path is a FIFO that no process has open for reading yet."""


def open_sink(target: str) -> Sink:
    """Open ``target`` for appending, never blocking: ``-`` is stdout.

    A FIFO with no reader raises ``FifoHasNoReader`` at once instead of
    hanging in ``open`` (``O_NONBLOCK`` makes the kernel say ENXIO)."""
    if target == "-":
        sys.stdout.flush()  # what was printed before goes first
        fd = sys.stdout.fileno()
        return Sink(fd, stat.S_ISREG(os.fstat(fd).st_mode), owned=False)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(target, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ENXIO:
            raise FifoHasNoReader(errno.ENXIO, "a FIFO with no reader yet", target) from exc
        raise
    mode = os.fstat(fd).st_mode
    if stat.S_ISDIR(mode):  # O_WRONLY refuses directories, but keep the check next to the others
        os.close(fd)
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
    return Sink(fd, stat.S_ISREG(mode), owned=True)


@dataclass(frozen=True, slots=True)
class EventLogStats:
    """A consistent snapshot of the counters (for metrics and reports)."""

    emitted: int  # every emit() call: written + dropped + write_errors + unserialisable + queued
    written: int  # written whole
    dropped: int  # refused (queue full, log closed) or still queued at the close deadline
    write_errors: int  # lost because a write failed (full disk, reader gone)
    unserialisable: int  # not JSON-serialisable (a bug in the caller)
    queued: int
    queued_bytes: int

    @property
    def lost(self) -> int:
        return self.dropped + self.write_errors + self.unserialisable


class EventLog:
    def __init__(self, target: str | None, *, max_events: int = DEFAULT_MAX_EVENTS,
                 max_bytes: int = DEFAULT_MAX_BYTES, warn_interval: float = DEFAULT_WARN_INTERVAL,
                 also: Callable[[dict[str, Any]], None] | None = None,
                 also_shaped: ShapedSink | None = None):
        """``target``: a path (appended to), ``-`` for stdout, or None to discard.
        ``max_events``/``max_bytes`` bound what may wait for a slow sink;
        ``warn_interval`` is the least time between two loss warnings.

        Raises ``OSError`` when the path cannot be opened for appending."""
        self.target = target
        self.also = also  # one more non-blocking sink for every event (store.Store.put), or None
        self.also_shaped = also_shaped  # the same sink's door for shaped events (Store.put_shaped)
        self.max_events = max(1, max_events)
        self.max_bytes = max(1, max_bytes)
        self.warn_interval = warn_interval
        self.emitted = 0
        self.written = 0
        self.dropped = 0
        self.write_errors = 0
        self.unserialisable = 0
        self.reopen_errors = 0
        self.warnings_written = 0  # the eventlog's own loss warnings, not counted in ``written``
        self._queued = 0
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._deadline: float | None = None  # monotonic; set by close()
        self._reported = 0  # losses already told in a warning event
        self._last_warning = -float("inf")
        self._last_stderr = -float("inf")
        if target is not None:
            sink: Sink | None
            try:
                sink = open_sink(target)
            except FifoHasNoReader:
                sink = None
                self._say(f"event log {target} is a FIFO with no reader yet; events wait for one "
                          f"(up to {self.max_events} events, {self.max_bytes} bytes), the rest are "
                          "dropped and counted")
            self._thread = threading.Thread(target=self._run, args=(sink,), name="egress-eventlog",
                                            daemon=True)
            self._thread.start()

    @property
    def enabled(self) -> bool:
        return self._thread is not None or self.also is not None

    @property
    def errors(self) -> int:
        """Every event lost other than by a full queue (write failures, bad events)."""
        return self.write_errors + self.unserialisable

    def stats(self) -> EventLogStats:
        with self._lock:
            return EventLogStats(self.emitted, self.written, self.dropped, self.write_errors,
                                 self.unserialisable, self._queued, self._queued_bytes)

    def emit(self, event: dict[str, Any]) -> None:
        """Queue one event; returns at once whatever the sink is doing."""
        if self.also is not None:
            self.also(event)
        if self._thread is None:
            return
        try:
            data = encode_line(event)
        except (TypeError, ValueError, RecursionError):
            with self._lock:
                self.emitted += 1
                self.unserialisable += 1
            return
        self._enqueue(data)

    def emit_shaped(self, shape: Shape, ts: float, ip: str, port: int, name: str | None) -> None:
        """Queue one repeated event, given as its shape and what changes (``runtime.shape``)."""
        # The log's line and the store's row share one event id.
        event_id = event_id_at(ts) if self._thread is not None else None
        if self.also_shaped is not None:
            self.also_shaped(shape, ts, ip, port, name, event_id)
        elif self.also is not None:  # a sink that only takes dicts gets the event the line holds
            self.also(json.loads(line_at(shape, ts, event_id or event_id_at(ts), ip, port, name)))
        if event_id is not None:
            self._enqueue((line_at(shape, ts, event_id, ip, port, name) + "\n").encode())

    def shaped_door(self) -> ShapedDoor:
        """What takes a shaped event here: ``emit_shaped``, or with no file to write, the
        store's own door (one call less per repeat on the resolver's answer path)."""
        if self._thread is None and self.also_shaped is not None:
            return self.also_shaped
        return self.emit_shaped

    def _enqueue(self, data: bytes) -> None:
        size = len(data)
        with self._lock:
            self.emitted += 1
            if self._closed or self._queued >= self.max_events or self._queued_bytes + size > self.max_bytes:
                self.dropped += 1
                return
            self._queued += 1
            self._queued_bytes += size
            # Under the lock, so that no line can follow close()'s stop mark.
            self._queue.put(data)

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

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, for at most ``timeout`` seconds, then stop the
        writer; what could not be written is counted as dropped, and any loss
        is reported in one line on stderr."""
        if self._thread is None or self._closed:
            return
        with self._lock:
            self._closed = True
            self._deadline = time.monotonic() + timeout
        self._queue.put(_STOP)
        self._thread.join(timeout + 1.0)
        with self._lock:
            if self._thread.is_alive():  # stuck in a blocking write (a stalled tty): give up on the rest
                self.dropped += self._queued
                self._queued = self._queued_bytes = 0
        s = self.stats()
        if s.lost:
            parts = [f"{n} {what}" for n, what in ((s.dropped, "dropped (the sink did not keep up)"),
                                                   (s.write_errors, "lost to write errors"),
                                                   (s.unserialisable, "not serialisable")) if n]
            self._say(f"event log {self.target}: {s.lost} of {s.emitted} events lost: {', '.join(parts)}")

    def __enter__(self) -> EventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the writer thread -----------------------------------------------------

    def _say(self, message: str) -> None:
        try:
            print(f"{PROG}: {message}", file=sys.stderr, flush=True)
        except (OSError, ValueError):
            pass  # no stderr left: the counters still hold the numbers

    def _fill(self, pending: deque[Any], wait: bool) -> None:
        """Move what is queued into ``pending`` (the lines keep their queue
        space until written).  Blocks for the first item unless ``wait`` is
        False, when the writer has work to retry (a sink to open, a loss to
        report) and must wake up within a poll slice."""
        try:
            pending.append(self._queue.get() if wait else self._queue.get(timeout=_POLL_SLICE))
        except queue.Empty:
            return
        get_nowait = self._queue.get_nowait
        for _ in range(_BATCH_EVENTS):
            try:
                pending.append(get_nowait())
            except queue.Empty:
                return

    def _run(self, sink: Sink | None) -> None:
        self._sink = sink
        pending: deque[Any] = deque()
        try:
            while True:
                idle = not pending and self._sink is not None and not self._unreported()
                self._fill(pending, wait=idle)
                if self._sink is None and self.target is not None:
                    self._retry_open()
                late = self._late()
                while pending:
                    head = pending[0]
                    if isinstance(head, bytes):
                        if self._sink is None and not late:
                            break  # a FIFO with no reader: keep the lines until one comes
                        self._write(_take_lines(pending))
                        continue
                    pending.popleft()
                    if head is _STOP:
                        self._write([], final=True)
                        return
                    if head is _REOPEN:
                        self._reopen()
                    elif isinstance(head, threading.Event):
                        head.set()
                if not pending and self._unreported():
                    self._write([])  # a loss warning, when one is due and the sink takes it
        finally:
            self._close_sink()

    def _late(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _unreported(self) -> int:
        return self.dropped + self.write_errors - self._reported

    def _write(self, lines: list[bytes], *, final: bool = False) -> None:
        """Write ``lines`` whole (and a loss warning first, when one is due);
        count each line as written or lost, then release its queue space."""
        written = failed = 0
        try:
            if self._sink is None:
                failed = len(lines)  # only past the close deadline: nobody ever read them
                return
            unreported = self._unreported()
            now = time.monotonic()
            if unreported and (final or now - self._last_warning >= self.warn_interval):
                if self._send([self._warning(unreported)])[0] == 1:
                    self._reported += unreported
                    self._last_warning = now
                    self.warnings_written += 1
            if lines:
                written, failed = self._send(lines)
        finally:
            if lines:
                with self._lock:
                    self.written += written
                    # Lines given up at the close deadline were dropped;
                    # ones a failed write lost are write errors.
                    if self._late():
                        self.dropped += failed
                    else:
                        self.write_errors += failed
                    self._queued -= len(lines)
                    self._queued_bytes -= sum(map(len, lines))

    def _send(self, lines: list[bytes]) -> tuple[int, int]:
        """Write lines to the sink; (whole lines written, lines lost)."""
        sink = self._sink
        assert sink is not None
        buf = b"".join(lines)
        try:
            (_write_file if sink.regular else self._write_pipe)(sink.fd, buf)
        except _PartialWrite as exc:
            whole = buf.count(b"\n", 0, exc.done)
            if sink.regular and sink.owned:
                # Not stdout: other processes may be appending to that file.
                _truncate_back(sink.fd, buf, exc.done)
            cause = exc.__cause__
            if not isinstance(cause, _Late):
                now = time.monotonic()
                if now - self._last_stderr >= self.warn_interval:
                    self._last_stderr = now
                    why = cause.strerror if isinstance(cause, OSError) and cause.strerror else cause
                    self._say(f"event log {self.target}: cannot write ({why}); "
                              "events are being lost and counted")
                if isinstance(cause, BrokenPipeError) and sink.owned and not sink.regular:
                    self._close_sink()  # the FIFO's reader went away: wait for the next one
            return whole, len(lines) - whole
        return len(lines), 0

    def _write_pipe(self, fd: int, buf: bytes) -> None:
        """Write to a pipe or FIFO in chunks it takes without blocking (at most
        PIPE_BUF after a poll says writable, cut at line ends, so lines do not
        tear), waiting in short polls so that a close deadline is noticed."""
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        view = memoryview(buf)
        done = 0
        while done < len(buf):
            if self._late():
                raise _PartialWrite(done) from _Late()
            if not poller.poll(_POLL_SLICE * 1000):
                continue
            end = min(len(buf), done + _PIPE_CHUNK)
            if end < len(buf):
                cut = buf.rfind(b"\n", done, end)
                end = cut + 1 if cut >= 0 else end  # a line longer than PIPE_BUF goes in pieces
            try:
                done += os.write(fd, view[done:end])
            except BlockingIOError:
                continue
            except OSError as exc:
                raise _PartialWrite(done) from exc

    def _warning(self, lost: int) -> bytes:
        """The log's own event saying how many events were lost, and why."""
        now = time.time()
        ev = {
            "@timestamp": utc_iso(now),
            "ecs": {"version": ECS_VERSION},
            "event": {"kind": "alert", "category": ["process"], "type": ["error"],
                      "action": "events-lost", "module": "egress_filter",
                      "dataset": "egress_filter.eventlog",
                      "reason": "the log sink did not keep up or a write failed"},
            "observer": {"product": "egress-filter", "type": "eventlog"},
            "message": f"{lost} events lost",
            "egress": {"schema": SCHEMA_VERSION, "component": "eventlog", "lost": lost,
                       "dropped": self.dropped, "write_errors": self.write_errors},
        }
        return encode_line(ev)

    def _retry_open(self) -> None:
        try:
            self._sink = open_sink(self.target or "-")
        except FifoHasNoReader:
            self._sink = None
        except OSError as exc:
            self._sink = None
            self.reopen_errors += 1
            now = time.monotonic()
            if now - self._last_stderr >= self.warn_interval:
                self._last_stderr = now
                self._say(f"event log {self.target}: cannot reopen ({exc.strerror or exc})")

    def _close_sink(self) -> None:
        if self._sink is not None and self._sink.owned:
            os.close(self._sink.fd)
        self._sink = None

    def _reopen(self) -> None:
        if self._sink is not None and not self._sink.owned:
            return  # stdout
        try:
            new = open_sink(self.target or "-")
        except FifoHasNoReader:
            self._close_sink()
            return
        except OSError:
            self.reopen_errors += 1
            return
        self._close_sink()
        self._sink = new


class _Late(Exception):
    """The close deadline passed with lines still unwritten."""


class _PartialWrite(Exception):
    """A write stopped after ``done`` bytes; the cause says why."""

    def __init__(self, done: int):
        super().__init__(done)
        self.done = done


def _take_lines(pending: deque[Any]) -> list[bytes]:
    """The leading run of lines in ``pending``, up to one batch."""
    lines: list[bytes] = []
    size = 0
    while pending and isinstance(pending[0], bytes) and len(lines) < _BATCH_EVENTS and size < _BATCH_BYTES:
        line = pending.popleft()
        lines.append(line)
        size += len(line)
    return lines


def _write_file(fd: int, buf: bytes) -> None:
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        try:
            done += os.write(fd, view[done:])
        except OSError as exc:
            raise _PartialWrite(done) from exc


def _truncate_back(fd: int, buf: bytes, done: int) -> None:
    """Cut a half-written line off a regular file, so that every line stays whole."""
    torn = done - (buf.rfind(b"\n", 0, done) + 1)
    if torn <= 0:
        return
    try:
        os.ftruncate(fd, os.fstat(fd).st_size - torn)
    except OSError:
        pass  # nothing more can be done; the line's event is counted as lost


def metrics_collector(prefix: str, source: Callable[[], EventLog]) -> Any:
    """A prometheus-client collector for an event log's counters
    (``<prefix>_events_written_total``, ``_dropped_total``, ``_write_errors_total``,
    ``_unserialisable_total``, and the ``_events_queued`` gauge).  ``source``
    returns the log in use, so a component that swaps its log keeps one collector:
    register it with ``registry.register(metrics_collector("egress_dns", lambda: log))``."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            s = source().stats()
            for name, value, doc in (
                ("events_written", s.written, "Events written whole to the event log"),
                ("events_dropped", s.dropped, "Events dropped: a full queue (a stalled sink), or closed"),
                ("events_write_errors", s.write_errors, "Events lost to failed writes (a full disk)"),
                ("events_unserialisable", s.unserialisable, "Events that were not JSON-serialisable"),
            ):
                yield CounterMetricFamily(f"{prefix}_{name}", doc, value=value)
            yield GaugeMetricFamily(f"{prefix}_events_queued", "Events waiting for the sink", value=s.queued)

        def describe(self) -> Iterator[Any]:
            return iter(())

    return _Collector()
