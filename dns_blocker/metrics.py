"""Prometheus metrics for the resolver (prometheus-client), or nothing at all.

The resolver calls the same methods either way; ``NullMetrics`` makes them
free when ``--metrics`` is off.  Labelled children are resolved once and
kept, so the hot path pays one ``inc()`` per query.
"""

from __future__ import annotations

import os
from typing import Any

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


class NullMetrics:
    def query(self, result: str) -> None:
        pass

    def decision(self, apps: tuple[str, ...], action: str) -> None:
        pass

    def cache(self, hit: bool) -> None:
        pass

    def upstream(self, upstream: str, seconds: float | None, error: str | None) -> None:
        pass

    def rejected(self, reason: str, n: int) -> None:
        pass

    def flushed(self, reason: str) -> None:
        pass

    def cache_size(self, n: int) -> None:
        pass

    def client(self, name: str) -> None:
        pass


class PromMetrics(NullMetrics):
    """``egress_dns_*`` metrics in their own registry, served over HTTP."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self._queries = Counter("egress_dns_queries", "Queries answered, by result (allow, log, block, "
                                "canary, local, refused, formerr, notimp, servfail, dropped)",
                                ["result"], registry=r)
        self._decisions = Counter("egress_dns_decisions", "Blocks and logs per app and action",
                                  ["app", "action"], registry=r)
        self._cache = Counter("egress_dns_cache_lookups", "Answer-cache lookups", ["outcome"], registry=r)
        self._upstream_seconds = Histogram(
            "egress_dns_upstream_seconds", "Upstream answer latency", ["upstream"], registry=r,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0))
        self._upstream_errors = Counter("egress_dns_upstream_errors", "Upstream failures",
                                        ["upstream", "reason"], registry=r)
        self._rejected = Counter("egress_dns_upstream_rejected", "Upstream datagrams dropped (address, port, "
                                 "id, question, case) and records scrubbed from answers (scrubbed-SECTION)",
                                 ["reason"], registry=r)
        self._flushes = Counter("egress_dns_cache_flushes", "Cache flushes, by cause", ["reason"], registry=r)
        self._size = Gauge("egress_dns_cache_entries", "Entries in the answer cache", registry=r,
                           multiprocess_mode="livesum")
        self._clients = Counter("egress_dns_client_queries", "Queries per client name (settings.dns."
                                "client_name_metrics; 'unknown' for clients without a name)", ["client"],
                                registry=r)
        self._children: dict[Any, Any] = {}
        self._hit = self._cache.labels("hit")
        self._miss = self._cache.labels("miss")

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def query(self, result: str) -> None:
        self._child(self._queries, result).inc()

    def decision(self, apps: tuple[str, ...], action: str) -> None:
        for app in apps or ("-",):
            self._child(self._decisions, app, action).inc()

    def cache(self, hit: bool) -> None:
        (self._hit if hit else self._miss).inc()

    def upstream(self, upstream: str, seconds: float | None, error: str | None) -> None:
        if error is not None:
            self._child(self._upstream_errors, upstream, error).inc()
        elif seconds is not None:
            self._child(self._upstream_seconds, upstream).observe(seconds)

    def rejected(self, reason: str, n: int) -> None:
        self._child(self._rejected, reason).inc(n)

    def flushed(self, reason: str) -> None:
        self._child(self._flushes, reason).inc()

    def cache_size(self, n: int) -> None:
        self._size.set(n)

    def client(self, name: str) -> None:
        self._child(self._clients, name).inc()

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint on a daemon thread; returns the bound port.

        With workers, ``PROMETHEUS_MULTIPROC_DIR`` is set before any process
        imports prometheus_client; every process then writes its values
        there and this endpoint sums them."""
        from prometheus_client import CollectorRegistry, start_http_server

        registry = self.registry
        if os.environ.get(MULTIPROC_ENV):
            from prometheus_client.multiprocess import MultiProcessCollector

            registry = CollectorRegistry()
            MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        server, _thread = start_http_server(port, addr=host, registry=registry)
        return int(server.server_port)
