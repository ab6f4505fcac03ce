"""Crafted captures for the link types, tunnels and proxies of issue 11, and what replay
must read from each: ``expected`` is (kind, value, via, tunnel) in packet order.

Frames come from scapy's layers (802.11, radiotap, PPP, PPPoE, GRE, ERSPAN, VXLAN,
GENEVE, MPLS, 802.1Q/802.1ad); the headers scapy has no layer for (PPI, NFLOG,
Cisco HDLC) are packed here from their specifications.  Each capture holds a DNS
query and a TLS ClientHello (or an HTTP request), so the tshark cross-check compares
every field replay reads.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from scapy.contrib.erspan import ERSPAN_I, ERSPAN_II, ERSPAN_III, ERSPAN_PlatformSpecific
from scapy.contrib.geneve import GENEVE
from scapy.contrib.mpls import MPLS
from scapy.layers.dot11 import Dot11, Dot11FCS, Dot11QoS, RadioTap
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import GRE, GRE_PPTP, LLC, SNAP, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import HDLC, PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from . import craft as c

Builder = Callable[[Path], Path]
Expected = tuple[str, str, str, str]

LINK_PPP, LINK_C_HDLC, LINK_80211, LINK_RADIOTAP, LINK_PPI, LINK_NFLOG = 9, 104, 105, 127, 192, 239
OUTER_A, OUTER_B = "192.0.2.10", "192.0.2.20"  # tunnel endpoints; the inner packets use craft's addresses


@dataclass(frozen=True)
class Encap:
    id: str
    build: Builder
    expected: list[Expected]
    damage: list[str] = field(default_factory=list)  # the exact warnings, the file's path left out
    decode_as: tuple[str, ...] = ()  # tshark -d rules: what tshark must be told, replay sees itself


def inner_packets(sni: str = "www.tiktok.com", dns: str = "www.wechat.com") -> list[Packet]:
    """A DNS query then a ClientHello in three segments (after a SYN): client → servers."""
    return [c.udp(c.dns_query(dns)), *c.tcp_segments(c.client_hello(sni), 300)]


INNER = [("dns", "www.wechat.com", "dns/udp"), ("sni", "www.tiktok.com", "tls")]


def expect(tunnel: str, inner: list[tuple[str, str, str]] = INNER) -> list[Expected]:
    return [(k, v, via, tunnel) for k, v, via in inner]


def pcap(name: str, frames: Callable[[], list[bytes]], linktype: int = c.LINK_ETHERNET) -> Builder:
    def build(tmp: Path) -> Path:
        return c.write_pcap(tmp / name, frames(), linktype)

    return build


def ethernet(packets: list[Packet]) -> list[bytes]:
    return c.link(packets, c.LINK_ETHERNET)


# --- link types ---------------------------------------------------------------------------


def _dot11(p: Packet, *, qos: bool, fcs: bool = False, protected: bool = False) -> Packet:
    cls = Dot11FCS if fcs else Dot11
    # To the AP (to-DS): addr1 BSSID, addr2 the station, addr3 the destination.
    hdr = cls(
        type=2,
        subtype=8 if qos else 0,
        FCfield="to_DS" + ("+protected" if protected else ""),
        addr1="02:00:00:00:00:01",
        addr2="02:00:00:00:00:05",
        addr3="02:00:00:00:00:07",
    )
    if qos:
        hdr = hdr / Dot11QoS(TID=0)
    etype = 0x86DD if p.haslayer(IPv6) else 0x0800
    if protected:  # a CCMP header and ciphertext: nothing readable
        return hdr / Raw(bytes(8) + bytes(p)[::-1])
    return hdr / LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=etype) / p


def _beacon() -> Packet:
    from scapy.layers.dot11 import Dot11Beacon, Dot11Elt

    return (
        Dot11(
            type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2="02:00:00:00:00:01", addr3="02:00:00:00:00:01"
        )
        / Dot11Beacon()
        / Dot11Elt(ID=0, info=b"office")
    )


def wifi_plain() -> list[bytes]:
    pkts = inner_packets()
    frames = [bytes(_beacon()), bytes(_dot11(pkts[0], qos=False))]
    frames.append(bytes(_dot11(pkts[1], qos=True, protected=True)))
    frames += [bytes(_dot11(p, qos=True)) for p in pkts[1:]]
    return frames


def wifi_amsdu() -> list[bytes]:
    """QoS data frames with the A-MSDU bit: two aggregates, two and three MSDUs each."""

    def subframe(p: Packet, last: bool) -> bytes:
        etype = 0x86DD if p.haslayer(IPv6) else 0x0800
        msdu = bytes(LLC(dsap=0xAA, ssap=0xAA, ctrl=3) / SNAP(OUI=0, code=etype) / p)
        head = bytes.fromhex("020000000007020000000005") + len(msdu).to_bytes(2, "big")
        return head + msdu + (b"" if last else bytes(-(14 + len(msdu)) % 4))  # the last is not padded

    frames = []
    pkts = inner_packets()
    for group in (pkts[:2], pkts[2:]):
        hdr = Dot11(
            type=2,
            subtype=8,
            FCfield="to_DS",
            addr1="02:00:00:00:00:01",
            addr2="02:00:00:00:00:05",
            addr3="02:00:00:00:00:01",
        ) / Dot11QoS(TID=0, A_MSDU_Present=1)
        frames.append(bytes(hdr) + b"".join(subframe(p, i == len(group) - 1) for i, p in enumerate(group)))
    return frames


def wifi_radiotap() -> list[bytes]:
    frames = []
    for i, p in enumerate(inner_packets()):
        rt = RadioTap(
            present="Flags+Rate+Channel+dBm_AntSignal",
            Flags="FCS",
            Rate=2,
            ChannelFrequency=2437,
            ChannelFlags="2GHz+OFDM",
            dBm_AntSignal=-40,
        )
        frames.append(bytes(rt / _dot11(p, qos=bool(i), fcs=True)))
    frames.insert(1, bytes(RadioTap(present="Flags", Flags=0) / _beacon()))
    return frames


def wifi_ppi() -> list[bytes]:
    # PPI header (version 0, flags 0, length 8, DLT 105) with no fields, then the 802.11 frame.
    return [struct.pack("<BBHI", 0, 0, 8, LINK_80211) + bytes(_dot11(p, qos=True)) for p in inner_packets()]


def ppp_frames() -> list[bytes]:
    return [
        bytes(HDLC() / PPP(proto=0x57 if p.haslayer(IPv6) else 0x21) / p)
        for p in [*inner_packets(), c.udp(c.dns_query("v6.wechat.com"), src=c.CLIENT6, dst="2001:db8::53")]
    ]


def pppoe_frames() -> list[bytes]:
    return [bytes(Ether(type=0x8864) / PPPoE(sessionid=0x11) / PPP(proto=0x21) / p) for p in inner_packets()]


def nflog_frames() -> list[bytes]:
    """NFLOG as `iptables -j NFLOG` writes it: family, version, resource id (group, big-endian),
    then TLVs in host byte order: the packet header, a prefix, the payload."""

    def tlv(kind: int, value: bytes) -> bytes:
        return struct.pack("<HH", 4 + len(value), kind) + value + bytes(-len(value) % 4)

    out = []
    for p in inner_packets():
        out.append(
            struct.pack("<BBH", 2, 0, struct.unpack("<H", struct.pack(">H", 5))[0])
            + tlv(1, struct.pack(">HBB", 0x0800, 3, 0))
            + tlv(10, b"egress\x00")
            + tlv(9, bytes(p))
        )
    return out


def chdlc_frames() -> list[bytes]:
    return [b"\x0f\x00\x08\x00" + bytes(p) for p in inner_packets()]


# --- tunnels ------------------------------------------------------------------------------


def _outer(payload: Packet, proto: int | None = None) -> Packet:
    ip = IP(src=OUTER_A, dst=OUTER_B)
    if proto is not None:
        ip.proto = proto
    return Ether(type=0x0800) / ip / payload


def _inner_ether(p: Packet) -> Packet:
    return Ether(src="02:00:00:00:00:05", dst="02:00:00:00:00:07", type=0x0800) / p


def gre_ip() -> list[bytes]:
    return [bytes(_outer(GRE(proto=0x0800) / p)) for p in inner_packets()]


def gre_key_teb() -> list[bytes]:
    return [
        bytes(_outer(GRE(key_present=1, key=77, proto=0x6558) / _inner_ether(p))) for p in inner_packets()
    ]


def gre_pptp() -> list[bytes]:
    """PPTP's enhanced GRE (version 1: key = payload length + call id, sequence number) with PPP."""
    return [
        bytes(_outer(GRE_PPTP(call_id=5, seqnum_present=1, seqence_number=i) / HDLC() / PPP(proto=0x21) / p))
        for i, p in enumerate(inner_packets())
    ]


def erspan_i() -> list[bytes]:
    return [bytes(_outer(GRE(proto=0x88BE) / ERSPAN_I() / _inner_ether(p))) for p in inner_packets()]


def erspan_ii() -> list[bytes]:
    return [
        bytes(
            _outer(
                GRE(seqnum_present=1, seqence_number=i, proto=0x88BE)
                / ERSPAN_II(session_id=3)
                / _inner_ether(p)
            )
        )
        for i, p in enumerate(inner_packets())
    ]


def erspan_iii() -> list[bytes]:
    return [
        bytes(
            _outer(
                GRE(seqnum_present=1, seqence_number=i, proto=0x22EB)
                / ERSPAN_III(session_id=3, o=1)
                / ERSPAN_PlatformSpecific(platf_id=3)
                / _inner_ether(p)
            )
        )
        for i, p in enumerate(inner_packets())
    ]


def vxlan() -> list[bytes]:
    return [
        bytes(_outer(UDP(sport=49152 + i, dport=4789) / VXLAN(vni=42) / _inner_ether(p)))
        for i, p in enumerate(inner_packets())
    ]


def geneve() -> list[bytes]:
    # One 8-byte option (class 0x0108, type 1), as AWS Gateway Load Balancer adds.
    opt = struct.pack(">HBB", 0x0108, 1, 1) + bytes(4)
    return [
        bytes(
            _outer(
                UDP(sport=49152, dport=6081)
                / GENEVE(vni=7, proto=0x6558, optionlen=2, options=opt)
                / _inner_ether(p)
            )
        )
        for p in inner_packets()
    ]


def ipip() -> list[bytes]:
    return [bytes(_outer(p, proto=4)) for p in inner_packets()]


def six_in_four() -> list[bytes]:
    pkts = [
        c.udp(c.dns_query("www.wechat.com"), src=c.CLIENT6, dst="2001:db8::53"),
        *c.tcp_segments(c.client_hello("www.tiktok.com"), 300, src=c.CLIENT6, dst=c.SERVER6),
    ]
    return [bytes(_outer(p, proto=41)) for p in pkts]


def mpls() -> list[bytes]:
    return [
        bytes(Ether(type=0x8847) / MPLS(label=100, s=0) / MPLS(label=200, s=1) / p) for p in inner_packets()
    ]


def vlan_triple() -> list[bytes]:
    return [
        bytes(
            Ether(type=0x88A8)
            / Dot1AD(vlan=100, type=0x8100)
            / Dot1Q(vlan=7, type=0x8100)
            / Dot1Q(vlan=8, type=0x0800)
            / p
        )
        for p in inner_packets()
    ]


def vxlan_in_vlan_gre() -> list[bytes]:
    """Nested: VLAN-tagged GRE carrying VXLAN carrying the packets."""
    return [
        bytes(
            Ether(type=0x8100)
            / Dot1Q(vlan=9, type=0x0800)
            / IP(src=OUTER_A, dst=OUTER_B)
            / GRE(proto=0x0800)
            / IP(src="192.0.2.30", dst="192.0.2.40")
            / UDP(sport=5000, dport=4789)
            / VXLAN(vni=1)
            / _inner_ether(p)
        )
        for p in inner_packets()
    ]


# --- proxies ------------------------------------------------------------------------------


def conversation(
    turns: list[tuple[bool, bytes]],
    *,
    cport: int = 40100,
    sport: int = 1080,
    client: str = c.CLIENT,
    server: str = c.SERVER,
) -> list[Packet]:
    """A whole TCP connection: handshake, then each (from the client?, bytes) turn, with real
    sequence and acknowledgement numbers both ways, as tshark's SOCKS dissector needs."""
    cseq, sseq = 1000, 5000
    cip, sip = IP(src=client, dst=server), IP(src=server, dst=client)
    out: list[Packet] = [
        cip / TCP(sport=cport, dport=sport, flags="S", seq=cseq),
        sip / TCP(sport=sport, dport=cport, flags="SA", seq=sseq, ack=cseq + 1),
        cip / TCP(sport=cport, dport=sport, flags="A", seq=cseq + 1, ack=sseq + 1),
    ]
    cseq, sseq = cseq + 1, sseq + 1
    for from_client, data in turns:
        if from_client:
            out.append(cip / TCP(sport=cport, dport=sport, flags="PA", seq=cseq, ack=sseq) / Raw(data))
            cseq += len(data)
        else:
            out.append(sip / TCP(sport=sport, dport=cport, flags="PA", seq=sseq, ack=cseq) / Raw(data))
            sseq += len(data)
    return out


HTTP_GET = b"GET /feed HTTP/1.1\r\nHost: api.tiktok.com\r\nUser-Agent: t\r\n\r\n"
HTTP_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def socks4() -> list[bytes]:
    req = b"\x04\x01\x00\x50" + bytes([198, 51, 100, 80]) + b"user\x00"
    return ethernet(
        conversation([(True, req), (False, b"\x00\x5a" + bytes(6)), (True, HTTP_GET), (False, HTTP_OK)])
    )


def socks4a() -> list[bytes]:
    req = b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00api.tiktok.com\x00"
    return ethernet(
        conversation([(True, req), (False, b"\x00\x5a" + bytes(6)), (True, HTTP_GET), (False, HTTP_OK)])
    )


def _socks5_connect(host: bytes, port: int) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(host)]) + host + port.to_bytes(2, "big")


SOCKS5_OK = b"\x05\x00\x00\x01" + bytes(6)


def socks5_tls() -> list[bytes]:
    turns = [
        (True, b"\x05\x01\x00"),
        (False, b"\x05\x00"),
        (True, _socks5_connect(b"www.tiktok.com", 443)),
        (False, SOCKS5_OK),
        (True, c.client_hello("www.tiktok.com")),
    ]
    return ethernet(conversation(turns))


def socks5_password_http() -> list[bytes]:
    turns = [
        (True, b"\x05\x02\x00\x02"),
        (False, b"\x05\x02"),
        (True, b"\x01\x04user\x06secret"),
        (False, b"\x01\x00"),
        (True, _socks5_connect(b"api.tiktok.com", 80)),
        (False, SOCKS5_OK),
        (True, HTTP_GET),
        (False, HTTP_OK),
    ]
    return ethernet(conversation(turns, cport=40101))


def socks5_ipv4() -> list[bytes]:
    turns = [
        (True, b"\x05\x01\x00"),
        (False, b"\x05\x00"),
        (True, b"\x05\x01\x00\x01" + bytes([203, 0, 113, 9]) + (443).to_bytes(2, "big")),
        (False, SOCKS5_OK),
        (True, c.client_hello("www.wechat.com")),
    ]
    return ethernet(conversation(turns, cport=40102))


def http_connect() -> list[bytes]:
    connect = b"CONNECT www.tiktok.com:443 HTTP/1.1\r\nHost: www.tiktok.com:443\r\n\r\n"
    hello = c.client_hello("www.tiktok.com", mlkem=True)
    turns = [
        (True, connect),
        (False, b"HTTP/1.1 200 Connection established\r\n\r\n"),
        (True, hello[:700]),
        (True, hello[700:]),
    ]
    return ethernet(conversation(turns, sport=3128))


def http_absolute() -> list[bytes]:
    get = b"GET http://api.tiktok.com/feed?x=1 HTTP/1.1\r\nHost: api.tiktok.com\r\n\r\n"
    return ethernet(conversation([(True, get), (False, HTTP_OK)], sport=3128))


# --- DNS on other ports, mDNS, LLMNR --------------------------------------------------------


def dns_other_port() -> list[bytes]:
    return ethernet(
        [
            c.udp(c.dns_query("www.tiktok.com"), sport=5555, dport=5300),
            c.udp(
                c.dns_answer("www.tiktok.com", ["edge.tiktokcdn.example"]),
                sport=5300,
                dport=5555,
                src=c.RESOLVER,
                dst=c.CLIENT,
            ),
            # Not DNS, though its first bytes could pass for a header: never read as DNS.
            c.udp(Raw(b"\x00\x07\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + b"garbage!" * 4), dport=5400),
        ]
    )


def local_names() -> list[bytes]:
    return ethernet(
        [
            c.udp(c.dns_query("office-printer.local", qid=0), sport=5353, dport=5353, dst="224.0.0.251"),
            c.udp(c.dns_query("fileserver", qid=0x1234), sport=50000, dport=5355, dst="224.0.0.252"),
        ]
    )


SOCKS_HTTP = [("http", "http://api.tiktok.com/feed", "http")]

ENCAPS = [
    Encap(
        "wifi-80211-plain",
        pcap("wifi.pcap", wifi_plain, LINK_80211),
        expect(""),
        damage=[
            "at packet 3: 1 protected (encrypted) 802.11 frame(s) skipped: their contents cannot be read "
            "without the network's keys (the first shown)"
        ],
    ),
    Encap("wifi-80211-a-msdu", pcap("amsdu.pcap", wifi_amsdu, LINK_80211), expect("")),
    Encap("wifi-radiotap-fcs", pcap("radiotap.pcap", wifi_radiotap, LINK_RADIOTAP), expect("")),
    Encap("wifi-ppi", pcap("ppi.pcap", wifi_ppi, LINK_PPI), expect("")),
    Encap(
        "ppp",
        pcap("ppp.pcap", ppp_frames, LINK_PPP),
        expect("", [*INNER, ("dns", "v6.wechat.com", "dns/udp")]),
    ),
    Encap("pppoe", pcap("pppoe.pcap", pppoe_frames), expect("")),
    Encap("nflog", pcap("nflog.pcap", nflog_frames, LINK_NFLOG), expect("")),
    Encap("cisco-hdlc", pcap("chdlc.pcap", chdlc_frames, LINK_C_HDLC), expect("")),
    Encap("gre", pcap("gre.pcap", gre_ip), expect("gre")),
    Encap("gre-key-ethernet", pcap("gre-teb.pcap", gre_key_teb), expect("gre")),
    Encap("gre-pptp-ppp", pcap("pptp.pcap", gre_pptp), expect("gre")),
    Encap("erspan-i", pcap("erspan1.pcap", erspan_i), expect("gre,erspan-i")),
    Encap("erspan-ii", pcap("erspan2.pcap", erspan_ii), expect("gre,erspan-ii")),
    Encap("erspan-iii", pcap("erspan3.pcap", erspan_iii), expect("gre,erspan-iii")),
    Encap("vxlan", pcap("vxlan.pcap", vxlan), expect("vxlan")),
    Encap("geneve", pcap("geneve.pcap", geneve), expect("geneve")),
    Encap("ipip", pcap("ipip.pcap", ipip), expect("ipip")),
    Encap("6in4", pcap("6in4.pcap", six_in_four), expect("6in4")),
    Encap("mpls", pcap("mpls.pcap", mpls), expect("mpls")),
    Encap("vlan-triple-stack", pcap("vlan3.pcap", vlan_triple), expect("")),
    Encap("vlan-gre-vxlan-nested", pcap("nested.pcap", vxlan_in_vlan_gre), expect("gre,vxlan")),
    Encap(
        "socks4",
        pcap("socks4.pcap", socks4),
        [("ip", "198.51.100.80", "socks4", ""), *expect("socks4", SOCKS_HTTP)],
    ),
    Encap(
        "socks4a",
        pcap("socks4a.pcap", socks4a),
        [("dns", "api.tiktok.com", "socks4a", ""), *expect("socks4", SOCKS_HTTP)],
    ),
    Encap(
        "socks5-domain-tls",
        pcap("socks5.pcap", socks5_tls),
        [("dns", "www.tiktok.com", "socks5", ""), ("sni", "www.tiktok.com", "tls", "socks5")],
    ),
    Encap(
        "socks5-password-http",
        pcap("socks5auth.pcap", socks5_password_http),
        [("dns", "api.tiktok.com", "socks5", ""), *expect("socks5", SOCKS_HTTP)],
    ),
    Encap(
        "socks5-ipv4-tls",
        pcap("socks5ip.pcap", socks5_ipv4),
        [("ip", "203.0.113.9", "socks5", ""), ("sni", "www.wechat.com", "tls", "socks5")],
    ),
    Encap(
        "http-connect-tls",
        pcap("connect.pcap", http_connect),
        [
            ("http", "https://www.tiktok.com:443/", "http", ""),
            ("sni", "www.tiktok.com", "tls", "http-connect"),
        ],
        decode_as=("tcp.port==3128,http",),
    ),
    Encap(
        "http-absolute-form",
        pcap("absolute.pcap", http_absolute),
        [("http", "http://api.tiktok.com/feed?x=1", "http", "")],
        decode_as=("tcp.port==3128,http",),
    ),
    Encap(
        "dns-other-port",
        pcap("dns5300.pcap", dns_other_port),
        [("dns", "www.tiktok.com", "dns/udp", ""), ("dns", "edge.tiktokcdn.example", "cname", "")],
        decode_as=("udp.port==5300,dns",),
    ),
    Encap(
        "mdns-llmnr",
        pcap("local.pcap", local_names),
        [("dns", "office-printer.local", "mdns", ""), ("dns", "fileserver", "llmnr", "")],
    ),
]
