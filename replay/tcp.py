"""TCP reassembly: segments → the contiguous bytes of each direction.

Flow: ``network`` hands every TCP segment to ``Reassembly._tcp``.  A direction
(keyed by its addresses and ports) is a ``Stream`` from its SYN (or from the
first segment that looks like the start of a stream replay reads); segments
are put in order by sequence number (out of order, overlapping and
retransmitted ones), and the contiguous prefix goes to the protocol that
claimed the stream (``_claim`` and ``_stream``, implemented by
``protocols.Protocols``).  A direction that was judged, or given up on, is
``DONE``: its later segments cost a dictionary look-up.  Every table is
bounded (``MAX_*``), so memory stays flat whatever the capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import wire

MASK = 0xFFFFFFFF
MAX_STREAMS = 65_536  # live TCP directions kept; the oldest go first
MAX_STREAM_BYTES = 65_536  # a ClientHello or request head larger than this is given up
MAX_HELD = 2_048  # directions holding bytes at once: with the above, at most 128 MiB held
MAX_PENDING = 64  # out-of-order segments held per direction
MAX_STRAYS = 4  # mid-stream segments tolerated before the start of a stream shows up


class _Done:
    """A TCP direction or QUIC flow already judged (or given up on)."""


DONE = _Done()


class Stream:
    """One TCP direction: reassembles bytes from ``next`` on and hands the
    contiguous prefix (``buf``) to the protocol that claimed the stream."""

    __slots__ = ("buf", "held", "http", "next", "pending", "proto", "strays", "tunnel")

    def __init__(self, next_seq: int | None) -> None:
        self.next = next_seq
        self.pending: dict[int, bytes] = {}
        self.buf = bytearray()
        self.proto = 0
        self.strays = 0
        self.http: Any = None  # the h11 connection reading an HTTP stream's requests
        self.held = 0  # bytes the protocol's own reader holds (h11's buffer), bounded like ``buf``
        self.tunnel = ""  # the proxy tunnel (SOCKS, HTTP CONNECT) the stream's bytes are now inside

    def feed(self, seq: int, data: bytes, starts: Callable[[bytes], bool]) -> bool:
        """Add one segment; True when ``buf`` grew."""
        nxt = self.next
        if nxt is None:
            # No SYN seen: the stream starts at the first segment that looks like a start.
            if not starts(data):
                self.strays += 1
                if len(self.pending) < MAX_PENDING:
                    self.pending[seq] = data
                return False
            self.next = nxt = seq
        d = (seq - nxt) & MASK
        if d >= 0x80000000:
            d -= 1 << 32
        if d > 0:  # a gap: hold until it fills
            if len(self.pending) < MAX_PENDING and len(data) > len(self.pending.get(seq, b"")):
                self.pending[seq] = data
            return False
        if -d >= len(data):  # retransmission of bytes already taken
            return False
        self.buf += data[-d:] if d else data
        nxt = (seq + len(data)) & MASK
        while self.pending:
            grew = False
            for s in list(self.pending):
                d = (s - nxt) & MASK
                if d >= 0x80000000:
                    d -= 1 << 32
                if d <= 0:
                    piece = self.pending.pop(s)
                    if -d < len(piece):
                        self.buf += piece[-d:]
                        nxt = (s + len(piece)) & MASK
                        grew = True
            if not grew:
                break
        self.next = nxt
        return True



def _starts_tls_or_http(data: bytes) -> bool:
    """Whether a segment can be the first of a stream replay reads: a TLS handshake record,
    an HTTP/1.x request, or a SOCKS 4 / 5 client's first message."""
    return (
        (data[:1] == b"\x16" and data[1:2] == b"\x03")
        or data.startswith(wire.HTTP_METHODS)
        or (data[:1] == b"\x05" and len(data) >= 2 and 0 < data[1] <= 16 and len(data) >= 2 + data[1])
        or (data[:1] == b"\x04" and data[1:2] == b"\x01" and len(data) >= 9)
    )



def _starts_any(data: bytes) -> bool:
    return True


class Reassembly:
    """The TCP directions of one capture; a subclass reads what the streams carry."""

    def __init__(self, dns_ports: frozenset[int]) -> None:
        self.dns_ports = dns_ports
        self.streams: dict[bytes, Stream | _Done] = {}
        self.live: dict[bytes, None] = {}  # directions holding unparsed bytes, oldest first

    # The protocol layer's hooks (``protocols.Protocols``).
    def _claim(self, st: Stream, dns: bool) -> bool:
        """Name the protocol of a stream from its first bytes; False: nothing replay reads."""
        raise NotImplementedError

    def _stream(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """Run the stream's protocol over its bytes; True when it is finished."""
        raise NotImplementedError

    def _tcp(self, buf: bytes, l4: int, end: int, src: bytes, dst: bytes) -> None:
        ports = buf[l4 : l4 + 4]
        key = src + dst + ports
        flags = buf[l4 + 13]
        streams = self.streams
        st = streams.get(key)
        if flags & 0x02:  # SYN or SYN-ACK: a new direction, its first byte is ISN + 1
            streams.pop(key, None)
            self.live.pop(key, None)
            self._remember(key, Stream((int.from_bytes(buf[l4 + 4 : l4 + 8], "big") + 1) & MASK))
            return
        if st is DONE:
            if flags & 0x05:  # FIN / RST: forget the direction
                del streams[key]
            return
        start = l4 + ((buf[l4 + 12] >> 4) * 4)
        if start >= end:
            if flags & 0x05 and st is not None:
                del streams[key]
                self.live.pop(key, None)
            return
        data = buf[start:end]
        sport = ports[0] << 8 | ports[1]
        dport = ports[2] << 8 | ports[3]
        dns = sport in self.dns_ports or dport in self.dns_ports
        if st is None:
            # No SYN seen (capture started mid-connection, or SYN lost): the
            # start may still arrive out of order, so the stream waits a little.
            st = Stream(None)
            self._remember(key, st)
        assert isinstance(st, Stream)
        grew = st.feed(
            int.from_bytes(buf[l4 + 4 : l4 + 8], "big"), data, _starts_any if dns else _starts_tls_or_http
        )
        if not self._hold(key, st):
            return
        if not grew:
            if st.strays > MAX_STRAYS and st.next is None:
                self._finish(key)
            return
        if not st.proto and not self._claim(st, dns):
            self._finish(key)
            return
        try:
            finished = self._stream(st, src, dst, sport, dport) or len(st.buf) > MAX_STREAM_BYTES
        except Exception:
            self._finish(key)  # a stream that broke the parser once is not read again
            raise
        if finished:
            self._finish(key)
        else:
            self._hold(key, st)

    def _hold(self, key: bytes, st: Stream) -> bool:
        """Account for the bytes a direction holds; False when it was given up.

        A direction holding more than MAX_STREAM_BYTES is given up; so is the
        longest-holding one when more than MAX_HELD directions hold bytes: the
        bound on memory whatever the capture (out-of-order floods included).
        """
        held = len(st.buf) + st.held + (sum(map(len, st.pending.values())) if st.pending else 0)
        live = self.live
        if not held:
            live.pop(key, None)
            return True
        if held > MAX_STREAM_BYTES:
            self._finish(key)
            return False
        live[key] = None
        if len(live) > MAX_HELD:
            self._finish(next(iter(live)))
        return key in live

    def _finish(self, key: bytes) -> None:
        self.streams[key] = DONE
        self.live.pop(key, None)

    def _remember(self, key: bytes, st: Stream | _Done) -> None:
        streams = self.streams
        if len(streams) >= MAX_STREAMS:
            for old in list(streams)[: MAX_STREAMS // 8]:
                del streams[old]
        streams[key] = st
