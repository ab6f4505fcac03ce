"""The crafted captures: one builder per case, and what replay must read from it.

Shared by the replay tests and the tshark cross-check, so both judge the same
files.  ``expected`` lists (kind, value, via) in packet order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aioquic.quic.packet import QuicProtocolVersion
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.packet import Raw

from . import craft as c

Builder = Callable[[Path], Path]


@dataclass(frozen=True)
class Case:
    id: str
    build: Builder
    expected: list[tuple[str, str, str]]
    damage: list[str] = field(default_factory=list)  # substrings of the warnings
    # Names replay reads that tshark cannot: it does not reassemble a stream
    # whose first segment arrives after later ones when the SYN was not captured.
    beyond_tshark: frozenset[str] = frozenset()


def _pcap(name: str, packets: list, linktype: int = c.LINK_ETHERNET, vlan: int = 0) -> Builder:
    def build(tmp: Path) -> Path:
        return c.write_pcap(tmp / name, c.link(packets, linktype, vlan=vlan), linktype)

    return build


def _dns_pair(name: str, chain: list[str], src: str = c.CLIENT, dst: str = c.RESOLVER) -> list:
    return [
        c.udp(c.dns_query(name), src=src, dst=dst),
        c.udp(c.dns_answer(name, chain), sport=53, dport=5555, src=dst, dst=src),
    ]


def _dns_tcp() -> list:
    query = bytes(c.dns_query("api.tiktokv.com", qid=9))
    answer = bytes(c.dns_answer("api.tiktokv.com", ["api.tiktokv.com.cdn.example"], qid=9))
    out = c.tcp_segments(len(query).to_bytes(2, "big") + query, 10, sport=41000, dport=53, dst=c.RESOLVER)
    out += c.tcp_segments(
        len(answer).to_bytes(2, "big") + answer,
        1400,
        sport=53,
        dport=41000,
        src=c.RESOLVER,
        dst=c.CLIENT,
        isn=77,
    )
    return out


def _hello_segments(sni: str, size: int, order: list[int] | None = None, **kw: object) -> list:
    segs = c.tcp_segments(c.client_hello(sni, mlkem=True), size, **kw)  # type: ignore[arg-type]
    syn, data = segs[0], segs[1:]
    return [syn] + ([data[i] for i in order] if order else data)


def _retransmitted() -> list:
    syn, a, b, d = _hello_segments("www.tiktok.com", 600)
    overlap = a.copy()
    overlap[TCP].seq = a[TCP].seq + 300  # re-sent with a different cut: overlaps a and b
    overlap[Raw].load = bytes(a[Raw].load)[300:] + bytes(b[Raw].load)[:300]
    return [syn, a, a, overlap, d, b, b]


def _no_syn_out_of_order() -> list:
    return _hello_segments("v16.tiktokv.com", 500, order=[2, 0, 1], syn=True)[1:]


def _http() -> list:
    stream = (
        b"POST /upload HTTP/1.1\r\nHost: api.tiktok.com\r\nContent-Length: 11\r\n\r\nhello world"
        b"GET /tiktok/app.apk HTTP/1.1\r\nHost: cdn.shared.example\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nabcde\r\n0\r\n\r\n"
        b"GET /store/apps/details?id=com.zhiliaoapp.musically HTTP/1.1\r\nHost: play.google.com\r\n\r\n"
    )
    return c.tcp_segments(stream, 70, dport=80)


def _quic(version: int, big: bool, sni: str) -> list:
    return [
        c.udp(d, sport=50000, dport=443, dst=c.SERVER) for d in c.quic_initials(sni, version=version, big=big)
    ]


def _quic_with_reply() -> list:
    client = c.quic_initials("www.wechat.com")
    server = c.quic_server_flight(client[0])
    return [c.udp(d, sport=50001, dport=443, dst=c.SERVER) for d in client] + [
        c.udp(d, sport=443, dport=50001, src=c.SERVER, dst=c.CLIENT) for d in server
    ]


def _fragments() -> list:
    big = c.udp(
        c.dns_answer("www.wechat.com", [f"c{i}.wechat-cdn.example" for i in range(12)]),
        sport=53,
        dport=5555,
        src=c.RESOLVER,
        dst=c.CLIENT,
    )
    big[IP].id = 4242
    frags = c.fragments4(big, 120)
    lone = (
        IP(src=c.CLIENT, dst=c.RESOLVER, id=99, flags="MF", frag=0) / UDP(sport=1, dport=53) / Raw(b"x" * 40)
    )
    return [frags[2], lone, frags[0], *frags[3:], frags[1]]


def _fragments6() -> list:
    big = c.udp(
        c.dns_answer("www.wechat.com", [f"v6-{i}.wechat-cdn.example" for i in range(12)]),
        sport=53,
        dport=5555,
        src="2001:db8::53",
        dst=c.CLIENT6,
    )
    return list(reversed(c.fragments6(big, 200)))


def _ipv6() -> list:
    return _dns_pair("www.wechat.com", [], src=c.CLIENT6, dst="2001:db8::53")[:1] + c.tcp_segments(
        c.client_hello("web.wechat.com"), 200, src=c.CLIENT6, dst=c.SERVER6
    )


def _truncated(tmp: Path) -> Path:
    path = _pcap(
        "full.pcap", _dns_pair("www.tiktok.com", []) + c.tcp_segments(c.client_hello("www.wechat.com"), 1400)
    )(tmp)
    data = path.read_bytes()
    out = tmp / "truncated.pcap"
    out.write_bytes(data[:-20])
    return out


def _corrupt(tmp: Path) -> Path:
    path = _pcap("full.pcap", _dns_pair("www.tiktok.com", []) + _dns_pair("www.wechat.com", []))(tmp)
    data = bytearray(path.read_bytes())
    # Packet 3's record header: offset after the file header and two records.
    off = 24
    for _ in range(2):
        off += 16 + int.from_bytes(data[off + 8 : off + 12], "little")
    data[off + 8 : off + 12] = b"\xff\xff\xff\x7f"
    out = tmp / "corrupt.pcap"
    out.write_bytes(bytes(data))
    return out


def _pcapng_multi(tmp: Path) -> Path:
    eth = c.link(_dns_pair("www.tiktok.com", []), c.LINK_ETHERNET)
    sll = c.link(c.tcp_segments(c.client_hello("www.wechat.com"), 300), c.LINK_SLL)
    raw = c.link(_http()[:3], c.LINK_RAW)
    return c.write_pcapng(
        tmp / "multi.pcapng", [(c.LINK_ETHERNET, eth), (c.LINK_SLL, sll), (c.LINK_RAW, raw)]
    )


def _pcapng_blocks(block: str) -> Builder:
    def build(tmp: Path) -> Path:
        frames = c.link(
            _dns_pair("www.tiktok.com", []) + c.tcp_segments(c.client_hello("www.wechat.com"), 300),
            c.LINK_ETHERNET,
        )
        return c.write_pcapng(tmp / f"{block}.pcapng", [(c.LINK_ETHERNET, frames)], block=block)

    return build


def _pcapng_truncated(tmp: Path) -> Path:
    path = _pcapng_multi(tmp)
    data = path.read_bytes()
    out = tmp / "truncated.pcapng"
    out.write_bytes(data[:-30])
    return out


def _garbage(tmp: Path) -> Path:
    out = tmp / "garbage.pcap"
    out.write_bytes(b"\xd4\xc3\xb2\xa1\x02\x00\x04\x00" + bytes(range(256)) * 3)
    return out


def _mangled_packets() -> list:
    # Valid records whose contents lie: IHL past the end, a TCP header cut short, a DNS message of junk.
    bad_ihl = bytes(IP(src=c.CLIENT, dst=c.RESOLVER) / UDP(sport=9, dport=53) / Raw(b"\x00" * 4))
    bad_ihl = bytes([0x4F]) + bad_ihl[1:]
    cut = bytes(IP(src=c.CLIENT, dst=c.SERVER) / TCP(sport=1, dport=443))[:24]
    junk = c.udp(Raw(b"\x01\x02garbage-not-dns" * 3))
    return [IP(bad_ihl), IP(cut), junk, _dns_pair("www.tiktok.com", [])[0]]


DNS_Q = [("dns", "www.tiktok.com", "dns/udp")]
TIKTOK_CNAME = [
    ("dns", "www.tiktok.com", "dns/udp"),
    ("dns", "www.tiktok.com.edge.example", "cname"),
    ("dns", "edge.tiktokcdn.example", "cname"),
]
HELLO = [("sni", "www.tiktok.com", "tls")]
HTTP = [
    ("http", "http://api.tiktok.com/upload", "http"),
    ("http", "http://cdn.shared.example/tiktok/app.apk", "http"),
    ("http", "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically", "http"),
]
V1, V2 = QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2

CASES = [
    Case(
        "dns-udp-cname-chain",
        _pcap(
            "dns.pcap", _dns_pair("www.tiktok.com", ["www.tiktok.com.edge.example", "edge.tiktokcdn.example"])
        ),
        TIKTOK_CNAME,
    ),
    Case(
        "dns-over-tcp",
        _pcap("dnstcp.pcap", _dns_tcp()),
        [("dns", "api.tiktokv.com", "dns/tcp"), ("dns", "api.tiktokv.com.cdn.example", "cname")],
    ),
    Case("tls-one-segment", _pcap("tls.pcap", c.tcp_segments(c.client_hello("www.tiktok.com"), 1400)), HELLO),
    Case(
        "tls-openssl-hello",
        _pcap("openssl.pcap", c.tcp_segments(c.openssl_client_hello("www.wechat.com"), 1400)),
        [("sni", "www.wechat.com", "tls")],
    ),
    Case("tls-pq-hello-over-segments", _pcap("pq.pcap", _hello_segments("www.tiktok.com", 500)), HELLO),
    Case(
        "tls-out-of-order",
        _pcap("ooo.pcap", _hello_segments("www.tiktok.com", 400, order=[3, 1, 0, 2])),
        HELLO,
    ),
    Case("tls-retransmissions-and-overlap", _pcap("retrans.pcap", _retransmitted()), HELLO),
    Case(
        "tls-no-syn-out-of-order",
        _pcap("nosyn.pcap", _no_syn_out_of_order()),
        [("sni", "v16.tiktokv.com", "tls")],
        beyond_tshark=frozenset({"v16.tiktokv.com"}),
    ),
    Case(
        "tls-ech-outer-sni",
        _pcap("ech.pcap", c.tcp_segments(c.client_hello("public.example", ech=True), 1400)),
        [("sni", "public.example", "tls")],
    ),
    Case(
        "tls-without-sni",
        _pcap("nosni.pcap", c.tcp_segments(c.client_hello(None), 1400, dst="203.0.113.9")),
        [("ip", "203.0.113.9", "tls")],
    ),
    Case("http-keepalive-body-and-chunked", _pcap("http.pcap", _http()), HTTP),
    Case("vlan-802.1q", _pcap("vlan.pcap", _dns_pair("www.tiktok.com", []), vlan=1), DNS_Q),
    Case("vlan-qinq", _pcap("qinq.pcap", _dns_pair("www.tiktok.com", []), vlan=2), DNS_Q),
    Case(
        "linux-cooked-v1",
        _pcap("sll.pcap", c.tcp_segments(c.client_hello("www.tiktok.com"), 300), c.LINK_SLL),
        HELLO,
    ),
    Case(
        "linux-cooked-v2",
        _pcap("sll2.pcap", c.tcp_segments(c.client_hello("www.tiktok.com"), 300), c.LINK_SLL2),
        HELLO,
    ),
    Case("raw-ip", _pcap("raw.pcap", _dns_pair("www.tiktok.com", []), c.LINK_RAW), DNS_Q),
    Case(
        "bsd-null",
        _pcap("null.pcap", _ipv6(), c.LINK_NULL),
        [("dns", "www.wechat.com", "dns/udp"), ("sni", "web.wechat.com", "tls")],
    ),
    Case("bsd-loop", _pcap("loop.pcap", _dns_pair("www.tiktok.com", []), c.LINK_LOOP), DNS_Q),
    Case(
        "ipv6",
        _pcap("v6.pcap", _ipv6()),
        [("dns", "www.wechat.com", "dns/udp"), ("sni", "web.wechat.com", "tls")],
    ),
    Case(
        "ipv4-fragments",
        _pcap("frag.pcap", _fragments()),
        [("dns", "www.wechat.com", "dns/udp")]
        + [("dns", f"c{i}.wechat-cdn.example", "cname") for i in range(12)],
    ),
    Case(
        "ipv6-fragments",
        _pcap("frag6.pcap", _fragments6()),
        [("dns", "www.wechat.com", "dns/udp")]
        + [("dns", f"v6-{i}.wechat-cdn.example", "cname") for i in range(12)],
    ),
    Case(
        "quic-v1",
        _pcap("quic1.pcap", _quic(V1, False, "www.tiktok.com")),
        [("sni", "www.tiktok.com", "quic")],
    ),
    Case(
        "quic-v2",
        _pcap("quic2.pcap", _quic(V2, False, "www.wechat.com")),
        [("sni", "www.wechat.com", "quic")],
    ),
    Case(
        "quic-v1-server-reply-ignored",
        _pcap("quicreply.pcap", _quic_with_reply()),
        [("sni", "www.wechat.com", "quic")],
    ),
    Case(
        "quic-v1-hello-over-initials",
        _pcap("quic1big.pcap", _quic(V1, True, "v19.tiktokv.com")),
        [("sni", "v19.tiktokv.com", "quic")],
    ),
    Case(
        "quic-v2-hello-over-initials",
        _pcap("quic2big.pcap", _quic(V2, True, "v19.tiktokv.com")),
        [("sni", "v19.tiktokv.com", "quic")],
    ),
    Case("pcapng-obsolete-packet-blocks", _pcapng_blocks("pb"), [DNS_Q[0], ("sni", "www.wechat.com", "tls")]),
    Case("pcapng-simple-packet-blocks", _pcapng_blocks("spb"), [DNS_Q[0], ("sni", "www.wechat.com", "tls")]),
    Case(
        "pcapng-three-interfaces",
        _pcapng_multi,
        [
            ("dns", "www.tiktok.com", "dns/udp"),
            ("sni", "www.wechat.com", "tls"),
            ("http", "http://api.tiktok.com/upload", "http"),
        ],
    ),
    Case(
        "malformed-packets",
        _pcap("mangled.pcap", _mangled_packets()),
        DNS_Q,
        damage=["malformed packet(s) skipped"],
    ),
    Case(
        "truncated-pcap",
        _truncated,
        [("dns", "www.tiktok.com", "dns/udp")],
        damage=["truncated.pcap at packet 4: file ends inside the packet"],
    ),
    Case(
        "corrupt-record-header",
        _corrupt,
        [("dns", "www.tiktok.com", "dns/udp")],
        damage=["corrupt.pcap at packet 3: corrupt record header"],
    ),
    Case(
        "truncated-pcapng",
        _pcapng_truncated,
        [
            ("dns", "www.tiktok.com", "dns/udp"),
            ("sni", "www.wechat.com", "tls"),
            ("http", "http://api.tiktok.com/upload", "http"),
        ],
        damage=[
            "truncated.pcapng at packet 7: "
            "file ends inside the enhanced packet block at offset 904 (114 of 144 bytes)"
        ],
    ),
    Case("garbage-after-header", _garbage, [], damage=["garbage.pcap at packet 1"]),
]
_ = IPv6
