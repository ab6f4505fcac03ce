"""``egress-filter replay --format sqlite --output FILE``: a replay's events in the store's schema.

The replay hands over its event dicts (the same ``build_event`` output as
``--format jsonl``); they are inserted in large transactions on the calling
thread (a replay has no answer path to protect), so the file opens in the
same dashboard as a live store: ``egress-filter dashboard --db FILE``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from .db import COLUMNS, connect, row_of

BATCH = 10_000


def write_sqlite(events: Iterable[dict[str, Any]], path: str) -> int:
    """Insert every event into the store at ``path`` (created, or appended to); returns the count."""
    if os.path.exists(path) and os.path.getsize(path) == 0:
        os.unlink(path)  # the CLI opened --output as text: an empty file, not a database yet
    conn = connect(path)
    sql = f"INSERT INTO events ({','.join(COLUMNS)}) VALUES ({','.join('?' * len(COLUMNS))})"
    n = 0
    batch: list[tuple[Any, ...]] = []
    try:
        for ev in events:
            batch.append(row_of(ev))
            if len(batch) >= BATCH:
                n += _insert(conn, sql, batch)
        n += _insert(conn, sql, batch)
    finally:
        conn.close()
    return n


def _insert(conn: Any, sql: str, batch: list[tuple[Any, ...]]) -> int:
    if not batch:
        return 0
    with conn:
        conn.execute("BEGIN")
        conn.executemany(sql, batch)
    n = len(batch)
    batch.clear()
    return n
