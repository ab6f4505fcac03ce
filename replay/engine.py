"""Inputs → sightings → decisions → verdicts, streaming.

``Replay(paths, view)`` opens each input, picks its reader by content (pcap,
pcapng, mitmproxy flows, Zeek TSV, JSON lines from Zeek or Suricata; any of
them compressed with gzip, bzip2, xz or zstd, recognised by their magic bytes),
and yields one ``Finding`` per sighting, judged by the
same ``PolicyView.decide`` the live adapters use (``decide_name`` for DNS
names and SNIs, ``decide_http`` for requests, ``decide_ip`` for nameless TLS).
With ``by_date`` each sighting is judged with the policy of the day it was
seen.  Damage (truncated files, bad records) is collected in ``Replay.damage``;
a reader stops at the damage and everything before it has been yielded.  Each
reader holds at most ``Limits`` of one record; whatever still escapes a reader
(a read error, a corrupt gzip stream, running out of memory, a reader bug)
becomes a ``Damage`` that stops that input, never a traceback.
With ``jobs`` > 1 each input is read in a worker process (``read_parallel``),
which spools its sightings to a file in batches; the parent streams the spools
back in input order, so the verdicts, their order and every output byte are
those of ``jobs=1``.  Where workers are forked (Linux) they also judge each
sighting with the same views (``_judge``, inherited through the fork) and,
for ``Replay.lines`` (jsonl) also write each finding's line and count the file
into a ``Summary`` of its own, which the parent merges (``Summary.merge``): the
parent then only concatenates, which is what lets two workers beat one
(issue 11).  For the other formats each spool carries a file's distinct
decisions once, pickled, and its sightings by index, and the parent counts.
``expand`` turns directories and globs into files.
"""

from __future__ import annotations

import bz2
import datetime as dt
import functools
import glob
import gzip
import io
import lzma
import marshal
import os
import pickle
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, BinaryIO, NamedTuple, cast

import zstandard

from policies import Action, Decision, Kind, PolicyView
from policies.bounded import BoundedMemo

from .model import DEFAULT_LIMITS, Damage, Finding, Limits, Sighting
from .summary import Summary

Reader = Callable[[str, BinaryIO, Callable[[], None] | None], Iterator[Sighting | Damage]]


def pick_reader(
    head: bytes, dns_ports: frozenset[int] = frozenset({53}), limits: Limits = DEFAULT_LIMITS
) -> tuple[str, Reader] | None:
    from . import capture, flows, logs

    if capture.is_capture(head):
        return "capture", functools.partial(capture.read_capture, dns_ports=dns_ports, limits=limits)
    if flows.is_flow_file(head):
        return "mitmproxy flows", functools.partial(flows.read_flows, limits=limits)
    if logs.is_zeek_tsv(head):
        return "Zeek log", functools.partial(logs.read_zeek_tsv, limits=limits)
    if logs.is_json_lines(head):
        return "JSON log", functools.partial(logs.read_json_lines, limits=limits)
    return None


class ProgressBar:
    """Per-file progress on stderr: a one-line bar on a terminal (inputs of ``min_size`` bytes or
    more), or, with ``force`` (``--progress``), also a line at each quarter where stderr is not one."""

    def __init__(self, total: int, stream: IO[str] | None = None, min_size: int = 8 << 20,
                 force: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.enabled = force or (self.tty and total >= min_size)
        self.count = 0
        self.index = 0
        self.name = ""
        self.size = 0
        self.last = -1

    def start(self, name: str, size: int, index: int, count: int) -> None:
        self.name, self.size, self.index, self.count, self.last = name, size, index, count, -1
        self.update(0)

    def update(self, position: int) -> None:
        if not self.enabled:
            return
        pct = min(100, position * 100 // max(1, self.size))
        if self.tty:
            if pct != self.last:
                self.last = pct
                bar = "#" * (pct // 4)
                self.stream.write(f"\rreplay [{bar:<25}] {pct:3d}% {self.index}/{self.count} {self.name}")
                self.stream.flush()
        elif pct // 25 != self.last:
            self.last = pct // 25
            self.stream.write(f"replay: {self.index}/{self.count} {self.name}: {self.last * 25}%\n")
            self.stream.flush()

    def file_done(self) -> None:
        self.update(self.size)
        if self.enabled and self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        pass


@dataclass
class Replay:
    """One run over several inputs; iterate it for verdicts.

    ``by_date``: judge each sighting with the policy as it stood on the day it
    was seen (in the policy's time zone), so a capture spanning a schedule
    change gets each side's phases; ``view`` then only lends its phase
    override and mode.  Otherwise every sighting is judged with ``view``.
    """

    paths: Iterable[str]
    view: PolicyView
    progress: bool = True
    force_progress: bool = False  # ``--progress``: per-file progress even where stderr is no terminal
    dns_ports: frozenset[int] = frozenset({53})
    by_date: bool = False
    limits: Limits = DEFAULT_LIMITS
    jobs: int = 1  # worker processes reading inputs; the verdicts and their order do not depend on it
    damage: list[Damage] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (path, format)
    dates: set[dt.date] = field(default_factory=set)  # the days sightings were judged at
    last_view: PolicyView | None = None  # the view of the latest sighting
    group: str | None = None  # ``--group``: judge every client as a member of this group

    def __iter__(self) -> Iterator[Finding]:
        for item in self._stream(None, None):
            assert isinstance(item, Finding)
            yield item

    def lines(self, summary: Summary, render: Callable[[Finding], str]) -> Iterator[Rendered]:
        """The findings' report lines (``render``, a module-level function) and actions, in
        the order ``iter`` gives the findings, each counted into ``summary``: one line a run
        here, a batch a run from a worker.  With forked workers each worker judges, renders
        and counts its own file, and the parent merges the file's summary: what is left to
        the parent is concatenating (issue 11)."""
        for item in self._stream(summary, render):
            assert isinstance(item, Rendered)
            yield item

    def _stream(
        self, summary: Summary | None, render: Callable[[Finding], str] | None
    ) -> Iterator[Finding | Rendered]:
        paths = list(self.paths)
        sizes = {p: _size(p) for p in paths}
        bar = (
            ProgressBar(sum(sizes.values()), force=self.force_progress)
            if self.progress or self.force_progress
            else None
        )
        view_at = self._dated() if self.by_date else None
        self.last_view = self.view
        latest = float("-inf")
        parallel = self.jobs > 1 and len(paths) > 1
        if parallel:
            # Forked workers judge (and, for lines, render and count); others only read.
            worker_render = render if summary is not None else None
            job = Job(functools.partial(self._judge, view_at), worker_render, self.dates) if _FORKS else None
            sources: Iterable[tuple[str, Iterator[Spooled]]] = read_parallel(
                paths, self.jobs, self.dns_ports, self.limits, job
            )
        else:
            sources = ((p, read_input(p, self.dns_ports, self.limits, self._tick(bar))) for p in paths)
        try:
            for index, (path, items) in enumerate(sources, 1):
                if bar:
                    bar.start(path, sizes[path], index, len(paths))
                for item in items:
                    if isinstance(item, Rendered):  # judged, rendered and counted in a worker
                        yield item
                        continue
                    if isinstance(item, str):
                        self.inputs.append((path, item))
                        continue
                    if isinstance(item, Damage):
                        self.damage.append(item)
                        continue
                    if isinstance(item, FilePart):  # the end of a file a worker counted
                        assert summary is not None
                        summary.merge(item.summary)
                        for client, app, blocked in item.spilled():
                            summary.client(client, app, blocked)
                        self.dates |= item.dates
                        if view_at is not None and item.latest is not None and item.latest >= latest:
                            latest, self.last_view = item.latest, view_at(item.latest)
                        continue
                    if isinstance(item, Finding):  # judged in a worker
                        finding = item
                    else:
                        finding = Finding(item, self._judge(view_at, item))
                    if view_at is not None:  # the latest view (and the day of one judged in a worker)
                        t = finding.sighting.time
                        v = view_at(t)
                        if t >= latest:
                            latest, self.last_view = t, v
                    if summary is None or render is None:
                        yield finding
                        continue
                    summary.add(finding)
                    yield Rendered(bytes((ACTION_INDEX[finding.decision.action],)), render(finding))
                if bar:
                    bar.file_done()
        finally:
            if bar:
                bar.close()
        if view_at is None:
            self.dates = {self.view.at}

    def _judge(self, view_at: Callable[[float], PolicyView] | None, item: Sighting) -> Decision:
        """The decision on one sighting, as every adapter makes it (in a worker, on its copy)."""
        view = view_at(item.time) if view_at is not None else self.view
        obs = item.observation()
        # Each client is judged with its own group's view, unless --group forces one.
        judge = view.groups[self.group] if self.group is not None else view.group(obs.client)
        d = judge.decide(obs)
        if item.ech:  # a ClientHello with ECH: builtin:ech, as the proxy judges it
            d = judge.with_ech(d, obs.value if obs.kind is Kind.SNI else "", obs.client)
        return d

    def _dated(self) -> Callable[[float], PolicyView]:
        template = self.view
        policy = template.policy
        by_day: dict[dt.date, PolicyView] = {}
        # 15-minute slots: every UTC offset in use is a multiple
        by_slot: BoundedMemo[int, PolicyView] = BoundedMemo(100_000)

        def view_at(t: float) -> PolicyView:
            slot = int(t // 900)
            v = by_slot.get(slot)
            if v is None:
                day = policy.today(dt.datetime.fromtimestamp(t, dt.UTC)) if t > 0 else template.at
                v = by_day.get(day)
                if v is None:
                    v = by_day[day] = policy.view(day, template.phase_override, template.mode,
                                                  template.legal_status)
                    self.dates.add(day)
                by_slot.put(slot, v)
            return v

        return view_at

    @staticmethod
    def _tick(bar: ProgressBar | None) -> Callable[[int], None] | None:
        return bar.update if bar and bar.enabled else None


# --- one input: open, decompress, pick the reader ---------------------------------------


def _gzip(raw: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, gzip.GzipFile(fileobj=raw, mode="rb"))


def _bzip2(raw: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, bz2.BZ2File(raw, "rb"))


def _xz(raw: BinaryIO) -> BinaryIO:
    return cast(BinaryIO, lzma.LZMAFile(raw, "rb"))


def _zstd(raw: BinaryIO) -> BinaryIO:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    return cast(BinaryIO, io.BufferedReader(reader, CHUNK))  # buffered: readline and peek


# Compressed formats by their magic bytes (RFC 1952, bzip2, xz, RFC 8878), never by file name.
COMPRESSIONS: tuple[tuple[bytes, str, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", "gzip", _gzip),
    (b"BZh", "bzip2", _bzip2),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
)
DECOMPRESSION_ERRORS = (zlib.error, lzma.LZMAError, zstandard.ZstdError)
CHUNK = 1 << 16


def read_input(
    path: str,
    dns_ports: frozenset[int] = frozenset({53}),
    limits: Limits = DEFAULT_LIMITS,
    tick: Callable[[int], None] | None = None,
) -> Iterator[Sighting | Damage | str]:
    """Every sighting and damage of one input, in its order; first (once its format is
    known) the format's name, as a ``str``.  Compression is recognised by content."""
    try:
        raw = open(path, "rb")
    except OSError as exc:
        yield Damage(path, 0, f"cannot open: {exc.strerror or exc}")
        return
    compression = ""
    try:
        progress = (lambda: tick(raw.tell())) if tick is not None else None
        fh: BinaryIO = raw
        magic = raw.read(6)
        raw.seek(0)
        for prefix, name, opener in COMPRESSIONS:
            if magic.startswith(prefix):
                compression = name
                fh = opener(raw)
                break
        try:
            head = fh.peek(16)[:16] if compression else fh.read(16)  # type: ignore[attr-defined]
            if not compression:
                fh.seek(0)
        except (OSError, EOFError, *DECOMPRESSION_ERRORS) as exc:
            yield Damage(path, 0, f"unreadable {compression or 'file'} data: {exc}")
            return
        picked = pick_reader(head, dns_ports, limits)
        if picked is None:
            what = f"{compression}-compressed data that is " if compression else ""
            yield Damage(
                path, 0, f"{what}not a pcap, pcapng, mitmproxy flow file, Zeek log or Suricata EVE log"
            )
            return
        fmt, reader = picked
        yield f"{fmt} ({compression})" if compression else fmt
        try:
            yield from reader(path, fh, progress)
        except EOFError as exc:  # a compressed stream cut short
            yield Damage(path, 0, f"{compression} data cut short: {exc}; stopped here")
        except (OSError, *DECOMPRESSION_ERRORS) as exc:
            # The decompressors raise OSError for corrupt data (gzip.BadGzipFile, bz2) as well.
            what = f"unreadable {compression} data" if compression else "read error"
            yield Damage(path, 0, f"{what}: {exc}; stopped here")
        except MemoryError:
            # The readers hold at most ``limits`` per record, so this is the machine
            # running short, not a policy problem: a warning and exit code 4, no traceback.
            yield Damage(path, 0, "out of memory while reading; stopped here")
        except Exception as exc:  # a reader bug must not lose the verdicts so far
            yield Damage(path, 0, f"internal error while reading ({type(exc).__name__}); stopped here")
    finally:
        raw.close()


# --- many inputs: directories, globs, processes -------------------------------------------


def expand(inputs: Iterable[str]) -> list[str]:
    """Files named, the files under directories named (recursively, sorted), and the files
    shell-style globs match (sorted); a name that matches nothing stays, to be reported."""
    out: list[str] = []
    for name in inputs:
        if os.path.isdir(name):
            found = [os.path.join(root, f) for root, _, files in os.walk(name) for f in files]
            out += sorted(found, key=_path_key)
        elif not os.path.exists(name) and glob.has_magic(name):
            matched = sorted(glob.glob(name, recursive=True), key=_path_key)
            out += [m for m in matched if not os.path.isdir(m)] or [name]
        else:
            out.append(name)
    return out


def _path_key(path: str) -> list[str]:
    """Sort by directory, then name: ``a/deep/x`` before ``a-b/y`` and before ``b``, as a tree reads."""
    return path.split(os.sep)


BATCH = 4096  # items a worker spools at a time


# Spooled items are plain tuples written with ``marshal``: a fifth of pickle's cost for a
# dataclass, and a spool is only ever read back by the process that asked for it.
Row = tuple[Any, ...] | str


def _row(item: Sighting | Damage | str) -> Row:
    if isinstance(item, Sighting):
        return (
            item.time, item.kind.value, item.value, item.client, item.server, item.client_port,
            item.server_port, item.host, item.via, item.qtype, item.file, item.packet, item.ech,
            item.cname_of, item.tunnel,
        )  # fmt: skip
    if isinstance(item, Damage):
        return (None, item.file, item.packet, item.message, item.stopped, item.unit)
    return item


KINDS = {k.value: k for k in Kind}


def _item(row: Row) -> Sighting | Damage | str:
    if isinstance(row, str):
        return row
    if row[0] is None:
        return Damage(*row[1:])
    return Sighting(row[0], KINDS[row[1]], *row[2:])


class Job(NamedTuple):
    """What a forked worker does with each sighting: ``judge`` it (the parent's
    ``Replay._judge``); given ``render``, also write its report line and count it into
    the file's own ``Summary``.  ``dates`` is the set the judge's ``view_at`` adds each
    day to: after the fork, the worker's own copy."""

    judge: Callable[[Sighting], Decision]
    render: Callable[[Finding], str] | None
    dates: set[dt.date]


@dataclass(frozen=True, slots=True)
class Rendered:
    """A run of findings as the jsonl report needs them: their lines, already written and
    joined, and each line's action (its index in ``ACTIONS``), for ``--only`` and
    ``--fail-on``.  A worker hands back a whole batch as one run, which the parent writes
    as it is: the parent shares the cores with the workers (issue 11)."""

    actions: bytes
    text: str

    def each(self) -> Iterator[tuple[Action, str]]:
        """Each line with its action.  Split on "\\n" alone: a JSON line holds none but its
        last (JSON escapes it), while ``splitlines`` would also cut at U+2028, which it may."""
        for i, text in zip(self.actions, self.text.split("\n"), strict=False):
            yield ACTIONS[i], text + "\n"

    def severity(self) -> int:
        """The most severe action in the run."""
        return max((ACTIONS[i].severity for i in set(self.actions)), default=-1)


@dataclass(frozen=True, slots=True)
class FilePart:
    """The end of one file a worker rendered: its summary, the days judged at, its
    latest sighting's time, and where the (client, app) observations its summary could
    not hold were spilled (marshalled batches, in order), for the parent to count."""

    summary: Summary
    dates: frozenset[dt.date]
    latest: float | None
    spill: str | None

    def spilled(self) -> Iterator[tuple[str, str, bool]]:
        if self.spill is None:
            return
        try:
            with open(self.spill, "rb") as f:
                while True:
                    try:
                        batch = marshal.load(f)
                    except EOFError:
                        return
                    yield from batch
        finally:
            os.unlink(self.spill)


Spooled = Sighting | Damage | str | Finding | Rendered | FilePart
ACTIONS = tuple(Action)  # a Rendered's actions are held as their indices here
ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}
# Set in the parent just before the pool forks, so each worker inherits the policy views and
# their caches instead of unpickling them per file.
_JOB: Job | None = None
_FORKS = sys.platform == "linux"


def _read_to_file(args: tuple[str, frozenset[int], Limits, str, bool]) -> str:
    """In a worker process: read one input and spool its items, in batches, to a file the
    parent streams back in order; memory stays that of one batch.  Three ways, by ``_JOB``:
    - none (not forked): rows of sightings, marshalled, for the parent to judge;
    - ``judge`` alone: each sighting with the index of its decision in the file's table
      (each distinct decision pickled once, in the batch that first needs it);
    - ``judge`` and ``render``: each finding's action and line, the file counted into a
      ``Summary`` of its own, spooled last as a ``FilePart``."""
    path, dns_ports, limits, spool, judged = args
    job = _JOB if judged else None
    if job is not None and job.render is not None:
        return _render_to_file(job, path, dns_ports, limits, spool)
    index: dict[int, int] = {}  # id(decision) → its place in the table; ``table`` keeps it alive
    table: list[Decision] = []
    with open(spool, "wb") as out:
        batch: list[Any] = []
        new: list[Decision] = []
        for item in read_input(path, dns_ports, limits):
            if job is None or not isinstance(item, Sighting):
                batch.append(_row(item))
            else:
                d = job.judge(item)
                at = index.get(id(d))
                if at is None:
                    at = index[id(d)] = len(table)
                    table.append(d)
                    new.append(d)
                batch.append((_row(item), at))
            if len(batch) >= BATCH:
                _spool(out, batch, new, job is not None)
                batch, new = [], []
        _spool(out, batch, new, job is not None)
    return spool


def _render_to_file(job: Job, path: str, dns_ports: frozenset[int], limits: Limits, spool: str) -> str:
    assert job.render is not None
    spill_path = spool + ".clients"
    spill: list[tuple[str, str, bool]] = []
    spill_file: IO[bytes] | None = None

    def spilled(client: str, app: str, blocked: bool) -> None:
        nonlocal spill_file
        spill.append((client, app, blocked))
        if len(spill) >= BATCH:
            spill_file = spill_file or open(spill_path, "wb")
            marshal.dump(spill, spill_file)
            spill.clear()

    summary = Summary(spill=spilled)
    latest: float | None = None
    render, judge, add = job.render, job.judge, summary.add
    with open(spool, "wb") as out:
        batch: list[Any] = []  # rows, and runs of rendered lines as (actions, text)
        actions = bytearray()
        texts: list[str] = []

        def run() -> None:  # the lines so far, as one run, before the next row or the dump
            if texts:
                batch.append((bytes(actions), "".join(texts)))
                actions.clear()
                texts.clear()

        pending = 0
        for item in read_input(path, dns_ports, limits):
            if isinstance(item, Sighting):
                finding = Finding(item, judge(item))
                add(finding)
                if latest is None or item.time >= latest:
                    latest = item.time
                actions.append(ACTION_INDEX[finding.decision.action])
                texts.append(render(finding))
            else:
                run()
                batch.append(_row(item))
            pending += 1
            if pending >= BATCH:
                run()
                pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
                batch, pending = [], 0
        run()
        pickle.dump(batch, out, protocol=pickle.HIGHEST_PROTOCOL)
        if spill:
            spill_file = spill_file or open(spill_path, "wb")
            marshal.dump(spill, spill_file)
        if spill_file is not None:
            spill_file.close()
        summary.spill = None  # a closure: not for pickling, and the parent counts the spill
        part = FilePart(summary, frozenset(job.dates), latest, spill_path if spill_file else None)
        pickle.dump(part, out, protocol=pickle.HIGHEST_PROTOCOL)
    return spool


def _spool(out: IO[bytes], batch: list[Any], new: list[Decision], judged: bool) -> None:
    # Rows alone go by marshal (a fifth of pickle's cost); decisions need pickle.
    if judged:
        pickle.dump((new, batch), out, protocol=pickle.HIGHEST_PROTOCOL)
    else:
        marshal.dump(batch, out)


def _spooled(spool: str, mode: str) -> Iterator[Spooled]:
    """A spool streamed back: ``mode`` is ``read``, ``judge`` or ``render``, as it was written.
    (Only our own worker's spools, in our own temporary directory, are unpickled.)"""
    table: list[Decision] = []
    try:
        with open(spool, "rb") as f:
            while True:
                try:
                    if mode == "read":
                        for row in marshal.load(f):
                            yield _item(row)
                        continue
                    record = pickle.load(f)
                except EOFError:
                    return
                if mode == "render":
                    if isinstance(record, FilePart):
                        yield record
                        continue
                    for entry in record:
                        if isinstance(entry, tuple) and len(entry) == 2:
                            yield Rendered(*entry)
                        else:
                            yield _item(entry)
                    continue
                new, batch = record
                table += new
                for entry in batch:
                    if isinstance(entry, tuple) and len(entry) == 2:
                        sighting = _item(entry[0])
                        assert isinstance(sighting, Sighting)
                        yield Finding(sighting, table[entry[1]])
                    else:
                        yield _item(entry)
    finally:
        os.unlink(spool)


def read_parallel(
    paths: list[str], jobs: int, dns_ports: frozenset[int], limits: Limits, job: Job | None = None
) -> Iterator[tuple[str, Iterator[Spooled]]]:
    """Each input read (and, given ``job`` and forked workers, judged) in one of ``jobs``
    worker processes, handed back in input order."""
    global _JOB
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    # Imported once here, before the fork, rather than once in every worker: the readers,
    # their parsers and ``quic`` (which the first QUIC Initial would import).
    from . import capture, flows, logs, quic, wire

    _ = (capture, flows, logs, quic, wire)
    judged = job is not None and _FORKS
    mode = "read" if not judged or job is None else "judge" if job.render is None else "render"
    with tempfile.TemporaryDirectory(prefix="egress-replay-") as spool_dir:
        # fork: the workers start with replay and its readers imported, in milliseconds.
        context = multiprocessing.get_context("fork" if _FORKS else "spawn")
        _JOB = job if judged else None
        try:
            with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
                futures = [
                    pool.submit(_read_to_file,
                                (p, dns_ports, limits, os.path.join(spool_dir, f"{i}.spool"), judged))
                    for i, p in enumerate(paths)
                ]
                try:
                    for path, future in zip(paths, futures, strict=True):
                        try:
                            spool = future.result()
                        except BrokenProcessPool:
                            yield path, iter([Damage(path, 0, "the process reading it died; stopped here")])
                            continue
                        yield path, _spooled(spool, mode)
                finally:
                    for future in futures:
                        future.cancel()
        finally:
            _JOB = None


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
