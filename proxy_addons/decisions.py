"""The deciding addon: every observation of the proxy, judged by the shared policy.

``configure`` turns the ``egress_*`` policy options into a ``PolicyHolder``
(YAML → ``Policy`` → ``PolicyView``); each hook reads ``holder.view`` once,
asks it for a ``Decision`` on what it saw, enforces a block at once (so a
block never depends on another addon being loaded) and hands the
``Verdict`` on to the addons after it (``verdict.py`` says how).

Where each observation is decided:

* ``http_connect``: the CONNECT target and its ``Host`` (explicit proxy
  mode). A block is answered with 451 before any TLS starts, except with
  ``egress_block=page`` (and mitmproxy's lazy connections, the default here):
  the tunnel is accepted without dialling, the TLS inside it is intercepted
  and its requests get the page, which a browser can show.
* ``tls_clienthello`` (TLS and QUIC): the SNI, or the destination when there
  is none, *before* anything is decrypted: a block closes the connection
  unanswered (``egress_block=reset``) or intercepts it for the block page
  (``page``); ``decision.inspect`` (store and shared download hosts) is
  intercepted so the URL decides; anything else passes through untouched.
  A ClientHello that carries ECH is asked of the core's ``builtin:ech`` rule.
* ``request``: plain HTTP and intercepted HTTPS, on every name the request
  goes by with its path; a request shaped like DoH is asked of ``builtin:doh``.
* ``server_connect``: the address about to be dialled, the last word for
  what no hook above saw (raw TCP over SOCKS5 or transparent mode).

A request can name its host several times, and the names can disagree: the
target mitmproxy connects to, every ``Host`` value, the HTTP/2
``:authority`` and, once decrypted, the SNI.  The origin may serve any of
them (domain fronting), so every distinct name is judged and the strictest
verdict wins (block > log > allow); the event lists them all.

Settings that several addons derive from the policy (``settings.proxy``) are
checked by every addon first and applied only when all of them accept
(``Settings``): a reloaded file is applied whole or not at all.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

from mitmproxy import connection, ctx, exceptions, http, tls
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
)
from policies.addresses import is_ip
from policies.builtins import ECH_EXTENSION
from runtime import notify
from runtime.holder import PolicyHolder

from .verdict import KEY, Verdict, distinct, flow_user, new_verdict, placeholder_451, strictest

log = logging.getLogger(__name__)

BLOCK_STYLES = ("reset", "page")
# quic_transport_parameters (RFC 9001, and the drafts' codepoint): QUIC, not DTLS, on UDP
QUIC_TRANSPORT_PARAMETERS = frozenset({0x39, 0xFFA5})
MAX_INSPECTED_BODY = 64 * 1024  # store-client form bodies are small; never buffer uploads to judge them

# The public resolvers' names and addresses are the core's builtin:doh rule
# (policies/builtins.py); what a DoH request looks like only the proxy sees.
DOH_PATHS = ("/dns-query", "/resolve")  # RFC 8484's default path; Google's JSON API
DOH_MEDIA_TYPES = ("application/dns-message", "application/dns-json")

MOMENT = frozenset({"egress_policy", "egress_at", "egress_phase", "egress_mode", "egress_legal_status"})


def options_error(message: str) -> exceptions.OptionsError:
    return exceptions.OptionsError(message)  # type: ignore[no-untyped-call]


E = TypeVar("E", Phase, Mode, LegalStatus)


def _enum_option(name: str, value: str, kind: type[E]) -> E:
    try:
        return kind(value.replace("-", "_") if kind is LegalStatus else value)
    except ValueError as exc:
        raise options_error(f"{name}: '{value}' is not one of {', '.join(m.value for m in kind)}") from exc


class Settings(Protocol):
    """An addon whose settings come from the options and the policy's ``settings.proxy``."""

    def prepare(self, policy: Policy) -> Callable[[], None]:
        """Check the settings for ``policy`` (raise ``OptionsError``); the result applies them."""
        ...


@dataclass(frozen=True, slots=True)
class Effective:
    """The deciding addon's settings after merging options over the policy."""

    block: str = "reset"
    block_doh: bool = True
    log_ech: bool = True


class PolicyDecisions:
    def __init__(self) -> None:
        self.holder: PolicyHolder | None = None
        self.settings = Effective()
        # Addons whose settings follow the policy (this one first); told of a reload on the event loop.
        self.settings_users: list[Settings] = [self]
        # Told of every policy change ("reload", "phase") on the holder's watcher thread.
        self.watchers: list[Callable[[str], None]] = []
        self.sighup: list[Callable[[], None]] = []  # told of SIGHUP, on the event loop
        # The verdict of the flowless hook running now (tls_clienthello,
        # server_connect), for the addons after this one in the same call.
        self._current: tuple[object, Verdict] | None = None
        # Connections blocked at their ClientHello with egress_block=page:
        # client id → verdict, so every request on one gets the same page and event id.
        self._page_blocks: dict[str, Verdict] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        # Hand allowed requests on too (as a verdict in flow.metadata): the telemetry
        # addon sets it for egress_log_all, the access log of every request.
        self.record_allowed = False

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
                          "application data (a blocked CONNECT gets a bare 451); 'page' intercepts it "
                          "and serves the 451 page, accepting a blocked CONNECT for it without dialling "
                          "(clients must trust mitmproxy's CA). Default: the policy's "
                          "settings.proxy.block, else reset.")
        loader.add_option("egress_block_doh", bool, True,
                          "Block public DNS-over-HTTPS resolvers, so apps cannot bypass the DNS "
                          "filter (also off when the policy's builtins.doh is false).")
        loader.add_option("egress_log_ech", bool, True,
                          "Log a ClientHello that carries ECH, with its outer SNI "
                          "(also off when the policy's builtins.ech is off).")
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
            raise options_error("egress_reload_interval: must be 0 (off) or a number of seconds")
        if self.holder is not None and not updated & MOMENT:
            self.prepare(self.holder.policy)()
            return
        at, phase, mode = self._moment(opts)
        legal = (_enum_option("egress_legal_status", opts.egress_legal_status, LegalStatus)
                 if opts.egress_legal_status else None)
        if self.holder is not None and "egress_policy" not in updated:
            self.holder.set_overrides(at=at, phase=phase, mode=mode, legal_status=legal)
            self.prepare(self.holder.policy)()
            return
        try:
            holder = PolicyHolder(opts.egress_policy, at=at, phase=phase, mode=mode,
                                  allow_empty=opts.egress_allow_empty, legal_status=legal)
        except PolicyError as exc:
            where = opts.egress_policy or "the bundled policy"
            raise options_error(f"egress_policy: {where} is not usable:\n{exc}") from exc
        apply = self.prepare(holder.policy)
        old, self.holder = self.holder, holder
        if old is not None:
            old.stop()
        apply()
        holder.subscribe(self._policy_changed)
        if opts.egress_reload_interval > 0:
            holder.start(opts.egress_reload_interval)

    @staticmethod
    def _moment(opts: Any) -> tuple[dt.date | None, Phase | None, Mode | None]:
        if opts.egress_at and opts.egress_phase:
            raise options_error("egress_at and egress_phase exclude each other: "
                                "a forced phase ignores the schedules' dates")
        at = phase = mode = None
        if opts.egress_at:
            try:
                at = dt.date.fromisoformat(opts.egress_at)
            except ValueError as exc:
                raise options_error(f"egress_at: '{opts.egress_at}' is not a date (YYYY-MM-DD)") from exc
        if opts.egress_phase:
            phase = _enum_option("egress_phase", opts.egress_phase, Phase)
        if opts.egress_mode:
            mode = _enum_option("egress_mode", opts.egress_mode, Mode)
        return at, phase, mode

    def prepare(self, policy: Policy) -> Callable[[], None]:
        opts = ctx.options
        block = opts.egress_block or policy.settings.proxy.block
        if block not in BLOCK_STYLES:
            where = "egress_block" if opts.egress_block else "settings.proxy.block"
            raise options_error(f"{where}: '{block}' is not one of {', '.join(BLOCK_STYLES)}")
        # The policy's builtins decide; these options can only switch them off here.
        new = Effective(block=block, block_doh=opts.egress_block_doh and policy.builtins.doh,
                        log_ech=opts.egress_log_ech and policy.builtins.ech is EchAction.LOG)

        def apply() -> None:
            self.settings = new

        return apply

    def _policy_changed(self, reason: str) -> None:
        # Runs on the holder's watcher thread: only thread-safe work here;
        # hooks pick the new view up on their next read.
        for watcher in self.watchers:
            watcher(reason)
        if reason == "reload":
            # The new file's settings.proxy apply on the event loop, where the hooks read them.
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._reapply_settings)
            else:
                self._reapply_settings()

    def _reapply_settings(self) -> None:
        if self.holder is None:
            return
        try:
            applies = [user.prepare(self.holder.policy) for user in self.settings_users]
        except exceptions.OptionsError as exc:
            log.error("egress-filter: the reloaded policy's settings are not usable, keeping the previous "
                      "ones: %s", exc)
            return
        for apply in applies:
            try:
                apply()
            except exceptions.OptionsError as exc:  # a port taken since it was checked, say
                log.error("egress-filter: the reloaded policy's settings: %s", exc)

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
            # RELOADING=1 ... READY=1 to a service manager (a no-op without one).
            reload = notify.around_reload(self.holder.reload)
            threading.Thread(target=reload, name="egress-policy-sighup", daemon=True).start()
        for listener in self.sighup:
            listener()

    def done(self) -> None:
        if self.holder is not None:
            self.holder.stop()

    # --- what the addons after this one read ------------------------------------

    def view(self) -> PolicyView:
        assert self.holder is not None, "configure() has not run"
        return self.holder.view

    def verdict(self, data: object) -> Verdict | None:
        """The verdict on ``data`` (a ``ClientHelloData`` or ``ServerConnectionHookData``)
        of the hook running now, or None when this addon left it alone."""
        current = self._current
        return current[1] if current is not None and current[0] is data else None

    def revise(self, data: object, verdict: Verdict) -> None:
        """A later addon's change to the verdict on ``data`` (QUIC refused, say)."""
        if self.verdict(data) is not None:
            self._current = (data, verdict)

    # --- CONNECT ----------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        req = flow.request
        client = flow.client_conn.peername[0]
        view = self.view()
        # The target is where mitmproxy connects; a Host header that names
        # something else is judged too, so a banned name is never waved through.
        names = distinct([req.host, *req.headers.get_all("host")])
        user = flow_user(flow)
        v = strictest([self._judge_destination(view, n, req.port, client, user) for n in names])
        if not v.decision.blocked:
            return  # the ClientHello or the requests inside decide, and log, later
        v = replace(v, response="451", extra=_names(names, v), server=(req.host, req.port))
        flow.metadata[KEY] = v
        if self.settings.block == "page" and getattr(ctx.options, "connection_strategy", None) == "lazy":
            # A browser shows no answer to a CONNECT (ERR_TUNNEL_CONNECTION_FAILED):
            # accept the tunnel, intercept the TLS inside it with our CA, and answer
            # every request on it with the page.  Lazy: nothing is dialled for it.
            self._page_blocks[flow.client_conn.id] = v
            return
        assert v.event_id is not None
        flow.response = placeholder_451(v.event_id)

    # --- the dial itself ---------------------------------------------------------

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        """The address mitmproxy is about to dial, judged as a CONNECT target.

        The hooks above judged every name they saw; this catches what none of
        them sees (raw TCP over SOCKS5 or in transparent mode, to a banned
        name or network).  Only a block acts: anything else was, or will be,
        recorded by the protocol's own hook, and one connection gets one event."""
        self._current = None
        server = data.server
        if server.error or server.address is None:
            return
        host, port = str(server.address[0]), int(server.address[1])
        client = data.client
        peer = client.peername[0] if client.peername else None
        v = self._judge_destination(self.view(), host, port, peer, connection_user(client))
        if not v.decision.blocked:
            return
        server.error = f"egress-filter: {host} is blocked ({v.decision.rule})"
        self._current = (data, replace(v, response="refused", server=(host, port)))

    # --- TLS and QUIC ClientHello ----------------------------------------------

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        self._current = None
        if data.ignore_connection:
            return  # another addon (ignore_hosts, allow_hosts) already let it through
        context = data.context
        client = context.client
        page = self._page_blocks.get(client.id) if self._page_blocks else None
        if page is not None:
            # Its CONNECT was blocked, and accepted for the page: intercept, never dial.
            data.establish_server_tls_first = False
            self._current = (data, replace(page, repeat=True))
            return
        hello = data.client_hello
        sni = hello.sni
        view = self.view()
        peer = client.peername[0] if client.peername else None
        server = context.server.address
        user = connection_user(client)
        if sni and not is_ip(sni):
            v = self._judge_name(view, sni, Kind.SNI, peer, user)
        elif sni:
            v = self._judge_destination(view, sni, 443, peer, user)
        elif server:
            v = self._judge_destination(view, str(server[0]), server[1], peer, user)
        else:
            v = Verdict(ALLOW, Observation.sni("", peer), user=user)
        fronted: dict[str, Any] = {}
        if sni and server and not isinstance(client.proxy_mode, (mode_specs.RegularMode,
                                                                   mode_specs.UpstreamMode)):
            # No CONNECT judged the destination (transparent, SOCKS5, WireGuard,
            # reverse...): an allowed SNI must not carry the client to a banned one.
            target = self._judge_destination(view, str(server[0]), server[1], peer, user)
            if target.decision.action.severity > v.decision.action.severity:
                v = replace(target, decision=replace(target.decision, inspect=v.decision.inspect))
                fronted = {"names": [sni, str(server[0])], "decided_by": str(server[0])}
        d = v.decision
        udp = client.transport_protocol == "udp"
        kinds = {t for t, _ in hello.extensions} if self.settings.log_ech or udp else set()
        extra: dict[str, Any] = {}
        if ECH_EXTENSION in kinds and self.settings.log_ech:
            extra = {"ech": True, "outer_sni": sni}
            ech = view.with_ech(d, sni or "", peer, user)
            if ech is not d:
                v = v.with_decision(ech)
                d = ech
        if udp:
            extra["transport"] = "quic" if kinds & QUIC_TRANSPORT_PARAMETERS else "dtls"
        elif extra:
            extra["transport"] = "tls"
        extra.update(fronted)
        if d.blocked:
            data.establish_server_tls_first = False  # never talk TLS to a banned origin
            if self.settings.block == "page":
                response = "451"  # intercepted: the block page answers its requests
            else:
                refuse(data)
                response = "closed"
        elif d.inspect:
            response = "intercepted"
        else:
            data.ignore_connection = True
            response = "passthrough"
        v = replace(v, response=response, extra=extra, server=_address(server))
        if response == "451":
            self._page_blocks[client.id] = v
        self._current = (data, v)

    def tls_failed_client(self, data: tls.TlsData) -> None:
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
            # Recorded at the ClientHello: the same event id, and no second event.
            assert page.event_id is not None
            flow.response = placeholder_451(page.event_id)
            flow.metadata[KEY] = replace(page, repeat=True)
            return
        view = self.view()
        client = flow.client_conn.peername[0]
        body = None
        if req.method == "POST" and req.raw_content and len(req.raw_content) <= MAX_INSPECTED_BODY:
            body = req.raw_content
        names = self._request_names(flow)
        user = flow_user(flow)
        verdicts = [self._judge_request(view, req, name, client, body, user) for name in names]
        v = strictest(verdicts) if len(verdicts) > 1 else verdicts[0]
        if v.decision.action is Action.ALLOW and self.settings.block_doh and is_doh_shaped(req):
            v = v.with_decision(self._doh(view.decide_builtin(Signal.DOH_REQUEST, req.host, client, user)))
        address = flow.server_conn.address
        if v.decision.action is Action.ALLOW:
            if self.record_allowed:
                flow.metadata[KEY] = replace(v, response="forwarded", server=_address(address))
            return
        v = replace(v, extra=_names(names, v), server=_address(address))
        if v.decision.blocked:
            assert v.event_id is not None
            flow.response = placeholder_451(v.event_id)
            v = replace(v, response="451")
        else:
            v = replace(v, response="forwarded")
        flow.metadata[KEY] = v

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
        return distinct(values)

    # --- deciding ---------------------------------------------------------------

    def _judge_request(self, view: PolicyView, req: http.Request, name: str, client: str,
                       body: bytes | None, user: str | None) -> Verdict:
        # Decisions need host, path and query only; the event gets the URL under this name.
        host = f"[{name}]" if ":" in name else name
        default = 443 if req.scheme == "https" else 80
        authority = host if req.port == default else f"{host}:{req.port}"
        url = f"{req.scheme}://{authority}{req.path}"
        d = self._doh(view.decide_http(url, name, client, body, user))
        return new_verdict(d, Observation.http(url, name, client), user=user)

    def _judge_name(self, view: PolicyView, name: str, kind: Kind, client: str | None,
                    user: str | None = None) -> Verdict:
        d = self._doh(view.decide_name(name, kind, client, user))
        return new_verdict(d, Observation(kind, name, client), user=user)

    def _judge_destination(self, view: PolicyView, host: str, port: int, client: str | None,
                           user: str | None = None) -> Verdict:
        """A CONNECT target or a destination without SNI: a name or an IP literal."""
        address = host.strip("[]")
        if not is_ip(address):
            return self._judge_name(view, host, Kind.SNI, client, user)
        d = self._doh(view.decide_ip(address, client, port, user))
        return new_verdict(d, Observation.ip(address, client), user=user)

    def _doh(self, d: Decision) -> Decision:
        """``egress_block_doh`` off lets the core's DoH verdicts through at this proxy."""
        return ALLOW if d.rule == DOH_RULE and not self.settings.block_doh else d


def is_doh_shaped(req: http.Request) -> bool:
    """A DNS-over-HTTPS request by its method, path and media type, whatever its host."""
    if req.method == "POST":
        return req.headers.get("content-type", "").split(";")[0].strip() in DOH_MEDIA_TYPES
    path = req.path
    if "dns=" not in path:  # an RFC 8484 GET always carries ?dns=
        return False
    if path.split("?", 1)[0] in DOH_PATHS:
        return True
    return "application/dns-message" in req.headers.get("accept", "")


def connection_user(client: connection.Client) -> str | None:
    """The user mitmproxy's ``proxyauth`` authenticated this connection as (at its
    CONNECT or SOCKS5 handshake), for the hooks that have no flow."""
    master: Any = getattr(ctx, "master", None)
    addon = master.addons.get("proxyauth") if master is not None else None
    table = getattr(addon, "authenticated", None)
    found = table.get(client) if table is not None else None
    return str(found[0]) if found else None


def refuse(data: tls.ClientHelloData) -> None:
    """Leave a ClientHello unanswered.  There is no flow to ``kill()`` at this
    hook: mitmproxy checks ``client.connected`` right after preparing TLS and
    fails the handshake quietly ("connection closed early") when it is not.
    Dropping only CAN_READ (not CLOSED) matters: inside a CONNECT tunnel the
    HTTP/1 layer closes the socket only while the client can still be written to."""
    data.establish_server_tls_first = False  # no handshake with an origin we will not use
    data.context.client.state = connection.ConnectionState.CAN_WRITE


def _names(names: list[str], v: Verdict) -> dict[str, Any]:
    """The event's record of every name judged and the one that decided, when there were several."""
    if len(names) < 2:
        return {}
    return {"names": names, "decided_by": v.observation.host or v.observation.value}


def _address(address: connection.Address | None) -> tuple[str, int] | None:
    return (str(address[0]), int(address[1])) if address else None
