"""The event store: every event the DNS resolver, the proxy or a replay emits, in SQLite.

Data flow: an adapter builds an event dict (``policies.events.build_event``)
and hands it to ``EventLog.emit``; the event log passes the same dict to
``Store.put`` (a bounded, non-blocking append); a feeder thread pipes what has
piled up, as JSON lines, to the writer process (``store/writer.py``), which
inserts it in batches, in WAL mode, off every answer path and off the
server's interpreter lock.
The dashboard (``egress_filter.dashboard``) only reads.  See docs/dashboard.md.
"""

from .db import DEFAULT_PATH, Retention, Store, StoreStats, open_reader, row_of

__all__ = ["DEFAULT_PATH", "Retention", "Store", "StoreStats", "open_reader", "row_of"]
