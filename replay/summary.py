"""Verdicts → bounded counts: per app, per kind and action, per (client, app), and a
per-app time series of blocked and logged verdicts.

``Summary.add`` folds in one finding.  ``Summary.merge`` folds in another
summary counted over later input on its own (a worker's, with ``--jobs``), and
the result is the summary ``add`` would have built over both in turn: every
count is a sum; the series' width depends only on the set of sightings (it
doubles until the buckets fit, whatever the order); and the (client, app)
pairs past ``MAX_CLIENT_APPS`` that a worker cannot place go to ``spill``,
in order, for the parent to count after the file's own pairs, as one
summary would have.  Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from policies import Action

from .model import Finding


@dataclass
class AppCount:
    observations: int = 0
    blocked: int = 0
    logged: int = 0
    first: float | None = None
    last: float | None = None
    phases: set[str] = field(default_factory=set)  # the app's phases when it was seen (at most 3)


MAX_CLIENT_APPS = 10_000  # (client, app) pairs counted for the per-client summary; the rest are dropped


class Summary:
    """Counts per app and a per-app time series of blocked/logged verdicts.

    The series starts at one-second buckets and doubles the bucket width
    until it fits in ``max_buckets`` again whenever it grows past, so memory
    stays bounded and the width is the narrowest that fits the sightings.
    ``spill``: where the (client, app) observations that no longer fit go,
    instead of ``clients_dropped`` (a worker's summary: its parent counts them).
    """

    def __init__(
        self, max_buckets: int = 2048, spill: Callable[[str, str, bool], None] | None = None
    ) -> None:
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
        self.clients: dict[tuple[str, str], list[int]] = {}  # (client, app) → [observations, blocked]
        self.clients_dropped = 0  # observations of pairs past MAX_CLIENT_APPS
        self.spill = spill

    def add(self, v: Finding) -> None:
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
            c.phases.add(d.phase.value)
            if s.client:
                self.client(s.client, app, d.action is Action.BLOCK)
            if d.action is not Action.ALLOW:
                key = (int(t // self.width), app, d.action)
                self.series[key] = self.series.get(key, 0) + 1
                # Until it fits, not once: a sparse series can stay past the bound after one
                # doubling, and the width must not depend on the order of the sightings.
                while len(self.series) > self.max_buckets:
                    self._coarsen()

    def client(self, client: str, app: str, blocked: bool, n: int = 1, n_blocked: int | None = None) -> None:
        """``n`` observations of ``app`` by ``client`` (``n_blocked`` of them blocked; all or
        none, per ``blocked``, when not given)."""
        pair = self.clients.get((client, app))
        if pair is None:
            if len(self.clients) >= MAX_CLIENT_APPS:
                if self.spill is not None:
                    for _ in range(n):
                        self.spill(client, app, blocked)
                else:
                    self.clients_dropped += n
                return
            pair = self.clients[(client, app)] = [0, 0]
        pair[0] += n
        pair[1] += (n if blocked else 0) if n_blocked is None else n_blocked

    def merge(self, other: Summary) -> None:
        """Fold in ``other``, a summary of verdicts that came after ours, counted on its own.
        (Its spilled pairs, if any, are counted after this, with ``client``, in order.)"""
        self.total += other.total
        for action, n in other.actions.items():
            self.actions[action] += n
        for kind, n in other.kinds.items():
            self.kinds[kind] = self.kinds.get(kind, 0) + n
        self.ech += other.ech
        self.first = _least(self.first, other.first)
        self.last = _most(self.last, other.last)
        for app, c in other.apps.items():
            mine = self.apps.get(app)
            if mine is None:
                mine = self.apps[app] = AppCount()
            mine.observations += c.observations
            mine.blocked += c.blocked
            mine.logged += c.logged
            mine.first = _least(mine.first, c.first)
            mine.last = _most(mine.last, c.last)
            mine.phases |= c.phases
        # Both series at the wider of the two widths (powers of two), summed, then narrowed
        # to fit: the width the sightings of both would have given in one summary.
        while self.width < other.width:
            self._coarsen()
        factor = int(self.width // other.width)
        for (bucket, app, action), n in other.series.items():
            key = (bucket // factor, app, action)
            self.series[key] = self.series.get(key, 0) + n
        while len(self.series) > self.max_buckets:
            self._coarsen()
        # Pairs in the order other first saw them: those that fit here are the ones one
        # summary would have kept (every pair other kept was first seen before any it spilled).
        for (client, app), (n, blocked) in other.clients.items():
            self.client(client, app, False, n, blocked)
        self.clients_dropped += other.clients_dropped

    def _coarsen(self) -> None:
        self.width *= 2
        merged: dict[tuple[int, str, Action], int] = {}
        for (bucket, app, action), n in self.series.items():
            key = (bucket // 2, app, action)
            merged[key] = merged.get(key, 0) + n
        self.series = merged


def _least(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)


def _most(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)
