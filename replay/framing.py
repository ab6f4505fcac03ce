"""pcap and pcapng framing: a capture file → (time, frame, link type, packet number).

Flow: ``capture.read_capture`` picks ``read_pcap`` or ``read_pcapng`` by the
magic; each reads its records in bounded pieces, drops the frames of TCP
directions already judged (``judged``, before any call: most of a capture),
and hands every other frame to ``Decoder.packet``, yielding the sightings it
produced after each record.  dpkt's file and block definitions give the
header layouts; the hot records (pcap records, enhanced packet blocks) are
sliced, not built as dpkt objects.

A damaged file ends the read with a ``Damage`` naming the packet; the
sightings before it have already been yielded.  A record or block over
``Limits.max_record`` is never held: when its framing is consistent (a pcap
record's original length covers its captured length; a pcapng block's length
is repeated at its end) it is read past in bounded pieces and skipped with a
warning, and so is a pcapng block whose contents are corrupt inside intact
framing; otherwise the read stops there.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, BinaryIO

import dpkt
from dpkt import pcap as dpcap
from dpkt import pcapng as dpcapng

from .model import Damage, Sighting, Skips
from .network import LINK_ETHERNET
from .tcp import DONE, Stream, _Done

if TYPE_CHECKING:
    from .capture import Decoder

CHUNK = 1 << 20
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
PCAP_MAGICS = {struct.pack("<I", m) for m in dpcap.MAGIC_TO_PKT_HDR} | {
    struct.pack(">I", m) for m in dpcap.MAGIC_TO_PKT_HDR
}

Progress = Callable[[], None]


def is_capture(head: bytes) -> bool:
    return head[:4] == PCAPNG_MAGIC or head[:4] in PCAP_MAGICS


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


def read_pcap(
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


def read_pcapng(
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
