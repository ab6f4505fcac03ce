"""Bounded reads for the dashboard and its API: filters → SQL with parameters, never string-built values.

Every query is paginated (``limit`` at most ``db.MAX_LIMIT``; ``cursor`` is
the last row id seen, newest first) and interrupted after
``db.QUERY_SECONDS`` by SQLite's progress handler, so one heavy request
cannot hold a dashboard thread.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from .db import MAX_LIMIT, QUERY_SECONDS

RANGES = {"hour": (3600, 60), "day": (86400, 3600), "week": (7 * 86400, 6 * 3600),
          "30d": (30 * 86400, 86400)}  # span, bucket (seconds)


class QueryError(ValueError):
    """A bad filter value (shown to the user as a 400)."""


@dataclass(frozen=True, slots=True)
class Filters:
    app: str | None = None
    action: str | None = None
    client: str | None = None
    group: str | None = None
    kind: str | None = None
    q: str | None = None
    since: int | None = None  # epoch ms
    until: int | None = None
    limit: int = 100
    cursor: int | None = None  # newest-first: rows with id < cursor
    after: int | None = None  # live tail: rows with id > after


def parse_time(text: str | None) -> int | None:
    """Epoch seconds, or an ISO date/time (UTC if no zone) → epoch ms."""
    if not text:
        return None
    import datetime as dt

    try:
        return int(float(text) * 1000)
    except ValueError:
        pass
    try:
        d = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise QueryError(f"'{text}' is not a time (epoch seconds or ISO 8601)") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return int(d.timestamp() * 1000)


def filters_from(params: dict[str, str]) -> Filters:
    def num(name: str) -> int | None:
        v = params.get(name)
        if not v:
            return None
        if not v.isdigit():
            raise QueryError(f"{name}: '{v}' is not a number")
        return int(v)

    limit = num("limit") or 100
    return Filters(app=params.get("app") or None, action=params.get("action") or None,
                   client=params.get("client") or None, group=params.get("group") or None,
                   kind=params.get("kind") or None, q=(params.get("q") or None),
                   since=parse_time(params.get("since")), until=parse_time(params.get("until")),
                   limit=max(1, min(limit, MAX_LIMIT)), cursor=num("cursor"), after=num("after"))


class _Deadline:
    def __init__(self, conn: sqlite3.Connection, seconds: float):
        self.conn, self.end = conn, time.monotonic() + seconds

    def __enter__(self) -> None:
        self.conn.set_progress_handler(lambda: int(time.monotonic() > self.end), 10_000)

    def __exit__(self, *exc: object) -> None:
        self.conn.set_progress_handler(None, 0)


def _where(f: Filters) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    args: list[Any] = []
    for col, val in (("egress_app", f.app), ("event_action", f.action), ("source_ip", f.client),
                     ("egress_group", f.group), ("egress_kind", f.kind)):
        if val is not None:
            clauses.append(f"{col} = ?")
            args.append(val)
    if f.q:
        # instr, not LIKE: no wildcard characters to escape in what the user typed.
        clauses.append("instr(lower(egress_value), ?) > 0")
        args.append(f.q.lower())
    for op, ms in ((">=", f.since), ("<", f.until)):
        if ms is not None:
            clauses.append(f"timestamp {op} ?")
            args.append(ms)
    if f.since is not None and f.until is not None:
        # A window in the past: its rows' ids lie between the smallest and the largest id in it
        # (exact, whatever order rows were appended in); the time index finds both, so the
        # newest-first scan starts inside the window instead of at the newest row.
        window = "FROM events INDEXED BY events_time WHERE timestamp >= ? AND timestamp < ?"
        clauses.append(f"id BETWEEN coalesce((SELECT min(id) {window}), 0) "
                       f"AND coalesce((SELECT max(id) {window}), 0)")
        args += [f.since, f.until, f.since, f.until]
    elif f.q and f.since is not None:
        # A substring search scans rows newest first; the rows since ``since`` all have an id at
        # least the smallest id among them (exact, even for replayed old events appended later),
        # and the time index finds that id, so the scan stops there instead of at the first row.
        clauses.append("id >= coalesce((SELECT min(id) FROM events INDEXED BY events_time "
                       "WHERE timestamp >= ?), 0)")
        args.append(f.since)
    if f.cursor is not None:
        clauses.append("id < ?")
        args.append(f.cursor)
    if f.after is not None:
        clauses.append("id > ?")
        args.append(f.after)
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", args


def events(conn: sqlite3.Connection, f: Filters) -> dict[str, Any]:
    """A page of events, newest first; ``next`` is the cursor for the page after (None: the last)."""
    where, args = _where(f)
    sql = f"SELECT id, doc FROM events{where} ORDER BY id DESC LIMIT ?"
    try:
        with _Deadline(conn, QUERY_SECONDS):
            rows = conn.execute(sql, [*args, f.limit + 1]).fetchall()
    except sqlite3.OperationalError as exc:
        raise QueryError(f"the query took longer than {QUERY_SECONDS:g} s; "
                         "narrow it (since/until, app)") from exc
    more = len(rows) > f.limit
    rows = rows[:f.limit]
    out = []
    for r in rows:
        ev = json.loads(r[1])
        ev["_id"] = r[0]
        out.append(ev)
    return {"events": out, "next": rows[-1][0] if more and rows else None,
            "newest": rows[0][0] if rows else f.after}


def summary(conn: sqlite3.Connection, span: str = "day", now: float | None = None) -> dict[str, Any]:
    """Counts for the overview: per app and bucket (blocks and logs), top names, clients and apps."""
    if span not in RANGES:
        raise QueryError(f"range: '{span}' is not one of {', '.join(RANGES)}")
    seconds, bucket = RANGES[span]
    end = int((now if now is not None else time.time()) * 1000)
    start = end - seconds * 1000
    b = bucket * 1000
    with _Deadline(conn, QUERY_SECONDS * 2):
        series = conn.execute(
            "SELECT coalesce(egress_app, '-'), event_action, (timestamp - ?) / ? AS slot, count(*) "
            "FROM events WHERE timestamp >= ? AND event_action IN ('block', 'log') GROUP BY 1, 2, 3",
            (start, b, start)).fetchall()

        def top(col: str) -> list[dict[str, Any]]:
            return [{"value": r[0], "count": r[1]} for r in conn.execute(
                f"SELECT {col}, count(*) FROM events WHERE timestamp >= ? AND event_action = 'block' "
                f"AND {col} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC LIMIT 10", (start,))]

        tops = {"names": top("egress_value"), "clients": top("source_ip"), "apps": top("egress_app")}
        totals = dict(conn.execute("SELECT event_action, count(*) FROM events WHERE timestamp >= ? "
                                   "GROUP BY 1", (start,)).fetchall())
        dropped = conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
    slots = seconds // bucket
    per_app: dict[str, dict[str, list[int]]] = {}
    for app, action, slot, n in series:
        if 0 <= slot < slots:
            per_app.setdefault(app, {"block": [0] * slots, "log": [0] * slots})[action][slot] += n
    return {"range": span, "start": start, "end": end, "bucket_seconds": bucket,
            "series": [{"app": a, **v} for a, v in sorted(per_app.items())],
            "top": tops, "totals": totals, "dropped": int(dropped[0]) if dropped else 0}
