"""Builders for the captures the replay tests read: real ClientHellos and
QUIC Initials, frames for every link type, and pcap/pcapng writers.

Frames are built with scapy (link, IP, UDP/TCP headers, DNS) and written with
dpkt's writers; ClientHellos come from OpenSSL (``ssl.MemoryBIO``) or are
assembled field by field where a test needs a shape OpenSSL will not send
(an ECH extension, a post-quantum-sized key share); QUIC Initials come from
aioquic's client, so they are encrypted exactly as RFC 9001 / RFC 9369 say.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import dpkt
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment
from scapy.layers.l2 import CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether, Loopback
from scapy.packet import Packet, Raw

T0 = 1_605_000_000.0  # 2020-11-10, TikTok in 'downloads' under the test policy
CLIENT, SERVER, RESOLVER = "10.0.0.5", "198.51.100.7", "10.0.0.53"
CLIENT6, SERVER6 = "2001:db8::5", "2001:db8::443"

LINK_ETHERNET, LINK_NULL, LINK_RAW, LINK_LOOP, LINK_SLL, LINK_SLL2 = 1, 0, 101, 108, 113, 276


# --- ClientHellos -----------------------------------------------------------


def openssl_client_hello(sni: str) -> bytes:
    """The first flight OpenSSL sends for ``sni``: one TLS record."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname=sni)
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _vec(data: bytes, width: int) -> bytes:
    return len(data).to_bytes(width, "big") + data


def _ext(kind: int, body: bytes) -> bytes:
    return struct.pack("!H", kind) + _vec(body, 2)


def client_hello(sni: str | None, *, ech: bool = False, mlkem: bool = False) -> bytes:
    """A TLS 1.3 ClientHello record. ``mlkem`` adds a 1216-byte X25519MLKEM768
    key share (the reason real ClientHellos now span several segments);
    ``ech`` adds an encrypted_client_hello extension (0xfe0d), making ``sni``
    the outer name."""
    exts = b""
    if sni is not None:
        exts += _ext(0, _vec(b"\x00" + _vec(sni.encode(), 2), 2))
    exts += _ext(10, _vec(b"\x11\xec\x00\x1d", 2))  # supported_groups
    exts += _ext(13, _vec(b"\x04\x03\x08\x04", 2))  # signature_algorithms
    exts += _ext(43, _vec(b"\x03\x04", 1))  # supported_versions: TLS 1.3
    shares = _vec(b"\x00\x1d" + _vec(os.urandom(32), 2), 2)[2:]
    if mlkem:
        shares = b"\x11\xec" + _vec(os.urandom(1216), 2) + shares
    exts += _ext(51, _vec(shares, 2))  # key_share
    if ech:
        # outer ECH: type 0, HPKE suite, config id, enc, payload
        exts += _ext(0xFE0D, b"\x00\x00\x01\x00\x01\x2a" + _vec(os.urandom(32), 2) + _vec(os.urandom(200), 2))
    body = (
        b"\x03\x03"
        + os.urandom(32)
        + _vec(os.urandom(32), 1)
        + _vec(b"\x13\x01\x13\x02", 2)
        + b"\x01\x00"
        + _vec(exts, 2)
    )
    handshake = b"\x01" + _vec(body, 3)
    return b"\x16\x03\x01" + _vec(handshake, 2)


# --- QUIC -------------------------------------------------------------------


def quic_initials(
    sni: str, *, version: int = QuicProtocolVersion.VERSION_1, big: bool = False
) -> list[bytes]:
    """A real client's first datagrams (its Initial packets), from aioquic.
    ``big`` inflates the ClientHello (many ALPN ids) so CRYPTO spans several Initials."""
    alpn = [f"h3-example-protocol-{i:03d}" for i in range(80)] if big else ["h3"]
    config = QuicConfiguration(
        is_client=True, server_name=sni, alpn_protocols=alpn, supported_versions=[version]
    )
    conn = QuicConnection(configuration=config)
    now = time.time()
    conn.connect(("192.0.2.1", 443), now=now)
    return [data for data, _ in conn.datagrams_to_send(now=now)]


def quic_server_flight(client_initial: bytes) -> list[bytes]:
    """A real server's answer (Initial + Handshake under server keys) to a client's first datagram."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import pull_quic_header

    key = ec.generate_private_key(ec.SECP256R1())
    odcid = pull_quic_header(Buffer(data=client_initial), host_cid_length=8).destination_cid
    server = QuicConnection(
        configuration=QuicConfiguration(is_client=False, certificate=self_signed(key), private_key=key),
        original_destination_connection_id=odcid,
    )
    server.receive_datagram(client_initial, ("192.0.2.9", 50000), now=0.0)
    return [data for data, _ in server.datagrams_to_send(now=0.0)]


def self_signed(key: ec.EllipticCurvePrivateKey, name: str = "replay-test") -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# --- frames -----------------------------------------------------------------


def dns_query(name: str, qid: int = 7, qtype: str = "A") -> DNS:
    return DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))


def dns_answer(name: str, chain: Sequence[str], qid: int = 7, address: str = "192.0.2.80") -> DNS:
    """A response whose answer is the CNAME chain ``name → chain[0] → …`` then an A record."""
    rrs: list[DNSRR] = []
    owner = name
    for target in chain:
        rrs.append(DNSRR(rrname=owner, type="CNAME", rdata=target))
        owner = target
    rrs.append(DNSRR(rrname=owner, type="A", rdata=address))
    return DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name), an=rrs)


def tcp_segments(
    payload: bytes,
    size: int,
    *,
    sport: int = 40000,
    dport: int = 443,
    isn: int = 1000,
    src: str = CLIENT,
    dst: str = SERVER,
    syn: bool = True,
) -> list[Packet]:
    """The client's SYN (optional) then ``payload`` cut into ``size``-byte segments."""
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    out: list[Packet] = []
    if syn:
        out.append(ip / TCP(sport=sport, dport=dport, flags="S", seq=isn))
    for off in range(0, len(payload), size):
        out.append(
            ip
            / TCP(sport=sport, dport=dport, flags="PA", seq=(isn + 1 + off) & 0xFFFFFFFF, ack=1)
            / Raw(payload[off : off + size])
        )
    return out


def udp(
    payload: bytes | Packet, *, sport: int = 5555, dport: int = 53, src: str = CLIENT, dst: str = RESOLVER
) -> Packet:
    ip = IPv6(src=src, dst=dst) if ":" in src else IP(src=src, dst=dst)
    return ip / UDP(sport=sport, dport=dport) / payload


def fragments4(pkt: Packet, size: int) -> list[Packet]:
    return list(fragment(pkt, fragsize=size))


def fragments6(pkt: Packet, size: int) -> list[Packet]:
    """IPv6 fragments of an IPv6/UDP packet (scapy's fragment6 needs the ext header in place)."""
    from scapy.layers.inet6 import fragment6

    with_hdr = pkt.copy()
    with_hdr = IPv6(src=pkt[IPv6].src, dst=pkt[IPv6].dst) / IPv6ExtHdrFragment(id=0x1234) / pkt[IPv6].payload
    return list(fragment6(with_hdr, size))


def link(packets: Iterable[Packet], linktype: int, *, vlan: int = 0) -> list[bytes]:
    """IP packets framed for ``linktype``; ``vlan`` tags (1 = 802.1Q, 2 = QinQ) on Ethernet."""
    out = []
    for p in packets:
        v6 = p.haslayer(IPv6)
        etype = 0x86DD if v6 else 0x0800
        if linktype == LINK_ETHERNET:
            if vlan == 2:
                frame = Ether(type=0x88A8) / Dot1AD(vlan=100, type=0x8100) / Dot1Q(vlan=7, type=etype) / p
            elif vlan == 1:
                frame = Ether(type=0x8100) / Dot1Q(vlan=7, type=etype) / p
            else:
                frame = Ether(type=etype) / p
        elif linktype == LINK_SLL:
            frame = CookedLinux(pkttype=4, lladdrtype=772, proto=etype) / p
        elif linktype == LINK_SLL2:
            frame = CookedLinuxV2(proto=etype, ifindex=1, pkttype=4) / p
        elif linktype == LINK_NULL:
            out.append(struct.pack("<I", 30 if v6 else 2) + bytes(p))  # host byte order (little-endian here)
            continue
        elif linktype == LINK_LOOP:
            out.append(struct.pack(">I", 30 if v6 else 2) + bytes(p))
            continue
        elif linktype == LINK_RAW:
            frame = p
        else:
            raise ValueError(linktype)
        out.append(bytes(frame))
    return out


_ = Loopback  # scapy's loopback layer guesses the byte order; the explicit header above does not


# --- files ------------------------------------------------------------------


def write_pcap(
    path: Path, frames: Sequence[bytes], linktype: int = LINK_ETHERNET, *, nano: bool = False, t0: float = T0
) -> Path:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f, linktype=linktype, nano=nano, snaplen=262144)
        for i, frame in enumerate(frames):
            w.writepkt(frame, ts=t0 + i * 0.01)
    return path


def write_pcapng(
    path: Path, interfaces: Sequence[tuple[int, Sequence[bytes]]], t0: float = T0, block: str = "epb"
) -> Path:
    """One section, one interface per (link type, frames); packets interleaved across interfaces.

    ``block``: enhanced packet blocks (``epb``), the obsolete packet blocks (``pb``), or simple
    packet blocks (``spb``, no interface id or time: one interface only).
    """
    from dpkt import pcapng

    with path.open("wb") as f:
        f.write(bytes(pcapng.SectionHeaderBlockLE()))
        for linktype, _frames in interfaces:
            f.write(bytes(pcapng.InterfaceDescriptionBlockLE(linktype=linktype, snaplen=262144)))
        rows = [
            (i, iface, frame)
            for iface, (_, frames) in enumerate(interfaces)
            for i, frame in enumerate(frames)
        ]
        for n, (_i, iface, frame) in enumerate(sorted(rows, key=lambda r: (r[0], r[1]))):
            us = int((t0 + n * 0.01) * 1e6)
            if block == "spb":
                padded = frame + bytes(-len(frame) % 4)
                size = 16 + len(padded)
                f.write(struct.pack("<III", 3, size, len(frame)) + padded + struct.pack("<I", size))
                continue
            cls = pcapng.EnhancedPacketBlockLE if block == "epb" else pcapng.PacketBlockLE
            f.write(bytes(cls(iface_id=iface, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF, pkt_data=frame)))
    return path


# --- pcapng blocks, one at a time (for files a test damages on purpose) ----------


def pcapng_shb() -> bytes:
    from dpkt import pcapng

    return bytes(pcapng.SectionHeaderBlockLE())


def pcapng_idb(linktype: int = LINK_ETHERNET) -> bytes:
    from dpkt import pcapng

    return bytes(pcapng.InterfaceDescriptionBlockLE(linktype=linktype, snaplen=262144))


def pcapng_epb(frame: bytes, iface: int = 0, t: float = T0) -> bytes:
    from dpkt import pcapng

    us = int(t * 1e6)
    return bytes(
        pcapng.EnhancedPacketBlockLE(iface_id=iface, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF, pkt_data=frame)
    )


def dns_frame(name: str, qid: int = 7) -> bytes:
    """An Ethernet frame carrying one DNS query for ``name``, client → resolver."""
    return link([udp(dns_query(name, qid))], LINK_ETHERNET)[0]
