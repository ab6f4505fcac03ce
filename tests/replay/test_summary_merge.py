"""``Summary.merge``: summaries counted per file (in ``--jobs`` workers) and merged
in input order equal the one summary ``add`` builds over the same findings in
turn, in every field: counts, first and last times, the series (whatever
coarsening either side went through) and the (client, app) pairs kept, counted
and dropped, with the pairs a full worker summary spills counted after it.

Each case is a seeded stream of findings cut into files; the oracle is
``add`` over the whole stream."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass

import pytest

import replay.summary as summary_mod
from policies import Action, Decision, Kind, Phase
from replay import Finding, Sighting, Summary

DECISIONS = [
    Decision(Action.ALLOW),
    Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "full"),
    Decision(Action.LOG, ("wechat", "wechat_pay"), Phase.DOWNLOADS, "sni:*.wechat.com", "downloads"),
    Decision(Action.BLOCK, ("wechat",), Phase.FULL, "domain:wechat.com", "full"),
]


@dataclass(frozen=True)
class Case:
    id: str
    findings: int
    files: int
    clients: int
    spread: float  # seconds the times spread over
    max_buckets: int = 2048
    max_pairs: int = summary_mod.MAX_CLIENT_APPS
    backwards: bool = False  # later files earlier in time
    disjoint: bool = False  # each file has clients of its own


CASES = [
    Case("one-file", 200, 1, 5, 60.0),
    Case("many-files", 2_000, 7, 20, 600.0),
    Case("coarsened-unevenly", 3_000, 5, 10, 86_400.0, max_buckets=16),
    Case("sparse-series", 500, 4, 3, 10_000_000.0, max_buckets=8),
    # Far apart: one doubling leaves as many buckets, so it takes several.
    Case("sparse-series-few", 12, 2, 3, 1e9, max_buckets=4),
    Case("later-files-earlier", 1_500, 6, 10, 3_600.0, max_buckets=32, backwards=True),
    Case("pairs-overflow-in-each-file", 2_000, 5, 400, 60.0, max_pairs=50),
    Case("pairs-fill-across-files", 2_000, 8, 15, 60.0, max_pairs=100, disjoint=True),
    Case("no-clients", 300, 3, 0, 60.0),
]


def _stream(case: Case) -> list[list[Finding]]:
    rng = random.Random(case.id)
    per_file = case.findings // case.files
    files = []
    for i in range(case.files):
        start = 1.6e9 + (case.files - i if case.backwards else i) * case.spread / case.files
        batch = []
        for _ in range(per_file):
            t = 0.0 if rng.random() < 0.01 else start + rng.random() * case.spread / case.files
            c = rng.randrange(max(1, case.clients)) + (i * case.clients if case.disjoint else 0)
            client = f"10.0.{c // 256}.{c % 256}" if case.clients else None
            kind = rng.choice([Kind.DNS, Kind.SNI, Kind.HTTP])
            sighting = Sighting(t, kind, "www.tiktok.com", client, ech=rng.random() < 0.05)
            batch.append(Finding(sighting, rng.choice(DECISIONS)))
        files.append(batch)
    return files


def _spill(into: list[tuple[str, str, bool]], client: str, app: str, blocked: bool) -> None:
    into.append((client, app, blocked))


def _fields(s: Summary) -> dict[str, object]:
    return {
        "total": s.total,
        "actions": s.actions,
        "kinds": list(s.kinds.items()),  # order too: reports list kinds as first seen
        "apps": [(a, vars(c)) for a, c in s.apps.items()],
        "width": s.width,
        "series": s.series,
        "first": s.first,
        "last": s.last,
        "ech": s.ech,
        "clients": list(s.clients.items()),
        "clients_dropped": s.clients_dropped,
    }


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_merged_per_file_summaries_equal_one_summary(case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(summary_mod, "MAX_CLIENT_APPS", case.max_pairs)
    files = _stream(case)
    one = Summary(case.max_buckets)
    for batch in files:
        for f in batch:
            one.add(f)
    merged = Summary(case.max_buckets)
    for batch in files:
        spilled: list[tuple[str, str, bool]] = []
        part = Summary(case.max_buckets, spill=functools.partial(_spill, spilled))
        for f in batch:
            part.add(f)
        merged.merge(part)
        for client, app, blocked in spilled:
            merged.client(client, app, blocked)
    assert _fields(merged) == _fields(one)
    assert len(one.series) <= case.max_buckets
    if case.max_pairs < summary_mod.MAX_CLIENT_APPS:
        assert one.clients_dropped > 0  # the case reaches the bound it is about
    if case.max_buckets < 2048:
        assert one.width > 1.0
