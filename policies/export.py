"""The policy, written out for the engines a company already runs.

``Plan`` fixes a moment, a client group and a legal-status setting, and walks
the compiled name index once: every entry is judged by the core itself (a
``GroupView`` of the policy, so the exported verdict *is* the core's verdict)
and comes out as an ``Entry`` with up to two sides, ``wide`` (the name and
every name below it, a ``domains:`` rule) and ``only`` (the name itself, a
``hosts:`` rule).  Each format turns entries into lines; ``render`` streams
them, so a 1,000,000-name policy is never held whole as text.

What a format cannot express is never dropped silently: the header of every
output names the URL-level rules (download paths, app-store ids), the SNI
globs and the networks it leaves to egress-filter, and an entry a format can
only approximate carries an ``APPROXIMATED`` comment saying how.

The verdicts, as the core decides them (``Decision.action`` after monitor
mode and exempt groups): ``block`` is blocked; ``log`` (an app's ordinary
traffic in the ``downloads`` phase) and ``allow`` are not.  An entry that does
not block is written only where it matters: allow-list entries, log-only
names (so they can be counted or logged where the engine can), and names that
punch a hole under a blocked name.

Pure: values in, lines out; no I/O, no network library.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import NamedTuple

from .builtins import DOH_PORTS, Signal, address_rules, name_rules
from .decide import GroupView
from .matching import GlobMatcher, NameIndex, NetworkMatcher, glob_to_regex
from .model import DEFAULT_GROUP, Action, Decision, LegalStatus, Mode, Phase, Rule, Tier
from .policy import Policy

FORMATS = ("rpz", "unbound", "bind", "dnsmasq", "hosts", "adblock", "squid", "suricata", "zeek-intel")

# A label no policy name can hold (``is_valid_name`` admits [a-z0-9_*-]):
# "!.<key>" reaches a ``domains:`` entry below any ``hosts:`` entry on the key.
_PROBE = "!"
_BLOCK, _LOG, _ALLOW = Action.BLOCK, Action.LOG, Action.ALLOW

RPZ_SUFFIX = "rpz.egress-filter"
SERIAL_EPOCH = dt.date(2000, 1, 1)
SID_BASE, SID_SPAN = 1_000_000_000, 1_000_000_000  # Suricata sids: 1,000,000,000-1,999,999,999


class Item(NamedTuple):
    """One side of an entry: the core's verdict and why."""

    action: Action
    note: str  # "app=<ids> framework=<labels> rule=<rule id>"
    allow_list: bool
    parent: Action | None  # what these names fall back to without this entry (None: no rule)
    # How deep this entry sits in alternations of blocks and exemptions (allow
    # list or hole) above it: 0 a block under no exemption, 1 an exemption,
    # 2 a block inside an exemption, 3 an exemption inside that... (-1: it is
    # neither, e.g. a log-only name).  What engines whose exceptions beat any
    # block (adblock, Suricata's pass) need to know.
    rank: int = 0
    word: str = ""  # ``action.value``, bound once (an enum attribute costs a lookup per use)
    # A built-in rule's name (builtin:doh, canary, Private Relay, DDR): an
    # exact name no policy rule covers, whose block must be a negative answer
    # (the canary and Private Relay read NXDOMAIN, not a null address).
    builtin: bool = False

    @property
    def hole(self) -> bool:
        """A name that does not block below one that does: a format must let it through."""
        return self.action is not _BLOCK and self.parent is _BLOCK

    @property
    def wanted(self) -> bool:
        return self.action is not _ALLOW or self.allow_list or self.parent is _BLOCK


class Entry(NamedTuple):
    name: str
    wide: Item | None  # the name and every subdomain
    only: Item | None  # the name itself; wins over ``wide`` for the name


class Aside(NamedTuple):
    """A rule no name-list format can carry: a URL, a glob or a network."""

    kind: str  # "url", "store", "sni-glob", "network", "builtin-address", "builtin-signal"
    subject: str
    action: Action
    note: str


class _Judged(NamedTuple):
    action: Action
    rule: Rule | None
    head: str  # "app=... framework=... rule=" and, for a plain name rule, "domain:" (the key follows)
    fixed: bool  # the rule id names a pattern, not the key: ``head`` is the whole note
    allow_list: bool
    word: str


@dataclass(frozen=True)
class Moment:
    """What an export is read at."""

    at: dt.date
    group: str
    legal_status: LegalStatus
    mode: Mode
    exempt: bool
    phases: tuple[tuple[str, Phase], ...]


class Plan:
    """A policy at one moment for one group, ready to be written in any format."""

    def __init__(self, policy: Policy, at: dt.date | None = None, phase: Phase | None = None,
                 group: str = DEFAULT_GROUP, legal_status: LegalStatus | None = None):
        if group not in policy.clients:
            raise ValueError(f"unknown group '{group}' (groups: {', '.join(sorted(policy.clients))})")
        self.policy = policy
        self._phase_override = phase
        self._legal_status = legal_status
        self.full: GroupView = policy.view(at, phase, None, legal_status).groups[group]
        # Names are judged without the globs: a glob is a rule of its own (an
        # aside in DNS formats), and must not colour a name entry's verdict.
        bare = replace(policy, globs=GlobMatcher(()))
        self.view: GroupView = bare.view(self.full.at, phase, None, legal_status).groups[group]
        self.names: NameIndex = policy.names
        self.moment = Moment(self.full.at, group, self.full.legal_status, self.full.mode,
                             self.full.group.exempt, self.full.fingerprint)
        self._judged: dict[int, _Judged] = {}
        self._ranks: dict[str, int] = {}

    # --- verdicts -----------------------------------------------------------

    def _judge(self, key: str, rules: tuple[Rule, ...], exact: bool) -> _Judged:
        # Rule tuples are interned by the index: one judgement per tuple, and
        # the verdict depends on the rules alone (the key only names them).
        j = self._judged.get(id(rules))
        if j is None:
            d = self.view.decide_name(key if exact else f"{_PROBE}.{key}")
            rule = next((r for r in rules if r.cite(key) == d.rule), None)
            head = _head(self.policy, d)
            fixed = rule is not None and (rule.pattern is not None or rule.path is not None)
            if rule is not None:
                head += _text(rule.cite()) if fixed else f"{rule.kind.value}:"
            allow_list = rule is not None and rule.tier is Tier.ALLOW
            j = self._judged[id(rules)] = _Judged(d.action, rule, head, fixed, allow_list, d.action.value)
        return j

    def _item(self, key: str, rules: tuple[Rule, ...], exact: bool) -> Item:
        if exact:
            above = key
        else:  # the names below a domains: entry fall back to the entry above its key
            dot = key.find(".")
            above = key[dot + 1:] if dot != -1 else ""
        hit = self.names.covering(above) if above else None
        j = self._judged.get(id(rules)) or self._judge(key, rules, exact)
        parent = None
        if hit is not None:
            parent = (self._judged.get(id(hit[1])) or self._judge(hit[0], hit[1], False)).action
        if hit is None and j.action is _BLOCK:
            rank = 0  # the common case, without a walk up
        else:
            rank = _next_rank(self._class(j, parent), -1 if hit is None else self._suffix_rank(*hit))
        return Item(j.action, j.head if j.fixed else j.head + key, j.allow_list, parent, rank, j.word)

    @staticmethod
    def _class(j: _Judged, parent: Action | None) -> int:
        """0: a block; 1: an exemption (the allow list, or not blocking below a block); -1: neither."""
        if j.action is _BLOCK:
            return 0
        return 1 if j.allow_list or parent is _BLOCK else -1

    def _suffix_rank(self, key: str, rules: tuple[Rule, ...]) -> int:
        """The rank of a ``domains:`` entry, or of the nearest written one above it (-1: none)."""
        rank = self._ranks.get(key)
        if rank is None:
            j = self._judge(key, rules, False)
            hit = self._above(key, False)
            parent = None if hit is None else self._judge(*hit, False).action
            above = -1 if hit is None else self._suffix_rank(*hit)
            cls = self._class(j, parent)
            rank = self._ranks[key] = above if cls < 0 else _next_rank(cls, above)
        return rank

    def _above(self, key: str, exact: bool) -> tuple[str, tuple[Rule, ...]] | None:
        """The ``domains:`` entry these names fall back to without this entry's own rules."""
        above = key if exact else key.partition(".")[2]
        return self.names.covering(above) if above else None

    def wide_item(self, key: str, rules: tuple[Rule, ...]) -> Item:
        """The ``domains:`` side of the entry at ``key``."""
        return self._item(key, rules, False)

    def entries(self) -> Iterator[Entry]:
        """Every name entry worth writing, in the policy's order."""
        item = self._item
        for key, wide_rules, only_rules in self.names.entries():
            wide = item(key, wide_rules, False) if wide_rules is not None else None
            only = item(key, only_rules, True) if only_rules is not None else None
            if ((wide is not None and (wide.action is _BLOCK or wide.wanted))
                    or (only is not None and only.wanted)):
                yield Entry(key, wide, only)
        yield from self._builtin_entries()

    def _builtin_entries(self) -> Iterator[Entry]:
        """The switched-on built-in names, each an exact name, where the core
        gives the built-in's verdict: a policy rule covering the name (an
        ``allow:`` entry, an app's domain) or an SNI glob matching it decides
        instead, and is written with the policy's entries or globs."""
        lookup = self.names.lookup
        for name in sorted(name_rules(self.policy.builtins)):
            if lookup(name) is not None:
                continue
            d = self.full.decide_name(name)
            if not (d.rule or "").startswith("builtin:"):
                continue
            yield Entry(name, None, Item(d.action, _head(self.policy, d) + (d.rule or ""), False, None,
                                         0 if d.action is _BLOCK else -1, d.action.value, True))

    def asides(self) -> list[Aside]:
        """URL-level rules, SNI globs and networks, each with the core's verdict."""
        out: list[Aside] = []
        full = self.full
        for host, rules in self.policy.download_paths.items():
            for r in rules:
                d = full.decide_http(f"https://{host}{r.path or '/'}")
                out.append(Aside("url", _text(f"{host}{r.path or '/'}"), d.action,
                                 _head(self.policy, d) + _text(r.cite())))
        for r in self.policy.download_path_globs.rules():
            host = (r.pattern or "").replace("*", "x")
            d = full.decide_http(f"https://{host}{r.path or '/'}")
            out.append(Aside("url", _text(f"{r.pattern}{r.path or '/'}"), d.action,
                             _head(self.policy, d) + _text(r.cite())))
        for (store, app_id) in self.policy.store_index:
            url = (f"https://apps.apple.com/app/id{app_id}" if store == "apple"
                   else f"https://play.google.com/store/apps/details?id={app_id}")
            d = full.decide_http(url)
            out.append(Aside("store", f"{store}:{app_id}", d.action, _head(self.policy, d) + (d.rule or "")))
        for r in self.policy.globs.rules():
            d = self._glob_decision(r)
            out.append(Aside("sni-glob", r.pattern or "", d.action, _head(self.policy, d) + r.cite()))
        for address in sorted(address_rules(self.policy.builtins)):
            d = full.decide_ip(address, port=min(DOH_PORTS))
            if (d.rule or "").startswith("builtin:"):  # not when an app's network holds the address
                out.append(Aside("builtin-address", address, d.action, _head(self.policy, d) + (d.rule or "")
                                 + f" ports={','.join(map(str, sorted(DOH_PORTS)))}"))
        for signal in Signal:  # what only a proxy sees: a DoH-shaped request, an ECH ClientHello
            d = full.decide_builtin(signal, "")
            if d.rule:
                out.append(Aside("builtin-signal", signal.value, d.action, _head(self.policy, d) + d.rule))
        for cidr, rules in self.policy.networks.entries():
            d = full.decide_ip(cidr.split("/")[0])
            if d.rule != rules[0].cite():  # a more specific network holds that address
                d = self._alone(networks=NetworkMatcher([(ipaddress.ip_network(cidr), rules[0])])
                                ).decide_ip(cidr.split("/")[0])
            out.append(Aside("network", cidr, d.action, _head(self.policy, d) + rules[0].cite()))
        return out

    def _alone(self, globs: GlobMatcher | None = None,
               networks: NetworkMatcher[Rule] | None = None) -> GroupView:
        """This moment's view of a policy holding only the given glob or network rules."""
        alone = replace(self.policy, names=NameIndex({}, {}), globs=globs or GlobMatcher(()),
                        networks=networks or NetworkMatcher(()))
        view = alone.view(self.moment.at, self._phase_override, None, self._legal_status)
        return view.groups[self.moment.group]

    def _glob_decision(self, rule: Rule) -> Decision:
        """The glob's own verdict: a policy holding this glob alone, at this moment."""
        pattern = rule.pattern or ""
        return self._alone(globs=GlobMatcher([(pattern, rule)])).decide_name(pattern.replace("*", "x"))

    # --- the zone's name and serial ----------------------------------------

    @property
    def zone(self) -> str:
        return zone_name(self.moment.group)

    @property
    def serial(self) -> int:
        """Days since 2000-01-01 times 100,000, plus five digits of a hash of
        the policy digest, the group, the legal status, the mode and every
        app's phase: a new day always raises it, an edit or phase change the
        same day changes it (not necessarily upward: ``--serial`` overrides)."""
        m = self.moment
        basis = repr((self.policy.digest, m.group, m.legal_status.value, m.mode.value, m.exempt,
                      [(a, p.value) for a, p in m.phases])).encode()
        h = int.from_bytes(hashlib.sha256(basis).digest()[:8], "big") % 100_000
        return (m.at - SERIAL_EPOCH).days * 100_000 + h


def _next_rank(cls: int, above: int) -> int:
    """The lowest rank of class ``cls`` (blocks even, exemptions odd) above ``above``."""
    if cls < 0:
        return -1
    if above < 0:
        return cls
    return above if above % 2 == cls else above + 1


def zone_name(group: str) -> str:
    """One Response Policy Zone per client group."""
    return f"{group}.{RPZ_SUFFIX}"


def _text(value: str, space: str = "_") -> str:
    """Free text of the policy (its name, a framework's label, a URL path) made
    safe for any config line: printable ASCII, no quote, no semicolon, spaces
    as ``space``, the rest escaped.  A newline in a policy's name must not
    become a line of someone's resolver config."""
    return "".join(space if ch == " " else ch if "!" <= ch <= "~" and ch not in "\"'\\;"
                   else f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}" for ch in value)


def _head(policy: Policy, d: Decision) -> str:
    fws = ",".join(_text(policy.frameworks[f].label) for f in d.frameworks) or "-"
    return f"app={','.join(d.apps) or '-'} framework={fws} rule="


# --- common header ----------------------------------------------------------

# What each format does with a log-only name (an app's ordinary traffic in the downloads phase).
_LOG_ONLY = {
    "rpz": "rpz-passthru (RPZ has no log-only action); the engine's RPZ log records the hit",
    "bind": "rpz-passthru in the zone; log yes records the hit",
    "unbound": "not blocked, and NOT LOGGED by local-zone: listed as comments",
    "dnsmasq": "not blocked, and NOT LOGGED by this format: listed as comments",
    "hosts": "not blocked, and NOT LOGGED by a hosts file: listed as comments",
    "adblock": "not blocked, and NOT LOGGED by this format (the engine's query log shows them): comments",
    "squid": "not blocked (spliced), and NOT LOGGED apart from Squid's access log: listed as comments",
    "suricata": "alert rules (pass where they sit below a block)",
    "zeek-intel": "Intel::DOMAIN entries whose meta.desc says log",
}


# Built-in rules no name list carries: the public resolvers' addresses (on the
# encrypted-DNS ports) and what only a proxy sees (a DoH-shaped request, ECH).
_BUILTIN_ASIDES = ("builtin-address", "builtin-signal")


def _header(plan: Plan, fmt: str, c: str, limits: Iterable[str], unexpressed: set[str]) -> Iterator[str]:
    m = plan.moment
    p = plan.policy
    yield f"{c} egress-filter export, format {fmt}"
    yield f"{c} policy: {_text(p.name or '-', ' ')} ({_text(p.source or '-', ' ')}), digest {p.digest or '-'}"
    yield (f"{c} group: {m.group}; date: {m.at}; legal status: {m.legal_status.value.replace('_', ' ')}; "
           f"mode: {m.mode.value}")
    phases = ", ".join(f"{a}={ph.value}" for a, ph in m.phases) or "-"
    yield f"{c} phases: {phases}"
    # Which clients the file is for: no format carries client networks, so the
    # operator must apply it to them (one file per group).
    mine = p.clients[m.group].networks
    others = ", ".join(f"{n} ({_text(g.id)})" for g in p.clients.values() if g.id != m.group
                       for n in g.networks)
    if mine:
        yield (f"{c} clients: this group's networks {', '.join(map(str, mine))}; NOT EXPRESSED here: apply "
               "this file to those clients only (BIND: a view with match-clients; Unbound: "
               "access-control-tag)")
    elif others:
        yield (f"{c} clients: every client outside the other groups' networks, {others}; NOT EXPRESSED here: "
               "give those clients their own group's export")
    if m.exempt or m.mode is Mode.MONITOR:
        why = "exempt" if m.exempt else "in monitor mode"
        yield f"{c} this group is {why}: nothing is blocked; would-be blocks are written as log-only"
    yield f"{c} verdicts are egress-filter's own: block is blocked, log and allow are not"
    for line in limits:
        yield f"{c} {line}"
    yield f"{c} log-only names: {_LOG_ONLY[fmt]}"
    asides = [a for a in plan.asides() if a.kind in unexpressed]
    if asides:
        yield f"{c} NOT EXPRESSED by this format (egress-filter decides these itself):"
        for a in asides:
            yield f"{c}   {a.kind} {a.subject}: {a.action.value} {a.note}"
    yield f"{c} entries this format can only approximate are marked APPROXIMATED below"


# --- RPZ ----------------------------------------------------------------------

class ZoneRecord(NamedTuple):
    owner: str  # relative to the zone's origin; "@" is the apex
    rtype: str
    rdata: str
    comment: str = ""


@dataclass(frozen=True)
class RpzZone:
    """One client group's Response Policy Zone: its records (for a server to
    serve) and its text (for a file)."""

    plan: Plan
    serial: int
    ttl: int = 60

    @property
    def origin(self) -> str:
        return self.plan.zone + "."

    def soa(self) -> ZoneRecord:
        # refresh 300 s, retry 60 s, expire a day, negative answers cached ``ttl``
        return ZoneRecord("@", "SOA",
                          f"localhost. hostmaster.localhost. {self.serial} 300 60 86400 {self.ttl}")

    def records(self) -> Iterator[ZoneRecord]:
        """SOA, NS, then the policy records, in the policy's order (names too
        long for the zone are left out: ``text`` names them)."""
        yield self.soa()
        yield ZoneRecord("@", "NS", "localhost.")
        for owner, rdata, comment, fits in self._policy_records():
            if fits:
                yield ZoneRecord(owner, "CNAME", rdata, comment)

    def _policy_records(self) -> Iterator[tuple[str, str, str, bool]]:
        """(owner, rdata, comment, fits) per policy record.  RPZ prefers an
        exact trigger to a wildcard and a longer name to a shorter one:
        exactly the core's "most specific wins".

        Unbound reads the zone's wildcards as DNS does (RFC 4592): ``*.c.t``
        matches no name below an existing node, so with ``b.c.c.t`` in the
        zone, ``x.c.c.t`` (below the empty non-terminal ``c.c.t``) and
        ``x.b.c.c.t`` (below an exact host) would resolve; BIND's RPZ falls
        back to the shorter wildcard.  So every node between an entry and the
        blocked domain above it gets that domain's wildcard too, and both
        engines block what the core blocks.  (Found by the property test of
        a transfer into Unbound, test_rpz_property.py.)"""
        limit = 254 - len(self.origin)  # owner + origin within 255 octets
        plan = self.plan
        covering = plan.names.covering
        filled: set[str] = set()  # nodes given an inherited wildcard
        for name, wide, only in plan.entries():
            side = only or wide
            assert side is not None
            fits = len(name) <= limit
            yield (name, "." if side.action is _BLOCK else "rpz-passthru.", f"{side.word} {side.note}", fits)
            if wide is not None:
                yield (f"*.{name}", "." if wide.action is _BLOCK else "rpz-passthru.",
                       f"{wide.word} {wide.note}", len(name) + 2 <= limit)
            # The nodes from this one (or its parent, when it has a wildcard of
            # its own) up to the domains: entry covering them.
            # ``parent`` is the verdict of that entry: only a block needs them.
            lower = wide if wide is not None else side
            node = name if wide is None else name.partition(".")[2]
            while lower.parent is _BLOCK and node and node not in filled:
                hit = covering(node)
                if hit is None or hit[0] == node:
                    break
                above = plan.wide_item(*hit)
                if above.action is not _BLOCK:
                    break  # names below resolve, with or without a passthru wildcard
                filled.add(node)
                yield (f"*.{node}", ".", f"{above.word} {above.note}", len(node) + 2 <= limit)
                node = node.partition(".")[2]

    def text(self) -> Iterator[str]:
        plan = self.plan
        yield from _header(plan, "rpz", ";", (
            "per draft-vixie-dnsop-dns-rpz: 'CNAME .' answers NXDOMAIN, 'CNAME rpz-passthru.' exempts",
            "log-only names are rpz-passthru (RPZ has no log-only action): Unbound's rpz-log: yes and",
            "BIND's response-policy { zone ... log yes; } log each hit with the zone and the name",
            f"serial {self.serial}: days since {SERIAL_EPOCH} x 100000 + a hash of digest, group and phases",
        ), {"url", "store", "sni-glob", "network", *_BUILTIN_ASIDES})
        yield f"$TTL {self.ttl}"
        yield f"$ORIGIN {self.origin}"
        soa = self.soa()
        yield f"{soa.owner} {soa.rtype} {soa.rdata}"
        yield "@ NS localhost."
        n = 2
        for owner, rdata, comment, fits in self._policy_records():
            if fits:
                n += 1
                yield f"{owner} CNAME {rdata} ; {comment}"
            else:
                yield f"; NOT EXPRESSED (name too long for the zone): {owner} {comment}"
        yield f"; {n} records"


def rpz_zone(policy: Policy, at: dt.date | None = None, phase: Phase | None = None,
             group: str = DEFAULT_GROUP, legal_status: LegalStatus | None = None,
             serial: int | None = None) -> RpzZone:
    plan = Plan(policy, at, phase, group, legal_status)
    return RpzZone(plan, plan.serial if serial is None else serial)


def _rpz(plan: Plan, serial: int | None) -> Iterator[str]:
    return RpzZone(plan, plan.serial if serial is None else serial).text()


def bind_conf(plan: Plan, zone_file: str) -> Iterator[str]:
    """The named.conf part: the zone statement, and the response-policy line for ``options``."""
    yield from _header(plan, "bind", "//", (
        "the zone statement below, and this line inside options { } (or a view):",
        f'  response-policy {{ zone "{plan.zone}" log yes; }};',
        "log yes writes each rewrite to the rpz category, so log-only (passthru) hits are recorded",
    ), set())
    yield f'zone "{plan.zone}" {{ type primary; file "{zone_file}"; allow-query {{ none; }}; }};'


# --- Unbound and dnsmasq: a zone (or domain) covers its subdomains, the most specific wins ---

class Dns(StrEnum):
    """What a resolver whose blocks cover a name and its subdomains, most
    specific first (Unbound's local-zone, dnsmasq's address=/server=), does
    with one entry."""

    BLOCK = "block"  # the name and below
    BUILTIN = "builtin"  # a built-in name: blocked with the names below it (a negative answer)
    BLOCK_APPROX = "block-approx"  # the name is not blocked, below it is: blocked whole
    NAME_ONLY = "name-only"  # the name blocked, the names below it resolve
    NAME_ONLY_EXEMPT = "name-only-exempt"  # as NAME_ONLY, below a name that blocks
    EXEMPT = "exempt"  # the name and below resolve, even below a block
    COVERED = "covered"  # blocked by the entry above it already
    HOLE_APPROX = "hole-approx"  # the name alone exempt under a block: stays blocked
    NOTE = "note"  # not blocked and nothing to exempt it from: a comment


def _dns_case(e: Entry) -> tuple[Dns, Item]:
    wide, only = e.wide, e.only
    if wide is not None:
        shown = only or wide
        if wide.action is _BLOCK:
            return (Dns.BLOCK if shown.action is _BLOCK else Dns.BLOCK_APPROX), shown
        exempt = wide.allow_list or wide.hole
        if only is not None and only.action is _BLOCK:
            return (Dns.NAME_ONLY_EXEMPT if exempt else Dns.NAME_ONLY), only
        return (Dns.EXEMPT if exempt else Dns.NOTE), wide
    assert only is not None
    if only.builtin and only.action is _BLOCK:
        return Dns.BUILTIN, only
    if only.action is _BLOCK:
        return (Dns.COVERED if only.parent is _BLOCK else Dns.NAME_ONLY), only
    return (Dns.HOLE_APPROX if only.hole else Dns.NOTE), only


def _dns_lines(plan: Plan, c: str, block: Callable[[str], list[str]], name_only: Callable[[str], list[str]],
               exempt: Callable[[str], list[str]], name_only_exempt: Callable[[str], list[str]],
               engine: str) -> Iterator[str]:
    """The entries as lines of one resolver's syntax: ``block``, ``name_only``,
    ``exempt`` and ``name_only_exempt`` give the lines for a name; ``c`` starts
    a comment."""
    for e in plan.entries():
        case, item = _dns_case(e)
        name, note, what = e.name, item.note, item.action.value
        below = "" if e.wide is None else " and below"
        if case is Dns.BLOCK:
            lines, tail = block(name), f"block {note}"
        elif case is Dns.BUILTIN:
            # A null address would not do: Firefox's canary and Private Relay
            # are switched off by a negative answer only.
            lines = block(name)
            tail = (f"block {note}; APPROXIMATED: {name} is blocked with the names below it "
                    "(NXDOMAIN; the core blocks the name alone)")
        elif case is Dns.BLOCK_APPROX:
            lines = block(name)
            tail = f"APPROXIMATED: {name} itself is {what} ({note}), blocked here with its subdomains"
        elif case is Dns.NAME_ONLY:
            lines, tail = name_only(name), f"block (this name only) {note}"
        elif case is Dns.NAME_ONLY_EXEMPT:
            lines, tail = name_only_exempt(name), f"block (this name only, not below it) {note}"
        elif case is Dns.EXEMPT:
            lines, tail = exempt(name), f"{what} {note}"
        else:
            lines, tail = [], {
                Dns.COVERED: f"block {name}: covered by the entry above it; {note}",
                Dns.HOLE_APPROX: f"APPROXIMATED: {name} is {what} ({note}) under a blocked name; {engine} "
                                 "cannot exempt a name without its subdomains, so it stays blocked",
                Dns.NOTE: f"{'log-only (not blocked)' if item.action is _LOG else 'allow'}: "
                          f"{name}{below} {note}",
            }[case]
        if lines:
            yield f"{lines[0]}  {c} {tail}"
            yield from lines[1:]
        else:
            yield f"{c} {tail}"


def _unbound(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "unbound", "#", (
        "local-zone lines for unbound.conf (include: this file); always_nxdomain blocks a name and",
        "everything below it; a hosts: entry (the name alone) is a transparent zone with null",
        "local-data (0.0.0.0 / ::), so names below it resolve; allow is always_transparent",
    ), {"url", "store", "sni-glob", "network", *_BUILTIN_ASIDES})
    yield "server:"

    def null(n: str) -> list[str]:
        return [f'local-zone: "{n}." transparent', f'local-data: "{n}. A 0.0.0.0"',
                f'local-data: "{n}. AAAA ::"']

    # A transparent zone on a name is itself the most specific zone for the
    # names below it: ``null`` exempts them too, whatever blocks above.
    yield from ("    " + line for line in _dns_lines(
        plan, "#",
        lambda n: [f'local-zone: "{n}." always_nxdomain'],
        null,
        lambda n: [f'local-zone: "{n}." always_transparent'],
        null,
        "Unbound"))


def _dnsmasq(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "dnsmasq", "#", (
        "address=/name/ answers NXDOMAIN for a name and everything below it; a hosts: entry (the",
        "name alone) is host-record=name,0.0.0.0,:: (A and AAAA only); server=/name/# sends an",
        "allowed name below a blocked one to the ordinary upstream servers (the most specific wins)",
    ), {"url", "store", "sni-glob", "network", *_BUILTIN_ASIDES})
    yield from _dns_lines(
        plan, "#",
        lambda n: [f"address=/{n}/"],
        lambda n: [f"host-record={n},0.0.0.0,::"],
        lambda n: [f"server=/{n}/#"],
        lambda n: [f"server=/{n}/#", f"host-record={n},0.0.0.0,::"],
        "dnsmasq")


# --- hosts ----------------------------------------------------------------------

def _hosts(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "hosts", "#", (
        "hosts-file lines: each blocked name answers 0.0.0.0, that exact name only;",
        "SUBDOMAINS ARE NOT COVERED: a domains: entry blocks www.<name> in egress-filter, not here",
    ), {"url", "store", "sni-glob", "network", *_BUILTIN_ASIDES})
    for e in plan.entries():
        side = e.only or e.wide
        assert side is not None
        if side.action is _BLOCK:
            yield f"0.0.0.0 {e.name}  # block {side.note}"
        elif side.action is _LOG:
            yield f"# log-only (not blocked): {e.name} {side.note}"
        if e.wide is not None and e.wide.action is _BLOCK:
            yield f"# APPROXIMATED: the names below {e.name} are blocked by egress-filter, not by this file"


# --- adblock (AdGuard Home, Pi-hole, Blocky) --------------------------------------

def _adblock(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "adblock", "!", (
        "||name^ blocks a name and its subdomains; @@||name^ exempts them (AdGuard Home, Pi-hole 6,",
        "Blocky); |name^ is the name alone (AdGuard Home); exceptions beat blocks in these engines,",
        "so a block nested below an exemption carries $important (AdGuard Home only)",
    ), {"url", "store", "sni-glob", "network", *_BUILTIN_ASIDES})
    for e in plan.entries():
        yield from _adblock_entry(e)


# AdGuard Home's precedence: @@...$important > ...$important > @@... > plain blocks.
_ADBLOCK_RANK = {0: ("", ""), 1: ("@@", ""), 2: ("", "$important"), 3: ("@@", "$important")}


def _adblock_entry(e: Entry) -> Iterator[str]:
    name, wide, only = e.name, e.wide, e.only
    for side, pattern in ((wide, f"||{name}^"), (only, f"|{name}^")):
        if side is None:
            continue
        if side.action is not _BLOCK and not (side.allow_list or side.hole):
            if side.action is _LOG:
                yield f"! log-only (not blocked): {pattern} {side.note}"
            continue
        if side is only and side.parent is _BLOCK and side.action is _BLOCK and wide is None \
                and side.rank % 2 == 0:
            yield f"! block {name}: covered by the rule above it; {side.note}"
            continue
        if side.rank > 3:
            yield (f"! APPROXIMATED: {name} is {side.word} inside four levels of blocks and exemptions; "
                   "the syntax has four (@@ and $important), so the $important exemption above wins")
        prefix, suffix = _ADBLOCK_RANK[min(side.rank, 3 if side.rank % 2 else 2)]
        yield f"{prefix}{pattern}{suffix}  ! {side.word} {side.note}"


# --- Squid ------------------------------------------------------------------------

def _squid(plan: Plan) -> Iterator[str]:
    """First match wins in Squid, the most specific rule in egress-filter: the
    entries are written most specific first, in runs, and each run's deny line
    excludes the exemptions of the runs before it."""
    yield from _header(plan, "squid", "#", (
        "include this file in squid.conf before your own http_access and ssl_bump rules, on an",
        "http_port with ssl-bump: a CONNECT to a banned host is terminated at step 1, before any",
        "TLS; step 1 peeks at the client hello, a banned SNI is terminated without decrypting, all",
        "other TLS is spliced; http_access denies a banned host over plain HTTP. On a port without",
        "ssl-bump the ssl_bump lines do not apply: CONNECT is then NOT FILTERED by this file",
        ".name is the name and its subdomains, name the name alone",
    ), {"url", "store", "network", *_BUILTIN_ASIDES})
    # specificity -> (blocked keys, exempted keys); odd specificity is an exact
    # name (a hosts: entry), even a name and its subdomains.  Only the index's
    # own key strings are kept, so 1,000,000 names cost two lists of references;
    # the per-entry comments are written as the entries are read.
    levels: dict[int, tuple[list[str], list[str]]] = {}
    for name, wide, only in plan.entries():
        spec = 2 * name.count(".") + 2
        for side, dot in ((wide, "."), (only, "")) if only is not None else ((wide, "."),):
            if side is None:
                continue
            level = levels.get(spec + (dot == ""))
            if level is None:
                level = levels[spec + (dot == "")] = ([], [])
            if side.action is _BLOCK:
                level[0].append(name)
                yield f"# block {dot}{name} {side.note}"
            elif side.allow_list or side.hole:
                level[1].append(name)
                yield f"# {side.word} {dot}{name} {side.note}"
            elif side.action is _LOG:
                yield f"# log-only (not blocked): {dot}{name} {side.note}"
    glob_levels: dict[int, list[Aside]] = {}
    for a in plan.asides():
        if a.kind == "sni-glob":
            glob_levels.setdefault(2 * a.subject.count(".") + 2, []).append(a)
            yield f"# sni-glob {a.subject}: {a.action.value} {a.note}"
            if a.action is not _BLOCK:
                yield (f"# APPROXIMATED: sni-glob {a.subject} does not block, and exempts nothing here: "
                       "a broader block still applies to the names it matches")
    yield "acl egress_filter_step1 at_step SslBump1"
    # A run: blocks and exemptions that one deny line can hold, exemptions no
    # less specific than the blocks; (dot, keys) chunks refer to the level lists.
    runs: list[tuple[list[tuple[str, list[str]]], list[tuple[str, list[str]]], list[str]]] = []
    for spec in sorted(set(levels) | set(glob_levels), reverse=True):
        block, passed = levels.get(spec, ([], []))
        dot = "" if spec & 1 else "."
        regexes = [f"^{glob_to_regex(a.subject)}$" for a in glob_levels.get(spec, []) if a.action is _BLOCK]
        if not runs or (passed and (runs[-1][0] or runs[-1][2])):
            runs.append(([], [], []))
        if block:
            runs[-1][0].append((dot, block))
        if passed:
            runs[-1][1].append((dot, passed))
        runs[-1][2].extend(regexes)
    for i, (blocks, passes, regexes) in enumerate(runs, 1):
        for values in _squid_values(blocks):
            yield f"acl egress_filter_block_{i} ssl::server_name {values}"
            yield f"acl egress_filter_block_host_{i} dstdomain -n {values}"
        for rx in regexes:
            yield f"acl egress_filter_block_re_{i} ssl::server_name_regex -i {rx}"
            yield f"acl egress_filter_block_host_re_{i} dstdom_regex -n -i {rx}"
        for values in _squid_values(passes):
            yield f"acl egress_filter_pass_{i} ssl::server_name {values}"
            yield f"acl egress_filter_pass_host_{i} dstdomain -n {values}"
    # Plain HTTP by its host; CONNECT by its host at step 1 (terminate before
    # any TLS: an http_access deny of a CONNECT on an ssl-bump port would make
    # Squid bump the connection to show its error page); TLS by the SNI peeked
    # at step 1, terminated at step 2.
    yield "acl egress_filter_connect method CONNECT"
    for kind, block_acl, re_acl, pass_acl in (
            ("http_access deny !egress_filter_connect", "egress_filter_block_host",
             "egress_filter_block_host_re", "egress_filter_pass_host"),
            ("ssl_bump terminate egress_filter_step1", "egress_filter_block_host",
             "egress_filter_block_host_re", "egress_filter_pass_host"),
            ("ssl_bump terminate", "egress_filter_block", "egress_filter_block_re", "egress_filter_pass")):
        if kind == "ssl_bump terminate":
            yield "ssl_bump peek egress_filter_step1"
        for i, (blocked, _passed, regexes) in enumerate(runs, 1):
            exempt = "".join(f" !{pass_acl}_{j}" for j in range(1, i + 1) if runs[j - 1][1])
            if blocked:
                yield f"{kind} {block_acl}_{i}{exempt}"
            if regexes:
                yield f"{kind} {re_acl}_{i}{exempt}"
    yield "ssl_bump splice all"


_SQUID_PER_LINE = 64  # values per acl line: Squid appends repeated acl lines, and reads long ones


def _squid_values(chunks: list[tuple[str, list[str]]]) -> Iterator[str]:
    """The values of one ACL, a line's worth at a time, without those another
    value of the same ACL covers: Squid refuses to start on 'x.a is a
    subdomain of .a'.  Dropping them changes nothing, as both sit behind the
    same rule line."""
    wide = {k for dot, keys in chunks if dot for k in keys}
    line: list[str] = []
    for dot, keys in chunks:
        for k in keys:
            above = k.partition(".")[2] if dot else k
            while above and above not in wide:
                above = above.partition(".")[2]
            if not above:
                line.append(dot + k)
                if len(line) == _SQUID_PER_LINE:
                    yield " ".join(line)
                    line = []
    if line:
        yield " ".join(line)


# --- Suricata -----------------------------------------------------------------------

_SURICATA_ACTION = {_BLOCK: "drop", _LOG: "alert", _ALLOW: "pass"}


def _suricata(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "suricata", "#", (
        "rules on dns.query, tls.sni and http.host: 'dotprefix; content:\".name\"; endswith' is a name",
        "and its subdomains, 'content:\"name\"; startswith; endswith' the name alone; drop blocks (an",
        "alert in IDS mode), alert logs, pass exempts; Suricata runs pass rules first whatever their",
        f"specificity; sids are {SID_BASE}-{SID_BASE + SID_SPAN - 1}, from sha256 of the rule id,",
        "the protocol and the name (the next free sid on a collision)",
    ), {"url", "store", "builtin-signal"})
    used: set[int] = set()
    for e in plan.entries():
        for side, exact in ((e.wide, False), (e.only, True)):
            if side is None or not (side.action is not _ALLOW or side.allow_list or side.hole):
                continue
            if side.action is _BLOCK and side.rank >= 2:
                yield (f"# APPROXIMATED: {e.name} is blocked below an exempted name; Suricata's pass "
                       "rules run first, so it is passed")
            # An exemption passes (a log-only hole too: alert would lose to the drop above it).
            action = _ALLOW if side.rank > 0 and side.rank % 2 == 1 else side.action
            for proto, buf in (("dns", "dns.query"), ("tls", "tls.sni"), ("http", "http.host")):
                if exact:
                    match = f'content:"{e.name}"; startswith; endswith;'
                else:
                    match = f'dotprefix; content:".{e.name}"; endswith;'
                nocase = "" if proto == "http" else " nocase;"  # http.host is lower-cased already
                yield _suricata_rule(action, proto, f"{buf}; {match}{nocase}", e.name, side.note, used,
                                     verdict=side.word)
    asides = plan.asides()
    blocked_nets = [ipaddress.ip_network(a.subject) for a in asides
                    if a.kind == "network" and a.action is _BLOCK]
    for a in asides:
        if a.kind == "sni-glob":
            if a.action is _ALLOW:  # a pass rule would beat every drop it matches, of any specificity
                yield (f"# APPROXIMATED: sni-glob {a.subject} is allowed ({a.note}); not written, so names "
                       "it matches follow the other rules")
                continue
            rx = glob_to_regex(a.subject).replace("/", "\\/")
            for proto, buf in (("dns", "dns.query"), ("tls", "tls.sni"), ("http", "http.host")):
                flags = "" if proto == "http" else "i"
                match = f'{buf}; pcre:"/^{rx}$/{flags}";'
                yield _suricata_rule(a.action, proto, match, a.subject, a.note, used)
        elif a.kind == "network":
            net = ipaddress.ip_network(a.subject)
            inside = [b for b in blocked_nets if b != net and b.version == net.version
                      and int(b.network_address) <= int(net.network_address)
                      and int(net.broadcast_address) <= int(b.broadcast_address)]
            if a.action is _ALLOW and not inside:
                continue  # allowed, and no block around it to exempt it from
            yield _suricata_rule(a.action, "ip", "", a.subject, a.note, used, dst=a.subject)
    # The public resolvers' addresses, on the encrypted-DNS ports only (DoH and
    # DoT over TCP, DoQ and HTTP/3 over UDP), one rule per verdict and transport.
    by_verdict: dict[Action, list[Aside]] = {}
    for a in asides:
        if a.kind == "builtin-address" and a.action is not _ALLOW:
            by_verdict.setdefault(a.action, []).append(a)
    ports = "[" + ",".join(map(str, sorted(DOH_PORTS))) + "]"
    for action, group in by_verdict.items():
        dst = "[" + ",".join(a.subject for a in group) + "]"
        for proto in ("tcp", "udp"):
            yield _suricata_rule(action, proto, "", "builtin-addresses", group[0].note, used, dst=dst,
                                 dport=ports)


def _suricata_rule(action: Action, proto: str, match: str, subject: str, note: str, used: set[int],
                   dst: str = "any", verdict: str | None = None, dport: str = "any") -> str:
    fields = dict(part.split("=", 1) for part in note.split(" ") if "=" in part)
    sid = _sid(f"{proto}|{fields.get('rule', '')}|{subject}", used)
    meta = ", ".join(f"{k} {_meta(v)}" for k, v in (("app", fields.get("app", "-")),
                                                    ("framework", fields.get("framework", "-")),
                                                    ("rule", fields.get("rule", "-")),
                                                    ("verdict", verdict or action.value)))
    msg = f"egress-filter {verdict or action.value} {proto} {subject} app {fields.get('app', '-')}"
    body = f"{match} " if match else ""
    return (f"{_SURICATA_ACTION[action]} {proto} any any -> {dst} {dport} (msg:\"{_meta(msg, ' ')}\"; "
            f"{body}metadata: {meta}; sid:{sid}; rev:1;)")


def _meta(value: str, keep: str = "") -> str:
    """Metadata values and messages must hold no quote, semicolon, comma or space."""
    return "".join(ch if ch.isalnum() or ch in "._-:*/" + keep else "_" for ch in value)


def _sid(key: str, used: set[int]) -> int:
    sid = SID_BASE + int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") % SID_SPAN
    while sid in used:
        sid = SID_BASE + (sid - SID_BASE + 1) % SID_SPAN
    used.add(sid)
    return sid


# --- Zeek Intel -------------------------------------------------------------------

ZEEK_FIELDS = "#fields\tindicator\tindicator_type\tmeta.source\tmeta.desc\tmeta.url"


def _zeek(plan: Plan) -> Iterator[str]:
    yield from _header(plan, "zeek-intel", "#", (
        "Zeek Intel framework input (Intel::read_files); Intel::DOMAIN matches the exact name seen",
        "in DNS, HTTP Host and TLS SNI: SUBDOMAINS ARE NOT COVERED, so a domains: entry is listed",
        "as its own name only; networks are Intel::SUBNET, the public DoH resolvers' addresses",
        "Intel::ADDR; meta.desc holds the verdict and the rule;",
        "allow-list entries and exemptions are not indicators and are left out",
    ), {"url", "store", "sni-glob", "builtin-signal"})
    yield ZEEK_FIELDS
    source = f"egress-filter:{plan.moment.group}"
    for e in plan.entries():
        side = e.only or e.wide
        assert side is not None
        if side.action is not _ALLOW:
            yield f"{e.name}\tIntel::DOMAIN\t{source}\t{side.action.value} {side.note}\t-"
        if e.wide is not None and e.wide.action is not _ALLOW:
            yield (f"# APPROXIMATED: names below {e.name} ({e.wide.action.value}) "
                   "are not matched by Intel::DOMAIN")
    for a in plan.asides():
        if a.kind == "network" and a.action is not _ALLOW:
            yield f"{a.subject}\tIntel::SUBNET\t{source}\t{a.action.value} {a.note}\t-"
        elif a.kind == "builtin-address" and a.action is not _ALLOW:
            yield f"{a.subject}\tIntel::ADDR\t{source}\t{a.action.value} {a.note}\t-"
            yield (f"# APPROXIMATED: Intel::ADDR {a.subject} matches every port; egress-filter judges "
                   "it on the encrypted-DNS ports only")


# --- entry point --------------------------------------------------------------------

def render(policy: Policy, fmt: str, at: dt.date | None = None, phase: Phase | None = None,
           group: str = DEFAULT_GROUP, legal_status: LegalStatus | None = None,
           serial: int | None = None, zone_file: str | None = None) -> Iterator[str]:
    """The lines of one export (no newlines).  ``bind`` gives the named.conf
    part, naming ``zone_file``; write the ``rpz`` export to that file."""
    plan = Plan(policy, at, phase, group, legal_status)
    writers: dict[str, Callable[[], Iterator[str]]] = {
        "rpz": lambda: _rpz(plan, serial),
        "bind": lambda: bind_conf(plan, zone_file or f"{plan.zone}.zone"),
        "unbound": lambda: _unbound(plan),
        "dnsmasq": lambda: _dnsmasq(plan),
        "hosts": lambda: _hosts(plan),
        "adblock": lambda: _adblock(plan),
        "squid": lambda: _squid(plan),
        "suricata": lambda: _suricata(plan),
        "zeek-intel": lambda: _zeek(plan),
    }
    if fmt not in writers:
        raise ValueError(f"unknown format '{fmt}' (formats: {', '.join(FORMATS)})")
    return writers[fmt]()


def export_text(policy: Policy, fmt: str, **kwargs: object) -> str:
    """``render`` joined into one string with a final newline (for small policies and tests)."""
    return "\n".join(render(policy, fmt, **kwargs)) + "\n"  # type: ignore[arg-type]
