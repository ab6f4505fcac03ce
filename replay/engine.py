"""Inputs → sightings → decisions → verdicts, streaming.

``Replay(paths, view)`` opens each input, picks its reader by content (pcap,
pcapng, mitmproxy flows, Zeek TSV, JSON lines from Zeek or Suricata; any of
them gzip-compressed), and yields one ``Verdict`` per sighting, judged by the
same ``PolicyView.decide`` the live adapters use (``decide_name`` for DNS
names and SNIs, ``decide_http`` for requests, ``decide_ip`` for nameless TLS).
With ``by_date`` each sighting is judged with the policy of the day it was
seen.  Damage (truncated files, bad records) is collected in ``Replay.damage``;
a reader stops at the damage and everything before it has been yielded.  Each
reader holds at most ``Limits`` of one record; whatever still escapes a reader
(a read error, a corrupt gzip stream, running out of memory, a reader bug)
becomes a ``Damage`` that stops that input, never a traceback.
``Summary`` folds verdicts into bounded per-app counters and a time series.
"""

from __future__ import annotations

import datetime as dt
import functools
import gzip
import os
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, BinaryIO

from policies import Action, PolicyView

from .model import DEFAULT_LIMITS, Damage, Limits, Sighting, Verdict

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
    """A one-line bar on stderr, only on a terminal and only for large inputs."""

    def __init__(self, total: int, stream: IO[str] | None = None, min_size: int = 8 << 20) -> None:
        self.stream = stream or sys.stderr
        self.total = total
        self.done = 0
        self.enabled = total >= min_size and self.stream.isatty()
        self.last = -1

    def update(self, position: int) -> None:
        if not self.enabled:
            return
        pct = min(100, (self.done + position) * 100 // max(1, self.total))
        if pct != self.last:
            self.last = pct
            bar = "#" * (pct // 4)
            self.stream.write(f"\rreplay [{bar:<25}] {pct:3d}%")
            self.stream.flush()

    def file_done(self, size: int) -> None:
        self.done += size
        self.update(0)

    def close(self) -> None:
        if self.enabled and self.last >= 0:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()


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
    dns_ports: frozenset[int] = frozenset({53})
    by_date: bool = False
    limits: Limits = DEFAULT_LIMITS
    damage: list[Damage] = field(default_factory=list)
    inputs: list[tuple[str, str]] = field(default_factory=list)  # (path, format)
    dates: set[dt.date] = field(default_factory=set)  # the days sightings were judged at
    last_view: PolicyView | None = None  # the view of the latest sighting
    group: str | None = None  # ``--group``: judge every client as a member of this group

    def __iter__(self) -> Iterator[Verdict]:
        paths = list(self.paths)
        sizes = {p: _size(p) for p in paths}
        bar = ProgressBar(sum(sizes.values())) if self.progress else None
        view_at = self._dated() if self.by_date else None
        view = self.last_view = self.view
        latest = float("-inf")
        try:
            for path in paths:
                for item in self._read(path, bar):
                    if isinstance(item, Damage):
                        self.damage.append(item)
                        continue
                    if view_at is not None:
                        view = view_at(item.time)
                        if item.time >= latest:
                            latest, self.last_view = item.time, view
                    obs = item.observation()
                    # Each client is judged with its own group's view, unless --group forces one.
                    judge = view.groups[self.group] if self.group is not None else view.group(obs.client)
                    yield Verdict(item, judge.decide(obs))
                if bar:
                    bar.file_done(sizes[path])
        finally:
            if bar:
                bar.close()
        if view_at is None:
            self.dates = {self.view.at}

    def _dated(self) -> Callable[[float], PolicyView]:
        template = self.view
        policy = template.policy
        by_day: dict[dt.date, PolicyView] = {}
        by_slot: dict[int, PolicyView] = {}  # 15-minute slots: every UTC offset in use is a multiple

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
                if len(by_slot) > 100_000:
                    by_slot.clear()
                by_slot[slot] = v
            return v

        return view_at

    def _read(self, path: str, bar: ProgressBar | None) -> Iterator[Sighting | Damage]:
        try:
            raw = open(path, "rb")
        except OSError as exc:
            yield Damage(path, 0, f"cannot open: {exc.strerror or exc}")
            return
        try:
            tick = (lambda: bar.update(raw.tell())) if bar and bar.enabled else None
            fh: BinaryIO = raw
            head = raw.read(16)
            raw.seek(0)
            if head[:2] == b"\x1f\x8b":
                fh = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
                try:
                    head = fh.read(16)
                    fh.seek(0)
                except (OSError, EOFError, zlib.error) as exc:
                    yield Damage(path, 0, f"unreadable gzip data: {exc}")
                    return
            picked = pick_reader(head, self.dns_ports, self.limits)
            if picked is None:
                yield Damage(path, 0, "not a pcap, pcapng, mitmproxy flow file, Zeek log or Suricata EVE log")
                return
            fmt, reader = picked
            self.inputs.append((path, fmt))
            try:
                yield from reader(path, fh, tick)
            except (OSError, EOFError) as exc:  # gzip stream cut short, disk errors
                yield Damage(path, 0, f"read error: {exc}; stopped here")
            except zlib.error as exc:
                yield Damage(path, 0, f"unreadable gzip data: {exc}; stopped here")
            except MemoryError:
                # The readers hold at most ``limits`` per record, so this is the machine
                # running short, not a policy problem: a warning and exit code 4, no traceback.
                yield Damage(path, 0, "out of memory while reading; stopped here")
            except Exception as exc:  # a reader bug must not lose the verdicts so far
                yield Damage(path, 0, f"internal error while reading ({type(exc).__name__}); stopped here")
        finally:
            raw.close()


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


# --- summary ---------------------------------------------------------------


@dataclass
class AppCount:
    observations: int = 0
    blocked: int = 0
    logged: int = 0
    first: float | None = None
    last: float | None = None


class Summary:
    """Counts per app and a per-app time series of blocked/logged verdicts.

    The series starts at one-second buckets and doubles the bucket width
    whenever it grows past ``max_buckets``, so memory stays bounded.
    """

    def __init__(self, max_buckets: int = 2048) -> None:
        self.apps: dict[str, AppCount] = {}
        self.total = 0
        self.actions = {a: 0 for a in Action}
        self.kinds: dict[str, int] = {}
        self.width = 1.0
        self.max_buckets = max_buckets
        self.series: dict[tuple[int, str, Action], int] = {}
        self.first: float | None = None
        self.last: float | None = None
        self.ech = 0

    def add(self, v: Verdict) -> None:
        s, d = v.sighting, v.decision
        self.total += 1
        self.actions[d.action] += 1
        self.kinds[s.kind.value] = self.kinds.get(s.kind.value, 0) + 1
        if s.ech:
            self.ech += 1
        t = s.time
        if t:
            self.first = t if self.first is None or t < self.first else self.first
            self.last = t if self.last is None or t > self.last else self.last
        for app in d.apps:
            c = self.apps.get(app)
            if c is None:
                c = self.apps[app] = AppCount()
            c.observations += 1
            if d.action is Action.BLOCK:
                c.blocked += 1
            elif d.action is Action.LOG:
                c.logged += 1
            c.first = t if c.first is None or t < c.first else c.first
            c.last = t if c.last is None or t > c.last else c.last
            if d.action is not Action.ALLOW:
                key = (int(t // self.width), app, d.action)
                self.series[key] = self.series.get(key, 0) + 1
                if len(self.series) > self.max_buckets:
                    self._coarsen()

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[tuple[int, str, Action], int] = {}
        for (bucket, app, action), n in self.series.items():
            key = (bucket // 2, app, action)
            merged[key] = merged.get(key, 0) + n
        self.series = merged
