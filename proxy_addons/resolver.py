"""One resolver: the proxy looks upstream names up through the DNS filter.

mitmproxy resolves the address of every server it dials itself, with the
system resolver (``asyncio.open_connection`` → ``getaddrinfo``); its
``dns_name_servers`` option only serves its DNS *mode*.  So a name the DNS
filter would refuse (its CNAME points into a banned domain, an answer in a
banned network) still reached its origin through the proxy.  With
``egress_resolver=HOST:PORT`` (``egress-filter run`` sets it to the DNS
filter it starts beside the proxy), this sub-addon's ``server_connect``,
after the deciding addon has judged the name, asks that server for the
name's A (then AAAA) records and puts the address it got into
``server.address``; the name stays the connection's SNI and the request's
``Host``, so origins see no difference; once connected the address is the
name again (``server_connected``), so mitmproxy reuses the connection for
the next request to that name.

It never falls back to the system resolver.  When the lookup does not give
an address the dial is refused (``server.error``), which mitmproxy answers
with ``502 Bad Gateway`` carrying the reason for an HTTP request, or by
closing a tunnel:

* the DNS filter blocked the name (its answer carries an Extended DNS
  Error 15, "Blocked", RFC 8914, or a null address): "blocked by the DNS
  filter", with the EDE text (app and phase).  The DNS filter's own event
  records the decision; the proxy logs the client it refused;
* NXDOMAIN, no address, SERVFAIL or REFUSED: "does not resolve", with the
  response code;
* no answer within ``egress_resolver_timeout`` seconds (two tries over UDP,
  TCP when the answer is truncated): "did not answer".

Outcomes are counted in ``egress_proxy_resolutions_total{outcome}``.  This
addon runs last (after telemetry): it awaits the network, and the flowless
verdict the deciding addon hands to telemetry must not wait across an await.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import struct
from typing import Any

from dnslib import EDNS0, QTYPE, RCODE, DNSError, DNSQuestion, DNSRecord
from mitmproxy import ctx, exceptions
from mitmproxy.proxy import server_hooks

from policies.addresses import AddressError, is_ip, split_hostport

log = logging.getLogger(__name__)

EDE_OPTION = 15  # RFC 8914 Extended DNS Error option
EDE_BLOCKED = 15  # "Blocked": what the DNS filter says of a name its policy refuses
EDE_CODES = frozenset({EDE_BLOCKED, 16, 17})  # Blocked, Censored, Filtered
NULL_ADDRESSES = frozenset({"0.0.0.0", "::"})  # the DNS filter's "null" block answer
MAX_ANSWER = 65535
TRIES = 2


class ResolveError(Exception):
    """Why a name gave no address; ``outcome`` labels the metric."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


def parse_resolver(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 in brackets) of the DNS server; the host must be an IP address."""
    bad = f"egress_resolver: '{text}' is not IP:PORT (e.g. 127.0.0.1:5353 or [::1]:5353)"
    try:
        host, port = split_hostport(text, need_ip=True)
    except AddressError as exc:
        raise ValueError(f"{bad}: {exc}") from exc
    if not port:
        raise ValueError(f"{bad}: port 0")
    return host, port


class UpstreamResolver:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        self.resolutions = Counter("egress_proxy_resolutions", "Upstream names the proxy resolved through "
                                   "egress_resolver, by outcome", ["outcome"], registry=registry)
        self.server: tuple[str, int] | None = None
        # server id → the name and port it was asked for, from the dial to its outcome
        # (mitmproxy calls exactly one of server_connected and server_connect_error).
        self._dialled: dict[str, tuple[str, int]] = {}

    def load(self, loader: Any) -> None:
        loader.add_option("egress_resolver", str | None, None,
                          "Resolve the names of the servers the proxy dials through this DNS server "
                          "(IP:PORT, e.g. the egress-filter DNS filter) instead of the system resolver, "
                          "so its blocks and CNAME inspection apply to proxied traffic. A name it does "
                          "not resolve is refused (502), never looked up elsewhere. egress-filter run "
                          "sets it to its DNS listener.")
        loader.add_option("egress_resolver_timeout", int, 2,
                          "Seconds each try of an egress_resolver lookup waits for an answer (two tries).")

    def configure(self, updated: set[str]) -> None:
        if "egress_resolver" in updated:
            text = ctx.options.egress_resolver
            try:
                self.server = parse_resolver(text) if text else None
            except ValueError as exc:
                raise exceptions.OptionsError(str(exc)) from exc  # type: ignore[no-untyped-call]
        if "egress_resolver_timeout" in updated and not ctx.options.egress_resolver_timeout > 0:
            raise exceptions.OptionsError("egress_resolver_timeout: must be more than 0")  # type: ignore[no-untyped-call]

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        server = data.server
        if self.server is None or server.error or server.address is None:
            return
        name, port = str(server.address[0]), int(server.address[1])
        if is_ip(name):
            return  # an address already: transparent mode, IP literals
        peer = data.client.peername[0] if data.client.peername else "?"
        where = f"{self.server[0]}:{self.server[1]}"
        try:
            address = await self.lookup(name)
        except ResolveError as exc:
            self.resolutions.labels(exc.outcome).inc()
            server.error = f"egress-filter: {name} {exc} (resolver {where})"
            level = logging.INFO if exc.outcome == "blocked" else logging.WARNING
            log.log(level, "egress-filter: refusing %s's connection to %s:%d: %s %s (resolver %s)",
                    peer, name, port, name, exc, where)
            return
        self.resolutions.labels("resolved").inc()
        if server.sni is None:
            server.sni = name  # what mitmproxy would have sent, had it dialled the name
        server.address = (address, port)
        self._dialled[server.id] = (name, port)

    def server_connected(self, data: server_hooks.ServerConnectionHookData) -> None:
        named = self._dialled.pop(data.server.id, None)
        if named is not None:
            # Dialled: the address is the name again (peername holds the IP), as when
            # mitmproxy resolves it itself, so the HTTP layer reuses this connection for the
            # next request to the name.  Server.__setattr__ refuses any change of address on
            # an open connection; this one only undoes ours.
            object.__setattr__(data.server, "address", named)

    def server_connect_error(self, data: server_hooks.ServerConnectionHookData) -> None:
        self._dialled.pop(data.server.id, None)

    async def lookup(self, name: str) -> str:
        """The first address of ``name`` (A, else AAAA) from the configured server."""
        no_data: ResolveError | None = None
        for qtype in (QTYPE.A, QTYPE.AAAA):
            answer = await self._ask(name, qtype)
            try:
                return self._address(name, answer)
            except ResolveError as exc:
                if exc.outcome != "no-address":
                    raise
                no_data = exc
        assert no_data is not None
        raise no_data

    @staticmethod
    def _address(name: str, answer: DNSRecord) -> str:
        ede = _ede(answer)
        rcode = answer.header.rcode
        if ede is not None and ede[0] in EDE_CODES:
            reason = f": {ede[1]}" if ede[1] else ""
            raise ResolveError("blocked", f"is blocked by the DNS filter ({RCODE.get(rcode)}{reason})")
        if rcode != RCODE.NOERROR:
            raise ResolveError("failed", f"does not resolve ({RCODE.get(rcode)})")
        addresses = [str(rr.rdata) for rr in answer.rr if rr.rtype in (QTYPE.A, QTYPE.AAAA)]
        if any(a in NULL_ADDRESSES for a in addresses):
            raise ResolveError("blocked", "is blocked by the DNS filter (null answer)")
        if not addresses:
            raise ResolveError("no-address", "does not resolve (no address)")
        return addresses[0]

    async def _ask(self, name: str, qtype: int) -> DNSRecord:
        assert self.server is not None
        query = DNSRecord(q=DNSQuestion(name, qtype))
        query.header.id = secrets.randbelow(65536)
        query.add_ar(EDNS0(udp_len=1232))
        wire = bytes(query.pack())
        timeout = int(ctx.options.egress_resolver_timeout)
        for _ in range(TRIES):
            try:
                raw = await asyncio.wait_for(_udp_exchange(self.server, wire, query.header.id), timeout)
                if raw[2] & 0x02:  # TC: the whole answer only over TCP
                    raw = await asyncio.wait_for(_tcp_exchange(self.server, wire), timeout)
            except TimeoutError:
                continue
            except OSError as exc:
                raise ResolveError("unreachable", f"could not be looked up: {exc.strerror or exc}") from exc
            try:
                answer = DNSRecord.parse(raw)
            except (DNSError, struct.error, IndexError) as exc:
                raise ResolveError("failed", "could not be looked up: a malformed answer") from exc
            if answer.header.id != query.header.id or answer.q.qname != query.q.qname:
                continue  # not the answer to this question
            return answer
        raise ResolveError("timeout", f"could not be looked up: no answer within {TRIES}×{timeout} s")


def _ede(answer: DNSRecord) -> tuple[int, str] | None:
    """The first Extended DNS Error of an answer: (code, text)."""
    for rr in answer.ar:
        if rr.rtype != QTYPE.OPT:
            continue
        for opt in rr.rdata:
            if opt.code == EDE_OPTION and len(opt.data) >= 2:
                return int.from_bytes(opt.data[:2], "big"), bytes(opt.data[2:]).decode("utf-8", "replace")
    return None


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, query_id: int) -> None:
        self.query_id = query_id
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if len(data) >= 12 and int.from_bytes(data[:2], "big") == self.query_id and not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def _udp_exchange(server: tuple[str, int], wire: bytes, query_id: int) -> bytes:
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: _Exchange(query_id), remote_addr=server)
    try:
        transport.sendto(wire)
        return await protocol.answer
    finally:
        transport.close()


async def _tcp_exchange(server: tuple[str, int], wire: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*server)
    try:
        writer.write(len(wire).to_bytes(2, "big") + wire)
        await writer.drain()
        size = int.from_bytes(await reader.readexactly(2), "big")
        return await reader.readexactly(min(size, MAX_ANSWER))
    except asyncio.IncompleteReadError as exc:
        raise OSError("the resolver closed the TCP connection early") from exc
    finally:
        writer.close()
