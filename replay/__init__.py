"""Offline replay: judge packet captures, mitmproxy flow files and sensor logs
with the shared policy, the way the live adapters would have.

    inputs ──readers──▶ Sighting ──PolicyView──▶ Finding ──report──▶ table/json/jsonl/html
    (capture: pcap/pcapng; flows: .mitm; logs: Zeek, Suricata EVE)

``Replay(paths, view)`` streams verdicts; ``Summary`` folds them per app.
This package never imports ``dns_blocker`` or ``proxy_addons``.
"""

from .engine import Replay
from .model import Damage, Finding, Sighting
from .summary import Summary

__all__ = ["Damage", "Finding", "Replay", "Sighting", "Summary"]
