"""Connection limits for the proxy: a deadline for a connection's opening,
and a cap on the connections one client address may hold open.

mitmproxy closes a TCP connection only after 10 minutes *without activity*,
so a client that sends a truncated ClientHello (or one byte a second) holds
a socket, and a file descriptor, for as long as it likes.  This addon, a
sub-addon of ``EgressFilter``, after the others (so ``mitmdump -s proxy_addons/egress_filter.py``
and ``egress-filter proxy`` both load it), bounds that:

* ``client_connected`` counts the connection against its address; beyond
  ``egress_max_connections_per_client`` it is refused at once (mitmproxy
  closes a client whose ``error`` is set before reading from it), counted in
  ``egress_proxy_connections_refused_total{reason="per_client_limit"}`` and
  logged once a minute per address, with the number refused since.
* the same hook arms a deadline of ``egress_handshake_timeout`` seconds,
  counted from the connection's start however slowly bytes trickle in.
  It is disarmed once the connection has been decided: a plain HTTP
  request's headers are in (``requestheaders``), a ClientHello was passed
  through or refused, the client's TLS handshake with the proxy finished or
  failed, or a raw TCP tunnel started.  A CONNECT alone is not enough: the
  ClientHello after it must still come in time.  At the deadline the
  connection is closed as mitmproxy's own idle timeout closes one, and
  counted in ``egress_proxy_handshake_timeouts_total``.

Only TCP is limited here: mitmproxy already expires idle UDP (QUIC, DNS)
"connections" after 20 seconds, and they hold no socket of their own.

Who may connect at all is the listener's address: ``running`` warns about
every listener that is not on loopback (``0.0.0.0:3128``, the Squid-style
drop-in, or mitmdump's own default of every interface), because a proxy
that answers the open internet is an open relay; such a listener must be
firewalled to the LAN (docs/proxy.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from mitmproxy import connection, ctx, exceptions, http, tcp, tls
from mitmproxy.proxy import mode_specs

from runtime.args import is_loopback

log = logging.getLogger(__name__)

WARN_INTERVAL = 60.0  # seconds between two warnings about one client address
_WARNED_MAX = 10_000  # addresses remembered for rate-limiting, at most


class ConnectionGuard:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.refused = Counter("egress_proxy_connections_refused", "Client connections refused, by reason",
                               ["reason"], registry=registry)
        self.timeouts = Counter("egress_proxy_handshake_timeouts",
                                "Connections closed for not being decided within egress_handshake_timeout",
                                registry=registry)
        self.open = Gauge("egress_proxy_client_connections", "Client TCP connections open", registry=registry)
        self._per_address: dict[str, int] = {}
        self._address_of: dict[str, str] = {}  # client id → address, for the connections counted
        self._deadlines: dict[str, asyncio.TimerHandle] = {}  # client id → its deadline
        self._warned: dict[str, tuple[float, int]] = {}  # address → (last warning, refused since)

    def load(self, loader: Any) -> None:
        loader.add_option("egress_handshake_timeout", int, 10,
                          "Seconds a client connection has, from its start, to be decided: to send "
                          "its request headers, or a ClientHello that is passed through or refused, "
                          "or to finish its TLS handshake with the proxy. Slow or silent connections "
                          "are closed then (0: no deadline, only mitmproxy's 10-minute idle timeout).")
        loader.add_option("egress_max_connections_per_client", int, 256,
                          "Client TCP connections one address may hold open at once; more are closed "
                          "at once, counted and logged (0: no limit).")

    def configure(self, updated: set[str]) -> None:
        for name in ("egress_handshake_timeout", "egress_max_connections_per_client"):
            if name in updated and getattr(ctx.options, name) < 0:
                raise exceptions.OptionsError(f"{name}: must be 0 (off) or more")  # type: ignore[no-untyped-call]

    def running(self) -> None:
        # Here, not in configure: a refused option change rolls back to mitmproxy's
        # defaults (every interface), which would be warned about without being served.
        for address in open_listeners(ctx.options.mode, ctx.options.listen_host, ctx.options.listen_port):
            log.warning("egress-filter: the proxy listens on %s, not on loopback: anyone who can reach "
                        "it can use it. Firewall it to your LAN (docs/proxy.md, \"Squid's port\").",
                        address)

    # --- counting and the cap ------------------------------------------------------

    def client_connected(self, client: connection.Client) -> None:
        if client.transport_protocol != "tcp" or client.error or not client.peername:
            return
        address = str(client.peername[0])
        held = self._per_address.get(address, 0)
        cap = ctx.options.egress_max_connections_per_client
        if cap and held >= cap:
            client.error = f"{address} already holds {held} connections (egress_max_connections_per_client)"
            self.refused.labels("per_client_limit").inc()
            self._warn(address, held)
            return
        self._per_address[address] = held + 1
        self._address_of[client.id] = address
        self.open.inc()
        timeout = ctx.options.egress_handshake_timeout
        if timeout:
            loop = asyncio.get_running_loop()
            self._deadlines[client.id] = loop.call_later(timeout, self._expire, client.id, timeout)

    def client_disconnected(self, client: connection.Client) -> None:
        self._decided(client)
        address = self._address_of.pop(client.id, None)
        if address is None:
            return  # refused, or not TCP: never counted
        self.open.dec()
        held = self._per_address.get(address, 1) - 1
        if held > 0:
            self._per_address[address] = held
        else:
            self._per_address.pop(address, None)

    def _warn(self, address: str, held: int) -> None:
        now = time.monotonic()
        last = self._warned.get(address)
        if last is not None and now - last[0] < WARN_INTERVAL:
            self._warned[address] = (last[0], last[1] + 1)
            return
        since = f"; {last[1]} more refused since the last warning" if last and last[1] else ""
        log.warning("egress-filter: %s holds %d connections, the most egress_max_connections_per_client "
                    "allows: refusing more (warned once a minute)%s", address, held, since)
        if len(self._warned) >= _WARNED_MAX:
            self._warned = {a: w for a, w in self._warned.items() if now - w[0] < WARN_INTERVAL}
        self._warned[address] = (now, 0)

    # --- the deadline -------------------------------------------------------------

    def _decided(self, client: connection.Client) -> None:
        handle = self._deadlines.pop(client.id, None)
        if handle is not None:
            handle.cancel()

    def _expire(self, client_id: str, timeout: int) -> None:
        self._deadlines.pop(client_id, None)
        master: Any = ctx.master  # its addon manager is untyped
        proxyserver = master.addons.get("proxyserver")
        handler = proxyserver.connections.get(client_id) if proxyserver is not None else None
        if handler is None:
            return  # already gone
        io = handler.transports.get(handler.client)
        if io is None or io.handler is None:
            return
        self.timeouts.inc()
        log.info("egress-filter: closing %s: not decided within %d s (egress_handshake_timeout)",
                 handler.client.peername, timeout)
        # What mitmproxy's own idle timeout does: cancel the client's task,
        # which closes its socket and every server connection it opened.
        io.handler.cancel("handshake timeout")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._decided(flow.client_conn)  # a CONNECT never gets here: its ClientHello must still come

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        # Runs after the deciding and bypass addons': passed through, or refused
        # (no longer readable), is decided.
        client = data.context.client
        if data.ignore_connection or not client.state & connection.ConnectionState.CAN_READ:
            self._decided(client)

    def tls_established_client(self, data: tls.TlsData) -> None:
        self._decided(data.context.client)

    def tls_failed_client(self, data: tls.TlsData) -> None:
        self._decided(data.context.client)

    def tcp_start(self, flow: tcp.TCPFlow) -> None:
        self._decided(flow.client_conn)


def open_listeners(specs: list[str], listen_host: str, listen_port: int | None) -> list[str]:
    """The listeners of these mitmproxy modes that are not on loopback, as HOST:PORT
    (local redirect mode has none)."""
    found = []
    for spec in specs:
        try:
            mode = mode_specs.ProxyMode.parse(spec)
        except ValueError:
            continue  # mitmproxy's proxyserver refuses it, with its own message
        port = mode.listen_port(listen_port)
        if port is None:
            continue
        host = mode.listen_host(listen_host)
        if not is_loopback(host):
            shown = f"[{host}]" if ":" in host else (host or "*")
            found.append(f"{shown}:{port} ({mode.type_name})")
    return found
