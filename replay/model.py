"""The values replay passes along: what a reader saw (``Sighting``) and what
the policy made of it (``Finding``).

Readers (captures, flow files, sensor logs) yield sightings; ``engine`` turns
each into an ``Observation`` for the policy core and pairs it with the
``Decision``; ``report`` writes verdicts out.  ``Limits`` caps what a reader
holds at once (a log line, a capture record, a flow); ``Skips`` turns the
records a reader skips into a bounded number of ``Damage`` warnings.  Nothing
here does I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from policies import Decision, Kind, Observation


@dataclass(frozen=True, slots=True)
class Sighting:
    """One name, URL or address seen in one input.

    ``via`` says what carried it (``dns/udp``, ``dns/tcp``, ``tls``, ``quic``,
    ``http``, ``cname``, ``zeek-ssl``, ``suricata-dns``, ``mitm``...).
    ``packet`` is the 1-based packet (or line, or flow) number in ``file``.
    ``ech``: the ClientHello carried Encrypted Client Hello; ``value`` is then
    the outer SNI, the only name on the wire.  ``tunnel``: what the packet was
    wrapped in on the wire, outermost first (``vxlan``, ``gre,erspan-ii``,
    ``mpls``, ``socks5``, ``http-connect``...); ``client`` and ``server`` are
    then the inner endpoints.
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
    tunnel: str = ""

    def observation(self) -> Observation:
        return Observation(self.kind, self.value, self.client, self.host)

    @property
    def when(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.time, dt.UTC)


@dataclass(frozen=True, slots=True)
class Finding:
    """A sighting and the policy's decision on it: what every report writes one row of.
    (The proxy's ``proxy_addons.verdict.Verdict`` is the addons' own record, with what
    the proxy did; replay does nothing to the traffic, so it has no such fields.)"""

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


@dataclass(frozen=True, slots=True)
class Limits:
    """The most a reader materialises at once, so memory stays flat whatever the input.

    ``max_line``: bytes of one log line, its newline included (Zeek, Suricata; JSON
    or TSV).  ``max_record``: bytes of one pcap record, pcapng block or mitmproxy
    flow.  Anything longer is skipped, read in bounded pieces, with a warning.
    """

    max_line: int = 1 << 20
    max_record: int = 1 << 24


DEFAULT_LIMITS = Limits()
MAX_NAMED_SKIPS = 10  # skipped records warned about one by one, per file; the rest are counted


@dataclass(slots=True)
class Skips:
    """The records one reader skipped: the first ``MAX_NAMED_SKIPS`` each get a
    ``Damage`` of their own, the others one closing count (a file of a million
    bad records must not make a million warnings)."""

    file: str
    unit: str = "packet"
    named: int = 0
    more: int = 0
    first_more: int = 0
    _limit: int = field(default=MAX_NAMED_SKIPS, repr=False)

    def skip(self, number: int, message: str) -> Damage | None:
        """A warning for this skipped record, or None once the named ones are used up."""
        if self.named < self._limit:
            self.named += 1
            return Damage(self.file, number, message, stopped=False, unit=self.unit)
        self.more += 1
        self.first_more = self.first_more or number
        return None

    def summary(self) -> Damage | None:
        if not self.more:
            return None
        return Damage(
            self.file,
            self.first_more,
            f"{self.more} more {self.unit}(s) skipped likewise (the first of them shown)",
            stopped=False,
            unit=self.unit,
        )
