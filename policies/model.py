"""The policy vocabulary: frozen values that flow from the loader to the adapters.

YAML is parsed by ``loader`` into a ``Policy`` (immutable, compiled once);
``Policy.view(...)`` fixes a moment and turns it into a ``PolicyView`` that maps
each ``Observation`` to a ``Decision``.  Everything here is a plain value: no I/O,
no network library, no mutable state shared between threads.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    ALLOW = "allow"
    LOG = "log"
    BLOCK = "block"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]


_SEVERITY = {Action.ALLOW: 0, Action.LOG: 1, Action.BLOCK: 2}


class Phase(StrEnum):
    NONE = "none"
    DOWNLOADS = "downloads"
    FULL = "full"


class Mode(StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


class Kind(StrEnum):
    """What was observed: the kind decides which rules can apply."""

    DNS = "dns"
    SNI = "sni"
    HTTP = "http"
    IP = "ip"


class Tier(StrEnum):
    """How a rule reacts to its app's phase (the phase table in the README).

    ``traffic``: the app's ordinary traffic; logged in ``downloads``, blocked in ``full``.
    ``download``: app-store downloads and the app's own update hosts; blocked in both.
    ``allow``: the global allow list; never blocks.
    """

    TRAFFIC = "traffic"
    DOWNLOAD = "download"
    ALLOW = "allow"


class RuleKind(StrEnum):
    DOMAIN = "domain"  # the name and every subdomain
    HOST = "host"  # exactly this name
    SNI = "sni"  # a glob over a name, '*' within one label
    DOWNLOAD = "download"  # the app's own download/update endpoint (host [+ path prefix])
    STORE = "store"  # an app-store id recognised in a URL
    NETWORK = "network"  # a CIDR, for connections that carry no name
    ALLOW = "allow"  # the global allow list
    BUILTIN = "builtin"  # a rule the product itself adds (no policy entry)


@dataclass(frozen=True, slots=True)
class Rule:
    """One compiled policy entry, minus the name it is filed under.

    Name rules are filed in the index under their normalised name, so one
    ``Rule`` serves every name of a list file; ``pattern`` is set only where
    the rule is not a plain name (globs, CIDRs, download hosts, store ids).
    """

    kind: RuleKind
    tier: Tier
    app: str | None = None
    source: str | None = None
    pattern: str | None = None
    path: str | None = None  # download rules: URL path prefix

    def cite(self, key: str | None = None) -> str:
        """The rule id that decisions and events carry, e.g. ``domain:tiktok.com``."""
        return f"{self.kind.value}:{self.pattern or key or ''}{self.path or ''}"


@dataclass(frozen=True, slots=True)
class ScheduleEntry:
    start: dt.date
    phase: Phase
    source: str


@dataclass(frozen=True, slots=True)
class LegalBasis:
    order: str
    citation: str
    signed: dt.date | None = None
    url: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class StoreIds:
    apple: tuple[int, ...] = ()
    google_play: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class App:
    id: str
    name: str
    owner: str
    legal_basis: LegalBasis
    schedule: tuple[ScheduleEntry, ...]
    store: StoreIds = StoreIds()
    phase_override: Phase | None = None

    def phase_at(self, day: dt.date) -> tuple[Phase, ScheduleEntry | None]:
        """The phase in force on ``day`` and the schedule entry that set it."""
        current: ScheduleEntry | None = None
        for entry in self.schedule:  # sorted by start at load
            if entry.start <= day:
                current = entry
        if self.phase_override is not None:
            return self.phase_override, current
        return (current.phase if current else Phase.NONE), current


@dataclass(frozen=True, slots=True)
class AppPhase:
    """An app's effective phase at a moment, and why."""

    app: str
    phase: Phase
    since: dt.date | None
    source: str
    overridden: bool = False


@dataclass(frozen=True, slots=True)
class Observation:
    """Something seen on the wire, in one vocabulary for every adapter.

    ``value`` is the DNS name, the SNI, the full URL (``http``) or the IP
    address (``ip``).  ``host`` is set for ``http`` (the Host header or the
    URL's authority).  ``client`` is the source address, when known.
    """

    kind: Kind
    value: str
    client: str | None = None
    host: str | None = None

    @classmethod
    def dns(cls, name: str, client: str | None = None) -> Observation:
        return cls(Kind.DNS, name, client)

    @classmethod
    def sni(cls, name: str, client: str | None = None) -> Observation:
        return cls(Kind.SNI, name, client)

    @classmethod
    def http(cls, url: str, host: str | None = None, client: str | None = None) -> Observation:
        return cls(Kind.HTTP, url, client, host)

    @classmethod
    def ip(cls, address: str, client: str | None = None) -> Observation:
        return cls(Kind.IP, address, client)


@dataclass(frozen=True, slots=True)
class Decision:
    """The verdict on one observation.

    ``action`` is what the adapter must do.  ``enforced`` is what enforcement
    would have done; it differs from ``action`` only when monitor mode or an
    exempt client turned a block into a log (``reason`` says which).
    ``inspect`` asks a TLS-terminating adapter to decrypt, because the verdict
    depends on the URL (app-store pages, download paths) and the name alone
    cannot settle it.
    """

    action: Action
    apps: tuple[str, ...] = ()
    phase: Phase = Phase.NONE
    rule: str | None = None
    reason: str = "no rule matched"
    enforced: Action | None = None
    inspect: bool = False

    @property
    def would(self) -> Action:
        return self.enforced if self.enforced is not None else self.action

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


ALLOW = Decision(Action.ALLOW)


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """``settings.dns`` in a policy (or in a config file); CLI flags win over both."""

    listen: tuple[str, ...] = ("127.0.0.1:5353",)
    upstreams: tuple[str, ...] = ("1.1.1.1:53", "9.9.9.9:53")
    block_response: str = "nxdomain"  # nxdomain | null | refused
    log: str | None = None
    log_all: bool = False
    metrics: str | None = None
    canary: bool = True
    # Loopback and RFC 1918/4193 private ranges.  Not carrier-grade NAT space
    # (100.64.0.0/10: other customers of the same ISP) nor IPv4 link-local
    # (169.254.0.0/16): those must be listed explicitly.
    acl: tuple[str, ...] = ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12",
                            "192.168.0.0/16", "fc00::/7", "fe80::/10")
    cache_size: int = 100_000
    timeout: float = 2.0
    workers: int = 1
    max_udp_size: int = 1232  # largest UDP answer, whatever the client offers (DNS Flag Day 2020)
    tcp_timeout: float = 10.0  # idle limit, and the whole-message deadline, of a TCP connection
    tcp_connections: int = 1024  # TCP connections at once (lowered to fit RLIMIT_NOFILE less a reserve)
    tcp_per_client: int = 16  # TCP connections at once from one client address
    server_identity: str | None = None  # CH TXT hostname.bind / id.server; None: REFUSED
    server_version: str | None = None  # CH TXT version.bind / version.server; None: REFUSED


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """``settings.proxy`` in a policy; CLI flags and mitmproxy options win."""

    listen: str = "127.0.0.1:8080"
    mode: str = "regular"
    block: str = "reset"  # reset | page
    log: str | None = None
    metrics: str | None = None
    block_doh: bool = True
    strip_ech: bool = True
    log_ech: bool = True


DEFAULT_QUEUE_EVENTS = 100_000
DEFAULT_QUEUE_BYTES = 32 << 20
DEFAULT_MAX_FILE_SIZE = 1 << 30


@dataclass(frozen=True, slots=True)
class EventQueueSettings:
    """``settings.event_queue``: what may wait in memory for a slow event-log
    sink before further events are dropped (and counted)."""

    max_events: int = DEFAULT_QUEUE_EVENTS
    max_bytes: int = DEFAULT_QUEUE_BYTES


@dataclass(frozen=True, slots=True)
class Settings:
    dns: DnsSettings = field(default_factory=DnsSettings)
    proxy: ProxySettings = field(default_factory=ProxySettings)
    event_queue: EventQueueSettings = field(default_factory=EventQueueSettings)
    # Accept a reload that would block nothing the policy in force blocks.
    allow_empty: bool = False
    # The largest list file read; bigger ones (or /dev/zero behind a symlink) are errors.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
