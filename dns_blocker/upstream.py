"""Forwarding to the upstream resolvers: UDP first, TCP when truncated, failover.

Each upstream gets a few connected UDP sockets (several source ports); a
query goes out with a fresh random ID and the answer is matched by ID *and*
question, so stray or spoofed datagrams are ignored.  Upstreams are tried in
order within one overall time budget (``timeout``), each getting an equal
share; one that failed is moved to the back for ``BACKOFF`` seconds and is
tried again afterwards, so service recovers on its own.  An answer with TC
set is fetched again over TCP from the same upstream.  An upstream SERVFAIL,
REFUSED, NOTIMP or FORMERR counts as a failure and the next one is asked.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from .wire import FORMERR, NOTIMP, REFUSED, SERVFAIL, Answer, Malformed, Query, question_matches, scan_answer

BACKOFF = 5.0
SOCKETS_PER_UPSTREAM = 4
RCVBUF = 1 << 20
_BAD_RCODES = frozenset({SERVFAIL, REFUSED, NOTIMP, FORMERR})


class UpstreamError(Exception):
    """No upstream gave a usable answer."""


@dataclass(frozen=True, slots=True)
class Upstream:
    host: str
    port: int

    @property
    def label(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


Observer = Callable[[str, float | None, str | None], None]  # (upstream, seconds | None, error | None)


class _Channel(asyncio.DatagramProtocol):
    """One connected UDP socket to one upstream, many queries in flight."""

    def __init__(self) -> None:
        self.transport: asyncio.DatagramTransport | None = None
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes, int]] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        qid = (data[0] << 8) | data[1]
        waiting = self.pending.get(qid)
        if waiting is None:
            return
        fut, query, qend = waiting
        if fut.done():
            return
        if not data[2] & 0x80 or not question_matches(data, query, qend):
            fut.set_exception(UpstreamError("answer does not match the question"))
            return
        fut.set_result(data)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable on a connected socket: the upstream is down.
        for fut, _, _ in list(self.pending.values()):
            if not fut.done():
                fut.set_exception(UpstreamError(f"upstream unreachable: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.error_received(exc or ConnectionError("closed"))
        self.transport = None


class Forwarder:
    def __init__(self, upstreams: list[Upstream], timeout: float, observe: Observer | None = None):
        if not upstreams:
            raise ValueError("at least one upstream is needed")
        self.upstreams = upstreams
        self.timeout = timeout
        self._observe = observe or (lambda up, secs, err: None)
        self._channels: dict[Upstream, list[_Channel]] = {}
        self._down_until: dict[Upstream, float] = {}
        self._ids: list[int] = []

    async def resolve(self, query: bytes, q: Query) -> tuple[bytes, Answer]:
        """The first usable answer from the upstreams, in order of health."""
        now = time.monotonic()
        order = self.upstreams
        if self._down_until:  # some upstream failed lately: the healthy ones go first
            order = sorted(order, key=lambda u: self._down_until.get(u, 0.0) > now)
        share = self.timeout / len(order)
        last: Exception | None = None
        for up in order:
            started = time.monotonic()
            try:
                async with asyncio.timeout(share):
                    data = await self._udp(up, query, q)
                    info = scan_answer(data, q.qend)
                    if info.truncated:
                        data = await self._tcp(up, query, q)
                        info = scan_answer(data, q.qend)
                if info.rcode in _BAD_RCODES:
                    raise UpstreamError(f"upstream answered rcode {info.rcode}")
            except TimeoutError:
                last = UpstreamError("timeout")
                self._fail(up, "timeout")
                continue
            except (OSError, UpstreamError, Malformed, asyncio.IncompleteReadError) as exc:
                last = exc
                self._fail(up, type(exc).__name__ if not isinstance(exc, UpstreamError) else "bad-answer")
                continue
            self._down_until.pop(up, None)
            self._observe(up.label, time.monotonic() - started, None)
            return data, info
        raise UpstreamError(f"no upstream answered ({last})")

    def _new_id(self) -> int:
        """A query ID from the OS's CSPRNG (unguessable, against spoofed answers),
        drawn 1,024 at a time so that a query does not cost a system call."""
        if not self._ids:
            pool = os.urandom(2048)
            self._ids = [int.from_bytes(pool[i : i + 2], "big") for i in range(0, 2048, 2)]
        return self._ids.pop()

    def _fail(self, up: Upstream, reason: str) -> None:
        self._down_until[up] = time.monotonic() + BACKOFF
        self._observe(up.label, None, reason)

    async def start(self) -> None:
        """Open the sockets before the first query, so no two queries race to."""
        for up in self.upstreams:
            await self._open(up)

    async def _open(self, up: Upstream) -> list[_Channel]:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in up.host else socket.AF_INET
        chans = []
        for _ in range(SOCKETS_PER_UPSTREAM):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
                sock.setblocking(False)
                sock.connect((up.host, up.port))
            except OSError:
                sock.close()
                raise
            _, proto = await loop.create_datagram_endpoint(_Channel, sock=sock)
            chans.append(proto)
        self._channels[up] = chans
        return chans

    async def _channel(self, up: Upstream) -> _Channel:
        chans = self._channels.get(up) or await self._open(up)
        chan = random.choice(chans)
        if chan.transport is None or chan.transport.is_closing():
            chan = random.choice(await self._open(up))
        return chan

    async def _udp(self, up: Upstream, query: bytes, q: Query) -> bytes:
        chan = await self._channel(up)
        qid = self._new_id()
        while qid in chan.pending:
            qid = self._new_id()
        out = qid.to_bytes(2, "big") + query[2:]
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        chan.pending[qid] = (fut, out, q.qend)
        try:
            assert chan.transport is not None
            chan.transport.sendto(out)
            return await fut
        finally:
            chan.pending.pop(qid, None)

    async def _tcp(self, up: Upstream, query: bytes, q: Query) -> bytes:
        reader, writer = await asyncio.open_connection(up.host, up.port)
        try:
            qid = self._new_id()
            out = qid.to_bytes(2, "big") + query[2:]
            writer.write(struct.pack("!H", len(out)) + out)
            await writer.drain()
            while True:  # skip anything that is not our answer
                (length,) = struct.unpack("!H", await reader.readexactly(2))
                data = await reader.readexactly(length)
                if len(data) >= 12 and data[0:2] == out[0:2]:
                    if not question_matches(data, out, q.qend):
                        raise UpstreamError("TCP answer does not match the question")
                    return data
        finally:
            writer.close()

    def close(self) -> None:
        for chans in self._channels.values():
            for chan in chans:
                if chan.transport is not None:
                    chan.transport.close()
        self._channels.clear()
