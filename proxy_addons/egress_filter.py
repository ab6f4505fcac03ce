"""The egress-filter mitmproxy addon: the shared policy, enforced at the proxy.

Data flows one way.  ``configure`` turns the ``egress_*`` options into a
``PolicyHolder`` (YAML → ``Policy`` → ``PolicyView``); every hook reads
``holder.view`` once, asks it for a ``Decision`` on what the hook saw, acts
on that decision, and writes one event through ``EventLog`` for every block
or log decision.

Where each observation is decided:

* ``http_connect``: the CONNECT target (explicit proxy mode). A block is
  answered with 451 before any TLS starts.
* ``tls_clienthello`` (TLS and QUIC): the SNI, or the destination IP when
  there is none.  The decision is made *before* anything is decrypted:
  block → the connection is closed before the proxy answers the ClientHello
  (or, with ``egress_block=page``, intercepted to serve the block page);
  ``decision.inspect`` (app-store and shared download hosts) → intercepted so
  the URL can be judged; anything else → passed through untouched, so the
  client sees the origin's own certificate and nothing is decrypted (QUIC
  that would pass through is refused instead, by default, so the client
  falls back to TCP: no mitmproxy release yet passes QUIC through, see
  ``compat.QUIC_PASSTHROUGH``).
* ``request``: plain HTTP and intercepted HTTPS, on host and URL (store
  pages, store-client API calls, download paths, DoH requests).
* ``server_connect``: the address about to be dialled, the last word for
  what no hook above saw (raw TCP over SOCKS5 or transparent mode): a
  block refuses the connection.
* ``response`` / ``dns_response``: the bypass controls that edit answers
  (ECH configs stripped from DNS HTTPS records, in DNS mode and in DoH).

A request can name its host several times, and the names can disagree: the
target mitmproxy connects to (the absolute-form URL, the CONNECT target or
the transparent destination), every ``Host`` header value, the HTTP/2
``:authority`` and, once decrypted, the TLS SNI.  The origin may serve any of
them (domain fronting), so every distinct name is judged with the request's
path and the strictest verdict wins (block > log > allow); the event says
which decided and lists them all.  A CONNECT is judged on its target and its
Host header the same way, and a ClientHello on its SNI and on the
destination when no CONNECT judged that (transparent, SOCKS5, WireGuard...).
Connection limits (a deadline for undecided connections, a cap per client
address) are the ``ConnectionGuard`` sub-addon, in ``connections.py``.

Load it with ``mitmdump -s proxy_addons/egress_filter.py --set egress_policy=P``
or run ``egress-filter proxy``.
"""

# No `from __future__ import annotations`: mitmdump -s loads this file without
# putting it in sys.modules, and dataclasses cannot resolve string annotations then.
import asyncio
import datetime as dt
import html
import ipaddress
import json
import logging
import os
import re
import signal
import sqlite3
import string
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from struct import error as struct_error  # mitmproxy's DNS codec raises it on short data
from typing import TYPE_CHECKING, Any, TypeVar

from mitmproxy import connection, ctx, dns, exceptions, http, tls
from mitmproxy.net.dns import types as dns_types
from mitmproxy.proxy import mode_specs, server_hooks

from policies import (
    ALLOW,
    DOH_RULE,
    Action,
    Decision,
    EchAction,
    Kind,
    LegalStatus,
    Mode,
    Observation,
    Phase,
    Policy,
    PolicyError,
    PolicyView,
    Signal,
    build_event,
    new_event_id,
)


def _import_runtime() -> tuple[Any, Any, Any, Any, Any]:
    """``mitmdump -s`` puts this file's directory first on sys.path, where
    this very file, named egress_filter.py, would shadow the ``egress_filter``
    package: import the package with that directory left out."""
    here = os.path.realpath(os.path.dirname(__file__))
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if os.path.realpath(p or ".") != here]
    try:
        from egress_filter.eventlog import EventLog, metrics_collector
        from egress_filter.holder import PolicyHolder
        from proxy_addons import compat
        from proxy_addons.connections import ConnectionGuard
    finally:
        sys.path[:] = saved
    return EventLog, PolicyHolder, metrics_collector, ConnectionGuard, compat


if TYPE_CHECKING:
    from egress_filter.eventlog import EventLog, metrics_collector
    from egress_filter.holder import PolicyHolder
    from proxy_addons import compat
    from proxy_addons.connections import ConnectionGuard
else:
    EventLog, PolicyHolder, metrics_collector, ConnectionGuard, compat = _import_runtime()

log = logging.getLogger(__name__)

BLOCK_STYLES = ("reset", "page")
QUIC_STYLES = ("fallback", "passthrough")
# Pass allowed QUIC through wherever this mitmproxy can relay it; refuse it (TCP fallback) elsewhere.
DEFAULT_QUIC = "passthrough" if compat.QUIC_PASSTHROUGH else "fallback"
ECH_EXTENSION = 0xFE0D  # encrypted_client_hello (draft-ietf-tls-esni)
# quic_transport_parameters (RFC 9001, and the drafts' codepoint): QUIC, not DTLS, on UDP
QUIC_TRANSPORT_PARAMETERS = frozenset({0x39, 0xFFA5})
DEFAULT_BLOCKED_BY = "urn:egress-filter:proxy"
MAX_INSPECTED_BODY = 64 * 1024  # store-client form bodies are small; never buffer uploads to judge them

# The public resolvers' names and addresses are the core's builtin:doh rule
# (policies/builtins.py); what a DoH request looks like only the proxy sees.
DOH_PATHS = ("/dns-query", "/resolve")  # RFC 8484's default path; Google's JSON API
DOH_MEDIA_TYPES = ("application/dns-message", "application/dns-json")

_TEMPLATE = string.Template(Path(__file__).with_name("block_page.html").read_text(encoding="utf-8"))


def _is_ip(text: str) -> bool:
    # Cheap pre-check: names on the hot path rarely end in a digit.
    if not text or not (text[-1].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True


# What separates names in one header value: the commas of joined repeated
# headers, the "@" of userinfo, stray whitespace.  Every piece is judged.
_NAME_SEPARATORS = re.compile(r"[\s,@]+")


def authority_names(value: str) -> list[str]:
    """The host names an origin could read out of a ``Host`` header, an
    ``:authority`` or a target, ports and brackets removed (case and
    trailing dots are left to the policy's own normalisation)."""
    names = []
    for piece in _NAME_SEPARATORS.split(value):
        if not piece:
            continue
        if piece.startswith("["):
            piece = piece[1:].split("]", 1)[0]
        elif not _is_ip(piece):
            piece = piece.split(":", 1)[0]  # what an origin that splits at the first colon serves
        if piece:
            names.append(piece)
    return names


def _distinct(values: Iterable[str]) -> list[str]:
    """The names among ``values``, each once (by its normalised form), in order."""
    seen: dict[str, str] = {}
    for value in values:
        for name in authority_names(value):
            seen.setdefault(name.lower().rstrip("."), name)
    return list(seen.values())


def _strictest(verdicts: list["Verdict"]) -> "Verdict":
    """Block > log > allow; at equal action the first (the connection target) decides."""
    best = verdicts[0]
    for v in verdicts[1:]:
        if v.decision.action.severity > best.decision.action.severity:
            best = v
    return best


E = TypeVar("E", Phase, Mode, LegalStatus)


def _enum_option(name: str, value: str, kind: type[E]) -> E:
    try:
        return kind(value.replace("-", "_") if kind is LegalStatus else value)
    except ValueError as exc:
        raise _options_error(
            f"{name}: '{value}' is not one of {', '.join(m.value for m in kind)}") from exc


def _options_error(message: str) -> exceptions.OptionsError:
    return exceptions.OptionsError(message)  # type: ignore[no-untyped-call]


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision, what it was about, and the event that recorded it (if any)."""

    decision: Decision
    observation: Observation
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class Effective:
    """Settings after merging options over the policy's ``settings.proxy``."""

    block: str
    log: str
    metrics: str | None
    block_doh: bool
    strip_ech: bool
    log_ech: bool


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

            host, _, port = address.rpartition(":")
            server, thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1",
                                               registry=self.registry)
        self.stop()
        self._server, self._thread, self.address = server, thread, address

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.address = None


class EgressFilter:
    def __init__(self) -> None:
        self.holder: PolicyHolder | None = None
        self.events = EventLog(None)
        self.store: Any = None  # store.Store when egress_db / settings.proxy.db is set (opened once)
        self.metrics = Metrics()
        self.metrics.registry.register(metrics_collector("egress_proxy", lambda: self.events))
        # Sub-addons, which mitmproxy loads and calls after this one (so they
        # see its verdicts): connection limits, on the same metrics registry.
        self.guard = ConnectionGuard(self.metrics.registry)
        self.addons = [self.guard]
        self.settings = Effective("reset", "-", None, True, True, True)
        # Client connections refused with the block page: client id → verdict,
        # so every request on that connection gets the same page and event id.
        self._page_blocks: dict[str, Verdict] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- options --------------------------------------------------------------

    def load(self, loader: Any) -> None:
        loader.add_option("egress_policy", str | None, None,
                          "Policy YAML for egress-filter (default: the bundled policy).")
        loader.add_option("egress_at", str | None, None,
                          "Read the apps' schedules at this date (YYYY-MM-DD) instead of today.")
        loader.add_option("egress_phase", str | None, None,
                          "Force every app into this phase: none, downloads or full.")
        loader.add_option("egress_mode", str | None, None,
                          "enforce, or monitor (log what would be blocked). Default: the policy's mode.")
        loader.add_option("egress_legal_status", str | None, None,
                          "as_ordered (the frameworks' phases as announced) or in_force (only while "
                          "their status history says in force), for every client group. Default: each "
                          "group's setting, else the policy's.")
        loader.add_option("egress_block", str | None, None,
                          "How a blocked TLS connection is refused: 'reset' closes it before any "
                          "application data; 'page' intercepts it and serves the 451 page (clients "
                          "must trust mitmproxy's CA). Default: the policy's settings.proxy.block, "
                          "else reset.")
        loader.add_option("egress_log", str | None, None,
                          "Event log: a file (appended to) or '-' for stdout. Default: the policy's "
                          "settings.proxy.log, else stdout.")
        loader.add_option("egress_db", str | None, None,
                          "Also store events in this SQLite file (the dashboard's). Default: the "
                          "policy's settings.proxy.db, else off. Opened once; a new path needs a restart.")
        loader.add_option("egress_metrics", str | None, None,
                          "Serve Prometheus metrics on HOST:PORT. Default: the policy's "
                          "settings.proxy.metrics, else off.")
        loader.add_option("egress_block_doh", bool, True,
                          "Block public DNS-over-HTTPS resolvers, so apps cannot bypass the DNS "
                          "filter (also off when the policy's builtins.doh is false).")
        loader.add_option("egress_strip_ech", bool, True,
                          "Strip ECH configs from DNS HTTPS records (DNS mode and DoH answers), "
                          "so the SNI stays visible (also off when settings.proxy.strip_ech is false).")
        loader.add_option("egress_log_ech", bool, True,
                          "Log a ClientHello that carries ECH, with its outer SNI "
                          "(also off when the policy's builtins.ech is off).")
        loader.add_option("egress_quic", str, DEFAULT_QUIC,
                          "QUIC the policy lets through: 'fallback' refuses it so clients retry over "
                          "TCP; 'passthrough' sets ignore_connection, which relays QUIC only on a "
                          "mitmproxy with #8338 fixed (the default there). Banned QUIC is refused "
                          "either way.", choices=QUIC_STYLES)
        loader.add_option("egress_blocked_by", str, DEFAULT_BLOCKED_BY,
                          "URI for the 451 page's Link: <...>; rel=\"blocked-by\" header (RFC 7725): "
                          "who implements the block, e.g. your network team's page.")
        loader.add_option("egress_eager_connections", bool, False,
                          "Keep mitmproxy's connection_strategy=eager, which dials the CONNECT target "
                          "before the ClientHello is judged. By default the addon sets it to lazy, so "
                          "nothing is dialled for a connection that is refused or never decided.")
        loader.add_option("egress_reload_interval", int, 2,
                          "Seconds between checks of the policy files and the date "
                          "(0: reload only on SIGHUP or option change).")
        loader.add_option("egress_allow_empty", bool, False,
                          "Accept a reload that would block nothing the policy in force blocks.")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if opts.egress_reload_interval < 0:
            raise _options_error("egress_reload_interval: must be 0 (off) or a number of seconds")
        moment = {"egress_policy", "egress_at", "egress_phase", "egress_mode", "egress_legal_status"}
        if self.holder is None or updated & moment:
            at, phase, mode = self._moment(opts)
            legal = (_enum_option("egress_legal_status", opts.egress_legal_status, LegalStatus)
                     if opts.egress_legal_status else None)
            if self.holder is None or "egress_policy" in updated:
                try:
                    holder = PolicyHolder(opts.egress_policy, at=at, phase=phase, mode=mode,
                                          allow_empty=opts.egress_allow_empty, legal_status=legal)
                except PolicyError as exc:
                    where = opts.egress_policy or "the bundled policy"
                    raise _options_error(f"egress_policy: {where} is not usable:\n{exc}") from exc
                self._apply_settings(opts, holder.policy)
                self._swap_holder(holder, opts.egress_reload_interval)
                self._describe(holder.view)
                return
            # set_overrides tells _policy_changed
            self.holder.set_overrides(at=at, phase=phase, mode=mode, legal_status=legal)
        self._apply_settings(opts, self.holder.policy)

    @staticmethod
    def _moment(opts: Any) -> tuple[dt.date | None, Phase | None, Mode | None]:
        if opts.egress_at and opts.egress_phase:
            raise _options_error("egress_at and egress_phase exclude each other: "
                                 "a forced phase ignores the schedules' dates")
        at = phase = mode = None
        if opts.egress_at:
            try:
                at = dt.date.fromisoformat(opts.egress_at)
            except ValueError as exc:
                raise _options_error(
                    f"egress_at: '{opts.egress_at}' is not a date (YYYY-MM-DD)") from exc
        if opts.egress_phase:
            phase = _enum_option("egress_phase", opts.egress_phase, Phase)
        if opts.egress_mode:
            mode = _enum_option("egress_mode", opts.egress_mode, Mode)
        return at, phase, mode

    def _swap_holder(self, holder: PolicyHolder, interval: int) -> None:
        old, self.holder = self.holder, holder
        if old is not None:
            old.stop()
        holder.subscribe(self._policy_changed)
        if interval > 0:
            holder.start(interval)

    def _apply_settings(self, opts: Any, policy: Policy) -> None:
        s = policy.settings.proxy
        block = opts.egress_block or s.block
        if block not in BLOCK_STYLES:
            where = "egress_block" if opts.egress_block else "settings.proxy.block"
            raise _options_error(f"{where}: '{block}' is not one of {', '.join(BLOCK_STYLES)}")
        if opts.egress_quic not in QUIC_STYLES:
            raise _options_error(f"egress_quic: '{opts.egress_quic}' is not one of {', '.join(QUIC_STYLES)}")
        metrics = opts.egress_metrics or s.metrics
        if metrics:
            _, sep, port = metrics.rpartition(":")
            if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
                raise _options_error(f"egress_metrics: '{metrics}' is not HOST:PORT")
        new = Effective(block=block, log=opts.egress_log or s.log or "-", metrics=metrics,
                        # The policy's builtins: decide; these options can only switch off here.
                        block_doh=opts.egress_block_doh and policy.builtins.doh,
                        strip_ech=opts.egress_strip_ech and s.strip_ech,
                        log_ech=opts.egress_log_ech and policy.builtins.ech is EchAction.LOG)
        try:
            self.metrics.serve(new.metrics)
        except OSError as exc:
            raise _options_error(f"egress_metrics: cannot listen on {new.metrics}: {exc}") from exc
        q = policy.settings.event_queue
        db = opts.egress_db or s.db
        opened = False
        if db and self.store is None:
            from store import Store
            from store.hook import retention

            try:
                self.store = Store(db, max_queue=q.max_events, retention=retention(s.db_days, s.db_max_bytes))
                opened = True
                self.metrics.registry.register(self.store.collector("egress_proxy"))
            except (OSError, sqlite3.Error) as exc:
                raise _options_error(f"egress_db: cannot open {db}: {exc}") from exc
        if new.log != self.settings.log or not self.events.enabled or opened:
            old_log, self.events = self.events, EventLog(new.log, max_events=q.max_events,
                                                         max_bytes=q.max_bytes,
                                                         also=self.store.put if self.store else None)
            old_log.close()
        self.settings = new

    def _describe(self, view: PolicyView) -> None:
        self.metrics.info.clear()
        self.metrics.info.labels(view.policy.source or "bundled", view.at.isoformat()).set(1)
        enforced = {a: p.phase.value for a, p in view.phases.items() if p.phase is not Phase.NONE}
        log.info("egress-filter: policy %s at %s, mode %s, block=%s; enforced: %s",
                 view.policy.source, view.at, view.mode.value, self.settings.block,
                 ", ".join(f"{a}={p}" for a, p in sorted(enforced.items())) or "none")

    def _policy_changed(self, reason: str) -> None:
        # Runs on the holder's watcher thread: only thread-safe work here
        # (counters and logging); hooks pick the new view up on their next read.
        self.metrics.reloads.labels(reason).inc()
        if self.holder is None:
            return
        self._describe(self.holder.view)
        if reason == "reload":
            # The new file's settings.proxy (block style, log, metrics...) are
            # applied on the event loop, where the hooks read them.
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._reapply_settings)
            else:
                self._reapply_settings()

    def _reapply_settings(self) -> None:
        if self.holder is None:
            return
        try:
            self._apply_settings(ctx.options, self.holder.policy)
        except exceptions.OptionsError as exc:
            log.error("egress-filter: the reloaded policy's settings are not usable, keeping the previous "
                      "ones: %s", exc)

    # --- lifecycle ------------------------------------------------------------

    def running(self) -> None:
        opts: Any = ctx.options  # update is untyped in mitmproxy
        if opts.connection_strategy != "lazy" and not opts.egress_eager_connections:
            # mitmproxy's default, eager, dials the CONNECT target before the
            # ClientHello is judged: an upstream socket per tunnel, even for
            # one that is refused or never says anything.  Lazy dials only
            # once the connection is let through.
            opts.update(connection_strategy="lazy")
        try:
            self._loop = asyncio.get_running_loop()
            self._loop.add_signal_handler(signal.SIGHUP, self._sighup)
        except (RuntimeError, NotImplementedError, ValueError, AttributeError):
            log.debug("egress-filter: no SIGHUP reload on this platform/thread")

    def _sighup(self) -> None:
        # Reloading parses YAML: keep it off the event loop.
        if self.holder is not None:
            threading.Thread(target=self.holder.reload, name="egress-policy-sighup", daemon=True).start()
        self.events.reopen()

    def done(self) -> None:
        if self.holder is not None:
            self.holder.stop()
        self.metrics.stop()
        self.events.close()
        if self.store is not None:
            self.store.close()

    # --- events ---------------------------------------------------------------

    def _record(self, d: Decision, obs: Observation, response: str, client: connection.Client,
                server: connection.Address | None = None, extra: dict[str, Any] | None = None) -> str:
        event_id = new_event_id()
        server_ip = server[0] if server and _is_ip(str(server[0])) else None
        self.events.emit(build_event(
            d, obs, "proxy", event_id=event_id, client_port=client.peername[1] if client.peername else None,
            server_ip=server_ip, server_port=server[1] if server else None, response=response, extra=extra))
        self.metrics.decisions.labels(obs.kind.value, d.action.value).inc()
        if d.blocked:
            log.info("egress-filter: blocked %s %s (%s) → %s, event %s",
                     obs.kind.value, obs.value, d.rule, response, event_id)
        return event_id

    # --- CONNECT ----------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        host, port = req.host, req.port
        client = flow.client_conn.peername[0]
        view = self._view()
        # The target is where mitmproxy connects; a Host header that names
        # something else is judged too, so a banned name is never waved through.
        names = _distinct([host, *req.headers.get_all("host")])
        verdict = _strictest([self._judge_destination(view, n, port, client) for n in names])
        if not verdict.decision.blocked:
            return  # the ClientHello or the requests inside decide, and log, later
        event_id = self._record(verdict.decision, verdict.observation, "451", flow.client_conn,
                                (host, port), self._others(names, verdict))
        flow.response = self._block_response(flow.request, verdict, event_id)

    # --- the dial itself ---------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The address mitmproxy is about to dial, judged as a CONNECT target.

        The hooks above judged every name they saw; this catches what none of
        them sees (raw TCP over SOCKS5 or in transparent mode, to a banned
        name or network).  Only a block acts: anything else was, or will be,
        recorded by the protocol's own hook, and one connection gets one event."""
        server = data.server
        if server.error or server.address is None:
            return
        host, port = str(server.address[0]), int(server.address[1])
        client = data.client
        peer = client.peername[0] if client.peername else None
        verdict = self._judge_destination(self._view(), host, port, peer)
        if not verdict.decision.blocked:
            return
        self._record(verdict.decision, verdict.observation, "refused", client, (host, port))
        server.error = f"egress-filter: {host} is blocked ({verdict.decision.rule})"

    # --- TLS and QUIC ClientHello ----------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        if data.ignore_connection:
            return  # another addon (ignore_hosts, allow_hosts) already let it through
        context = data.context
        client = context.client
        hello = data.client_hello
        sni = hello.sni
        view = self._view()
        peer = client.peername[0] if client.peername else None
        server = context.server.address
        if sni and not _is_ip(sni):
            verdict = self._judge_name(view, sni, Kind.SNI, peer)
        elif sni:
            verdict = self._judge_destination(view, sni, 443, peer)
        elif server:
            verdict = self._judge_destination(view, str(server[0]), server[1], peer)
        else:
            verdict = Verdict(Decision(Action.ALLOW), Observation.sni("", peer))
        fronted: dict[str, Any] | None = None
        if sni and server and not isinstance(client.proxy_mode, (mode_specs.RegularMode,
                                                                   mode_specs.UpstreamMode)):
            # No CONNECT judged the destination (transparent, SOCKS5, WireGuard,
            # reverse...): an allowed SNI must not carry the client to a banned one.
            target = self._judge_destination(view, str(server[0]), server[1], peer)
            if target.decision.action.severity > verdict.decision.action.severity:
                verdict = Verdict(replace(target.decision, inspect=verdict.decision.inspect),
                                  target.observation)
                fronted = {"names": [sni, str(server[0])], "decided_by": str(server[0])}
        d = verdict.decision
        udp = client.transport_protocol == "udp"
        kinds = {t for t, _ in hello.extensions} if self.settings.log_ech or udp else set()
        transport = ("quic" if kinds & QUIC_TRANSPORT_PARAMETERS else "dtls") if udp else "tls"
        extra: dict[str, Any] | None = None
        if ECH_EXTENSION in kinds and self.settings.log_ech:
            self.metrics.bypass.labels("ech_seen").inc()
            extra = {"ech": True, "outer_sni": sni}
            if d.action is Action.ALLOW:
                ech = view.decide_builtin(Signal.ECH, sni or "", peer)
                if ech.action is not Action.ALLOW:
                    d = replace(ech, apps=d.apps, phase=d.phase, inspect=d.inspect)
        if udp or extra is not None:
            extra = {**(extra or {}), "transport": transport}
        if fronted is not None:
            extra = {**(extra or {}), **fronted}
        if d.blocked:
            if self.settings.block == "page":
                # Never talk TLS to a banned origin, whatever connection_strategy says.
                data.establish_server_tls_first = False
                event_id = self._record(d, verdict.observation, "451", client, server, extra)
                self._page_blocks[client.id] = Verdict(d, verdict.observation, event_id)
                self.metrics.connections.labels("page").inc()
                return
            self._record(d, verdict.observation, "closed", client, server, extra)
            self._refuse(data, "closed")
            return
        if d.inspect:
            if d.action is Action.LOG:
                self._record(d, verdict.observation, "intercepted", client, server, extra)
            self.metrics.connections.labels("intercepted").inc()
            return
        if transport == "quic" and ctx.options.egress_quic == "fallback":
            # The default where mitmproxy cannot pass QUIC through (ignore_connection
            # stalls the connection, mitmproxy#8338): refuse it so the client falls
            # back to TCP, where passthrough works and the SNI is judged again.
            if d.action is Action.LOG:
                self._record(d, verdict.observation, "quic-refused", client, server, extra)
            self._refuse(data, "quic_fallback")
            return
        if d.action is Action.LOG:
            self._record(d, verdict.observation, "passthrough", client, server, extra)
        data.ignore_connection = True
        self.metrics.connections.labels("passthrough").inc()

    def _refuse(self, data: tls.ClientHelloData, outcome: str) -> None:
        data.establish_server_tls_first = False  # no handshake with an origin we will not use
        # mitmproxy checks `client.connected` right after preparing TLS and
        # fails the handshake quietly ("connection closed early") when it is
        # not, so the ClientHello is never answered.  Dropping only CAN_READ
        # (not CLOSED) matters: inside a CONNECT tunnel the HTTP/1 layer closes
        # the socket only while the client can still be written to.
        data.context.client.state = connection.ConnectionState.CAN_WRITE
        self.metrics.connections.labels(outcome).inc()

    def tls_failed_client(self, data: tls.TlsData) -> None:
        # mitmproxy has already logged the failure once; counting it is enough.
        self.metrics.tls_failures.inc()
        self._page_blocks.pop(data.context.client.id, None)

    def client_disconnected(self, client: connection.Client) -> None:
        self._page_blocks.pop(client.id, None)

    # --- HTTP -------------------------------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        page = self._page_blocks.get(flow.client_conn.id) if self._page_blocks else None
        if page is not None:
            # Already logged at the ClientHello: same event id, no second event.
            flow.response = self._block_response(req, page, page.event_id or "")
            return
        view = self._view()
        client = flow.client_conn.peername[0]
        body = None
        if req.method == "POST" and req.raw_content and len(req.raw_content) <= MAX_INSPECTED_BODY:
            body = req.raw_content
        names = self._request_names(flow)
        verdicts = [self._judge_request(view, req, name, client, body) for name in names]
        verdict = _strictest(verdicts) if len(verdicts) > 1 else verdicts[0]
        d, obs = verdict.decision, verdict.observation
        if d.action is Action.ALLOW and self.settings.block_doh and self._is_doh_shaped(req):
            d = self._bypass(view.decide_builtin(Signal.DOH_REQUEST, req.host, client))
        if d.action is Action.ALLOW:
            return
        extra = self._others(names, verdict)
        if d.blocked:
            event_id = self._record(d, obs, "451", flow.client_conn, flow.server_conn.address, extra)
            flow.response = self._block_response(req, Verdict(d, obs, event_id), event_id)
        else:
            self._record(d, obs, "forwarded", flow.client_conn, flow.server_conn.address, extra)

    @staticmethod
    def _request_names(flow: http.HTTPFlow) -> list[str]:
        """Every name the request goes by, the connection target first:
        mitmproxy connects to ``request.host`` (absolute-form URL, CONNECT
        target or transparent destination), the origin may serve any Host
        value or ``:authority``, and an intercepted connection's SNI chose
        the origin's certificate."""
        req = flow.request
        values = [req.host]
        if req.authority:
            values.append(req.authority)
        values.extend(req.headers.get_all("host"))
        sni = flow.client_conn.sni
        if sni and flow.client_conn.tls:
            values.append(sni)
        if len(values) == 1 or all(v == values[0] for v in values):
            return [req.host]  # the usual case: one name, nothing to reconcile
        return _distinct(values)

    def _judge_request(self, view: PolicyView, req: http.Request, name: str, client: str,
                       body: bytes | None) -> Verdict:
        # Decisions need host, path and query only; the event gets the URL under this name.
        host = f"[{name}]" if ":" in name else name
        default = 443 if req.scheme == "https" else 80
        authority = host if req.port == default else f"{host}:{req.port}"
        url = f"{req.scheme}://{authority}{req.path}"
        d = self._bypass(view.decide_http(url, name, client, body))
        return Verdict(d, Observation.http(url, name, client))

    @staticmethod
    def _others(names: list[str], verdict: Verdict) -> dict[str, Any] | None:
        """The event's record of every name judged and the one that decided, when there were several."""
        if len(names) < 2:
            return None
        decided = verdict.observation.host or verdict.observation.value
        return {"names": names, "decided_by": decided}

    @staticmethod
    def _is_doh_shaped(req: http.Request) -> bool:
        """A DNS-over-HTTPS request by its method, path and media type, whatever its host."""
        if req.method == "POST":
            return req.headers.get("content-type", "").split(";")[0].strip() in DOH_MEDIA_TYPES
        path = req.path
        if "dns=" not in path:  # an RFC 8484 GET always carries ?dns=
            return False
        if path.split("?", 1)[0] in DOH_PATHS:
            return True
        return "application/dns-message" in req.headers.get("accept", "")

    def response(self, flow: http.HTTPFlow) -> None:
        """DoH answers that got through (DoH blocking off): strip their ECH configs too."""
        if not self.settings.strip_ech or flow.response is None:
            return
        if flow.response.headers.get("content-type", "").split(";")[0].strip() != "application/dns-message":
            return
        try:
            message = compat.unpack_dns(flow.response.content or b"")
        except (ValueError, struct_error, IndexError) as exc:
            log.debug("egress-filter: unparsable DoH answer from %s: %s", flow.request.pretty_host, exc)
            return
        if self._strip_ech(message.answers):
            flow.response.content = message.packed

    def dns_response(self, flow: dns.DNSFlow) -> None:
        if self.settings.strip_ech and flow.response is not None:
            self._strip_ech(flow.response.answers)

    def _strip_ech(self, answers: Iterable[dns.ResourceRecord]) -> bool:
        stripped = False
        for answer in answers:
            if answer.type == dns_types.HTTPS:
                try:
                    if answer.https_ech is not None:
                        answer.https_ech = None
                        stripped = True
                except (ValueError, struct_error, IndexError):
                    continue  # a malformed record is passed on as it came
        if stripped:
            self.metrics.bypass.labels("ech_stripped").inc()
        return stripped

    # --- deciding ---------------------------------------------------------------

    def _view(self) -> PolicyView:
        assert self.holder is not None, "configure() has not run"
        return self.holder.view

    def _judge_name(self, view: PolicyView, name: str, kind: Kind, client: str | None) -> Verdict:
        d = self._bypass(view.decide_name(name, kind, client))
        return Verdict(d, Observation(kind, name, client))

    def _bypass(self, d: Decision) -> Decision:
        """Count the core's DoH verdicts; ``egress_block_doh`` off lets them through at this proxy."""
        if d.rule == DOH_RULE:
            if not self.settings.block_doh:
                return ALLOW
            self.metrics.bypass.labels("doh").inc()
        return d

    def _judge_destination(self, view: PolicyView, host: str, port: int, client: str | None) -> Verdict:
        """A CONNECT target or a destination without SNI: a name or an IP literal."""
        if not _is_ip(host):
            return self._judge_name(view, host, Kind.SNI, client)
        address = host.strip("[]")
        d = self._bypass(view.decide_ip(address, client, port))
        return Verdict(d, Observation.ip(address, client))

    # --- the block page -----------------------------------------------------------

    def _block_response(self, req: http.Request, verdict: Verdict, event_id: str) -> http.Response:
        d = verdict.decision
        # Everything shown comes with the decision: no reaching back into the policy.
        record = d.legal[0] if d.legal else None
        blocked_by = ctx.options.egress_blocked_by
        facts: dict[str, Any] = {
            "status": 451,
            "error": "Unavailable For Legal Reasons",
            "blocked": verdict.observation.value,
            "apps": [{"id": a, "name": n} for a, n in zip(d.apps, d.app_names, strict=False)],
            "order": record.title if record else None,
            "citation": record.citation if record else None,
            "frameworks": [s.as_dict() for s in d.legal],
            "group": d.group,
            "phase": d.phase.value,
            "rule": d.rule,
            "reason": d.reason,
            "event_id": event_id,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        headers = {
            "Link": f'<{blocked_by}>; rel="blocked-by"',
            "Cache-Control": "no-store",
            "X-Egress-Filter-Event": event_id,
        }
        accept = req.headers.get("accept", "").lower()
        if "json" in accept and "text/html" not in accept:
            headers["Content-Type"] = "application/json"
            body = json.dumps(facts, indent=2).encode()
        else:
            headers["Content-Type"] = "text/html; charset=utf-8"
            names = ", ".join(d.app_names) or "this service"
            order = record.title if record else "the network's egress policy"
            citation = f" ({record.citation})" if record and record.citation else ""
            body = _TEMPLATE.safe_substitute({
                "app": html.escape(names), "order": html.escape(order), "citation": html.escape(citation),
                "target": html.escape(verdict.observation.value), "phase": html.escape(d.phase.value),
                "rule": html.escape(d.rule or "-"), "event_id": html.escape(event_id),
                "time": facts["time"], "reason": html.escape(d.reason),
                "blocked_by": html.escape(blocked_by, quote=True),
            }).encode()
        resp = http.Response.make(451, body, headers)
        resp.reason = "Unavailable For Legal Reasons"  # not in mitmproxy's table of reason phrases
        return resp


addons = [EgressFilter()]
