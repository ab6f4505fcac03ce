"""pcap / pcapng → sightings, streaming, one packet at a time.

The layers, each in its own module, in the order a packet meets them:

    framing    the file's records (pcap, pcapng) → frames; judged TCP directions dropped early
    network    link layers, tunnels, IP and fragments → TCP segments and UDP payloads
    tcp        TCP reassembly per direction (bounded) → a stream's contiguous bytes
    protocols  DNS, TLS, HTTP/1 (h11), SOCKS, CONNECT, QUIC → ``Sighting``s

``Decoder`` stacks the last three (``Network`` → ``Protocols`` → ``Reassembly``,
each a base class of the one before) into one object per capture, so the
per-packet path is plain method calls on one object; ``read_capture`` runs a
file through ``framing`` into it.  Only candidates reach ``wire``: UDP port
53 and TCP streams to/from port 53 (DNS), TCP streams that start with a TLS
handshake record, an HTTP/1.x method or a SOCKS request, and UDP datagrams
that start with a QUIC v1/v2 Initial.  Every table is bounded, so memory
stays flat whatever the capture's size.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import dpkt

from . import framing
from .framing import PCAPNG_MAGIC, Progress, is_capture
from .model import DEFAULT_LIMITS, Damage, Limits, Sighting, Skips
from .network import Network

__all__ = ["Decoder", "is_capture", "read_capture"]


class Decoder(Network):
    """Per-capture state; ``packet()`` appends sightings to ``out``."""

    def __init__(self, file: str, dns_ports: frozenset[int] = frozenset({53})) -> None:
        super().__init__(file, dns_ports)

    def packet(self, ts: float, buf: bytes, link: int, number: int) -> None:
        self.number = number
        self.ts = ts
        try:
            self._packet(buf, link)
        except (IndexError, ValueError, struct.error, UnicodeError, dpkt.Error):
            self.malformed += 1
            if not self.first_malformed:
                self.first_malformed = number

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
    read = framing.read_pcapng if head == PCAPNG_MAGIC else framing.read_pcap
    yield from read(dec, head, fh, progress, limits.max_record, skips)
    more = skips.summary()
    if more is not None:
        yield more
    yield from dec.damage_notes()
