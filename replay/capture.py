"""pcap / pcapng → sightings, streaming, one packet at a time.

Flow: dpkt's file and block definitions frame the records; ``judged`` drops
the packets of TCP directions already decided before any call (most of a
capture); ``Decoder.packet`` slices the link, IP and transport headers (no
per-packet objects) and drops
everything that cannot carry a name; only candidates reach ``wire``: UDP
port 53 and TCP streams to/from port 53 (DNS), TCP streams that start with a
TLS handshake record or an HTTP/1.x method, and UDP datagrams that start with
a QUIC v1/v2 Initial.  TCP streams are reassembled per direction by sequence
number (out of order, overlapping and retransmitted segments) until the
ClientHello or request head is complete (HTTP keep-alive streams stay open,
bodies skipped by length or chunk); IP fragments are reassembled too.
Every table is bounded, so memory stays flat whatever the capture's size.

A damaged file ends the read with a ``Damage`` naming the packet; the
sightings before it have already been yielded.  A record or block over
``Limits.max_record`` is never held: when its framing is consistent (a pcap
record's original length covers its captured length; a pcapng block's length
is repeated at its end) it is read past in bounded pieces and skipped with a
warning, and so is a pcapng block whose contents are corrupt inside intact
framing; otherwise the read stops there.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from typing import BinaryIO

import dpkt
from dpkt import gre as dgre
from dpkt import pcap as dpcap
from dpkt import pcapng as dpcapng

from policies import Kind

from . import links, wire
from .model import DEFAULT_LIMITS, Damage, Limits, Sighting, Skips

MASK = 0xFFFFFFFF
MAX_STREAMS = 65_536  # live TCP directions kept; the oldest go first
MAX_STREAM_BYTES = 65_536  # a ClientHello or request head larger than this is given up
MAX_HELD = 2_048  # directions holding bytes at once: with the above, at most 128 MiB held
MAX_PENDING = 64  # out-of-order segments held per direction
MAX_STRAYS = 4  # mid-stream segments tolerated before the start of a stream shows up
MAX_FRAGMENTS = 1_024
MAX_QUIC_DATAGRAMS = 8
CHUNK = 1 << 20

PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
PCAP_MAGICS = {struct.pack("<I", m) for m in dpcap.MAGIC_TO_PKT_HDR} | {
    struct.pack(">I", m) for m in dpcap.MAGIC_TO_PKT_HDR
}

# Link types (https://www.tcpdump.org/linktypes.html) by how their IP offset is found.
LINK_NULL, LINK_ETHERNET, LINK_RAW_A, LINK_RAW_B, LINK_RAW, LINK_LOOP = 0, 1, 12, 14, 101, 108
LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2 = 113, 228, 229, 276
SUPPORTED_LINKS = {
    LINK_NULL,
    LINK_ETHERNET,
    LINK_RAW_A,
    LINK_RAW_B,
    LINK_RAW,
    LINK_LOOP,
    LINK_SLL,
    LINK_IPV4,
    LINK_IPV6,
    LINK_SLL2,
}
VLAN_TYPES = (0x8100, 0x88A8, 0x9100, 0x9200)
ETH_MPLS, ETH_MPLS_MC, ETH_PPPOE, ETH_TEB, ETH_PPP = 0x8847, 0x8848, 0x8864, 0x6558, 0x880B
ERSPAN_II, ERSPAN_III = 0x88BE, 0x22EB  # GRE protocol types (ERSPAN type I shares type II's)
GRE_CP, GRE_RP, GRE_KP, GRE_SP, GRE_AP = dgre.GRE_CP, dgre.GRE_RP, dgre.GRE_KP, dgre.GRE_SP, dgre.GRE_AP
VXLAN_PORT, GENEVE_PORT = 4789, 6081
UDP_TUNNELS = frozenset({VXLAN_PORT, GENEVE_PORT})
# mDNS and LLMNR ask the local link, not a resolver: their own ``via``, never "dns/udp".
LOCAL_DNS = {5353: "mdns", 5355: "llmnr"}
IP_IN_IP = {(4, 4): "ipip", (4, 41): "6in4", (6, 4): "4in6", (6, 41): "ip6ip6"}
MAX_DEPTH = 4  # encapsulations unwrapped per packet: a GRE-in-GRE-in-... packet stops here
IPV6_EXT = (0, 43, 60, 51)  # hop-by-hop, routing, destination options, AH

Progress = Callable[[], None]


def is_capture(head: bytes) -> bool:
    return head[:4] == PCAPNG_MAGIC or head[:4] in PCAP_MAGICS


class _Done:
    """A TCP direction or QUIC flow already judged (or given up on)."""


DONE = _Done()
TLS, HTTP, DNS, SOCKS = 1, 2, 3, 4


class Stream:
    """One TCP direction: reassembles bytes from ``next`` on and hands the
    contiguous prefix (``buf``) to the protocol that claimed the stream."""

    __slots__ = ("body", "buf", "chunked", "next", "pending", "proto", "skip", "strays", "tunnel")

    def __init__(self, next_seq: int | None) -> None:
        self.next = next_seq
        self.pending: dict[int, bytes] = {}
        self.buf = bytearray()
        self.proto = 0
        self.strays = 0
        self.skip = 0  # HTTP body bytes still to pass over
        self.chunked = False
        self.body = False
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


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _starts_tls_or_http(data: bytes) -> bool:
    """Whether a segment can be the first of a stream replay reads: a TLS handshake record,
    an HTTP/1.x request, or a SOCKS 4 / 5 client's first message."""
    return (
        (data[:1] == b"\x16" and data[1:2] == b"\x03")
        or data.startswith(wire.HTTP_METHODS)
        or (data[:1] == b"\x05" and len(data) >= 2 and 0 < data[1] <= 16 and len(data) >= 2 + data[1])
        or (data[:1] == b"\x04" and data[1:2] == b"\x01" and len(data) >= 9)
    )


def _claim(st: Stream, dns: bool) -> bool:
    """Name the protocol of a stream (or of what a proxy tunnel carries) from its first bytes."""
    first = st.buf[:1]
    if dns:
        st.proto = DNS
    elif first == b"\x16":
        st.proto = TLS
    elif bytes(st.buf[:8]).startswith(wire.HTTP_METHODS):
        st.proto = HTTP
    elif (first == b"\x05" or first == b"\x04") and not st.tunnel:
        st.proto = SOCKS
    else:
        return False
    return True


def _starts_any(data: bytes) -> bool:
    return True


class Decoder:
    """Per-capture state; ``packet()`` appends sightings to ``out``."""

    def __init__(self, file: str, dns_ports: frozenset[int] = frozenset({53})) -> None:
        self.file = file
        self.dns_ports = dns_ports
        self.out: list[Sighting] = []
        self.streams: dict[bytes, Stream | _Done] = {}
        self.live: dict[bytes, None] = {}  # directions holding unparsed bytes, oldest first
        self.quic: dict[bytes, list[bytes] | _Done] = {}
        self.fragments: dict[tuple[bytes, bytes, bytes, int], dict[int, bytes]] = {}
        self.fragment_ends: dict[tuple[bytes, bytes, bytes, int], int] = {}
        self.dns_queries: dict[tuple[str, str, int, str], None] = {}
        self.malformed = 0
        self.first_malformed = 0
        self.unsupported_links: set[int] = set()
        self.protected = 0  # encrypted 802.11 data frames
        self.first_protected = 0
        self.tunnel = ""  # the encapsulations of the current packet, outermost first
        self.number = 0
        self.ts = 0.0

    # --- link and network layers -------------------------------------------

    def packet(self, ts: float, buf: bytes, link: int, number: int) -> None:
        self.number = number
        self.ts = ts
        try:
            self._packet(buf, link)
        except (IndexError, ValueError, struct.error, UnicodeError, dpkt.Error):
            self.malformed += 1
            if not self.first_malformed:
                self.first_malformed = number

    def _packet(self, buf: bytes, link: int) -> None:
        self.tunnel = ""
        if link == LINK_ETHERNET and buf[12:14] == b"\x08\x00":  # the common case, untagged IPv4
            self._ip(buf, 14, 0)
        elif link == LINK_ETHERNET:
            self._ether(buf, 0, 0)
        elif link == LINK_SLL or link == LINK_SLL2:
            off, tpos = (16, 14) if link == LINK_SLL else (20, 0)
            self._net(buf, off, buf[tpos] << 8 | buf[tpos + 1], 0)
        elif link == LINK_NULL or link == LINK_LOOP:
            self._ip(buf, 4, 0)
        elif link in (LINK_RAW, LINK_RAW_A, LINK_RAW_B, LINK_IPV4, LINK_IPV6):
            self._ip(buf, 0, 0)
        elif link in links.LINKS:
            try:
                inner = links.network(link, buf)
            except links.Protected:
                self.protected += 1
                self.first_protected = self.first_protected or self.number
                return
            if inner is None:
                return
            etype, payload = inner
            if etype == links.AMSDU:
                for etype, msdu in links.amsdu(payload):
                    self._net(msdu, 0, etype, 0)
            elif etype < 0:
                self._ether(payload, 0, 0)
            else:
                self._net(payload, 0, etype, 0)
        else:
            self.unsupported_links.add(link)

    def _ether(self, buf: bytes, off: int, depth: int) -> None:
        """An Ethernet frame at ``off``: its VLAN tags (802.1Q, 802.1ad, stacked) and payload."""
        self._net(buf, off + 14, buf[off + 12] << 8 | buf[off + 13], depth)

    def _net(self, buf: bytes, off: int, etype: int, depth: int) -> None:
        """The network layer at ``off``, named by ``etype``: IP, or what wraps it on the way."""
        while etype in VLAN_TYPES:
            etype = buf[off + 2] << 8 | buf[off + 3]
            off += 4
        if etype == 0x0800 or etype == 0x86DD:
            self._ip(buf, off, depth)
        elif depth >= MAX_DEPTH:
            return
        elif etype == ETH_MPLS or etype == ETH_MPLS_MC:
            self._mpls(buf, off, depth + 1)
        elif etype == ETH_PPPOE:
            inner = links.pppoe_session(buf[off:])
            if inner is not None:
                self._net(inner[1], 0, inner[0], depth + 1)
        elif etype == ETH_TEB:
            self._ether(buf, off, depth + 1)
        elif etype == ETH_PPP:
            inner = links.ppp(buf[off:])
            if inner is not None:
                self._net(inner[1], 0, inner[0], depth + 1)

    def _note(self, tunnel: str) -> None:
        self.tunnel = f"{self.tunnel},{tunnel}" if self.tunnel else tunnel

    def _mpls(self, buf: bytes, off: int, depth: int) -> None:
        """An MPLS label stack (RFC 3032): the labels up to bottom-of-stack, then IPv4 or IPv6 by
        the version nibble, or an Ethernet pseudowire behind its control word (RFC 4448)."""
        self._note("mpls")
        for _ in range(16):
            bottom = buf[off + 2] & 1
            off += 4
            if bottom:
                break
        else:
            return
        nibble = buf[off] >> 4
        if nibble == 4 or nibble == 6:
            self._ip(buf, off, depth)
        elif nibble == 0:
            self._ether(buf, off + 4, depth)

    def _ip(self, buf: bytes, off: int, depth: int) -> None:
        version = buf[off] >> 4
        if version == 4:
            ihl = (buf[off] & 0x0F) * 4
            total = buf[off + 2] << 8 | buf[off + 3]
            end = off + total if total else len(buf)  # 0 with TCP segmentation offload
            proto = buf[off + 9]
            src = buf[off + 12 : off + 16]
            dst = buf[off + 16 : off + 20]
            l4 = off + ihl
            frag = (buf[off + 6] << 8 | buf[off + 7]) & 0x3FFF
            if frag:
                whole = self._fragment(
                    (src, dst, buf[off + 4 : off + 6], proto),
                    (frag & 0x1FFF) * 8,
                    bool(frag & 0x2000),
                    buf[l4:end],
                )
                if whole is None:
                    return
                buf, l4, end = whole, 0, len(whole)
        elif version == 6:
            end = off + 40 + (buf[off + 4] << 8 | buf[off + 5])
            proto = buf[off + 6]
            src = buf[off + 8 : off + 24]
            dst = buf[off + 24 : off + 40]
            l4 = off + 40
            while proto in IPV6_EXT:
                proto, l4 = buf[l4], l4 + ((buf[l4 + 1] + 2) * 4 if proto == 51 else (buf[l4 + 1] + 1) * 8)
            if proto == 44:
                fo = buf[l4 + 2] << 8 | buf[l4 + 3]
                proto = buf[l4]
                whole = self._fragment(
                    (src, dst, buf[l4 + 4 : l4 + 8], proto), fo & 0xFFF8, bool(fo & 1), buf[l4 + 8 : end]
                )
                if whole is None:
                    return
                buf, l4, end = whole, 0, len(whole)
        else:
            return
        if proto == 6:
            self._tcp(buf, l4, end, src, dst)
        elif proto == 17:
            sport = buf[l4] << 8 | buf[l4 + 1]
            dport = buf[l4 + 2] << 8 | buf[l4 + 3]
            if dport in UDP_TUNNELS and depth < MAX_DEPTH:
                self._udp_tunnel(dport, buf[l4 + 8 : end], depth + 1)
            elif sport in self.dns_ports or dport in self.dns_ports:
                self._dns(buf[l4 + 8 : end], src, dst, sport, dport, "dns/udp")
            elif sport in LOCAL_DNS or dport in LOCAL_DNS:
                self._dns(buf[l4 + 8 : end], src, dst, sport, dport, LOCAL_DNS.get(dport) or LOCAL_DNS[sport])
            elif buf[l4 + 8] & 0xC0 == 0xC0:
                self._quic(buf[l4 + 8 : end], src, dst, buf[l4 : l4 + 4], sport, dport)
            elif wire.plainly_dns(buf[l4 + 8 : end]):
                self._dns(buf[l4 + 8 : end], src, dst, sport, dport, "dns/udp")
        elif depth >= MAX_DEPTH:
            return
        elif proto == 4 or proto == 41:  # IPv4 / IPv6 inside IP (RFC 2003, 4213, 2473)
            self._note(IP_IN_IP[version, proto])
            self._ip(buf[l4:end], 0, depth + 1)
        elif proto == 47:
            self._gre(buf[l4:end], depth + 1)

    def _udp_tunnel(self, port: int, data: bytes, depth: int) -> None:
        if port == VXLAN_PORT:
            # RFC 7348: flags (the I bit: a valid VNI), 3 reserved, VNI, reserved; then Ethernet.
            if data[0] & 0x08:
                self._note("vxlan")
                self._ether(data, 8, depth)
            return
        # GENEVE (RFC 8926): version and options length (in 4-byte words), flags, protocol, VNI.
        if data[0] >> 6:
            return
        self._note("geneve")
        self._net(data, 8 + (data[0] & 0x3F) * 4, data[2] << 8 | data[3], depth)

    def _gre(self, data: bytes, depth: int) -> None:
        """GRE (RFC 2784, 2890; version 1 is PPTP's, RFC 2637) and the ERSPAN it carries."""
        flags = data[0] << 8 | data[1]
        proto = data[2] << 8 | data[3]
        version = flags & 7
        if flags & GRE_RP or version > 1:
            return
        off = 4 + 4 * (bool(flags & GRE_CP) + bool(flags & GRE_KP) + bool(flags & GRE_SP))
        if version == 1 and flags & GRE_AP:
            off += 4
        if proto == ERSPAN_II:
            # Type I has no sequence number and no ERSPAN header; type II has both (8 bytes).
            if flags & GRE_SP:
                self._note("gre,erspan-ii")
                self._ether(data, off + 8, depth)
            else:
                self._note("gre,erspan-i")
                self._ether(data, off, depth)
            return
        if proto == ERSPAN_III:
            # 12 bytes, then an 8-byte platform subheader when the O flag (last bit) is set;
            # the frame type (FT) says Ethernet (0) or IP (2).
            frame_type = (data[off + 10] >> 2) & 0x1F
            inner = off + 12 + (8 if data[off + 11] & 1 else 0)
            self._note("gre,erspan-iii")
            if frame_type == 0:
                self._ether(data, inner, depth)
            elif frame_type == 2:
                self._ip(data, inner, depth)
            return
        self._note("gre")
        self._net(data, off, proto, depth)

    def _fragment(
        self, key: tuple[bytes, bytes, bytes, int], offset: int, more: bool, data: bytes
    ) -> bytes | None:
        """Collect one IP fragment; the whole payload once every piece is in."""
        pieces = self.fragments.get(key)
        if pieces is None:
            if len(self.fragments) >= MAX_FRAGMENTS:
                old = next(iter(self.fragments))
                del self.fragments[old]
                self.fragment_ends.pop(old, None)
            pieces = self.fragments[key] = {}
        if offset not in pieces and sum(map(len, pieces.values())) < 65_536:
            pieces[offset] = data
        if not more:
            self.fragment_ends[key] = offset + len(data)
        total = self.fragment_ends.get(key)
        if total is None:
            return None
        out = bytearray()
        for start in sorted(pieces):
            if start > len(out):
                return None  # a hole: wait for the missing piece
            out += pieces[start][len(out) - start :]
        if len(out) < total:
            return None
        del self.fragments[key]
        del self.fragment_ends[key]
        return bytes(out[:total])

    # --- TCP ----------------------------------------------------------------

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
        if not st.proto and not _claim(st, dns):
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
        held = len(st.buf) + (sum(map(len, st.pending.values())) if st.pending else 0)
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

    def _stream(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """Run the stream's protocol over its bytes; True when it is finished."""
        if st.proto == TLS:
            try:
                hello = wire.tls_client_hello(bytes(st.buf))
            except ValueError:
                return True
            if hello is None:
                return False
            self._hello(hello, src, dst, sport, dport, "tls", st)
            return True
        if st.proto == DNS:
            buf = st.buf
            while len(buf) >= 2:
                n = buf[0] << 8 | buf[1]
                if n == 0:
                    return True
                if len(buf) < n + 2:
                    return False
                self._dns(bytes(buf[2 : n + 2]), src, dst, sport, dport, "dns/tcp")
                del buf[: n + 2]
            return False
        if st.proto == SOCKS:
            return self._socks(st, src, dst, sport, dport)
        return self._http(st, src, dst, sport, dport)

    def _socks(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """A SOCKS client's handshake: the destination it asks for is an observation of its own;
        the bytes after it are the tunnel's, claimed and read like a stream of their own."""
        try:
            req = wire.socks_request(bytes(st.buf))
        except ValueError:
            return True
        if req is None:
            return False
        if req.host is not None:
            self._sight(Kind.DNS, req.host, src, dst, sport, dport, req.version, st)
        else:
            self._sight(Kind.IP, req.address or "", src, dst, sport, dport, req.version, st)
        return self._tunnel(st, req.version.removesuffix("a"), req.length, src, dst, sport, dport)

    def _tunnel(
        self, st: Stream, name: str, start: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> bool:
        """The proxy handshake ends at ``start``: what follows is read as a new stream inside it."""
        del st.buf[:start]
        st.proto = 0
        st.tunnel = name
        if not st.buf:
            return False
        if not _claim(st, False):
            return True
        return self._stream(st, src, dst, sport, dport)

    def _http(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        buf = st.buf
        while True:
            if st.skip:
                n = min(st.skip, len(buf))
                del buf[:n]
                st.skip -= n
                if st.skip:
                    return False
            if st.chunked:
                line_end = buf.find(b"\r\n")
                if line_end < 0:
                    return len(buf) > 1024
                if st.body:  # the CRLF after a chunk's data
                    del buf[: line_end + 2]
                    st.body = False
                    continue
                size_text = bytes(buf[:line_end]).split(b";")[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    return True
                if size == 0:
                    trailer_end = buf.find(b"\r\n\r\n", line_end)
                    if trailer_end < 0 and bytes(buf[line_end : line_end + 4]) != b"\r\n\r\n":
                        if len(buf) > 16_384:
                            return True
                        return False
                    del buf[: (trailer_end if trailer_end >= 0 else line_end) + 4]
                    st.chunked = False
                    continue
                del buf[: line_end + 2]
                st.skip = size
                st.body = True
                continue
            if not buf:
                return False
            if not bytes(buf[:8]).startswith(wire.HTTP_METHODS):
                return True
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return len(buf) > 16_384
            head = bytes(buf[:head_end])
            del buf[: head_end + 4]
            req = wire.http_request_head(head)
            if req is None:
                return True
            url, host = wire.http_url(req, _ip(dst), dport)
            self._sight(Kind.HTTP, url, src, dst, sport, dport, "http", st, host=host)
            if req.method == "CONNECT":
                # The proxy's answer is in the other direction; the client's next bytes are the tunnel's.
                return self._tunnel(st, "http-connect", 0, src, dst, sport, dport)
            length = wire.http_body_length(head)
            if length is None:
                st.chunked = True
            else:
                st.skip = length

    def _hello(
        self,
        hello: wire.Hello,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        via: str,
        st: Stream | None = None,
    ) -> None:
        # No name on the wire: the server address is all a filter has.
        kind, value = (Kind.SNI, hello.sni) if hello.sni else (Kind.IP, _ip(dst))
        self._sight(kind, value, src, dst, sport, dport, via, st, ech=hello.ech)

    def _sight(
        self,
        kind: Kind,
        value: str,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        via: str,
        st: Stream | None,
        host: str | None = None,
        ech: bool = False,
    ) -> None:
        """One sighting of the current packet, client → server, with the tunnels it came through."""
        tunnel = self.tunnel
        if st is not None and st.tunnel:
            tunnel = f"{tunnel},{st.tunnel}" if tunnel else st.tunnel
        self.out.append(
            Sighting(
                self.ts,
                kind,
                value,
                _ip(src),
                _ip(dst),
                sport,
                dport,
                host,
                via,
                file=self.file,
                packet=self.number,
                ech=ech,
                tunnel=tunnel,
            )
        )

    # --- UDP: DNS and QUIC --------------------------------------------------

    def _dns(self, data: bytes, src: bytes, dst: bytes, sport: int, dport: int, via: str) -> None:
        msg = wire.dns_message(data)
        if msg is None:
            self.malformed += 1
            if not self.first_malformed:
                self.first_malformed = self.number
            return
        a, b = _ip(src), _ip(dst)
        if msg.response:
            client, server, cport, sport_ = b, a, dport, sport
        else:
            client, server, cport, sport_ = a, b, sport, dport
        seen = self.dns_queries
        for name, qtype in msg.questions:
            if not name:
                continue
            key = (client, server, msg.id, name)
            if msg.response:
                if key in seen:
                    del seen[key]
                    continue  # the query was already reported
            else:
                if len(seen) >= MAX_STREAMS:
                    del seen[next(iter(seen))]
                seen[key] = None
            self.out.append(
                Sighting(
                    self.ts,
                    Kind.DNS,
                    name,
                    client,
                    server,
                    cport,
                    sport_,
                    via=via,
                    qtype=qtype,
                    file=self.file,
                    packet=self.number,
                    tunnel=self.tunnel,
                )
            )
        for owner, target in msg.cnames:
            if target:
                self.out.append(
                    Sighting(
                        self.ts,
                        Kind.DNS,
                        target,
                        client,
                        server,
                        cport,
                        sport_,
                        via="cname",
                        qtype="CNAME",
                        file=self.file,
                        packet=self.number,
                        cname_of=owner,
                        tunnel=self.tunnel,
                    )
                )

    def _quic(self, payload: bytes, src: bytes, dst: bytes, ports: bytes, sport: int, dport: int) -> None:
        if not wire.quic_initial_kind(payload):
            return
        key = src + dst + ports
        got = self.quic.get(key)
        if got is DONE:
            return
        if got is None:
            if len(self.quic) >= MAX_STREAMS:
                for old in list(self.quic)[: MAX_STREAMS // 8]:
                    del self.quic[old]
            got = self.quic[key] = []
        assert isinstance(got, list)
        got.append(payload)
        from . import quic  # first QUIC Initial: import aioquic now

        try:
            hello = quic.client_hello(got)
        except ValueError:
            # A server's Initial (other keys) or garbage; a new connection on
            # the same ports starts over.
            self.quic[key] = DONE if len(got) == 1 else [payload]
            return
        if hello is None:
            if len(got) >= MAX_QUIC_DATAGRAMS:
                self.quic[key] = DONE
            return
        self.quic[key] = DONE
        self._hello(hello, src, dst, sport, dport, "quic")

    def damage_notes(self) -> list[Damage]:
        notes = []
        if self.malformed:
            notes.append(
                Damage(
                    self.file,
                    self.first_malformed,
                    f"{self.malformed} malformed packet(s) skipped (the first shown)",
                    stopped=False,
                )
            )
        if self.protected:
            notes.append(
                Damage(
                    self.file,
                    self.first_protected,
                    f"{self.protected} protected (encrypted) 802.11 frame(s) skipped: "
                    "their contents cannot be read without the network's keys (the first shown)",
                    stopped=False,
                )
            )
        for link in sorted(self.unsupported_links):
            notes.append(
                Damage(
                    self.file,
                    0,
                    f"link type {link} is not supported; its packets were skipped",
                    stopped=False,
                )
            )
        return notes


# --- file formats -----------------------------------------------------------


def read_capture(
    name: str,
    fh: BinaryIO,
    progress: Progress | None = None,
    dns_ports: frozenset[int] = frozenset({53}),
    limits: Limits = DEFAULT_LIMITS,
) -> Iterator[Sighting | Damage]:
    """Every sighting in a pcap or pcapng file, in packet order."""
    head = fh.read(4)
    dec = Decoder(name, dns_ports)
    skips = Skips(name)
    if head == PCAPNG_MAGIC:
        yield from _pcapng(dec, head, fh, progress, limits.max_record, skips)
    else:
        yield from _pcap(dec, head, fh, progress, limits.max_record, skips)
    more = skips.summary()
    if more is not None:
        yield more
    yield from dec.damage_notes()


def _read_past(read: Callable[[int], bytes], count: int) -> int:
    """Read and drop ``count`` bytes, a bounded piece at a time; how many were missing at the end."""
    while count > 0:
        piece = read(min(CHUNK, count))
        if not piece:
            break
        count -= len(piece)
    return count


def judged(data: bytes, streams: dict[bytes, Stream | _Done]) -> bool:
    """Whether an Ethernet frame belongs to a TCP direction already judged, so
    nothing in it can matter: IPv4 without options, not a fragment, no
    SYN/FIN/RST, and its addresses + ports (bytes 26-37, the key ``Decoder``
    files directions under) marked DONE.  Most packets of a capture are these;
    answering before ``Decoder.packet`` is called is what keeps replay fast.
    """
    return (
        len(data) >= 54
        and data[23] == 6
        and data[14] == 0x45
        and data[12] == 8
        and data[13] == 0
        and not data[20] & 0x3F
        and not data[21]
        and not data[47] & 0x07
        and streams.get(data[26:38]) is DONE
    )


def _pcap(
    dec: Decoder, head: bytes, fh: BinaryIO, progress: Progress | None, max_record: int, skips: Skips
) -> Iterator[Sighting | Damage]:
    rest = fh.read(dpcap.FileHdr.__hdr_len__ - 4)
    raw = head + rest
    if len(raw) < dpcap.FileHdr.__hdr_len__:
        yield Damage(dec.file, 0, "truncated pcap file header")
        return
    # As dpkt's Reader does: the magic read big-endian names the byte order and record header.
    magic = dpcap.FileHdr(raw).magic
    le = magic in (dpcap.PMUDPCT_MAGIC, dpcap.PMUDPCT_MAGIC_NANO, dpcap.PACPDOM_MAGIC)
    hdr = (dpcap.LEFileHdr if le else dpcap.FileHdr)(raw)
    pkt_hdr = dpcap.MAGIC_TO_PKT_HDR[magic]
    link = hdr.linktype & 0x0FFFFFFF  # the top bits carry FCS information
    snaplen = hdr.snaplen
    nano = magic in (dpcap.TCPDUMP_MAGIC_NANO, dpcap.PMUDPCT_MAGIC_NANO)
    divisor = 1e9 if nano else 1e6
    # The first three fields (seconds, fraction, captured length) are all replay needs.
    unpack = struct.Struct(pkt_hdr.__hdr_fmt__[0] + "III").unpack_from
    orig_len = struct.Struct(pkt_hdr.__hdr_fmt__[0] + "I").unpack_from  # the field after them
    hlen = pkt_hdr.__hdr_len__
    read = fh.read
    out = dec.out
    packet = dec.packet
    streams = dec.streams
    ethernet = link == LINK_ETHERNET
    number = 0
    # Records are sliced out of 1 MiB reads: two read() calls per packet cost more than the packet.
    buf = b""
    size = pos = 0
    eof = False
    while True:
        if size - pos < hlen and not eof:
            more = read(CHUNK)
            eof = not more
            buf = buf[pos:] + more
            size, pos = len(buf), 0
        if pos == size:
            return
        number += 1
        if size - pos < hlen:
            yield Damage(
                dec.file, number, f"file ends inside the record header ({size - pos} of {hlen} bytes)"
            )
            return
        sec, frac, caplen = unpack(buf, pos)
        end = pos + hlen + caplen
        claim = _over_claim(caplen, snaplen)
        if claim:
            yield Damage(
                dec.file, number, f"corrupt record header (it claims {caplen} bytes, {claim}); stopped here"
            )
            return
        if caplen > max_record:
            (wire_len,) = orig_len(buf, pos + 12)
            if wire_len < caplen:  # more bytes captured than were on the wire: the header is garbage
                yield Damage(
                    dec.file,
                    number,
                    f"corrupt record header (captured length {caplen}, original length {wire_len}); "
                    "stopped here",
                )
                return
            missing = _read_past(read, end - size) if end > size else 0
            if missing:
                yield Damage(
                    dec.file, number, f"file ends inside the packet ({caplen - missing} of {caplen} bytes)"
                )
                return
            buf, size, pos = (buf[end:], size - end, 0) if end <= size else (b"", 0, 0)
            eof = False
            why = f"record of {caplen} bytes is over the {max_record}-byte limit (--max-record)"
            note = skips.skip(number, f"{why}; skipped")
            if note is not None:
                yield note
            continue
        while end > size and not eof:
            more = read(max(CHUNK, end - size))
            eof = not more
            buf = buf[pos:] + more
            end -= pos
            size, pos = len(buf), 0
        if end > size:
            yield Damage(
                dec.file, number, f"file ends inside the packet ({size - pos - hlen} of {caplen} bytes)"
            )
            return
        data = buf[pos + hlen : end]
        pos = end
        if progress is not None and not number & 0xFFF:
            progress()
        if ethernet and judged(data, streams):
            continue
        packet(sec + frac / divisor, data, link, number)
        if out:
            yield from out
            out.clear()


BLOCK_NAMES = {
    dpcapng.PCAPNG_BT_SHB: "section header",
    dpcapng.PCAPNG_BT_IDB: "interface description",
    dpcapng.PCAPNG_BT_PB: "packet",
    dpcapng.PCAPNG_BT_SPB: "simple packet",
    dpcapng.PCAPNG_BT_EPB: "enhanced packet",
}
PACKET_TYPES = (dpcapng.PCAPNG_BT_EPB, dpcapng.PCAPNG_BT_PB, dpcapng.PCAPNG_BT_SPB)
Interface = tuple[int, float, int, int]  # link type, timestamp divisor, offset, snap length
MAX_CLAIM = 256 << 20  # no capture record is this long (tshark's own ceiling is 256 KiB)


def _over_claim(length: int, snaplen: int) -> str:
    """Why a record's claimed length cannot be true, or "": more than the 256 MiB ceiling, or
    more than the snap length the file (or interface) says it captured at (0: unknown).
    libpcap cuts every record to the snap length, so a longer one is a lying header, and
    what follows it cannot be trusted: the read stops."""
    if length > MAX_CLAIM:
        return f"more than the {MAX_CLAIM >> 20} MiB any capture record may hold"
    if snaplen and length > snaplen:
        return f"more than the snap length of {snaplen}"
    return ""


def _block_name(btype: int) -> str:
    return f"{BLOCK_NAMES[btype]} block" if btype in BLOCK_NAMES else f"block of type {btype:#x}"


def _pcapng(
    dec: Decoder, head: bytes, fh: BinaryIO, progress: Progress | None, max_record: int, skips: Skips
) -> Iterator[Sighting | Damage]:
    """Blocks are framed by their total length, written at both ends: a block whose
    two lengths agree is skipped with a warning when its contents are corrupt (or it
    is over ``max_record``), and the read goes on; broken framing stops it."""
    read = fh.read
    out = dec.out
    streams = dec.streams
    file = dec.file
    # The enhanced packet block's fixed fields, sliced here: a dpkt object per packet costs more
    # than the packet (dpkt's classes still read section, interface and obsolete packet blocks).
    epb_le, epb_be = struct.Struct("<IIII").unpack_from, struct.Struct(">IIII").unpack_from
    le = True
    # Per interface of the current section; None for one whose description block was corrupt,
    # so that the interfaces after it keep their numbers.
    interfaces: list[Interface | None] = []
    number = 0
    offset = 0  # of the current block in the (decompressed) file
    top = head + read(4)
    while True:
        if not top:
            return
        if len(top) < 8:
            yield Damage(file, number + 1, f"file ends inside the block header at offset {offset}")
            return
        if top[:4] == PCAPNG_MAGIC:
            bom = read(4)
            if bom == b"\x4d\x3c\x2b\x1a":
                le = True
            elif bom == b"\x1a\x2b\x3c\x4d":
                le = False
            else:
                why = f"corrupt section header at offset {offset} (byte-order magic)"
                yield Damage(file, number + 1, f"{why}; stopped here")
                return
            top += bom
            interfaces = []
        btype, blen = struct.unpack("<II" if le else ">II", top[:8])
        if blen < 12 or blen % 4:
            yield Damage(
                file,
                number + 1,
                f"corrupt block header at offset {offset} ({_block_name(btype)}, length {blen}); "
                "stopped here",
            )
            return
        if blen > MAX_CLAIM:
            why = f"{_block_name(btype)} at offset {offset} claims {blen} bytes, {_over_claim(blen, 0)}"
            yield Damage(file, number + 1, f"{why}; stopped here")
            return
        if blen > max_record:
            # Never held: read past it, then check the length repeated at its end.
            missing = _read_past(read, blen - len(top) - 4)
            tail = read(4) if not missing else b""
            if len(tail) < 4:
                yield Damage(
                    file, number + 1, f"file ends inside the {_block_name(btype)} at offset {offset}"
                )
                return
            if tail != top[4:8]:
                yield _mismatch(file, number + 1, offset, btype, blen, tail, le)
                return
            packet = btype in PACKET_TYPES
            number += packet
            note = skips.skip(
                number if packet else 0,
                f"{_block_name(btype)} at offset {offset} is {blen} bytes, "
                f"over the {max_record}-byte limit (--max-record); skipped",
            )
            if note is not None:
                yield note
            offset += blen
            top = read(8)
            continue
        body = read(blen - len(top))
        if len(body) < blen - len(top):
            yield Damage(
                file,
                number + 1,
                f"file ends inside the {_block_name(btype)} at offset {offset} "
                f"({len(top) + len(body)} of {blen} bytes)",
            )
            return
        block = top + body
        if block[-4:] != top[4:8]:
            yield _mismatch(file, number + 1, offset, btype, blen, block[-4:], le)
            return
        problem = ""
        if btype == dpcapng.PCAPNG_BT_EPB:
            number += 1
            if blen < 32:
                problem = f"{blen} bytes is too short"
            else:
                iface, ts_high, ts_low, caplen = (epb_le if le else epb_be)(block, 8)
                entry = interfaces[iface] if iface < len(interfaces) else None
                if caplen > blen - 32:
                    problem = f"captured length {caplen} runs past the block ({blen} bytes)"
                elif entry is None:
                    problem = _no_interface(iface, interfaces)
                elif entry[3] and caplen > entry[3]:
                    why = f"enhanced packet block at offset {offset} claims {caplen} bytes, "
                    yield Damage(file, number, f"{why}{_over_claim(caplen, entry[3])}; stopped here")
                    return
                else:
                    data = block[28 : 28 + caplen]
                    link, div, tsoff, _ = entry
                    if link != LINK_ETHERNET or not judged(data, streams):
                        dec.packet(tsoff + ((ts_high << 32) | ts_low) / div, data, link, number)
        elif btype == dpcapng.PCAPNG_BT_PB:
            number += 1
            try:
                pkt = PACKET_BLOCKS[btype][le](block)
            except (dpkt.UnpackError, struct.error, IndexError, ValueError):
                problem = "its fields do not parse"
            else:
                entry = interfaces[pkt.iface_id] if pkt.iface_id < len(interfaces) else None
                if entry is None:
                    problem = _no_interface(pkt.iface_id, interfaces)
                else:
                    link, div, tsoff, _ = entry
                    dec.packet(tsoff + ((pkt.ts_high << 32) | pkt.ts_low) / div, pkt.pkt_data, link, number)
        elif btype == dpcapng.PCAPNG_BT_SPB:
            number += 1
            entry = interfaces[0] if interfaces else None
            if blen < 16:
                problem = f"{blen} bytes is too short"
            elif entry is None:
                problem = _no_interface(0, interfaces)
            else:
                caplen = struct.unpack("<I" if le else ">I", block[8:12])[0]
                dec.packet(0.0, block[12 : 12 + min(caplen, blen - 16)], entry[0], number)
        elif btype == dpcapng.PCAPNG_BT_IDB:
            try:
                interfaces.append(_interface(block, le))
            except (dpkt.UnpackError, struct.error, IndexError, ValueError):
                interfaces.append(None)
                problem = (
                    f"its fields or options do not parse (interface {len(interfaces) - 1}; "
                    "its packets are skipped)"
                )
        if problem:
            # A packet block is named by its packet number too; other blocks by their offset alone.
            where = number if btype in PACKET_TYPES else 0
            note = skips.skip(where, f"corrupt {_block_name(btype)} at offset {offset}: {problem}; skipped")
            if note is not None:
                yield note
        if out:
            yield from out
            out.clear()
        if progress is not None and not number & 0xFFF:
            progress()
        offset += blen
        top = read(8)


def _mismatch(file: str, number: int, offset: int, btype: int, blen: int, tail: bytes, le: bool) -> Damage:
    (trailing,) = struct.unpack("<I" if le else ">I", tail)
    return Damage(
        file,
        number,
        f"{_block_name(btype)} at offset {offset}: the length at its end ({trailing}) differs from "
        f"the length at its start ({blen}); stopped here",
    )


def _no_interface(iface: int, interfaces: list[Interface | None]) -> str:
    if iface < len(interfaces):
        return f"interface {iface}'s description block was corrupt"
    return f"interface {iface} is not described in this section ({len(interfaces)} interface(s))"


# Obsolete packet blocks: [big-endian, little-endian] dpkt classes.
PACKET_BLOCKS = {dpcapng.PCAPNG_BT_PB: (dpcapng.PacketBlock, dpcapng.PacketBlockLE)}


def _interface(block: bytes, le: bool) -> Interface:
    idb = (dpcapng.InterfaceDescriptionBlockLE if le else dpcapng.InterfaceDescriptionBlock)(block)
    divisor, offset = 1e6, 0
    for opt in idb.opts:
        if opt.code == dpcapng.PCAPNG_OPT_IF_TSRESOL:
            value = opt.data[0]
            divisor = float((2 if value & 0x80 else 10) ** (value & 0x7F))
        elif opt.code == dpcapng.PCAPNG_OPT_IF_TSOFFSET:
            offset = struct.unpack("<q" if le else ">q", opt.data[:8])[0]
    return idb.linktype, divisor, offset, idb.snaplen
