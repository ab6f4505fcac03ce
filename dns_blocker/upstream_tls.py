"""DNS-over-TLS upstreams (RFC 7858): ``tls://HOST[:PORT][#NAME]``, port 853.

    clean query (ID 0) ─▶ pick a connection ─▶ give it a free ID ─▶ 2-byte length + query ─▶ TLS
                                                                                           │
    answer with ID 0 ◀─ restore ID ◀─ the pending future of that ID ◀─ reader task ◀───────┘

A ``TlsUpstream`` keeps up to ``MAX_CONNECTIONS`` TLS connections open and
pipelines queries over them (RFC 7766 section 6.2.1.1: answers may come in
any order), at most ``MAX_PENDING`` each; when all are full the upstream is
``busy`` and the forwarder asks the next one, so nothing queues without
bound.  One reader task per connection hands each answer to the query that
owns its ID; an answer with an ID nobody is waiting for is dropped and
counted (``id``).  A connection idle for ``IDLE`` seconds is closed; one
that the server closed (or that broke) fails its pending queries at once,
and a query that was sent on a reused connection that then turned out to
be closed is sent once more on a fresh one (servers close idle connections
whenever they like).

The certificate is always verified: against ``NAME`` when one is pinned
(``tls://9.9.9.9:853#dns.quad9.net`` connects to 9.9.9.9 and expects a
certificate for dns.quad9.net), else against ``HOST`` (an IP address is
matched with the certificate's IP SANs).  A HOST that is a name is looked up
with the system's resolver at each connect; when this resolver *is* the
system's resolver, give the address and pin the name instead.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import struct
from dataclasses import dataclass, field

from .upstream import ChannelError, Rejecter

DEFAULT_PORT = 853
MAX_CONNECTIONS = 4
MAX_PENDING = 128  # queries in flight on one connection
IDLE = 20.0  # seconds before an unused connection is closed
MAX_ANSWER = 65_535


def tls_context(cafile: str | None) -> ssl.SSLContext:
    """Verification on, TLS 1.2 or later, the system's CAs plus ``cafile`` when given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    return ctx


@dataclass(eq=False)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    pending: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    used: int = 0  # queries sent, so a failure on a reused one can be retried on a fresh one
    closed: bool = False
    idle_timer: asyncio.TimerHandle | None = None
    task: asyncio.Task[None] | None = None

    def close(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        if self.idle_timer is not None:
            self.idle_timer.cancel()
        self.writer.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionResetError(why))
        self.pending.clear()


class TlsUpstream:
    """One DoT upstream and the connections kept open to it."""

    def __init__(self, host: str, port: int, name: str | None, context: ssl.SSLContext, label: str):
        self.host = host
        self.port = port
        self.name = name
        self.context = context
        self._label = label
        self._conns: list[_Connection] = []
        self._opening: asyncio.Task[_Connection] | None = None
        self._ids = b""
        self.handshakes = 0  # connections opened (tests read it)
        self._reject: Rejecter = lambda reason, n: None  # the forwarder's; set by each exchange

    @property
    def label(self) -> str:
        return self._label

    async def exchange(self, query: bytes, reject: Rejecter) -> bytes:
        self._reject = reject  # the reader tasks count stray answers with it
        conn = await self._connection()
        try:
            return await self._send(conn, query)
        except (ConnectionError, asyncio.IncompleteReadError):
            if conn.used <= 1:
                raise
        # The server had closed a connection we were reusing: once more on a fresh one.
        conn = await self._connection(fresh=True)
        return await self._send(conn, query)

    async def _connection(self, fresh: bool = False) -> _Connection:
        for _ in range(3):  # an opened connection may fill before we get to it; bounded
            live = [c for c in self._conns if not c.closed]
            self._conns = live
            room = [c for c in live if len(c.pending) < MAX_PENDING and not (fresh and c.used)]
            if room:
                return min(room, key=lambda c: len(c.pending))
            if self._opening is None:
                if len(live) >= MAX_CONNECTIONS:
                    if not fresh:
                        raise ChannelError(f"{self.label}: {MAX_CONNECTIONS * MAX_PENDING} queries in flight",
                                           "busy")
                    max(live, key=lambda c: c.used).close("replaced")  # make room for the fresh one
                self._opening = asyncio.get_running_loop().create_task(self._open())
                self._opening.add_done_callback(self._opened)
            conn = await asyncio.shield(self._opening)
            if len(conn.pending) < MAX_PENDING and not conn.closed:
                return conn
            fresh = False
        raise ChannelError(f"{self.label}: no connection with room", "busy")

    def _opened(self, task: asyncio.Task[_Connection]) -> None:
        self._opening = None
        if not task.cancelled() and task.exception() is None:
            self._conns.append(task.result())

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.context, server_hostname=self.name or self.host,
                limit=MAX_ANSWER + 2)
        except ssl.SSLError as exc:
            raise ChannelError(f"{self.label}: TLS: {exc.reason or exc}", "tls") from exc
        except OSError as exc:
            raise ChannelError(f"{self.label}: cannot connect: {exc.strerror or exc}", "connect") from exc
        self.handshakes += 1
        conn = _Connection(reader, writer)
        conn.task = asyncio.get_running_loop().create_task(self._read(conn))
        self._idle(conn)
        return conn

    def _idle(self, conn: _Connection) -> None:
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
        conn.idle_timer = asyncio.get_running_loop().call_later(IDLE, conn.close, "idle")

    def _free_id(self, conn: _Connection) -> int:
        for _ in range(64):  # at most MAX_PENDING of 65,536 taken: a free one comes at once
            if len(self._ids) < 2:
                self._ids = os.urandom(512)
            qid = int.from_bytes(self._ids[:2], "big")
            self._ids = self._ids[2:]
            if qid not in conn.pending:
                return qid
        raise ChannelError(f"{self.label}: no free query ID", "busy")

    async def _send(self, conn: _Connection, query: bytes) -> bytes:
        qid = self._free_id(conn)
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        conn.pending[qid] = fut
        conn.used += 1
        if conn.idle_timer is not None:
            conn.idle_timer.cancel()
            conn.idle_timer = None
        try:
            conn.writer.write(struct.pack("!HH", len(query), qid) + query[2:])
            await conn.writer.drain()
            data = await fut
        finally:
            if conn.pending.get(qid) is fut:
                del conn.pending[qid]
            if not conn.pending and not conn.closed:
                self._idle(conn)
        return query[:2] + data[2:]

    async def _read(self, conn: _Connection) -> None:
        why = "closed by the server"
        try:
            while not conn.closed:
                (length,) = struct.unpack("!H", await conn.reader.readexactly(2))
                data = await conn.reader.readexactly(length)
                fut = conn.pending.pop(int.from_bytes(data[:2], "big"), None) if length >= 12 else None
                if fut is None or fut.done():
                    self._reject("id", 1)
                    continue
                fut.set_result(data)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
            why = f"connection lost: {exc}"
        finally:
            conn.close(why)

    async def aclose(self) -> None:
        if self._opening is not None:
            self._opening.cancel()
        for conn in self._conns:
            conn.close("shutting down")
            if conn.task is not None:
                conn.task.cancel()
        self._conns = []
