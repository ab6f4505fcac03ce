"""Forwarding to the upstream resolvers: UDP first, TCP when truncated, failover.

    Query ─▶ clean query (fresh ID, 0x20 name, our EDNS) ─▶ fresh socket, random port ─▶ upstream
                                                                                          │
    (bytes, Answer) ◀─ scan ◀─ scrub ◀─ only the datagram that matches in every respect ◀─┘

What goes upstream is built from the parsed question (``Query.key``), never
from the client's bytes: a fresh random ID, the name with the case of its
letters randomised (0x20), the client's RD, CD and DO bits, and our own OPT
record (UDP size ``UPSTREAM_UDP``) when the client sent one.  Each UDP query
gets a socket of its own on a random source port (like Unbound's
``outgoing-range``), closed when the question is settled, so an off-path
spoofer must guess the port, the ID and the case of the name together.  A
datagram is accepted only when its source address and port, its ID and its
question (type, class and name; the name's case too once the upstream has
shown that it keeps it, like Unbound's ``use-caps-for-id``) all match;
anything else is dropped and counted (``reject``).  An upstream that does
not keep the case is not held to it; one that kept it and then fails the
case check ``CASE_STRIKES`` times in a row is no longer held to it either.
Accepted answers are scrubbed (``scrub``) before anything else sees them.

The sockets are unconnected (so wrong-source datagrams reach us and are
counted) with ``IP_RECVERR`` set (so an ICMP port unreachable still ends the
wait at once).  At most ``max_sockets`` are open at once; beyond that a
question fails at once (SERVFAIL) rather than waiting for a socket.

The resolver asks through ``begin``, which calls back with the result: the
first try over UDP runs on callbacks (its socket in one epoll set the loop
watches, its deadline in one queue, its datagram sent with the others of the
loop's turn), and only what goes wrong continues as a task in ``_resolve``,
the loop that ``resolve`` awaits.

Upstreams are tried in order within one overall time budget (``timeout``):
each gets an equal share of what is left, so the time a failed upstream did
not use passes to the next.  One that failed is moved to the back for
``BACKOFF`` seconds and is tried again afterwards, so service recovers on its
own.  An answer with TC set is fetched again over TCP from the same upstream.
An upstream SERVFAIL, REFUSED, NOTIMP or FORMERR counts as a failure (labelled
``servfail``, ``refused``, ``notimp``, ``formerr``) and the next one is asked;
when none is left the client gets SERVFAIL, as from Unbound.

Encrypted upstreams (DNS-over-TLS in ``upstream_tls``, DNS-over-HTTPS in
``upstream_https``) are ``Channel``s in the same list, under the same budget,
order, back-off and rcode rules.  They get the same clean query (ID 0, the
name lower-cased: the channel is authenticated, so 0x20 adds nothing, and a
steady query lets DoH caches work); the channel multiplexes it over the
connection it keeps open and gives back the answer with ID 0, and the answer
must match the question and is scrubbed as a UDP one is.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import itertools
import os
import resource
import select
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol

from policies.addresses import join_hostport

from .scrub import scrub
from .wire import (
    FORMERR,
    KEY_CD,
    KEY_DO,
    KEY_EDNS,
    KEY_RD,
    NOTIMP,
    REFUSED,
    SERVFAIL,
    Answer,
    Malformed,
    Query,
    scan_answer,
)

BACKOFF = 5.0
UPSTREAM_UDP = 1232  # our EDNS UDP size upstream (DNS Flag Day 2020), whatever the client offered
MAX_SOCKETS = 4096  # as many as the resolver keeps questions in flight (MAX_INFLIGHT)
FD_RESERVE = 256  # file descriptors left for listeners, TCP clients and reloads
CASE_STRIKES = 3
READS_PER_WAKE = 64
SEND_BURST = 32  # upstream questions sent back to back (``Forwarder._send_all``)
PORT_TRIES = 8
PORT_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
IP_RECVERR, IPV6_RECVERR = 11, 25  # linux/in.h, linux/in6.h (not exported by the socket module)
_RCODE_REASONS = {SERVFAIL: "servfail", REFUSED: "refused", NOTIMP: "notimp", FORMERR: "formerr"}
_BAD_RCODES = frozenset(_RCODE_REASONS)


class UpstreamError(Exception):
    """No upstream gave a usable answer; ``reason`` is the metrics label of one failure."""

    reason = "bad-answer"


class Overloaded(UpstreamError):
    """Too many upstream sockets open: fail now rather than queue."""


class RcodeError(UpstreamError):
    """The upstream answered SERVFAIL, REFUSED, NOTIMP or FORMERR: counted under that rcode's
    name (``refused``...), not as a bad answer, and the next upstream is asked (as Unbound does)."""

    def __init__(self, label: str, rcode: int):
        self.reason = _RCODE_REASONS[rcode]
        super().__init__(f"{label}: answered {self.reason.upper()}")


class ChannelError(UpstreamError):
    """An encrypted upstream failed; ``reason`` is the metrics label (``tls``, ``http-status``...)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


class Upstream(NamedTuple):
    """A plain DNS upstream.  A named tuple: it keys several dicts on every
    forwarded question, and a tuple hashes in C (a dataclass's hash cost 5% of
    the cache-cold path)."""

    host: str
    port: int

    @property
    def label(self) -> str:
        return join_hostport(self.host, self.port)


Rejecter = Callable[[str, int], None]  # (reason, count): answers and records dropped


class Channel(Protocol):
    """An encrypted upstream: one clean query (ID 0) out, its answer (ID 0) back."""

    @property
    def label(self) -> str: ...

    async def exchange(self, query: bytes, reject: Rejecter) -> bytes: ...

    async def aclose(self) -> None: ...


Observer = Callable[[str, float | None, str | None], None]  # (upstream, seconds | None, error | None)
Done = Callable[[tuple[bytes, Answer] | None], None]  # a question's answer, or None: SERVFAIL


class _Ask:
    """A first UDP attempt in flight on callbacks (``Forwarder.begin``)."""

    __slots__ = ("deadline", "done", "order", "out", "peer", "q", "serial", "settled", "sock", "started",
                 "until", "up")

    def __init__(self, sock: socket.socket, up: Upstream, peer: tuple[str, int], q: Query, out: bytes,
                 order: Sequence[Upstream | Channel], started: float, until: float, deadline: float,
                 done: Done):
        self.sock = sock
        self.up = up
        self.peer = peer
        self.q = q
        self.out = out
        self.order = order
        self.started = started
        self.until = until  # the end of this attempt's share
        self.deadline = deadline  # the end of the whole budget
        self.done = done
        self.settled = False
        self.serial = 0  # its entry in the deadline queue (``Forwarder._deadlines``)


def port_range() -> tuple[int, int]:
    """The kernel's ephemeral port range, where our random source ports are drawn."""
    try:
        low, high = (int(x) for x in PORT_RANGE.read_text().split())
    except (OSError, ValueError):
        return 32768, 60999
    return (low, high) if 1024 <= low < high <= 65535 else (32768, 60999)


def socket_cap() -> int:
    """``MAX_SOCKETS``, or fewer when the file limit would not leave ``FD_RESERVE``."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return MAX_SOCKETS
    return max(16, min(MAX_SOCKETS, soft - FD_RESERVE))


def clean_query(qid: int, question: bytes, flags: int) -> bytes:
    """A query of our own: ``question`` (name, type, class) and the flags of ``Query.key``."""
    edns = flags & KEY_EDNS
    head = struct.pack("!HBBHHHH", qid, 1 if flags & KEY_RD else 0, 0x10 if flags & KEY_CD else 0,
                       1, 0, 0, 1 if edns else 0)
    if not edns:
        return head + question
    # OPT: root owner, our UDP size as the class, DO as the only flag, no options.
    opt = struct.pack("!BHHBBHH", 0, 41, UPSTREAM_UDP, 0, 0, 0x8000 if flags & KEY_DO else 0, 0)
    return head + question + opt


# 0x20 on every lower-case letter, 0 elsewhere: which bits of a name may flip.
_LETTERS = bytes(0x20 if 97 <= b <= 122 else 0 for b in range(256))


def mix_case(name: bytes, noise: bytes) -> bytes:
    """The lower-case wire name with each letter's case set by one random bit
    (0x20); length bytes are at most 63, never letters, so they stay as they
    are.  Whole-integer arithmetic: a Python loop per byte cost 10 µs a query."""
    flips = int.from_bytes(name.translate(_LETTERS), "big") & int.from_bytes(noise[: len(name)], "big")
    return (int.from_bytes(name, "big") ^ flips).to_bytes(len(name), "big")


class Forwarder:
    def __init__(self, upstreams: Sequence[Upstream | Channel], timeout: float,
                 observe: Observer | None = None, reject: Rejecter | None = None):
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = list(upstreams)
        self.timeout = timeout
        self._observe = observe or (lambda up, secs, err: None)
        self._reject = reject or (lambda reason, n: None)
        # Datagrams are compared with the address as recvfrom gives it (compressed IPv6).
        self._peer = {up: (ipaddress.ip_address(up.host).compressed, up.port) for up in upstreams
                      if isinstance(up, Upstream)}
        self._labels = {up: up.label for up in upstreams}
        self._down_until: dict[Upstream | Channel, float] = {}
        self._keeps_case: dict[Upstream, bool] = {}
        self._case_strikes: dict[Upstream, int] = {}
        self._noise = b""
        self._ports = port_range()
        self.max_sockets = socket_cap()
        self.open_sockets: set[socket.socket] = set()  # UDP, closed by ``close`` at shutdown
        self.open_tcp = 0
        # The first attempts in flight on callbacks (``begin``): by socket, and in deadline order.
        self._epoll: select.epoll | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._asks: dict[int, _Ask] = {}
        # (end of share, fd, serial) in deadline order: small entries, since those of settled
        # attempts wait behind the oldest one still open (up to a share's worth of questions).
        self._deadlines: deque[tuple[float, int, int]] = deque()
        self._serials = itertools.count(1)
        self._timer: asyncio.TimerHandle | None = None
        self._unsent: list[_Ask] = []  # begun in this turn of the loop, sent at its end (``_send_all``)
        self._tasks: set[asyncio.Task[tuple[bytes, Answer]]] = set()

    def _room(self) -> None:
        if len(self.open_sockets) + self.open_tcp >= self.max_sockets:
            raise Overloaded(f"{self.max_sockets} upstream sockets open")

    def _order(self, now: float) -> list[Upstream | Channel]:
        if self._down_until:  # some upstream failed lately: the healthy ones go first
            return sorted(self.upstreams, key=lambda u: self._down_until.get(u, 0.0) > now)
        return self.upstreams

    async def resolve(self, q: Query) -> tuple[bytes, Answer]:
        """The first usable answer from the upstreams, in order of health."""
        now = time.monotonic()
        return await self._resolve(q, self._order(now), 0, now + self.timeout, None)

    async def _resolve(self, q: Query, order: Sequence[Upstream | Channel], first: int, deadline: float,
                       last: Exception | None, truncated: bool = False) -> tuple[bytes, Answer]:
        """Ask ``order[first:]`` in turn within ``deadline``.  ``truncated``: the
        first of them already gave a truncated UDP answer (``begin``), so it is
        asked over TCP only."""
        for i in range(first, len(order)):
            up = order[i]
            started = time.monotonic()
            share = (deadline - started) / (len(order) - i)
            try:
                async with asyncio.timeout(share):
                    if isinstance(up, Upstream):
                        if truncated and i == first:
                            data = await self._tcp(up, q)
                        else:
                            data = await self._udp(up, q)
                            if scan_answer(data, q.qend).truncated:
                                data = await self._tcp(up, q)
                        info = scan_answer(data, q.qend)
                    else:
                        data = await self._channel(up, q)
                        info = scan_answer(data, q.qend)
                        if info.truncated:  # a stream has no size limit: TC here is a broken server
                            raise ChannelError(f"{up.label}: truncated answer over a stream", "bad-answer")
                if info.rcode in _BAD_RCODES:
                    raise RcodeError(up.label, info.rcode)
            except Overloaded:
                raise
            except TimeoutError:
                last = UpstreamError("timeout")
                self._fail(up, "timeout")
                continue
            except (OSError, UpstreamError, Malformed, asyncio.IncompleteReadError) as exc:
                last = exc
                self._fail(up, exc.reason if isinstance(exc, UpstreamError) else type(exc).__name__)
                continue
            self._down_until.pop(up, None)
            self._observe(up.label, time.monotonic() - started, None)
            return data, info
        raise UpstreamError(f"no upstream answered ({last})")

    # --- the first UDP attempt on callbacks -----------------------------------------

    def begin(self, q: Query, done: Done) -> None:
        """``resolve`` with ``done`` called on its result (None when no upstream
        gave one) instead of awaited.  The usual question, a first attempt over
        UDP that is answered, costs no task, coroutine, timer or loop reader of
        its own: its socket joins one epoll set that the loop watches, its
        deadline joins a queue in deadline order (every first attempt gets the
        same share of the budget), and its datagram leaves with the others of
        this turn of the loop (``_send_all``).  Anything else (a timeout, an error, TC, a
        bad rcode, an encrypted upstream first) goes on in a task from where
        the first attempt left off, under the same budget."""
        now = time.monotonic()
        order = self._order(now)
        up = order[0]
        if not isinstance(up, Upstream) or (poller := self._poller()) is None:
            self._spawn(self._resolve(q, order, 0, now + self.timeout, None), done)
            return
        deadline = now + self.timeout
        try:
            sock = self._socket(up)
        except Overloaded:
            done(None)
            return
        except OSError as exc:
            self._move_on(q, order, deadline, type(exc).__name__, exc, done)
            return
        qid, question = self._question(q)
        out = clean_query(qid, question, q.key[-1])
        fd = sock.fileno()
        ask = _Ask(sock, up, self._peer[up], q, out, order, now, now + self.timeout / len(order), deadline,
                   done)
        try:
            poller.register(fd, select.EPOLLIN)
        except OSError as exc:
            self._close(sock)
            self._move_on(q, order, deadline, type(exc).__name__, exc, done)
            return
        self._asks[fd] = ask
        ask.serial = serial = next(self._serials)
        self._deadlines.append((ask.until, fd, serial))
        loop = self._loop
        assert loop is not None  # set by _poller
        if self._timer is None:
            self._timer = loop.call_later(ask.until - now, self._expire)
        self._unsent.append(ask)
        if len(self._unsent) == 1:
            loop.call_soon(self._send_all)
        elif len(self._unsent) >= SEND_BURST:
            self._send_all()

    def _send_all(self) -> None:
        """Send the first attempts begun in this turn of the loop, back to back,
        ``SEND_BURST`` at most.  A datagram that finds the upstream idle costs
        its sender the wake-up (about 12 µs here against 5 µs when it is busy),
        so the questions of a batch go out together rather than one between
        each decision; but not hundreds at once, which overflow the receive
        buffer of an upstream with the default size (dnsmasq's, measured: over
        1% of the questions lost at 20k qps when a turn's 400 went out
        together)."""
        unsent, self._unsent = self._unsent, []
        for ask in unsent:
            if ask.settled:
                continue
            try:
                ask.sock.sendto(ask.out, ask.peer)
            except OSError as exc:
                self._settle(ask, None, exc)

    def _poller(self) -> select.epoll | None:
        """The epoll set of the first attempts' sockets, watched by the running loop (made on first use)."""
        loop = asyncio.get_running_loop()
        if self._epoll is not None and self._loop is loop:
            return self._epoll
        if not hasattr(select, "epoll"):
            return None
        self._stop_polling()
        try:
            self._epoll = select.epoll()
        except OSError:  # out of descriptors: questions take the task's way until one is free
            return None
        self._loop = loop
        loop.add_reader(self._epoll.fileno(), self._ready)
        return self._epoll

    def _ready(self) -> None:
        """Read every socket that epoll reports, ``READS_PER_WAKE`` datagrams each at most.
        All of them, not a batch: answers are work nearly done, and the listener reads
        hundreds of new questions a turn; taking 64 answers a turn let the questions in
        flight pile up under load (cache-cold p99 of 0.5 s at half the peak rate).  Bounded
        all the same: there are at most ``max_sockets``."""
        if self._epoll is None:
            return
        for fd, _ in self._epoll.poll(0, max(1, len(self._asks))):
            ask = self._asks.get(fd)
            if ask is None:
                continue
            peer = ask.peer
            strict = self._keeps_case.get(ask.up, False)
            for _ in range(READS_PER_WAKE):
                try:
                    data, addr = ask.sock.recvfrom(65535)
                except BlockingIOError:
                    break
                except OSError as exc:  # ICMP unreachable and the like (IP_RECVERR)
                    self._settle(ask, None, exc)
                    break
                reason = self._mismatch(data, addr, peer, ask.out, ask.q.qend, strict)
                if reason is None:
                    self._settle(ask, data, None)
                    break
                self._reject(reason, 1)
                if reason == "case":
                    self._struck(ask.up)

    def _expire(self) -> None:
        """Time out the first attempts whose share of the budget is spent."""
        self._timer = None
        now = time.monotonic()
        queue, asks = self._deadlines, self._asks
        while queue:
            until, fd, serial = queue[0]
            ask = asks.get(fd)
            if ask is not None and ask.serial == serial:
                if until > now:
                    break
                self._settle(ask, None, None)  # pops its entry
            else:
                queue.popleft()
        if queue:
            self._timer = asyncio.get_running_loop().call_later(max(0.0, queue[0][0] - now), self._expire)

    def _settle(self, ask: _Ask, data: bytes | None, error: OSError | None) -> None:
        """The first attempt is over: an answer (``data``), an error, or (neither) a timeout."""
        ask.settled = True
        self._asks.pop(ask.sock.fileno(), None)
        self._close(ask.sock)  # leaves the epoll set as it closes
        queue, asks = self._deadlines, self._asks
        while queue:  # answers come mostly in order: keep the queue short
            _, fd, serial = queue[0]
            live = asks.get(fd)
            if live is not None and live.serial == serial:
                break
            queue.popleft()
        up, q = ask.up, ask.q
        if data is None:
            if error is None:
                self._move_on(q, ask.order, ask.deadline, "timeout", UpstreamError("timeout"), ask.done)
            else:
                self._move_on(q, ask.order, ask.deadline, type(error).__name__, error, ask.done)
            return
        try:
            self._learn_case(up, data, ask.out, q)
            data = self._scrubbed(data, q)
            info = scan_answer(data, q.qend)
            if info.truncated:
                self._spawn(self._resolve(q, ask.order, 0, ask.deadline, None, truncated=True), ask.done)
                return
            if info.rcode in _BAD_RCODES:
                raise RcodeError(up.label, info.rcode)
        except (UpstreamError, Malformed) as exc:
            reason = exc.reason if isinstance(exc, UpstreamError) else type(exc).__name__
            self._move_on(q, ask.order, ask.deadline, reason, exc, ask.done)
            return
        if self._down_until:
            self._down_until.pop(up, None)
        self._observe(self._labels[up], time.monotonic() - ask.started, None)
        self._call(ask.done, (data, info))

    def _move_on(self, q: Query, order: Sequence[Upstream | Channel], deadline: float, reason: str,
                 last: Exception, done: Done) -> None:
        """The first upstream failed (``reason``): the rest are asked in a task, as ``_resolve``
        would have gone on."""
        self._fail(order[0], reason)
        self._spawn(self._resolve(q, order, 1, deadline, last), done)

    def _spawn(self, work: Coroutine[object, object, tuple[bytes, Answer]], done: Done) -> None:
        """Run ``work`` in a task and hand its result to ``done`` (None when no upstream answered)."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)

        def finished(t: asyncio.Task[tuple[bytes, Answer]]) -> None:
            self._tasks.discard(t)
            if t.cancelled():  # shutting down: nobody is answered, as from a cancelled resolve
                return
            exc = t.exception()
            if exc is not None and not isinstance(exc, UpstreamError):
                t.get_loop().call_exception_handler({"message": "upstream question failed", "exception": exc})
            self._call(done, None if exc is not None else t.result())

        task.add_done_callback(finished)

    @staticmethod
    def _call(done: Done, result: tuple[bytes, Answer] | None) -> None:
        """``done``, with whatever it raises reported to the loop rather than lost in a callback."""
        try:
            done(result)
        except Exception as exc:
            asyncio.get_running_loop().call_exception_handler(
                {"message": "answering a forwarded question failed", "exception": exc})

    def _stop_polling(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._epoll is not None:
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(self._epoll.fileno())
            self._epoll.close()
            self._epoll = None
        for ask in self._asks.values():
            ask.settled = True
        self._asks.clear()
        self._deadlines.clear()
        self._unsent.clear()

    def _random(self, n: int) -> bytes:
        """``n`` bytes from the OS's CSPRNG, drawn 4 KiB at a time so that a
        query does not cost a system call."""
        if len(self._noise) < n:
            self._noise = os.urandom(max(4096, n))
        out, self._noise = self._noise[:n], self._noise[n:]
        return out

    def _question(self, q: Query) -> tuple[int, bytes]:
        """A fresh ID and the question in wire form, its name in mixed case."""
        noise = self._random(len(q.key))
        question = mix_case(q.key[:-5], noise[2:]) + q.key[-5:-1]
        return int.from_bytes(noise[:2], "big"), question

    def _fail(self, up: Upstream | Channel, reason: str) -> None:
        self._down_until[up] = time.monotonic() + BACKOFF
        self._observe(up.label, None, reason)

    async def start(self) -> None:
        """Open the epoll set of ``begin`` now (it is made on first use otherwise).
        Every query still gets its own socket."""
        self._poller()

    def _socket(self, up: Upstream) -> socket.socket:
        """A UDP socket bound to a random port of the ephemeral range; ``Overloaded`` when
        the cap is reached or the process is out of file descriptors."""
        self._room()
        v6 = ":" in up.host
        family = socket.AF_INET6 if v6 else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):
                raise Overloaded(f"no socket for the upstream: {exc}") from exc
            raise
        try:
            # Unconnected sockets hear ICMP errors only with RECVERR.
            if v6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
            low, high = self._ports
            for _ in range(PORT_TRIES):
                port = low + int.from_bytes(self._random(3), "big") % (high - low + 1)
                try:
                    sock.bind(("::" if v6 else "0.0.0.0", port))
                    break
                except OSError as exc:
                    if exc.errno != errno.EADDRINUSE:
                        raise
            else:
                sock.bind(("::" if v6 else "0.0.0.0", 0))  # a crowded range: the kernel's random pick
        except OSError:
            sock.close()
            raise
        self.open_sockets.add(sock)
        return sock

    def _close(self, sock: socket.socket) -> None:
        self.open_sockets.discard(sock)
        sock.close()

    async def _udp(self, up: Upstream, q: Query) -> bytes:
        sock = self._socket(up)
        loop = asyncio.get_running_loop()
        fd = sock.fileno()
        qid, question = self._question(q)
        out = clean_query(qid, question, q.key[-1])
        peer = self._peer[up]
        strict = self._keeps_case.get(up, False)
        answer: asyncio.Future[bytes] = loop.create_future()

        def readable() -> None:
            # Bounded, so a flood on this port cannot hold the loop.
            for _ in range(READS_PER_WAKE):
                if answer.done():
                    return
                try:
                    data, addr = sock.recvfrom(65535)
                except BlockingIOError:
                    return
                except OSError as exc:  # ICMP unreachable and the like (IP_RECVERR)
                    answer.set_exception(exc)
                    return
                reason = self._mismatch(data, addr, peer, out, q.qend, strict)
                if reason is None:
                    answer.set_result(data)
                    return
                self._reject(reason, 1)
                if reason == "case":
                    self._struck(up)

        loop.add_reader(fd, readable)
        try:
            sock.sendto(out, peer)
            data = await answer
        finally:
            loop.remove_reader(fd)
            self._close(sock)
        self._learn_case(up, data, out, q)
        return self._scrubbed(data, q)

    @staticmethod
    def _mismatch(data: bytes, addr: tuple[str, int], peer: tuple[str, int], sent: bytes, qend: int,
                  strict: bool) -> str | None:
        """Why a datagram is not the answer to ``sent``, or None when it is."""
        if addr[0] != peer[0]:
            return "address"
        if addr[1] != peer[1]:
            return "port"
        if len(data) < 12 or data[0:2] != sent[0:2]:
            return "id"
        # A response (QR), opcode QUERY, one question: ours, byte for byte but for case.
        if (not data[2] & 0x80 or data[2] & 0x78 or data[4:6] != b"\x00\x01" or len(data) < qend
                or data[12:qend].lower() != sent[12:qend].lower()):
            return "question"
        if strict and data[12:qend] != sent[12:qend]:
            return "case"
        return None

    def _learn_case(self, up: Upstream, data: bytes, sent: bytes, q: Query) -> None:
        """An upstream that echoed a mixed-case name exactly keeps case: hold it to that."""
        if data[12 : q.qend] == sent[12 : q.qend] and sent[12 : q.qend] != q.key[:-1]:
            self._keeps_case[up] = True
            self._case_strikes[up] = 0

    def _struck(self, up: Upstream) -> None:
        strikes = self._case_strikes.get(up, 0) + 1
        self._case_strikes[up] = strikes
        if strikes >= CASE_STRIKES:  # it no longer keeps case (a new server behind the address?)
            self._keeps_case[up] = False
            self._case_strikes[up] = 0

    def _scrubbed(self, data: bytes, q: Query) -> bytes:
        clean, dropped = scrub(data, q)
        for section, n in zip(("answer", "authority", "additional"), dropped, strict=True):
            if n:
                self._reject(f"scrubbed-{section}", n)
        return clean

    async def _tcp(self, up: Upstream, q: Query) -> bytes:
        self._room()
        self.open_tcp += 1
        try:
            reader, writer = await asyncio.open_connection(up.host, up.port)
        except BaseException:
            self.open_tcp -= 1
            raise
        try:
            qid, question = self._question(q)
            out = clean_query(qid, question, q.key[-1])
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
            peer = self._peer[up]
            while True:  # skip anything that is not our answer
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
                reason = self._mismatch(data, peer, peer, out, q.qend, False)
                if reason is None:
                    break
                self._reject(reason, 1)
                if reason == "question":
                    raise UpstreamError("TCP answer does not match the question")
        finally:
            self.open_tcp -= 1
            writer.close()
        return self._scrubbed(data, q)

    async def _channel(self, up: Channel, q: Query) -> bytes:
        out = clean_query(0, q.key[:-1], q.key[-1])
        data = await up.exchange(out, self._reject)
        reason = self._mismatch(data, ("", 0), ("", 0), out, q.qend, False)
        if reason is not None:
            self._reject(reason, 1)
            raise ChannelError(f"{up.label}: the answer does not match the question ({reason})", "bad-answer")
        return self._scrubbed(data, q)

    def close(self) -> None:
        """Close every upstream socket; first attempts still waiting are dropped (shutdown)."""
        self._stop_polling()
        for sock in list(self.open_sockets):
            self._close(sock)

    async def aclose(self) -> None:
        """``close``, and the encrypted upstreams' connections too."""
        self.close()
        for up in self.upstreams:
            if not isinstance(up, Upstream):
                await up.aclose()
