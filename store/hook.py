"""What the servers call: open the store named by ``--db``/``settings.*.db`` and expose its counters."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

from .db import Retention, Store


def retention(days: float, max_bytes: int) -> Retention:
    """``settings.*.db_days`` / ``db_max_bytes`` (0: no limit) as a ``Retention``."""
    return Retention(days=days or None, max_bytes=max_bytes or None)


def open_store(prog: str, path: str | None, max_queue: int, keep: Retention | None = None) -> Store | None:
    """The store at ``path`` (None: off).  A file that cannot be opened exits 1 at start-up."""
    if not path:
        return None
    try:
        return Store(path, max_queue=max_queue, retention=keep or Retention())
    except (sqlite3.Error, OSError) as exc:
        raise SystemExit(f"{prog}: cannot open the event store {path}: {exc}") from exc


def collector(store: Store, prefix: str) -> Any:
    """``<prefix>_store_events_written_total``, ``_dropped_total``, ``_write_errors_total``,
    ``_pruned_total`` and the ``_store_events_queued`` gauge."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _Collector:
        def collect(self) -> Iterator[Any]:
            s = store.stats()
            for name, value, doc in (
                ("store_events_written", s.written, "Events written to the SQLite event store"),
                ("store_events_dropped", s.dropped, "Events dropped: the store's queue was full"),
                ("store_events_write_errors", s.write_errors, "Events lost to failed store writes"),
                ("store_events_pruned", s.pruned, "Events deleted by retention"),
            ):
                yield CounterMetricFamily(f"{prefix}_{name}", doc, value=value)
            yield GaugeMetricFamily(f"{prefix}_store_events_queued", "Events waiting for the store",
                                    value=s.queued)

        def describe(self) -> Iterator[Any]:
            return iter(())

    return _Collector()
