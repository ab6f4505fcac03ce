"""The policy's legal sections, YAML nodes → ``Framework`` and ``ClientGroup`` values.

``loader`` calls these with its walker, so every problem is reported as
``file:line: field: message`` beside the others.  Version 2 policies declare
``frameworks:`` (each with per-app schedules and a status history),
``clients:`` (named groups of client networks and the frameworks that bind
them) and ``legal_status``.  Version 1 policies carry a ``schedule:`` per app;
``implicit_framework`` turns those into one framework, so both versions reach
``decide`` in the same shape.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import TYPE_CHECKING

import yaml

from .model import (
    DEFAULT_GROUP,
    EXEMPT_GROUP,
    App,
    ClientGroup,
    Framework,
    FrameworkKind,
    LegalStatus,
    Mode,
    Network,
    Phase,
    ScheduleEntry,
    Status,
    StatusEntry,
)
from .schema_keys import keys

if TYPE_CHECKING:
    from .yaml_walk import Walker


# key → required, read from schema.json (policies/schema_keys.py)
FRAMEWORK_KEYS = keys("$defs", "framework")
SCHEDULE_KEYS = keys("$defs", "schedule", "items")
STATUS_KEYS = keys("$defs", "framework", "properties", "status", "items")
CLIENT_KEYS = keys("$defs", "client_group")
# A proxy user name as proxyauth passes it on (htpasswd, basic, LDAP): no ':' (basic auth's
# separator), no whitespace or control characters.
_USER = re.compile(r"^[^\s:\x00-\x1f\x7f]{1,256}$")
LEGAL_STATUSES = tuple(s.value.replace("_", "-") for s in LegalStatus) + tuple(s.value for s in LegalStatus)
_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
IMPLICIT = "policy"  # the id of a version-1 policy's one framework


def legal_status(text: str) -> LegalStatus:
    """``as-ordered``/``as_ordered`` → the enum (command line and YAML spell it either way)."""
    return LegalStatus(text.replace("-", "_"))


def schedule_entries(w: Walker, node: yaml.Node, field: str) -> tuple[ScheduleEntry, ...]:
    """A list of ``{from, phase, source}``, sorted by date; two on one day is an error."""
    out: list[ScheduleEntry] = []
    for f, item in w.seq(node, field):
        sm = w.mapping(item, f, SCHEDULE_KEYS)
        if sm is None or not {"from", "phase", "source"} <= sm.keys():
            continue
        start = w.date(sm["from"], f"{f}.from")
        ph = w.choice(sm["phase"], f"{f}.phase", tuple(p.value for p in Phase))
        src = w.sources(sm["source"], f"{f}.source")
        if "note" in sm:
            w.text(sm["note"], f"{f}.note")
        if start and ph and src:
            out.append(ScheduleEntry(start, Phase(ph), src))
    starts = [e.start for e in out]
    if len(set(starts)) != len(starts):
        w.err(node, field, "two entries start on the same date")
    return tuple(sorted(out, key=lambda e: e.start))


def frameworks(w: Walker, node: yaml.Node, apps: dict[str, App]) -> dict[str, Framework]:
    if not isinstance(node, yaml.MappingNode):
        w.err(node, "frameworks", "expected a mapping of framework ids")
        return {}
    out: dict[str, Framework] = {}
    for knode, vnode in node.value:
        fid = str(knode.value)
        field = f"frameworks.{fid}"
        if not _ID.match(fid):
            w.err(knode, field, f"'{fid}' must be lower-case letters, digits, '-', '_' or '.'")
            continue
        if fid in out:
            w.err(knode, field, "duplicate framework id")
            continue
        m = w.mapping(vnode, field, FRAMEWORK_KEYS)
        if m is None:
            continue
        title = w.text(m["title"], f"{field}.title") if "title" in m else None
        kinds = tuple(k.value for k in FrameworkKind)
        kind = w.choice(m["kind"], f"{field}.kind", kinds) if "kind" in m else None
        texts = {k: w.text(m[k], f"{field}.{k}") for k in ("short", "url", "note") if k in m}
        citations: list[str] = []
        if "citations" in m:
            for f, item in w.seq(m["citations"], f"{field}.citations"):
                c = w.text(item, f)
                if c:
                    citations.append(c)
        schedules: dict[str, tuple[ScheduleEntry, ...]] = {}
        if "schedule" in m:
            sched = w.mapping(m["schedule"], f"{field}.schedule", {a: False for a in apps}) \
                if isinstance(m["schedule"], yaml.MappingNode) else None
            if sched is None and not isinstance(m["schedule"], yaml.MappingNode):
                w.err(m["schedule"], f"{field}.schedule", "expected a mapping of app ids to schedules")
            for app, snode in (sched or {}).items():
                schedules[app] = schedule_entries(w, snode, f"{field}.schedule.{app}")
        status = _status(w, m["status"], f"{field}.status", apps) if "status" in m else ()
        if title and kind:
            out[fid] = Framework(fid, title, FrameworkKind(kind), tuple(citations), schedules, status,
                                 texts.get("short"), texts.get("url"), texts.get("note"))
    return out


def _status(w: Walker, node: yaml.Node, field: str, apps: dict[str, App]) -> tuple[StatusEntry, ...]:
    out: list[tuple[dt.date, int, StatusEntry]] = []
    for i, (f, item) in enumerate(w.seq(node, field)):
        sm = w.mapping(item, f, STATUS_KEYS)
        if sm is None or not {"from", "status", "source"} <= sm.keys():
            continue
        start = w.date(sm["from"], f"{f}.from")
        st = w.choice(sm["status"], f"{f}.status", tuple(s.value for s in Status))
        src = w.sources(sm["source"], f"{f}.source")
        scope: frozenset[str] | None = None
        if "apps" in sm:
            named: list[str] = []
            for af, anode in w.seq(sm["apps"], f"{f}.apps"):
                a = w.text(anode, af)
                if a is not None and a not in apps:
                    w.err(anode, af, f"unknown app '{a}'")
                elif a is not None:
                    named.append(a)
            scope = frozenset(named)
        phase = None
        if "phase" in sm:
            ph = w.choice(sm["phase"], f"{f}.phase", (Phase.DOWNLOADS.value, Phase.FULL.value))
            phase = Phase(ph) if ph else None
        note = w.text(sm["note"], f"{f}.note") if "note" in sm else None
        if start and st and src:
            out.append((start, i, StatusEntry(start, Status(st), src, scope, phase, note)))
    out.sort(key=lambda t: (t[0], t[1]))  # by date; on one day, the later entry wins
    return tuple(e for _, _, e in out)


def clients(w: Walker, node: yaml.Node | None, fws: dict[str, Framework],
            exempt: list[Network]) -> tuple[dict[str, ClientGroup], list[tuple[Network, str]]]:
    """The client groups, ``default`` always among them, and their networks.
    A group's ``users`` are proxy user names (``proxyauth``) that select it.

    Without a ``default`` entry the default group applies every framework.
    ``exempt_clients`` becomes the ``exempt`` group: the default group's
    frameworks, always monitored."""
    groups: dict[str, ClientGroup] = {}
    networks: list[tuple[Network, str]] = []
    owner: dict[Network, str] = {}
    user_owner: dict[str, str] = {}
    if node is not None and not isinstance(node, yaml.MappingNode):
        w.err(node, "clients", "expected a mapping of group ids")
        node = None
    for knode, vnode in (node.value if node is not None else []):
        gid = str(knode.value)
        field = f"clients.{gid}"
        if not _ID.match(gid):
            w.err(knode, field, f"'{gid}' must be lower-case letters, digits, '-', '_' or '.'")
            continue
        if gid in groups:
            w.err(knode, field, "duplicate group id")
            continue
        if gid == EXEMPT_GROUP:
            w.err(knode, field, "'exempt' is the group of exempt_clients; list them there")
            continue
        m = w.mapping(vnode, field, CLIENT_KEYS) if not _is_null(vnode) else {}
        if m is None:
            continue
        nets: list[Network] = []
        if "networks" in m:
            for f, item in w.seq(m["networks"], f"{field}.networks"):
                net = w.cidr(item, f)
                if net is None:
                    continue
                if net in owner:
                    w.err(item, f, f"{net} is already a network of group '{owner[net]}'")
                    continue
                owner[net] = gid
                nets.append(net)
        users: list[str] = []
        if "users" in m:
            for f, item in w.seq(m["users"], f"{field}.users"):
                name = w.text(item, f)
                if name is None:
                    continue
                if not _USER.match(name):
                    w.err(item, f, f"'{name}' is not a proxy user name (no ':', spaces or control "
                                   "characters, at most 256 characters)")
                elif name in user_owner:
                    w.err(item, f, f"user '{name}' is already in group '{user_owner[name]}'")
                else:
                    user_owner[name] = gid
                    users.append(name)
        fw_ids: list[str] = []
        if "frameworks" in m:
            for f, item in w.seq(m["frameworks"], f"{field}.frameworks"):
                fid = w.text(item, f)
                if fid is not None and fid not in fws:
                    known = ", ".join(sorted(fws)) or "none declared"
                    w.err(item, f, f"unknown framework '{fid}' (declared: {known})")
                elif fid is not None and fid not in fw_ids:
                    fw_ids.append(fid)
        else:
            fw_ids = list(fws)
        mode = None
        if "mode" in m:
            mv = w.choice(m["mode"], f"{field}.mode", tuple(x.value for x in Mode))
            mode = Mode(mv) if mv else None
        ls = None
        if "legal_status" in m:
            lv = w.choice(m["legal_status"], f"{field}.legal_status", LEGAL_STATUSES)
            ls = legal_status(lv) if lv else None
        desc = w.text(m["description"], f"{field}.description") if "description" in m else None
        if gid == DEFAULT_GROUP and nets:
            w.err(m["networks"], f"{field}.networks", "the default group is every client in no other group; "
                                                      "it takes no networks")
        if gid == DEFAULT_GROUP and users:
            w.err(m["users"], f"{field}.users", "the default group is every client in no other group; "
                                                "it takes no users")
        groups[gid] = ClientGroup(gid, tuple(nets), tuple(fw_ids), mode, ls, desc, users=tuple(users))
        networks.extend((n, gid) for n in nets)
    if DEFAULT_GROUP not in groups:
        groups = {DEFAULT_GROUP: ClientGroup(DEFAULT_GROUP, (), tuple(fws)), **groups}
    if exempt:
        base = groups[DEFAULT_GROUP]
        for net in exempt:
            if net in owner:
                w.err(None, "exempt_clients", f"{net} is already a network of group '{owner[net]}'")
        groups[EXEMPT_GROUP] = ClientGroup(EXEMPT_GROUP, tuple(exempt), base.frameworks, Mode.MONITOR,
                                           base.legal_status, "exempt_clients: logged, never blocked",
                                           exempt=True)
        networks.extend((n, EXEMPT_GROUP) for n in exempt)
    return groups, networks


def implicit_framework(apps: dict[str, App], schedules: dict[str, tuple[ScheduleEntry, ...]],
                       title: str) -> Framework:
    """A version-1 policy's per-app schedules as one framework, citing each app's legal basis."""
    cites: list[str] = []
    records: dict[str, tuple[str, str]] = {}
    for app in apps.values():
        lb = app.legal_basis
        if lb is not None:
            records[app.id] = (lb.order, lb.citation)
            c = f"{lb.order} ({lb.citation})"
            if c not in cites:
                cites.append(c)
    return Framework(IMPLICIT, title, FrameworkKind.COMPANY_RULE, tuple(cites), schedules,
                     short="policy schedule", implicit=True, app_records=records)


def _is_null(node: yaml.Node) -> bool:
    return isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")
