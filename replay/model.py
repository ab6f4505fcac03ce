"""The values replay passes along: what a reader saw (``Sighting``) and what
the policy made of it (``Verdict``).

Readers (captures, flow files, sensor logs) yield sightings; ``engine`` turns
each into an ``Observation`` for the policy core and pairs it with the
``Decision``; ``report`` writes verdicts out.  Nothing here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from policies import Decision, Kind, Observation


@dataclass(frozen=True, slots=True)
class Sighting:
    """One name, URL or address seen in one input.

    ``via`` says what carried it (``dns/udp``, ``dns/tcp``, ``tls``, ``quic``,
    ``http``, ``cname``, ``zeek-ssl``, ``suricata-dns``, ``mitm``...).
    ``packet`` is the 1-based packet (or line, or flow) number in ``file``.
    ``ech``: the ClientHello carried Encrypted Client Hello; ``value`` is then
    the outer SNI, the only name on the wire.
    """

    time: float
    kind: Kind
    value: str
    client: str | None = None
    server: str | None = None
    client_port: int | None = None
    server_port: int | None = None
    host: str | None = None
    via: str = ""
    qtype: str | None = None
    file: str = ""
    packet: int = 0
    ech: bool = False
    cname_of: str | None = None

    def observation(self) -> Observation:
        return Observation(self.kind, self.value, self.client, self.host)

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time, dt.UTC)


@dataclass(frozen=True, slots=True)
class Verdict:
    sighting: Sighting
    decision: Decision


@dataclass(frozen=True, slots=True)
class Damage:
    """A reader stopped early (``stopped``) or skipped some input: where, and why."""

    file: str
    packet: int  # 1-based number of the packet, line or flow (``unit``); 0: the file as a whole
    message: str
    stopped: bool = True
    unit: str = "packet"

    def __str__(self) -> str:
        where = f" at {self.unit} {self.packet}" if self.packet else ""
        return f"{self.file}{where}: {self.message}"
