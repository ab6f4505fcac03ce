"""Transports and lifecycle: sockets in, ``Resolver.handle`` per message, signals.

UDP datagrams and TCP messages (RFC 7766: length-prefixed, many per
connection, answered as they complete) both go to ``Resolver.handle`` with a
sink to answer through; a UDP datagram whose bytes after the ID were answered
before is first looked up in ``Resolver.hot`` and answered from there.
``serve`` binds every ``--listen`` address (UDP and TCP on the same port;
port 0 picks one), starts the policy watcher, and
waits for a signal: SIGHUP reloads the policy on a helper thread and reopens
the event log; SIGTERM/SIGINT stop taking queries, let the ones in flight
finish, flush the event log, and return 0.  With ``workers`` > 1 the sockets
carry SO_REUSEPORT so that several processes share each port.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from policies import DnsSettings

from .config import parse_hostport, upstreams
from .metrics import NullMetrics
from .resolver import EventSink, Resolver
from .upstream import Forwarder

UDP_RCVBUF = 4 << 20
TCP_IDLE = 10.0  # seconds a TCP connection may sit with nothing to say (RFC 7766 §6.2.3)


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # A query whose bytes were answered before, by this policy, from an
        # allowed client: send the same answer with this query's ID.
        r = self.resolver
        hot = r.hot.get(data[2:])
        if (hot is not None and hot[0] > time.monotonic() and r.acl.seen.get(addr[0])
                and r.holder.view is r.hot_view and self.transport is not None):
            self.transport.sendto(data[:2] + hot[1], addr)
            if hot[2] is not None:
                r.tally(hot[2], addr[0], addr[1])
            return
        r.handle(data, addr[0], addr[1], self, addr)

    def send(self, data: bytes | bytearray, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about some earlier answer: nothing to do


class TcpConnection(asyncio.Protocol):
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.client = ""
        self.port = 0
        self._idle: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        self.client, self.port = peer[0], peer[1]
        self._touch()

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            length = (buf[0] << 8) | buf[1]
            if length == 0:
                self._close()
                return
            if len(buf) < 2 + length:
                break
            message = bytes(buf[2 : 2 + length])
            del buf[: 2 + length]
            self.resolver.handle(message, self.client, self.port, self, None)
        self._touch()

    def send(self, data: bytes | bytearray, addr: Any) -> None:
        t = self.transport
        if t is not None and not t.is_closing():
            t.write(len(data).to_bytes(2, "big") + bytes(data))
            self._touch()

    def _touch(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self._idle = asyncio.get_running_loop().call_later(TCP_IDLE, self._close)

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._idle is not None:
            self._idle.cancel()
        self.transport = None


def bind(host: str, port: int, kind: socket.SocketKind, reuseport: bool) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind is socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind is socket.SOCK_DGRAM:
            rcvbuf(sock)
        sock.bind((host, port))
        sock.setblocking(False)
        if kind is socket.SOCK_STREAM:
            sock.listen(1024)
    except OSError:
        sock.close()
        raise
    return sock


def rcvbuf(sock: socket.socket, size: int = UDP_RCVBUF) -> None:
    """A deep receive queue absorbs bursts while the loop is busy or descheduled
    (the kernel caps it at net.core.rmem_max)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError:
        pass


def bind_pair(host: str, port: int, reuseport: bool) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same port; port 0 picks one free for both."""
    for _ in range(20):
        udp = bind(host, port, socket.SOCK_DGRAM, reuseport)
        try:
            return udp, bind(host, udp.getsockname()[1], socket.SOCK_STREAM, reuseport)
        except OSError:
            udp.close()
            if port:
                raise
    raise OSError(f"no port free for both UDP and TCP on {host}")


def fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def serve(settings: DnsSettings, holder: Any, events: Any, metrics: NullMetrics,
                sockets: list[tuple[socket.socket, socket.socket]] | None = None,
                reload_interval: float = 1.0, announce: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None, forward_hup: Callable[[], None] | None = None) -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code (0 after a clean drain)."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    loop = asyncio.get_running_loop()
    forwarder = Forwarder(upstreams(settings), settings.timeout, metrics.upstream, metrics.rejected)
    await forwarder.start()
    sink: EventSink = events
    resolver = Resolver(holder, settings, forwarder, sink, metrics)
    resolver.attach(loop)
    if sockets is None:
        sockets = [bind_pair(*parse_hostport(a, 53), settings.workers > 1) for a in settings.listen]
    udp_transports: list[asyncio.BaseTransport] = []
    tcp_servers: list[asyncio.Server] = []
    for usock, tsock in sockets:
        udp, _ = await loop.create_datagram_endpoint(lambda: UdpListener(resolver), sock=usock)
        udp_transports.append(udp)
        tcp_servers.append(await loop.create_server(lambda: TcpConnection(resolver), sock=tsock))
        host, port = usock.getsockname()[:2]
        say(f"egress-filter dns: listening on {fmt(host, port)} (udp, tcp)")

    stop = stop or asyncio.Event()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # signal handlers can only be installed there; embedded use passes ``stop``
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    def on_hup() -> None:
        # Off the loop: loading a big policy must not stall answers.
        threading.Thread(target=holder.reload, name="egress-dns-sighup", daemon=True).start()
        reopen = getattr(events, "reopen", None)
        if reopen is not None:
            reopen()
        if forward_hup is not None:
            forward_hup()  # e.g. to the worker processes

    if in_main:
        loop.add_signal_handler(signal.SIGHUP, on_hup)
    holder.start(reload_interval)
    say(f"egress-filter dns: ready (upstreams {', '.join(settings.upstreams)}; "
        f"block response {settings.block_response}; mode {holder.view.mode.value}; "
        f"loop {type(loop).__module__.split('.')[0]})")
    try:
        await stop.wait()
    finally:
        for srv in tcp_servers:
            srv.close()
        await resolver.drain(settings.timeout + 0.5)
        for utransport in udp_transports:
            utransport.close()
        forwarder.close()
        holder.stop()
    say("egress-filter dns: stopped")
    return 0
