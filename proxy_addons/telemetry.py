"""Telemetry: one event per block or log verdict, and the proxy's Prometheus metrics.

This addon comes after the deciding, bypass and block-page addons in the
chain, so it sees each verdict as it ended up: it writes the event
(``runtime.eventlog.EventLog``, the one event writer), counts it, and
leaves the verdict's plain summary in ``flow.metadata`` for mitmweb and
flow files.  It owns ``egress_log`` and ``egress_metrics``, both defaulting
to the policy's ``settings.proxy``, and the metrics registry that the
connection guard counts in too.
"""

from __future__ import annotations

import logging
import socket
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from mitmproxy import connection, ctx, dns, http, tls
from mitmproxy.proxy import server_hooks

from policies import DOH_RULE, Action, Phase, Policy, build_event
from policies.addresses import AddressError, is_ip, split_hostport
from runtime.eventlog import EventLog, metrics_collector

from .bypass import ECH_STRIPPED
from .decisions import PolicyDecisions, options_error
from .verdict import KEY, Verdict, flow_verdict

log = logging.getLogger(__name__)

MAX_PENDING = 10_000  # requests awaiting their response for the access log, at most
MAX_USER_AGENT = 512  # characters of a User-Agent kept in an event

# The ClientHello's outcome, as egress_proxy_tls_connections_total{outcome} names it.
CONNECTION_OUTCOMES = {"451": "page", "closed": "closed", "intercepted": "intercepted",
                       "passthrough": "passthrough", "quic-refused": "quic_fallback"}


class Metrics:
    """Prometheus counters, in a registry of their own so that two addons
    (or two tests) in one process never collide."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge

        self.registry = CollectorRegistry(auto_describe=True)
        self.decisions = Counter("egress_proxy_decisions", "Block and log decisions, by observation kind",
                                 ["kind", "action"], registry=self.registry)
        self.connections = Counter("egress_proxy_tls_connections", "TLS/QUIC ClientHellos, by what was done",
                                   ["outcome"], registry=self.registry)
        self.bypass = Counter("egress_proxy_bypass", "Bypass controls that acted",
                              ["control"], registry=self.registry)
        self.tls_failures = Counter("egress_proxy_client_tls_failures",
                                    "Client handshakes that failed (garbage, truncated, vanished)",
                                    registry=self.registry)
        self.reloads = Counter("egress_proxy_policy_changes", "Policy reloads and phase changes",
                               ["reason"], registry=self.registry)
        self.info = Gauge("egress_proxy_policy_info", "The policy in force", ["source", "at"],
                          registry=self.registry)
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.address: str | None = None

    def serve(self, address: str | None) -> None:
        """Serve on ``address`` (None: stop). The old server stops only once
        the new one listens, so a bad address changes nothing."""
        if address == self.address:
            return
        server = thread = None
        if address:
            from prometheus_client import start_http_server

            host, port = split_hostport(address, default_host="127.0.0.1")
            server, thread = start_http_server(port, addr=host,
                                               registry=self.registry)
        self.stop()
        self._server, self._thread, self.address = server, thread, address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.address = None


class Telemetry:
    def __init__(self, decisions: PolicyDecisions) -> None:
        self.decisions = decisions
        self.events = EventLog(None)
        self.metrics = Metrics()
        self.registry = self.metrics.registry
        self.registry.register(metrics_collector("egress_proxy", lambda: self.events))
        self.log_target = "-"
        self.store: Any = None  # store.Store when egress_db / settings.proxy.db is set (opened once)
        decisions.settings_users.append(self)
        decisions.watchers.append(self._policy_changed)
        decisions.sighup.append(self._reopen)
        self._described: object = None  # the holder last described
        self.log_all = False
        self.hostname = socket.gethostname()
        # egress_log_all: forwarded requests, by flow id, recorded once their response (or error) is in.
        self._pending: dict[str, Verdict] = {}

    # --- options --------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("egress_log", str | None, None,
                          "Event log: a file (appended to) or '-' for stdout. Default: the policy's "
                          "settings.proxy.log, else stdout.")
        loader.add_option("egress_db", str | None, None,
                          "Also store events in this SQLite file (the dashboard's). Default: the "
                          "policy's settings.proxy.db, else off. Opened once; a new path needs a restart.")
        loader.add_option("egress_log_all", bool, False,
                          "An access log: also write an event for every allowed request (once its "
                          "response is in, with its status) and every allowed TLS connection (with "
                          "its SNI), as Squid's access.log does. Default: blocks and logs only.")
        loader.add_option("egress_metrics", str | None, None,
                          "Serve Prometheus metrics on HOST:PORT. Default: the policy's "
                          "settings.proxy.metrics, else off.")

    def configure(self, updated: set[str]) -> None:
        holder = self.decisions.holder
        if holder is None:
            return
        self.prepare(holder.policy)()
        if holder is not self._described:  # a new policy file: say what is in force
            self._described = holder
            self._describe()

    def prepare(self, policy: Policy) -> Callable[[], None]:
        opts = ctx.options
        s = policy.settings.proxy
        metrics = opts.egress_metrics or s.metrics
        if metrics:
            try:
                split_hostport(metrics, default_host="127.0.0.1")
            except AddressError as exc:
                raise options_error(f"egress_metrics: {exc}") from exc
        target = opts.egress_log or s.log or "-"
        queue = policy.settings.event_queue
        db = opts.egress_db or s.db
        log_all = bool(opts.egress_log_all)

        def apply() -> None:
            self.log_all = self.decisions.record_allowed = log_all
            try:
                self.metrics.serve(metrics)
            except OSError as exc:
                raise options_error(f"egress_metrics: cannot listen on {metrics}: {exc}") from exc
            opened = False
            if db and self.store is None:
                from store import Store
                from store.hook import retention

                try:
                    self.store = Store(db, max_queue=queue.max_events,
                                       retention=retention(s.db_days, s.db_max_bytes))
                except (OSError, sqlite3.Error) as exc:
                    raise options_error(f"egress_db: cannot open {db}: {exc}") from exc
                opened = True
                self.registry.register(self.store.collector("egress_proxy"))
            if target != self.log_target or not self.events.enabled or opened:
                old, self.events = self.events, EventLog(target, max_events=queue.max_events,
                                                         max_bytes=queue.max_bytes,
                                                         also=self.store.put if self.store else None)
                old.close()
                self.log_target = target

        return apply

    def _policy_changed(self, reason: str) -> None:
        # On the holder's watcher thread: counters and logging only.
        self.metrics.reloads.labels(reason).inc()
        self._describe()

    def _describe(self) -> None:
        view = self.decisions.view()
        self.metrics.info.clear()
        self.metrics.info.labels(view.policy.source or "bundled", view.at.isoformat()).set(1)
        enforced = {a: p.phase.value for a, p in view.phases.items() if p.phase is not Phase.NONE}
        log.info("egress-filter: policy %s at %s, mode %s, block=%s; enforced: %s",
                 view.policy.source, view.at, view.mode.value, self.decisions.settings.block,
                 ", ".join(f"{a}={p}" for a, p in sorted(enforced.items())) or "none")

    def _reopen(self) -> None:
        self.events.reopen()

    def done(self) -> None:
        self.metrics.stop()
        self.events.close()
        if self.store is not None:
            self.store.close()

    # --- recording --------------------------------------------------------------

    def record(self, v: Verdict, client: connection.Client, flow: http.HTTPFlow | None = None) -> None:
        d, obs = v.decision, v.observation
        server = v.server
        method = agent = None
        status: int | None = None
        if flow is not None:
            method = flow.request.method
            agent = flow.request.headers.get("user-agent", "")[:MAX_USER_AGENT] or None
            status = flow.response.status_code if flow.response is not None else None
        self.events.emit(build_event(
            d, obs, "proxy", event_id=v.event_id, client_port=client.peername[1] if client.peername else None,
            server_ip=server[0] if server and is_ip(server[0]) else None,
            server_port=server[1] if server else None, response=v.response, extra=v.extra or None,
            http_method=method, status_code=status, user_agent=agent, observer_hostname=self.hostname,
            user_name=v.user))
        if d.action is Action.ALLOW:
            return  # the access log's allows (egress_log_all): the decision metrics count blocks and logs
        self.metrics.decisions.labels(obs.kind.value, d.action.value).inc()
        if d.rule == DOH_RULE:
            self.metrics.bypass.labels("doh").inc()
        if d.blocked:
            log.info("egress-filter: blocked %s %s (%s) → %s, event %s",
                     obs.kind.value, obs.value, d.rule, v.response, v.event_id)

    def _flow(self, flow: http.HTTPFlow) -> None:
        v = flow_verdict(flow)
        if v is None:
            return
        flow.metadata[KEY] = v.summary()  # plain values: mitmproxy saves and shows metadata
        if v.repeat:
            return
        if self.log_all and flow.response is None and flow.request.method != "CONNECT":
            # Forwarded: the access log records it with its status, once the response is in.
            if len(self._pending) < MAX_PENDING:
                self._pending[flow.id] = v
                return
        if v.logged or self.log_all:
            self.record(v, flow.client_conn, flow)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._flow(flow)

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        v = self.decisions.verdict(data)
        if v is None:
            return
        if v.extra.get("ech"):
            self.metrics.bypass.labels("ech_seen").inc()
        if (v.logged or self.log_all) and not v.repeat:
            self.record(v, data.context.client)
        self.metrics.connections.labels(CONNECTION_OUTCOMES[v.response or "passthrough"]).inc()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        v = self.decisions.verdict(data)
        if v is not None:
            self.record(v, data.client)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        # mitmproxy has already logged the failure once; counting it is enough.
        self.metrics.tls_failures.inc()

    def response(self, flow: http.HTTPFlow) -> None:
        pending = self._pending.pop(flow.id, None) if self._pending else None
        if pending is not None:
            self.record(pending, flow.client_conn, flow)
        if flow.metadata.get(ECH_STRIPPED):
            self.metrics.bypass.labels("ech_stripped").inc()

    def error(self, flow: http.HTTPFlow) -> None:
        """A forwarded request that never got its response (origin unreachable, client gone)."""
        pending = self._pending.pop(flow.id, None) if self._pending else None
        if pending is not None:
            message = flow.error.msg if flow.error else "error"
            self.record(replace(pending, response="error", extra={**pending.extra, "error": message[:200]}),
                        flow.client_conn, flow)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        if flow.metadata.get(ECH_STRIPPED):
            self.metrics.bypass.labels("ech_stripped").inc()
