"""The link layers ``capture`` meets less often: IEEE 802.11 (plain, radiotap, PPI),
PPP, PPPoE, Cisco HDLC and Linux NFLOG → the network-layer packet inside.

Flow: ``Decoder._packet`` handles Ethernet, Linux cooked, BSD loopback and raw IP
itself (the hot path); any other link type comes here, and ``network`` returns
``(ethertype, payload)`` for the packet the frame carries, or ``None`` when the
frame carries nothing a name could be in (802.11 management and control
frames, PPP control protocols, non-IP NFLOG families).  ``capture`` takes the
payload from there (IPv4, IPv6, MPLS...).

dpkt's decoders read the headers dpkt has: ``dpkt.radiotap`` (its length and
FCS flag), ``dpkt.ieee80211`` (the four address layouts, QoS, FCS),
``dpkt.ppp`` and ``dpkt.pppoe`` (address/control, protocol-field compression).
Our PPP subclasses carry an empty protocol table, so dpkt reads the PPP header
but does not build objects for the IP packet inside: ``capture`` slices that
itself.  dpkt has no PPI, NFLOG or Cisco HDLC: those three short headers are
read here and cross-checked with tshark in tests/replay/test_links.py.

Protected (encrypted) 802.11 data frames raise ``Protected``: the capture has
no keys, so ``capture`` counts them and warns once per file.
"""

from __future__ import annotations

import struct
from typing import Any, ClassVar

import dpkt
from dpkt import ieee80211 as d11
from dpkt import ppp as dppp
from dpkt import pppoe as dpppoe
from dpkt import radiotap as dradiotap

# Link types (https://www.tcpdump.org/linktypes.html).
LINK_PPP, LINK_PPP_HDLC, LINK_PPP_ETHER, LINK_C_HDLC = 9, 50, 51, 104
LINK_IEEE802_11, LINK_RADIOTAP, LINK_PPI, LINK_NFLOG = 105, 127, 192, 239
LINKS = frozenset(
    {
        LINK_PPP,
        LINK_PPP_HDLC,
        LINK_PPP_ETHER,
        LINK_C_HDLC,
        LINK_IEEE802_11,
        LINK_RADIOTAP,
        LINK_PPI,
        LINK_NFLOG,
    }
)

ETH_IP, ETH_IP6, ETH_MPLS, ETH_MPLS_MC = 0x0800, 0x86DD, 0x8847, 0x8848
# PPP protocol numbers (RFC 1700, 3032) → the ethertype of the same payload.
PPP_TO_ETHERTYPE = {dppp.PPP_IP: ETH_IP, dppp.PPP_IP6: ETH_IP6, 0x0281: ETH_MPLS, 0x0283: ETH_MPLS_MC}
NFULA_PAYLOAD = 9  # the NFLOG TLV that holds the packet (linux/netfilter/nfnetlink_log.h)
NFLOG_FAMILIES = {2: ETH_IP, 10: ETH_IP6}  # AF_INET, AF_INET6
PPI_80211_COMMON = 2
SNAP = b"\xaa\xaa\x03"

Network = tuple[int, bytes]
AMSDU = -2  # the "ethertype" of an 802.11 A-MSDU body: ``amsdu`` splits it into its MSDUs


class Protected(ValueError):
    """An 802.11 data frame whose body is encrypted (the Protected Frame bit)."""


class _PPP(dppp.PPP):  # type: ignore[misc]  # dpkt has no type hints
    """dpkt's PPP header (address, control, protocol) without decoding the payload."""

    _protosw: ClassVar[dict[int, Any]] = {}


class _BarePPP(dpppoe.PPP):  # type: ignore[misc]
    """dpkt's PPP protocol field alone (PPPoE, or PPP with address/control compressed)."""

    _protosw: ClassVar[dict[int, Any]] = {}


def _ppp_payload(ppp: dpkt.Packet) -> Network | None:
    etype = PPP_TO_ETHERTYPE.get(ppp.p)
    return None if etype is None else (etype, bytes(ppp.data))


def ppp(buf: bytes) -> Network | None:
    """A PPP frame, with or without the ff 03 address and control bytes (RFC 1662 ACFC)."""
    return _ppp_payload(_PPP(buf) if buf[:2] == b"\xff\x03" else _BarePPP(buf))


def pppoe_session(buf: bytes) -> Network | None:
    """A PPPoE session-stage payload (ethertype 0x8864): its PPP packet, cut to the PPPoE length."""
    hdr = dpppoe.PPPoE.__hdr_len__
    if len(buf) < hdr + 1 or buf[1] != dpppoe.PPPoE_SESSION:
        return None
    length = buf[4] << 8 | buf[5]
    return _ppp_payload(_BarePPP(buf[hdr : hdr + length]))


def snap(body: bytes) -> Network | None:
    """An 802.2 LLC/SNAP header (aa aa 03, OUI, ethertype) and what follows it."""
    if body[:3] != SNAP or len(body) < 8:
        return None
    return body[6] << 8 | body[7], body[8:]


def ieee80211(buf: bytes, fcs: bool = False) -> Network | None:
    """An 802.11 frame: the LLC/SNAP payload of a data frame, else ``None``."""
    fc0 = buf[0]
    if (fc0 >> 2) & 3 != d11.DATA_TYPE or fc0 & 0x40:  # not data, or a no-data (Null) subtype
        return None
    if buf[1] & 0x40:
        raise Protected("protected 802.11 frame")
    try:
        frame = d11.IEEE80211(buf, fcs=fcs)
    except (dpkt.UnpackError, struct.error) as exc:  # subtypes dpkt does not read (CF-Ack, QoS CF-Poll...)
        raise ValueError(f"802.11 data frame dpkt cannot read: {exc}") from exc
    body = bytes(frame.data)
    if frame.subtype == d11.D_QOS_DATA:
        if frame.order:
            body = body[4:]  # the HT Control field, which dpkt does not strip
        # dpkt reads the QoS Control field big-endian: its first byte (bit 7: A-MSDU) is the high one.
        if frame.qos_data.control >> 8 & 0x80:
            return AMSDU, body
    return snap(body)


def amsdu(body: bytes) -> list[Network]:
    """The MSDUs of an A-MSDU (IEEE 802.11-2020 9.3.2.2.2): each subframe is a destination,
    a source, a big-endian length, then that many bytes of LLC/SNAP and payload, padded to
    4 bytes except the last; dpkt does not unpack them."""
    out = []
    pos = 0
    while pos + 14 <= len(body):
        length = body[pos + 12] << 8 | body[pos + 13]
        got = snap(body[pos + 14 : pos + 14 + length])
        if got is not None:
            out.append(got)
        pos += (14 + length + 3) & ~3
    return out


def radiotap(buf: bytes) -> Network | None:
    length = buf[2] | buf[3] << 8
    if length >= len(buf) or (buf[length] >> 2) & 3 != d11.DATA_TYPE:
        return None  # only data frames are decoded: beacons and acks are most of a Wi-Fi capture
    try:
        rt = dradiotap.Radiotap(buf)
    except (dpkt.UnpackError, struct.error) as exc:
        raise ValueError(f"radiotap header dpkt cannot read: {exc}") from exc
    fcs = bool(rt.flags_present and rt.flags.fcs)
    return ieee80211(buf[length:], fcs)


def ppi(buf: bytes) -> Network | None:
    """A Per-Packet Information header (version, flags, length, link type; little-endian)."""
    length, dlt = struct.unpack_from("<HI", buf, 2)
    if buf[0] != 0 or length < 8:
        raise ValueError("not a PPI header")
    inner = buf[length:]
    if dlt == LINK_IEEE802_11:
        return ieee80211(inner, _ppi_fcs(buf[8:length])) if inner else None
    if dlt == 1:  # Ethernet inside PPI: capture reads it as its own link type
        return (-1, inner)
    return network(dlt, inner) if dlt in LINKS and dlt != LINK_PPI else None


def _ppi_fcs(fields: bytes) -> bool:
    """Whether the PPI 802.11-common field (type 2) says the frame ends in an FCS (flag 0x0001)."""
    pos = 0
    while pos + 4 <= len(fields):
        ftype, flen = struct.unpack_from("<HH", fields, pos)
        if ftype == PPI_80211_COMMON and flen >= 10:
            return bool(fields[pos + 12] & 1)
        pos += 4 + flen
    return False


def c_hdlc(buf: bytes) -> Network | None:
    """Cisco HDLC: address, control, then an ethertype."""
    return buf[2] << 8 | buf[3], buf[4:]


def nflog(buf: bytes) -> Network | None:
    """Linux NFLOG (tcpdump.org/linktypes/LINKTYPE_NFLOG.html): family, version, resource id,
    then TLVs (length and type in the capturing host's byte order, padded to 4 bytes); the
    packet is the NFULA_PAYLOAD TLV."""
    etype = NFLOG_FAMILIES.get(buf[0])
    if etype is None or buf[1] != 0:
        return None
    for order in ("<HH", ">HH"):
        pos = 4
        while pos + 4 <= len(buf):
            tlen, ttype = struct.unpack_from(order, buf, pos)
            if tlen < 4 or pos + tlen > len(buf):
                break  # not this byte order
            if ttype & 0x7FFF == NFULA_PAYLOAD:
                return etype, buf[pos + 4 : pos + tlen]
            pos += (tlen + 3) & ~3
    return None


def network(link: int, buf: bytes) -> Network | None:
    """``(ethertype, payload)`` of a frame of link type ``link`` (one of ``LINKS``); the
    ethertype -1 means an Ethernet frame follows, ``AMSDU`` an A-MSDU aggregate."""
    if link == LINK_RADIOTAP:
        return radiotap(buf)
    if link == LINK_IEEE802_11:
        return ieee80211(buf)
    if link == LINK_PPI:
        return ppi(buf)
    if link == LINK_NFLOG:
        return nflog(buf)
    if link == LINK_C_HDLC:
        return c_hdlc(buf)
    if link == LINK_PPP_ETHER:
        return pppoe_session(buf)
    return ppp(buf)
