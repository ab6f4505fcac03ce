"""Link layers, tunnels and IP (with fragments) → the transport payloads that can carry a name.

Flow: ``capture.Decoder.packet`` calls ``_packet`` with each frame and its link
type.  The common link layers (Ethernet, Linux cooked, BSD loopback, raw IP)
are sliced here, the others go to ``links``; VLAN tags, MPLS, PPPoE, GRE
(and ERSPAN), VXLAN, GENEVE and IP-in-IP are unwrapped, at most ``MAX_DEPTH``
deep, each noted in ``tunnel``.  ``_ip`` reads IPv4 and IPv6 headers (IPv6
extension headers skipped), puts fragments back together (``Fragments``),
and hands TCP segments to ``tcp.Reassembly._tcp`` and UDP payloads that can
carry a name (DNS, mDNS, LLMNR, QUIC Initials) to ``protocols``.  Nothing here
builds an object per packet: headers are sliced.
"""

from __future__ import annotations

from dpkt import gre as dgre

from . import links, wire
from .protocols import Protocols

MAX_FRAGMENTS = 1_024  # datagrams being put together at once; the oldest goes first
MAX_FRAGMENT_BYTES = 65_536  # held per datagram (the most an IP datagram can be)

# Link types (https://www.tcpdump.org/linktypes.html) by how their IP offset is found.
LINK_NULL, LINK_ETHERNET, LINK_RAW_A, LINK_RAW_B, LINK_RAW, LINK_LOOP = 0, 1, 12, 14, 101, 108
LINK_SLL, LINK_IPV4, LINK_IPV6, LINK_SLL2 = 113, 228, 229, 276
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



FragmentKey = tuple[bytes, bytes, bytes, int]  # source, destination, identification, protocol


class Fragments:
    """IPv4 and IPv6 fragments → whole datagrams; at most ``MAX_FRAGMENTS`` datagrams held."""

    def __init__(self) -> None:
        self.pieces: dict[FragmentKey, dict[int, bytes]] = {}
        self.ends: dict[FragmentKey, int] = {}

    def add(self, key: FragmentKey, offset: int, more: bool, data: bytes) -> bytes | None:
        """Collect one fragment; the whole payload once every piece is in."""
        pieces = self.pieces.get(key)
        if pieces is None:
            if len(self.pieces) >= MAX_FRAGMENTS:
                old = next(iter(self.pieces))
                del self.pieces[old]
                self.ends.pop(old, None)
            pieces = self.pieces[key] = {}
        if offset not in pieces and sum(map(len, pieces.values())) < MAX_FRAGMENT_BYTES:
            pieces[offset] = data
        if not more:
            self.ends[key] = offset + len(data)
        total = self.ends.get(key)
        if total is None:
            return None
        out = bytearray()
        for start in sorted(pieces):
            if start > len(out):
                return None  # a hole: wait for the missing piece
            out += pieces[start][len(out) - start :]
        if len(out) < total:
            return None
        del self.pieces[key]
        del self.ends[key]
        return bytes(out[:total])


class Network(Protocols):
    """The link and network layers of one capture."""

    def __init__(self, file: str, dns_ports: frozenset[int]) -> None:
        super().__init__(file, dns_ports)
        self.fragments = Fragments()
        self.unsupported_links: set[int] = set()
        self.protected = 0  # encrypted 802.11 data frames
        self.first_protected = 0

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
                whole = self.fragments.add(
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
                whole = self.fragments.add(
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

