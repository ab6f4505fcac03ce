"""The batched UDP transport: ``recvmmsg`` in, the listener per datagram, ``sendmmsg`` out.

When the socket is readable, ``BatchedTransport`` drains it in batches of up
to ``mmsg.Batcher.size`` datagrams per system call.  Each datagram goes to
the listener's ``datagram_received`` with its own source address, so the
ACL, the client's group and every client-dependent rule apply per datagram,
as on the plain path.  Answers the listener sends while a batch is being
handled (ready block answers, the canary, cache hits: everything the fast
path answers from bytes) are collected and leave in one ``sendmmsg`` at the
end of the batch.  Answers sent outside a batch (upstreams' answers, read
by the forwarder's own callback) are collected too, and leave together at
the end of that turn of the event loop (``_flush``).

Fairness: after ``BATCHES_PER_TURN`` batches the transport returns to the
event loop, even if more datagrams wait, so that upstream answers and TCP
clients get their turn during a burst; the rest stay queued in the kernel's
receive buffer (bounded by SO_RCVBUF: what overflows it is dropped by the
kernel and counted in its UDP statistics, ``RcvbufErrors``).  Datagrams
longer than the buffer (no DNS query is) and answers the kernel does not
take are counted, never lost silently.

On a wildcard address the packet info of each query is asked for and given
back with its answer, so the answer leaves from the address the client
asked (see ``reply_pktinfo``).
"""

from __future__ import annotations

import asyncio
import functools
import socket
from typing import Any, Protocol

from . import mmsg

BATCH = 64  # datagrams per system call: the measured knee (issue 13), as Unbound's msg-buffer count
BATCHES_PER_TURN = 8  # then the loop serves the others
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO_MEMO = 4096  # received packet infos kept with the one to answer with


class Listener(Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None: ...

    def datagram_received(self, data: bytes, addr: Any) -> None: ...


class Counts(Protocol):
    def query(self, result: str) -> None: ...


@functools.lru_cache(maxsize=PKTINFO_MEMO)  # one entry per local address and interface in use
def reply_pktinfo(raw: bytes, v6: bool) -> bytes:
    """The packet info to answer with, from the one a query came with.

    IPv6's ``in6_pktinfo`` (address asked, interface) is given back as it is.
    IPv4's ``in_pktinfo {ifindex; spec_dst; addr}`` becomes one that names
    only the source address (the one asked) and leaves the interface to the
    route, as dnsmasq and Unbound answer."""
    if not raw or v6:
        return raw
    return b"\0\0\0\0" + raw[8:12] + b"\0\0\0\0"


class ReaderTransport(asyncio.DatagramTransport):
    """A datagram transport over a socket the loop watches with ``add_reader``."""

    sock: socket.socket
    loop: asyncio.AbstractEventLoop
    closed = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def is_closing(self) -> bool:
        return self.closed

    def abort(self) -> None:
        self.close()


class BatchedTransport(ReaderTransport):
    def __init__(self, sock: socket.socket, listener: Listener, loop: asyncio.AbstractEventLoop,
                 counts: Counts, wildcard: bool):
        super().__init__()
        v6 = sock.family == socket.AF_INET6
        pktinfo = ((socket.IPPROTO_IPV6, socket.IPV6_PKTINFO) if v6 else (socket.IPPROTO_IP, IP_PKTINFO)) \
            if wildcard else None
        self.batcher = mmsg.Batcher(sock, size=BATCH, pktinfo=pktinfo)
        self.sock = sock
        self.listener = listener
        self.loop = loop
        self.counts = counts
        self.wildcard = wildcard
        self.v6 = v6
        self.pending: list[tuple[bytes | bytearray, tuple[object, ...], bytes]] | None = None
        # A listener that gives ready answers as bytes has them sent from the receive buffers
        # (``Batcher.exchange``), but for a wildcard socket, whose answers need packet info.
        self.ready: mmsg.Ready | None = None if wildcard else getattr(listener, "ready_bytes", None)
        self.unsent = 0  # answers the kernel did not take (full send buffer, refused address)
        self.truncated = 0  # datagrams longer than the buffer, dropped unanswered
        self.closed = False
        listener.connection_made(self)
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        """The first datagram of a wake-up is read with one plain call: at low
        and moderate rates a wake-up finds one or two, and the batch calls'
        ctypes set-up costs more than they save (measured: a lone query took
        15 µs batched against 6 µs plain, round trip included).  If another
        one waits, the rest of the burst is read in batches."""
        first = self._read_one()
        if first is None:
            return
        self._handle([first])
        for _ in range(BATCHES_PER_TURN):
            try:
                if self.ready is not None:
                    got = self.batcher.exchange(self.ready)
                    self._unsent(got.unsent)
                    if not got.slow and not got.answered:
                        return
                    batch = got.slow
                else:
                    batch = self.batcher.recv()
                    if not batch:
                        return
            except OSError:  # closed under us at shutdown
                self.close()
                return
            if batch:
                self._handle(batch)

    def _read_one(self) -> mmsg.Datagram | None:
        size = self.batcher.bufsize
        try:
            if self.wildcard:
                data, ancdata, flags, addr = self.sock.recvmsg(size, mmsg.CONTROL_SIZE)
                # The only control message asked for is the packet info.
                info = ancdata[0][2] if ancdata else b""
                return mmsg.Datagram(data, addr, info, bool(flags & mmsg.MSG_TRUNC))
            data, addr = self.sock.recvfrom(size + 1)
            return mmsg.Datagram(data[:size], addr, b"", len(data) > size)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            if self.sock.fileno() < 0:  # closed under us at shutdown
                self.close()
            # else an ICMP error about an earlier answer: the reader fires again if more wait
            return None

    def _handle(self, batch: list[mmsg.Datagram]) -> None:
        """Each datagram to the listener; the answers it gives meanwhile leave together."""
        on_datagram = self.listener.datagram_received
        if self.pending is None:  # else answers from earlier in this turn wait: they leave with these
            self.pending = []
        try:
            for d in batch:
                if d.truncated:
                    self.truncated += 1
                    self.counts.query("truncated")
                elif self.wildcard:
                    on_datagram(d.data, (*d.addr, reply_pktinfo(d.pktinfo, self.v6)))
                else:
                    on_datagram(d.data, d.addr)
        finally:
            out, self.pending = self.pending, None
            self._send(out)

    def _send(self, out: list[tuple[bytes | bytearray, tuple[object, ...], bytes]]) -> None:
        if not out or self.closed:
            return
        try:
            if len(out) == 1:  # one plain call: cheaper than a batch of one
                data, addr, info = out[0]
                if info and self.batcher.pktinfo is not None:
                    self.sock.sendmsg((data,), ((*self.batcher.pktinfo, info),), 0, addr)
                else:
                    self.sock.sendto(data, addr)
                sent = 1
            else:
                sent = self.batcher.send(out)
        except OSError:
            sent = 0
        self._unsent(len(out) - sent)

    def _unsent(self, lost: int) -> None:
        """Answers the kernel did not take: counted, as a full link would drop them."""
        if lost > 0:
            self.unsent += lost
            for _ in range(lost):
                self.counts.query("unsent")

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self.wildcard:
            item = (data, addr[:-1], addr[-1])
        else:
            item = (data, addr, b"")
        if self.pending is not None:
            self.pending.append(item)  # leaves with the rest of the batch
        else:
            self.pending = [item]
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        """The answers sent since the turn of the loop began, outside a batch, in one call."""
        out, self.pending = self.pending, None
        if out:
            self._send(out)

def available() -> bool:
    """Whether this system has the calls (Linux); elsewhere the plain path serves."""
    return mmsg.load() is not None
