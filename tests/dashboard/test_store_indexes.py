"""The store's indexes: each one the schema keeps is one some dashboard query's plan uses
(every index costs the writer an insert per event, so an unused one is pure cost), and a
store made with an index we no longer keep loses it when it is next opened.

The queries are the dashboard's own (``store.query.events`` for the filters the events
page offers, and ``summary``), captured with SQLite's trace hook on a small real store
and run through ``EXPLAIN QUERY PLAN``."""

from __future__ import annotations

import re
import sqlite3
import time
from pathlib import Path

import pytest

from policies import Action, Decision, Observation, Phase
from policies.events import build_event
from store import query as q
from store.db import connect, row_of
from store.writer import INSERT

NOW = time.time()
FILTERS = [
    pytest.param(q.Filters(), id="newest"),
    pytest.param(q.Filters(app="app3"), id="app"),
    pytest.param(q.Filters(app="app3", action="log"), id="app-action"),
    pytest.param(q.Filters(action="log"), id="action"),
    pytest.param(q.Filters(client="10.0.0.7"), id="client"),
    pytest.param(q.Filters(client="10.0.0.7", app="app3"), id="client-app"),
    pytest.param(q.Filters(q="n12", since=int((NOW - 86400) * 1000)), id="name-search"),
    pytest.param(q.Filters(since=int((NOW - 3 * 86400) * 1000), until=int((NOW - 2 * 86400) * 1000)),
                 id="window"),
    pytest.param(q.Filters(app="app3", cursor=500), id="cursor"),
]


def _store(path: Path) -> sqlite3.Connection:
    conn = connect(str(path))
    rows = []
    for i in range(2_000):
        action = Action.LOG if i % 10 == 0 else Action.BLOCK
        d = Decision(action, (f"app{i % 20}",), Phase.FULL, f"domain:app{i % 20}.example", "test")
        obs = Observation.dns(f"n{i}.app{i % 20}.example", f"10.0.0.{i % 50}")
        rows.append(row_of(build_event(d, obs, "dns", timestamp=NOW - (2_000 - i) * 300)))
    with conn:
        conn.executemany(INSERT, rows)
    return conn


def _plans(conn: sqlite3.Connection) -> dict[str, set[str]]:
    """Each captured SELECT → the indexes its plan uses."""
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    for p in FILTERS:
        f = p.values[0]
        assert isinstance(f, q.Filters)
        q.events(conn, f)
    q.summary(conn, "day", NOW)
    conn.set_trace_callback(None)
    plans: dict[str, set[str]] = {}
    for sql in seen:
        if sql.lstrip().upper().startswith("SELECT"):
            detail = " ".join(r[-1] for r in conn.execute("EXPLAIN QUERY PLAN " + sql))
            plans[sql] = set(re.findall(r"INDEX (events_\w+)", detail))
    return plans


def test_every_index_serves_a_query(tmp_path: Path) -> None:
    conn = _store(tmp_path / "s.db")
    kept = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                       "AND name LIKE 'events_%'")}
    used: set[str] = set().union(*_plans(conn).values())
    assert kept, "the schema keeps no index"
    assert kept <= used, f"indexes no query uses: {sorted(kept - used)}"


def test_a_store_from_before_loses_the_name_index(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = _store(path)
    conn.execute("CREATE INDEX events_name ON events (egress_value)")  # as stores before 2026-12-03 had
    conn.close()
    conn = connect(str(path))
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "events_name" not in names
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == 2_000
