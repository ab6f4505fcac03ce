"""The policy vocabulary: frozen values that flow from the loader to the adapters.

YAML is parsed by ``loader`` into a ``Policy`` (immutable, compiled once);
``Policy.view(...)`` fixes a moment and turns it into a ``PolicyView`` that maps
each ``Observation`` to a ``Decision``.  Everything here is a plain value: no I/O,
no network library, no mutable state shared between threads.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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

    @property
    def rank(self) -> int:
        """Strictness: a framework's phase includes every phase below it."""
        return _PHASE_RANK[self]


_PHASE_RANK = {Phase.NONE: 0, Phase.DOWNLOADS: 1, Phase.FULL: 2}
PHASES_DOWN = (Phase.FULL, Phase.DOWNLOADS, Phase.NONE)  # strictest first


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
    list_group: str | None = None  # the opt-in ``groups:`` entry (parent_company, ...) it came in by

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
    """An app and what recognises it.  Its phases come from the frameworks
    that name it (``legal.py``); ``legal_basis`` is the version-1 record, kept
    for display where a policy still carries one."""

    id: str
    name: str
    owner: str
    legal_basis: LegalBasis | None = None
    store: StoreIds = StoreIds()
    phase_override: Phase | None = None


class Status(StrEnum):
    """A framework's legal status on a day (its status history)."""

    IN_FORCE = "in_force"
    ENJOINED = "enjoined"
    STAYED = "stayed"
    REVOKED = "revoked"
    EXPIRED = "expired"


class LegalStatus(StrEnum):
    """Which phases count: as the orders announced them, or only those in force."""

    AS_ORDERED = "as_ordered"
    IN_FORCE = "in_force"


class FrameworkKind(StrEnum):
    EXECUTIVE_ORDER = "executive_order"
    STATUTE = "statute"
    REGULATION = "regulation"
    CONTRACT_CLAUSE = "contract_clause"
    AGENCY_GUIDANCE = "agency_guidance"
    STATE_RULE = "state_rule"
    COMPANY_RULE = "company_rule"


@dataclass(frozen=True, slots=True)
class StatusEntry:
    """From ``start``, the framework is ``status``; ``apps``/``phase`` scope it
    (an injunction of one prohibition leaves the others in force)."""

    start: dt.date
    status: Status
    source: str
    apps: frozenset[str] | None = None
    phase: Phase | None = None
    note: str | None = None

    def covers(self, app: str, phase: Phase) -> bool:
        return (self.apps is None or app in self.apps) and (self.phase is None or self.phase is phase)


@dataclass(frozen=True, slots=True)
class Framework:
    """A source of obligations: an order, statute, clause, guidance, state or company rule."""

    id: str
    title: str
    kind: FrameworkKind
    citations: tuple[str, ...]
    schedules: Mapping[str, tuple[ScheduleEntry, ...]]  # app id -> entries sorted by start
    status: tuple[StatusEntry, ...] = ()  # sorted by start; later entries win on the same day
    short: str | None = None  # e.g. "EO 13942", for one-line messages
    url: str | None = None
    note: str | None = None
    implicit: bool = False  # the version-1 per-app schedules, as one framework
    # Version 1 only: each app's own legal basis, (order, citation), shown for that app.
    app_records: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def record(self, app: str) -> tuple[str, str]:
        """(title, citation) to show beside a verdict on ``app``."""
        return self.app_records.get(app) or (self.title, "; ".join(self.citations))

    @property
    def label(self) -> str:
        return self.short or self.id

    def scheduled(self, app: str, day: dt.date) -> ScheduleEntry | None:
        """The schedule entry in force for ``app`` on ``day``, if the framework names the app."""
        current = None
        for entry in self.schedules.get(app, ()):
            if entry.start > day:
                break
            current = entry
        return current

    def status_on(self, day: dt.date, app: str | None = None,
                  phase: Phase | None = None) -> StatusEntry | None:
        """The latest status entry on ``day`` that covers (app, phase); None
        means no record, which counts as in force.  With ``app`` None only
        entries scoped to no app count; with ``phase`` None, entries of any phase."""
        current = None
        for entry in self.status:
            if entry.start > day:
                break
            app_ok = entry.apps is None or (app is not None and app in entry.apps)
            if app_ok and (phase is None or entry.phase is None or entry.phase is phase):
                current = entry
        return current


@dataclass(frozen=True, slots=True)
class FrameworkState:
    """One framework's say on one app on one day: what it orders, its status,
    and whether that phase counted under the legal-status setting."""

    framework: str
    label: str
    title: str
    ordered: Phase
    effective: Phase
    status: Status
    since: dt.date | None
    source: str
    citation: str

    def describe(self) -> str:
        """e.g. ``EO 13942: enjoined since 2020-10-30, Marland v. Trump, E.D. Pa. 2:20-cv-04597``."""
        since = f" since {self.since}" if self.since else ""
        return f"{self.label}: {self.status.value.replace('_', ' ')}{since}, {self.source}"

    def as_dict(self) -> dict[str, object]:
        return {"id": self.framework, "label": self.label, "title": self.title, "ordered": self.ordered.value,
                "effective": self.effective.value, "status": self.status.value,
                "since": self.since.isoformat() if self.since else None, "source": self.source,
                "citation": self.citation}


@dataclass(frozen=True, slots=True)
class ClientGroup:
    """A named group of client networks (and proxy users), the frameworks that bind it, and how."""

    id: str
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    frameworks: tuple[str, ...]
    mode: Mode | None = None  # None: the policy's mode
    legal_status: LegalStatus | None = None  # None: the policy's setting
    description: str | None = None
    exempt: bool = False  # the group made from ``exempt_clients``
    users: tuple[str, ...] = ()  # proxy users (proxyauth) in this group, wherever they connect from


class PolicyRef(NamedTuple):
    """The policy's ``name`` and digest (sha256 over its file and list files)."""

    name: str | None
    digest: str | None


DEFAULT_GROUP = "default"
EXEMPT_GROUP = "exempt"


@dataclass(frozen=True, slots=True)
class AppPhase:
    """An app's effective phase at a moment, for one client group, and why."""

    app: str
    phase: Phase
    since: dt.date | None
    source: str
    overridden: bool = False
    frameworks: tuple[str, ...] = ()  # the frameworks that produce ``phase``
    legal: tuple[FrameworkState, ...] = ()  # every framework of the group that names the app
    group: str = DEFAULT_GROUP


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
    # What an adapter shows beside the verdict, so none reaches back into the policy.
    group: str = DEFAULT_GROUP
    app_names: tuple[str, ...] = ()
    frameworks: tuple[str, ...] = ()  # the frameworks that produced ``phase``
    legal: tuple[FrameworkState, ...] = ()  # their record on the day
    legal_status: LegalStatus = LegalStatus.AS_ORDERED
    policy: PolicyRef | None = None  # which policy decided: every event carries it, for audits
    list_group: str | None = None  # the opt-in ``groups:`` entry whose rule decided, if one did

    @property
    def would(self) -> Action:
        return self.enforced if self.enforced is not None else self.action

    @property
    def blocked(self) -> bool:
        return self.action is Action.BLOCK


ALLOW = Decision(Action.ALLOW)


# RFC 6303's locally served zones for the private ranges, RFC 8375's home.arpa, and the names
# home routers hand out: none of them means anything on the public internet.
PRIVATE_REVERSE = ("10.in-addr.arpa", *(f"{n}.172.in-addr.arpa" for n in range(16, 32)),
                   "168.192.in-addr.arpa", "254.169.in-addr.arpa", "d.f.ip6.arpa", "8.e.f.ip6.arpa",
                   "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa")
DEFAULT_LOCAL_DOMAINS = ("lan", "home.arpa", "internal", "localdomain", *PRIVATE_REVERSE)


class RType(StrEnum):
    """The types of ``settings.dns.local`` records."""

    A = "A"
    AAAA = "AAAA"
    CNAME = "CNAME"
    PTR = "PTR"


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """One ``settings.dns.local`` record (policies/dns_local.py reads them)."""

    name: str
    rtype: RType
    value: str  # an address (A, AAAA) or a normalised name (CNAME, PTR)


@dataclass(frozen=True, slots=True)
class Forward:
    """One ``settings.dns.forward`` entry: names under ``domain`` go to these upstreams."""

    domain: str
    upstreams: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Subscription:
    """A ``lists:`` entry with a ``url``: downloaded by the policy holder into ``cache``
    (runtime/subscriptions.py), read from there by the loader like any list file."""

    url: str
    cache: str  # the cached copy's path: the loader reads it, the holder replaces it
    refresh: float  # seconds between downloads
    exact: bool  # as: hosts
    ca: str | None = None  # a CA bundle for the download, besides the system's


@dataclass(frozen=True, slots=True)
class DnsSettings:
    """``settings.dns`` in a policy (or in a config file); CLI flags win over both."""

    listen: tuple[str, ...] = ("127.0.0.1:5353",)
    upstreams: tuple[str, ...] = ("1.1.1.1:53", "9.9.9.9:53")
    block_response: str = "nxdomain"  # nxdomain | null | refused
    log: str | None = None
    db: str | None = None  # the event store (SQLite, store/), or none
    db_days: float = 30.0  # the store keeps this many days of events (0: no age limit)
    db_max_bytes: int = 1 << 30  # and at most this many bytes of them (0: no size limit)
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
    # RPZ primary (dns_blocker/rpz.py): one zone per client group over AXFR/IXFR.
    rpz: bool = False
    rpz_notify: tuple[str, ...] = ()  # HOST:PORT of secondaries sent a NOTIFY when a serial changes
    rpz_allow: tuple[str, ...] = ("127.0.0.0/8", "::1/128")  # sources allowed a TSIG-signed transfer
    rpz_allow_unsigned: tuple[str, ...] = ()  # sources allowed a transfer without TSIG
    rpz_transfers: int = 4  # transfers at once
    tsig_key: str | None = None  # NAME:ALGORITHM:BASE64SECRET, or a BIND key file
    upstream_ca: str | None = None  # extra CA bundle (PEM) for tls:// and https:// upstreams
    # Local records and conditional forwarding (policy only; policies/dns_local.py, dns_blocker/local.py).
    local: tuple[LocalRecord, ...] = ()
    forward: tuple[Forward, ...] = ()
    local_domains: tuple[str, ...] = DEFAULT_LOCAL_DOMAINS  # never sent to the public upstreams
    block_single_label: bool = True  # answer one-label names NXDOMAIN here (dnsmasq's domain-needed)
    client_names: str | None = None  # hosts file or dnsmasq leases file: client address -> name
    client_name_metrics: bool = False  # label egress_dns_client_queries_total by client name (cardinality)


@dataclass(frozen=True, slots=True)
class ProxySettings:
    """``settings.proxy`` in a policy; CLI flags and mitmproxy options win."""

    listen: str = "127.0.0.1:8080"
    mode: str = "regular"
    block: str = "reset"  # reset | page
    log: str | None = None
    db: str | None = None  # the event store (SQLite, store/), or none
    db_days: float = 30.0  # the store keeps this many days of events (0: no age limit)
    db_max_bytes: int = 1 << 30  # and at most this many bytes of them (0: no size limit)
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
    # Whether ``egress-filter pause`` (and the dashboard's switch) may put enforcement in monitor mode.
    allow_pause: bool = True
    # The largest list file read; bigger ones (or /dev/zero behind a symlink) are errors.
    max_file_size: int = DEFAULT_MAX_FILE_SIZE
