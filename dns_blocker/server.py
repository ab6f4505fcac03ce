"""Transports and lifecycle: sockets in, ``Resolver.handle`` per message, signals.

UDP datagrams and TCP messages (RFC 7766: length-prefixed, many per
connection, answered as they complete) both go to ``Resolver.handle`` with a
sink to answer through; a UDP datagram is first offered to
``ReadyAnswers.answer`` (the ready answers of the asker's group).
A UDP listener bound to a wildcard address (0.0.0.0, ::) is read with
``recvmsg`` instead (``PktinfoTransport``), so that each answer leaves from
the address its query was sent to; a specific address keeps the loop's own
transport.  TCP connections are bounded in time, unread answers and number
(``TcpConnection``, ``TcpGate``, ``tcp_limits``).
``serve`` binds every ``--listen`` address (UDP and TCP on the same port;
port 0 picks one), starts the policy watcher, and
waits for a signal: SIGHUP reloads the policy on a helper thread and reopens
the event log; SIGTERM/SIGINT stop taking queries, let the ones in flight
finish, flush the event log, and return 0.  With ``workers`` > 1 the sockets
carry SO_REUSEPORT so that several processes share each port.
"""

from __future__ import annotations

import asyncio
import ipaddress
import resource
import signal
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from policies import DnsSettings
from policies.addresses import join_hostport
from runtime import notify

from . import batched
from .chain.telemetry import EventSink
from .config import parse_hostport, upstreams
from .local import LocalAnswers
from .metrics import NullMetrics
from .resolver import Resolver
from .upstream import Forwarder

UDP_RCVBUF = 4 << 20
# Answers a TCP client may leave unread before its connection stops being
# read (the high-water mark), and before it is cut off (a hard limit for the
# answers to queries it had already sent): 64 KiB, and one maximal answer more.
TCP_WRITE_HIGH = 64 << 10
TCP_WRITE_LIMIT = TCP_WRITE_HIGH + 65_537
# Questions of one connection read and not yet answered (most wait on an
# upstream): past this, the connection is not read until half are answered.
# A message that gets no answer at all (a response sent as a query) counts
# for good, so a client that sends those stops being read and is cut.
TCP_MAX_UNANSWERED = 256
TCP_DRAIN_POLL = 0.05  # seconds between looks at a stalled connection's buffer
# The kernel's send buffer of a TCP client connection (autotuning would let it
# grow to net.ipv4.tcp_wmem's maximum, 4 MiB, for a client that never reads).
TCP_SNDBUF = 64 << 10
# File descriptors never given to TCP clients (at least this many, or a
# quarter of the limit): upstream sockets, policy and list reloads, the log.
FD_RESERVE = 256
FD_RAISE_TO = 65_536  # how far the soft RLIMIT_NOFILE is raised towards the hard one
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux's value; Python does not export it
PKTINFO_CMSG = socket.CMSG_SPACE(20)  # room for an in_pktinfo (12 bytes) or an in6_pktinfo (20)
PKTINFO_BATCH = 64  # datagrams read per wake-up of a wildcard listener


class UdpListener(asyncio.DatagramProtocol):
    def __init__(self, resolver: Resolver):
        self.resolver = resolver
        self.transport: asyncio.DatagramTransport | None = None
        self.ready = resolver.ready.answer  # bound once: this is the path of every repeated question
        self.ready_bytes = resolver.ready.bytes_for  # the same, for the batched transport's exchange
        self.sendto: Callable[[bytes, Any], None] = lambda data, addr: None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sendto = self.transport.sendto  # type: ignore[union-attr]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if not self.ready(data, addr, self.sendto):  # step 0, the ready answers (chain/ready.py)
            self.resolver.handle(data, addr[0], addr[1], self, addr)

    def send(self, data: bytes | bytearray, addr: Any) -> None:
        if self.transport is not None:
            self.transport.sendto(data, addr)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error about some earlier answer: nothing to do


class PktinfoTransport(batched.ReaderTransport):
    """A UDP socket bound to a wildcard address, read with ``recvmsg`` so that
    each answer leaves from the address its query was sent to.

    Bound to 0.0.0.0 on a host with two addresses, the kernel picks the source
    of a plain ``sendto`` by route, often the other address, and the client
    (whose socket is connected to the one it asked) drops the answer.  The
    destination of each query comes with it (IP_PKTINFO / IPV6_PKTINFO) and is
    given back as the source of the answer, as dnsmasq and Unbound do.  The
    listener sees the usual ``(host, port, ...)`` address with the ancillary
    data to answer with appended, and its ``sendto`` calls come back here.
    Only wildcard listeners pay for this; a specific address keeps the event
    loop's own datagram transport.
    """

    def __init__(self, sock: socket.socket, listener: UdpListener, loop: asyncio.AbstractEventLoop):
        super().__init__()
        self.sock = sock
        self.listener = listener
        self.loop = loop
        v6 = sock.family == socket.AF_INET6
        self.level = socket.IPPROTO_IPV6 if v6 else socket.IPPROTO_IP
        self.kind = socket.IPV6_PKTINFO if v6 else IP_PKTINFO
        self.v6 = v6
        self.closed = False
        listener.connection_made(self)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        recvmsg = self.sock.recvmsg
        on_datagram = self.listener.datagram_received
        for _ in range(PKTINFO_BATCH):  # then let the loop serve others
            try:
                data, ancdata, _flags, addr = recvmsg(65_535, PKTINFO_CMSG)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error about an earlier answer
            # The only control message asked for is the packet info.
            on_datagram(data, (*addr, batched.reply_pktinfo(ancdata[0][2] if ancdata else b"", self.v6)))

    def sendto(self, data: Any, addr: Any = None) -> None:
        info = addr[-1]
        try:
            if info:
                self.sock.sendmsg((data,), ((self.level, self.kind, info),), 0, addr[:-1])
            else:
                self.sock.sendto(data, addr[:-1])
        except OSError:
            pass  # a full send buffer drops the answer, as a full link would; the client retries

def is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


@dataclass(frozen=True, slots=True)
class TcpLimits:
    """How much TCP the server takes, so that no client can starve the others
    or the process itself of file descriptors and memory."""

    timeout: float  # idle limit, and the deadline for the whole of one message
    connections: int  # open at once, overall
    per_client: int  # open at once from one client address
    reserve: int  # file descriptors kept free for upstream sockets, reloads and the event log


def tcp_limits(settings: DnsSettings) -> TcpLimits:
    """The overall cap is ``tcp_connections`` lowered, if need be, to the file
    limit less a reserve, as Unbound sizes ``incoming-num-tcp``: 1,500 stalled
    connections under a 1,024 limit must not make upstream TCP and reloads fail
    with EMFILE.  The soft limit is first raised to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        want = FD_RAISE_TO if hard == resource.RLIM_INFINITY else min(hard, FD_RAISE_TO)
        if want > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
                soft = want
            except (OSError, ValueError):
                pass
    if soft == resource.RLIM_INFINITY:
        soft = FD_RAISE_TO
    reserve = max(soft // 4, min(FD_RESERVE, soft // 2))
    cap = max(1, min(settings.tcp_connections, soft - reserve))
    return TcpLimits(settings.tcp_timeout, cap, min(settings.tcp_per_client, cap), reserve)


class TcpGate:
    """The connections open now, oldest first, and how many per client address
    (one gate per process, shared by every listener).

    Over the per-client cap the newcomer is turned away: that address is the
    one holding too many.  Over the overall cap the oldest connection is cut
    instead, so that a flood of stalled connections from many addresses cannot
    lock out a client that comes to ask one question now; DNS over TCP is
    short exchanges, and a stalled connection is the oldest.
    """

    def __init__(self, limits: TcpLimits):
        self.limits = limits
        self.conns: dict[TcpConnection, None] = {}  # insertion order: oldest first
        self.by_client: dict[str, int] = {}
        self.turned_away = 0
        self.evicted = 0

    def admit(self, conn: TcpConnection) -> bool:
        n = self.by_client.get(conn.client, 0)
        if n >= self.limits.per_client:
            self.turned_away += 1
            return False
        if len(self.conns) >= self.limits.connections:
            oldest = next(iter(self.conns))
            self.release(oldest)
            oldest.cut()
            self.evicted += 1
        self.conns[conn] = None
        self.by_client[conn.client] = n + 1
        conn.admitted = True
        return True

    def release(self, conn: TcpConnection) -> None:
        if not conn.admitted:
            return
        conn.admitted = False
        del self.conns[conn]
        n = self.by_client[conn.client] - 1
        if n:
            self.by_client[conn.client] = n
        else:
            del self.by_client[conn.client]


class TcpConnection(asyncio.Protocol):
    """One RFC 7766 connection: length-prefixed messages in, answers out as they complete.

    One timer bounds the connection's life in each of its states: idle (no
    bytes of a message yet), in the middle of a message (the deadline runs from
    its first byte and is not moved by later ones, so one byte a second cannot
    keep it open), and stalled (answers queued past ``TCP_WRITE_HIGH`` because
    the client does not read: reading pauses, so it cannot queue more).  When
    the timer fires the connection is aborted, not closed: a close would wait
    for queued answers to drain, which a client that never reads never lets
    happen.  Apart from the timer, reading is also held while
    ``TCP_MAX_UNANSWERED`` questions wait for their answers, so pipelined cache
    misses cannot pile up behind a slow upstream.
    """

    def __init__(self, resolver: Resolver, gate: TcpGate):
        self.resolver = resolver
        self.gate = gate
        self.timeout = gate.limits.timeout
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.client = ""
        self.port = 0
        self.admitted = False
        self.partial = False  # the deadline of a message begun is running
        self.stalled = False  # answers are queued past the high-water mark
        self.unanswered = 0  # messages handed to the resolver and not answered yet
        self.held = False  # reading paused until some of those are answered
        self.eof = False  # the client closed its side: answer what was read, then close ours
        self._timer: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the timer cuts the connection (loop time)
        self._poll: asyncio.TimerHandle | None = None  # while stalled: the next look at the buffer
        self._loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        t: asyncio.Transport = transport  # type: ignore[assignment]
        peer = t.get_extra_info("peername") or ("", 0)
        self.client, self.port = peer[0], peer[1]
        if not self.gate.admit(self):
            t.abort()  # over the per-client cap: let go of the descriptor at once
            return
        self.transport = t
        t.set_write_buffer_limits(high=TCP_WRITE_HIGH)
        sock = t.get_extra_info("socket")
        if sock is not None:
            try:  # unread answers then wait in our bounded buffer, not in megabytes of kernel memory
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, TCP_SNDBUF)
            except OSError:
                pass
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._consume()

    def _consume(self) -> None:
        buf = self.buf
        while len(buf) >= 2 and not self.stalled:
            if self.unanswered >= TCP_MAX_UNANSWERED:
                # Questions waiting on the upstreams hold their bytes (and, behind
                # a question in flight, a place in its queue): read no more until
                # some are answered.
                if not self.held and self.transport is not None:
                    self.held = True
                    self.transport.pause_reading()
                return
            length = (buf[0] << 8) | buf[1]
            if length == 0:
                self._close()
                return
            if len(buf) < 2 + length:
                break
            message = bytes(buf[2 : 2 + length])
            del buf[: 2 + length]
            self.partial = False
            self.unanswered += 1
            self.resolver.handle(message, self.client, self.port, self, None)
        if self.transport is None or self.stalled:
            return  # closed meanwhile, or the stall timer runs
        if not buf:
            self._arm()  # idle again: the idle limit starts over
        elif not self.partial:
            self.partial = True  # a new message has begun: its deadline starts now, once
            self._arm()

    def send(self, data: bytes | bytearray, addr: Any) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.get_write_buffer_size() > TCP_WRITE_LIMIT:
            t.abort()  # answers to queries read before the stall would still pile up
            return
        t.write(len(data).to_bytes(2, "big") + bytes(data))
        if self.unanswered:
            self.unanswered -= 1
        if self.eof and not self.unanswered and not self.buf:
            self._close()  # the last answer the half-closed client waits for
            return
        # Checked here, after every answer, rather than left to the transport's
        # pause_writing: uvloop calls that only when it next flushes, after a
        # whole read (256 KiB of queries) has been answered into the buffer.
        if t.get_write_buffer_size() > TCP_WRITE_HIGH:
            self.pause_writing()
            return
        if self.held and self.unanswered <= TCP_MAX_UNANSWERED // 2:
            self.held = False
            if not self.stalled:
                t.resume_reading()
                self._consume()
        elif not self.stalled and not self.partial:
            self._arm()

    def eof_received(self) -> bool:
        """The client shut down its sending side (RFC 7766 section 6.2.3 lets it, after its
        queries): keep ours open until every query read is answered, then close.  The
        connection's timer still bounds the wait, also for a query the resolver drops."""
        self.eof = True
        if self.transport is None:
            return False
        if not self.unanswered and not self.buf:
            return False  # nothing in flight: asyncio closes the connection now
        return True

    def pause_writing(self) -> None:
        """Too many answers unread: stop reading, start the stall deadline, and
        look again shortly (the transport may drain without telling us)."""
        if self.stalled or self.transport is None:
            return
        self.stalled = True
        self.transport.pause_reading()
        self._arm()
        if self._poll is None:
            self._poll = self._loop.call_later(TCP_DRAIN_POLL, self._drained)

    def _drained(self) -> None:
        self._poll = None
        t = self.transport
        if t is None or not self.stalled:
            return
        if t.get_write_buffer_size() > TCP_WRITE_HIGH // 2:
            self._poll = self._loop.call_later(TCP_DRAIN_POLL, self._drained)
        else:
            self.resume_writing()

    def resume_writing(self) -> None:
        if not self.stalled:
            return
        self.stalled = False
        if self.transport is not None and not self.transport.is_closing() and not self.held:
            self.transport.resume_reading()
            self._consume()  # messages read before the stall

    def _arm(self) -> None:
        # Only the deadline moves (always later: each is now + timeout); the one
        # timer is re-set when it fires early.  A cancel and a new timer per
        # message cost more, and under uvloop the cancelled timers' memory
        # piled up faster than it was freed under a pipelining flood.
        self._due = self._loop.time() + self.timeout
        if self._timer is None:
            self._timer = self._loop.call_at(self._due, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport is None:
            return
        if self._loop.time() >= self._due:
            self.cut()
        else:
            self._timer = self._loop.call_at(self._due, self._check)

    def progress(self) -> None:
        """A long answer (a zone transfer) moved on: its deadline starts over."""
        self._arm()

    def cut(self) -> None:
        """Abort now, dropping whatever is queued (a deadline passed, or evicted)."""
        if self.transport is not None:
            self.transport.abort()

    def _close(self) -> None:
        # The timer stays armed: if the queued answers never drain, it aborts.
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._timer, self._poll):
            if timer is not None:
                timer.cancel()
        self.gate.release(self)
        self.transport = None
        self.buf = bytearray()


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
            if is_wildcard(host):  # learn each query's destination, to answer from it
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                else:
                    sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
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
    return join_hostport(host, port)


async def serve(settings: DnsSettings, holder: Any, events: Any, metrics: NullMetrics,
                sockets: list[tuple[socket.socket, socket.socket]] | None = None,
                reload_interval: float = 1.0, announce: Callable[[str], None] | None = None,
                stop: asyncio.Event | None = None, forward_hup: Callable[[], None] | None = None,
                udp_transport: str = "auto") -> int:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); returns the exit code (0 after a clean drain).

    ``udp_transport``: ``batched`` (recvmmsg/sendmmsg, Linux), ``plain`` (the
    loop's own datagram transport, or recvmsg on a wildcard address), or
    ``auto``: batched where the calls exist."""
    say = announce or (lambda line: print(line, file=sys.stderr, flush=True))
    loop = asyncio.get_running_loop()
    forwarder = Forwarder(upstreams(settings), settings.timeout, metrics.upstream, metrics.rejected)
    await forwarder.start()
    sink: EventSink = events
    if hasattr(holder, "report_to"):
        holder.report_to(events, "dns")  # each reload becomes an event beside the decisions
    local = LocalAnswers(settings, lambda ups: Forwarder(upstreams(settings, ups), settings.timeout,
                                                         metrics.upstream, metrics.rejected))
    resolver = Resolver(holder, settings, forwarder, sink, metrics, local)
    resolver.attach(loop)
    rpz = None
    if settings.rpz:
        from .rpz import RpzPrimary

        rpz = RpzPrimary(settings, holder, events, say)
        rpz.attach(loop)
        # The one hook: our zones' SOA, NS, AXFR and IXFR are taken out before the resolver.
        resolver.handle = rpz.front(resolver.handle, resolver.acl.allows)  # type: ignore[method-assign,assignment]
    if sockets is None:
        sockets = [bind_pair(*parse_hostport(a, 53), settings.workers > 1) for a in settings.listen]
    udp_transports: list[asyncio.BaseTransport] = []
    tcp_servers: list[asyncio.Server] = []
    limits = tcp_limits(settings)
    gate = TcpGate(limits)  # shared by every listener: the caps are per process
    batch = udp_transport == "batched" or (udp_transport == "auto" and batched.available())
    for usock, tsock in sockets:
        if batch:
            udp_transports.append(batched.BatchedTransport(usock, UdpListener(resolver), loop, metrics,
                                                           is_wildcard(usock.getsockname()[0])))
        elif is_wildcard(usock.getsockname()[0]):
            udp_transports.append(PktinfoTransport(usock, UdpListener(resolver), loop))
        else:
            udp, _ = await loop.create_datagram_endpoint(lambda: UdpListener(resolver), sock=usock)
            udp_transports.append(udp)
        tcp_servers.append(await loop.create_server(lambda: TcpConnection(resolver, gate), sock=tsock))
        host, port = usock.getsockname()[:2]
        say(f"egress-filter dns: listening on {fmt(host, port)} (udp{' batched' if batch else ''}, tcp)")
    say(f"egress-filter dns: tcp: at most {limits.connections} connections, {limits.per_client} per "
        f"client address, {limits.timeout:g} s per message or idle; {limits.reserve} file descriptors "
        f"kept for upstreams and reloads")

    stop = stop or asyncio.Event()
    in_main = threading.current_thread() is threading.main_thread()
    if in_main:  # signal handlers can only be installed there; embedded use passes ``stop``
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    reload = notify.around_reload(holder.reload)  # RELOADING=1 ... READY=1 to a service manager

    def on_hup() -> None:
        # Off the loop: loading a big policy must not stall answers.
        threading.Thread(target=reload, name="egress-dns-sighup", daemon=True).start()
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
    # Every listener is bound and attached to the loop: a query sent now is answered.
    notify.ready(f"serving on {', '.join(fmt(*u.getsockname()[:2]) for u, _ in sockets)}")
    try:
        await stop.wait()
    finally:
        notify.stopping()
        for srv in tcp_servers:
            srv.close()
        await resolver.drain(settings.timeout + 0.5)
        if rpz is not None:
            await rpz.close()
        for utransport in udp_transports:
            utransport.close()
        await forwarder.aclose()
        await local.aclose()
        holder.stop()
    lost = [t for t in udp_transports
            if isinstance(t, batched.BatchedTransport) and (t.unsent or t.truncated)]
    if lost:
        say(f"egress-filter dns: udp: {sum(t.unsent for t in lost)} answers the kernel did not take, "
            f"{sum(t.truncated for t in lost)} over-long queries dropped")
    if gate.turned_away or gate.evicted:
        say(f"egress-filter dns: tcp: {gate.turned_away} connections refused over the per-client cap, "
            f"{gate.evicted} cut over the overall cap")
    say("egress-filter dns: stopped")
    return 0
