"""Compilation: a walked policy document ─▶ rules and indexes ─▶ one frozen ``Policy``.

    root node ─▶ compile_policy
                   ├─ top-level keys, version, mode, timezone, groups (validate.py's tables)
                   ├─ settings:, builtins: ─▶ validate.read_settings / read_builtins
                   ├─ allow:, apps[] ─▶ _app ─▶ names, SNI globs, networks, downloads, store ids,
                   │                   lists ─▶ _list ─▶ files.open_regular ─▶ list_files.read_names
                   │   each becomes an interned Rule in the mutable Build, added to its index
                   ├─ frameworks:, clients:, legal_status: ─▶ legal_loader.py
                   └─ no issue recorded ─▶ Policy(names index, glob and network matchers, ...)

Every problem is recorded on the walker (``file:line: field: message``) and
compiling goes on, so one load reports them all; ``compile_policy`` returns
None when any was found.  Rules are interned (``Build.rule``), so equal rules
are one object and decisions can be cached by rule identity.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from . import dns_local, legal_loader, subscriptions
from .files import Unreadable, open_regular
from .list_files import STORE_COVER, Caps, glob_covers_store, list_issues, read_names, store_cover_message
from .matching import (
    STORE_HOSTS,
    GlobMatcher,
    NameIndexBuilder,
    NetworkMatcher,
    is_valid_name,
    normalize_name,
    validate_glob,
)
from .model import (
    App,
    LegalBasis,
    LegalStatus,
    Mode,
    Network,
    Phase,
    Rule,
    RuleKind,
    ScheduleEntry,
    Settings,
    StoreIds,
    Subscription,
    Tier,
)
from .policy import Policy
from .validate import (
    ALLOW_KEYS,
    APP_ID,
    APP_KEYS,
    APP_KEYS_V2,
    CIDR_ENTRY_KEYS,
    CONFIDENCE,
    DOWNLOAD_KEYS,
    ENTRY_KEYS,
    GROUP_KEYS,
    LEGAL_KEYS,
    LIST_KEYS,
    PHASES,
    PLAY_PKG,
    STORE_ENTRY_KEYS,
    SUPPORTED_VERSIONS,
    TOP_KEYS,
    V2_ONLY,
    app_field,
    read_builtins,
    read_entry,
    read_settings,
)
from .yaml_walk import Walker, describe


@dataclass
class Build:
    """Mutable state while compiling; frozen into a Policy at the end."""

    names: NameIndexBuilder
    globs: list[tuple[str, Rule]]
    networks: list[tuple[Network, Rule]]
    download_paths: dict[str, list[Rule]]
    download_path_globs: list[tuple[str, Rule]]
    store: dict[tuple[str, str], list[str]]
    counts: dict[str, int]
    groups: dict[str, bool]
    files: list[str]
    rules: dict[Rule, Rule]
    caps: Caps
    version: int = 1
    schedules: dict[str, tuple[ScheduleEntry, ...]] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)

    def rule(self, *args: Any, **kw: Any) -> Rule:
        r = Rule(*args, **kw)
        return self.rules.setdefault(r, r)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def compile_policy(w: Walker, root: yaml.Node, base: Path, caps: Caps) -> Policy | None:
    top = w.mapping(root, "", TOP_KEYS)
    if top is None:
        return None
    version = 1
    if "version" in top:
        v = w.scalar(top["version"], "version", int, "an integer")
        if v is not None and v not in SUPPORTED_VERSIONS:
            w.err(top["version"], "version", f"unsupported version {v} (supported: 1, 2)")
        elif v is not None:
            version = v
    for key in V2_ONLY:
        if key in top and version < 2:
            w.err(top[key], key, "needs version: 2 (version 1 keeps a schedule: on each app; "
                                 "egress-filter check --upgrade prints the version-2 form)")
    if "description" in top:
        w.text(top["description"], "description")
    mode = Mode.ENFORCE
    if "mode" in top:
        m = w.choice(top["mode"], "mode", tuple(x.value for x in Mode))
        mode = Mode(m) if m else mode
    tz = "UTC"
    if "timezone" in top:
        t = w.text(top["timezone"], "timezone")
        if t:
            try:
                ZoneInfo(t)
                tz = t
            except (ZoneInfoNotFoundError, ValueError):
                w.err(top["timezone"], "timezone", f"unknown time zone '{t}'")
    exempt = []
    if "exempt_clients" in top:
        for f, item in w.seq(top["exempt_clients"], "exempt_clients"):
            net = w.cidr(item, f)
            if net is not None:
                exempt.append(net)
    if "sources" in top:
        if isinstance(top["sources"], yaml.MappingNode):
            for knode, vnode in top["sources"].value:
                w.text(vnode, f"sources.{knode.value}")
        else:
            w.err(top["sources"], "sources", f"expected a mapping, got {describe(top['sources'])}")
    b = Build(NameIndexBuilder(), [], [], {}, [], {}, {}, {}, w.files, {}, caps, version)
    if "groups" in top and isinstance(top["groups"], yaml.MappingNode):
        for knode, vnode in top["groups"].value:
            g = w.mapping(vnode, f"groups.{knode.value}", GROUP_KEYS)
            if g and "enabled" in g:
                enabled = w.scalar(g["enabled"], f"groups.{knode.value}.enabled", bool, "true or false")
                b.groups[str(knode.value)] = bool(enabled)
            if g and "description" in g:
                w.text(g["description"], f"groups.{knode.value}.description")
    elif "groups" in top:
        w.err(top["groups"], "groups", f"expected a mapping, got {describe(top['groups'])}")
    settings = Settings()
    if "settings" in top:
        settings, b.caps = read_settings(w, top["settings"], b.caps)
    builtins = read_builtins(w, top.get("builtins"), settings)
    if "allow" in top:
        _allow(w, b, top["allow"], base)
    apps: dict[str, App] = {}
    if "apps" in top:
        seen: dict[str, int] = {}
        for f, node in w.seq(top["apps"], "apps"):
            app = _app(w, b, node, f, base, seen)
            if app is not None:
                apps[app.id] = app
    policy_name = w.text(top["name"], "name") if "name" in top else None
    if version >= 2:
        fws = legal_loader.frameworks(w, top["frameworks"], apps) if "frameworks" in top else {}
    else:
        fws = {legal_loader.IMPLICIT: legal_loader.implicit_framework(
            apps, b.schedules, policy_name or "the policy's schedules")}
    groups, group_nets = legal_loader.clients(w, top.get("clients") if version >= 2 else None, fws, exempt)
    ls = LegalStatus.AS_ORDERED
    if "legal_status" in top and version >= 2:
        lv = w.choice(top["legal_status"], "legal_status", legal_loader.LEGAL_STATUSES)
        ls = legal_loader.legal_status(lv) if lv else ls
    if w.issues:
        return None
    b.count("apps", len(apps))
    return Policy(
        apps=apps,
        names=b.names.build(),
        globs=GlobMatcher(b.globs),
        networks=NetworkMatcher(b.networks),
        download_paths={h: tuple(r) for h, r in b.download_paths.items()},
        download_path_globs=GlobMatcher(b.download_path_globs),
        store_index={k: tuple(v) for k, v in b.store.items()},
        exempt=tuple(exempt),
        mode=mode,
        timezone=tz,
        settings=settings,
        builtins=builtins,
        source=w.file,
        files=tuple(b.files),
        counts=dict(b.counts),
        tiers=_tiers(b),
        frameworks=fws,
        clients=groups,
        client_networks=NetworkMatcher(group_nets),
        client_users={u: g.id for g in groups.values() for u in g.users},
        legal_status=ls,
        name=policy_name,
        subscriptions=tuple(b.subscriptions),
    )


def _tiers(b: Build) -> dict[str, frozenset[Tier]]:
    """Each app's rule tiers (traffic, download): which phases can block it."""
    out: dict[str, set[Tier]] = {}
    for rule in b.rules:
        if rule.app:
            out.setdefault(rule.app, set()).add(rule.tier)
    return {app: frozenset(t) for app, t in out.items()}


def _enabled(w: Walker, b: Build, group: str | None, node: yaml.Node, field: str) -> bool:
    if group is None:
        return True
    if group not in b.groups:
        w.err(node, f"{field}.group", f"unknown group '{group}' (declare it under groups:)")
        return False
    return b.groups[group]


def _allow(w: Walker, b: Build, node: yaml.Node, base: Path) -> None:
    m = w.mapping(node, "allow", ALLOW_KEYS)
    if m is None:
        return
    for key, kind in (("domains", RuleKind.DOMAIN), ("hosts", RuleKind.HOST)):
        if key not in m:
            continue
        for f, item in w.seq(m[key], f"allow.{key}"):
            raw, source, _group, vnode = read_entry(w, item, f, ENTRY_KEYS, "name")
            name = dns_local.domain_name(w, raw, vnode, f) if raw else None
            if name:
                b.names.add(name, b.rule(RuleKind.ALLOW, Tier.ALLOW, None, source),
                            exact=kind is RuleKind.HOST)
                b.count("allow")
    if "lists" in m:
        for f, item in w.seq(m["lists"], "allow.lists"):
            _list(w, b, item, f, base, None, allow=True)


def _app(w: Walker, b: Build, node: yaml.Node, field: str, base: Path, seen: dict[str, int]) -> App | None:
    field = app_field(node, field, seen)
    m = w.mapping(node, field, APP_KEYS if b.version < 2 else APP_KEYS_V2)
    if m is None:
        return None
    app_id = None
    if "id" in m:
        app_id = w.text(m["id"], f"{field}.id")
        if app_id is not None and not APP_ID.match(app_id):
            w.err(m["id"], f"{field}.id", f"'{app_id}' must be lower-case letters, digits and '_'")
            app_id = None
        elif app_id is not None and app_id in seen:
            w.err(m["id"], f"{field}.id",
                  f"duplicate app id '{app_id}' (first defined at line {seen[app_id]})")
            app_id = None
        elif app_id is not None:
            seen[app_id] = m["id"].start_mark.line + 1
    name = w.text(m["name"], f"{field}.name") if "name" in m else None
    owner = w.text(m["owner"], f"{field}.owner") if "owner" in m else None
    legal = None
    if "legal_basis" in m:
        lm = w.mapping(m["legal_basis"], f"{field}.legal_basis", LEGAL_KEYS)
        if lm is not None:
            texts = {k: w.text(v, f"{field}.legal_basis.{k}") for k, v in lm.items() if k != "signed"}
            signed = w.date(lm["signed"], f"{field}.legal_basis.signed") if "signed" in lm else None
            order, citation = texts.get("order"), texts.get("citation")
            if order and citation:
                legal = LegalBasis(order, citation, signed, texts.get("url"), texts.get("note"))
    schedule = legal_loader.schedule_entries(w, m["schedule"], f"{field}.schedule") if "schedule" in m else ()
    override = None
    if "phase" in m:
        ph = w.choice(m["phase"], f"{field}.phase", PHASES)
        override = Phase(ph) if ph else None
    if "notes" in m:
        for f, item in w.seq(m["notes"], f"{field}.notes"):
            w.text(item, f)
    aid = app_id or ""
    for key, kind in (("domains", RuleKind.DOMAIN), ("hosts", RuleKind.HOST)):
        if key not in m:
            continue
        for f, item in w.seq(m[key], f"{field}.{key}"):
            raw, source, group, vnode = read_entry(w, item, f, ENTRY_KEYS, "name")
            nm = dns_local.domain_name(w, raw, vnode, f) if raw else None
            if nm and nm in (STORE_HOSTS if kind is RuleKind.HOST else STORE_COVER):
                w.err(vnode, f, store_cover_message(nm, raw))
            elif nm and _enabled(w, b, group, item, f):
                b.names.add(nm, b.rule(kind, Tier.TRAFFIC, aid, source, list_group=group),
                            exact=kind is RuleKind.HOST)
                b.count(key)
    if "sni" in m:
        for f, item in w.seq(m["sni"], f"{field}.sni"):
            raw, source, group, vnode = read_entry(w, item, f, ENTRY_KEYS, "name")
            if not raw:
                continue
            pat = normalize_name(raw)
            problem = validate_glob(pat)
            if problem is None and glob_covers_store(pat):
                w.err(vnode, f, store_cover_message(pat, raw).replace("would block the", "would match the"))
            elif problem:
                w.err(vnode, f, f"invalid SNI pattern '{raw}': {problem}")
            elif _enabled(w, b, group, item, f):
                if "*" in pat:
                    b.globs.append((pat, b.rule(RuleKind.SNI, Tier.TRAFFIC, aid, source, pat,
                                                list_group=group)))
                else:
                    b.names.add(pat, b.rule(RuleKind.SNI, Tier.TRAFFIC, aid, source, list_group=group),
                                exact=True)
                b.count("sni")
    if "downloads" in m:
        for f, item in w.seq(m["downloads"], f"{field}.downloads"):
            _download(w, b, item, f, aid)
    store = StoreIds()
    if "store" in m:
        store = _store(w, b, m["store"], f"{field}.store", aid)
    if "networks" in m:
        for f, item in w.seq(m["networks"], f"{field}.networks"):
            if isinstance(item, yaml.MappingNode):
                cm = w.mapping(item, f, CIDR_ENTRY_KEYS)
                if not cm or "cidr" not in cm:
                    continue
                net = w.cidr(cm["cidr"], f"{f}.cidr")
                source = w.sources(cm["source"], f"{f}.source") if "source" in cm else None
                group = w.text(cm["group"], f"{f}.group") if "group" in cm else None
            else:
                net, source, group = w.cidr(item, f), None, None
            if net is not None and _enabled(w, b, group, item, f):
                b.networks.append((net, b.rule(RuleKind.NETWORK, Tier.TRAFFIC, aid, source, str(net),
                                                      list_group=group)))
                b.count("networks")
    if "lists" in m:
        for f, item in w.seq(m["lists"], f"{field}.lists"):
            _list(w, b, item, f, base, aid)
    if not (app_id and name and owner and (legal or b.version >= 2)):
        return None
    b.schedules[app_id] = schedule
    return App(app_id, name, owner, legal, store, override)


def _download(w: Walker, b: Build, node: yaml.Node, field: str, app: str) -> None:
    m = w.mapping(node, field, DOWNLOAD_KEYS)
    if m is None or "host" not in m:
        return
    raw = w.text(m["host"], f"{field}.host")
    path = w.text(m["path"], f"{field}.path") if "path" in m else None
    source = w.sources(m["source"], f"{field}.source") if "source" in m else None
    group = w.text(m["group"], f"{field}.group") if "group" in m else None
    if "confidence" in m:
        w.choice(m["confidence"], f"{field}.confidence", CONFIDENCE)
    if "note" in m:
        w.text(m["note"], f"{field}.note")
    if not raw:
        return
    if path is not None and not path.startswith("/"):
        w.err(m["path"], f"{field}.path", f"'{path}' must start with '/'")
        return
    host = normalize_name(raw)
    wildcard = host.startswith("*.")
    bare = host[2:] if wildcard else host
    if not is_valid_name(bare) or "*" in bare:
        w.err(m["host"], f"{field}.host", f"'{raw}' is not a host name (a leading '*.' is allowed)")
        return
    if not path and bare in (STORE_COVER if wildcard else STORE_HOSTS):
        w.err(m["host"], f"{field}.host", store_cover_message(bare, raw))
        return
    if not _enabled(w, b, group, node, field):
        return
    pattern = host if (wildcard or path) else None
    prefix = path if path and path != "/" else None
    rule = b.rule(RuleKind.DOWNLOAD, Tier.DOWNLOAD, app, source, pattern, prefix, list_group=group)
    b.count("downloads")
    if rule.path:
        if wildcard:
            b.download_path_globs.append((host, rule))
        else:
            b.download_paths.setdefault(host, []).append(rule)
    elif wildcard:
        b.names.add(bare, b.rule(RuleKind.DOWNLOAD, Tier.DOWNLOAD, app, source, list_group=group),
                    exact=False)
    else:
        b.names.add(host, rule, exact=True)


def _store(w: Walker, b: Build, node: yaml.Node, field: str, app: str) -> StoreIds:
    m = w.mapping(node, field, {"apple": False, "google_play": False})
    if m is None:
        return StoreIds()
    apple: list[int] = []
    play: list[str] = []
    for f, vnode in _store_items(w, m, "apple", field):
        val = w.value(vnode)
        if isinstance(val, str) and val.isdigit():
            val = int(val)
        if not isinstance(val, int) or isinstance(val, bool) or val <= 0:
            w.err(vnode, f, f"an Apple App Store id is a positive number, got {vnode.value!r}")
            continue
        apple.append(val)
        b.store.setdefault(("apple", str(val)), []).append(app)
        b.count("store_ids")
    for f, vnode in _store_items(w, m, "google_play", field):
        val = w.value(vnode)
        if not isinstance(val, str) or not PLAY_PKG.match(val):
            w.err(vnode, f, f"'{vnode.value}' is not a Google Play package name (like com.example.app)")
            continue
        play.append(val)
        b.store.setdefault(("google_play", val), []).append(app)
        b.count("store_ids")
    return StoreIds(tuple(apple), tuple(play))


def _store_items(w: Walker, m: dict[str, yaml.Node], key: str, field: str
                 ) -> Iterator[tuple[str, yaml.ScalarNode]]:
    """The id nodes of one store: plain scalars, or ``{id: ..., source: ...}`` entries."""
    if key not in m:
        return
    for f, item in w.seq(m[key], f"{field}.{key}"):
        if isinstance(item, yaml.MappingNode):
            vnode = read_entry(w, item, f, STORE_ENTRY_KEYS, "id")[3]
            f = f"{f}.id"
        else:
            vnode = item
        if isinstance(vnode, yaml.ScalarNode):
            yield f, vnode
        elif vnode is item and not isinstance(item, yaml.MappingNode):
            w.err(item, f, f"expected a store id, got {describe(item)}")


def _list(w: Walker, b: Build, node: yaml.Node, field: str, base: Path, app: str | None,
          *, allow: bool = False) -> None:
    """A list file: one name per line; hosts-file lines, ``||name^`` and ``#`` comments accepted."""
    as_: str | None = "domains"
    source: str | None = None
    group: str | None = None
    sub: Subscription | None = None
    m: dict[str, yaml.Node] | None = None
    if isinstance(node, yaml.ScalarNode) and str(node.value).startswith("https://"):
        m = {"url": node}  # a bare URL: a subscription with the defaults
    elif isinstance(node, yaml.ScalarNode):
        rel = w.text(node, field)
    else:
        m = w.mapping(node, field, LIST_KEYS)
        if m is None:
            return
        if "path" not in m and "url" not in m:
            w.err(node, field, "needs a path (a list file) or a url (a subscription)")
            return
        rel = w.text(m["path"], f"{field}.path") if "path" in m else None
        as_ = w.choice(m["as"], f"{field}.as", ("domains", "hosts")) if "as" in m else "domains"
        source = w.sources(m["source"], f"{field}.source") if "source" in m else None
        group = w.text(m["group"], f"{field}.group") if "group" in m else None
    if m is not None and "url" in m:  # downloaded by the holder (runtime/subscriptions.py)
        got = subscriptions.entry(w, m, field, base, as_ == "hosts")
        if got is None:
            return
        sub, rel = got
        source = source or sub.url
    if not rel or not as_ or not _enabled(w, b, group, node, field):
        return
    path = (base / rel) if not os.path.isabs(rel) else Path(rel)
    b.files.append(str(path))  # a missing file too: its arrival should trigger a reload
    if sub is not None:
        b.subscriptions.append(sub)
        if not path.exists():
            return  # not downloaded yet: no names until the first copy arrives
    try:
        raw = open_regular(path, b.caps.file_size)
    except Unreadable as exc:
        w.err(node, field, f"list file '{rel}' {exc}" + (" (settings.max_file_size)" if exc.too_big else ""))
        return
    exact = as_ == "hosts"
    if allow:
        rule = b.rule(RuleKind.ALLOW, Tier.ALLOW, None, source or f"list:{rel}")
    else:
        rule = b.rule(RuleKind.HOST if exact else RuleKind.DOMAIN, Tier.TRAFFIC, app, source or f"list:{rel}",
                      list_group=group)
    store_cover: frozenset[str] = frozenset() if allow else (STORE_HOSTS if exact else STORE_COVER)
    n, problems = read_names(raw, b.caps, store_cover,
                             lambda names: b.names.add_many(names, rule, exact=exact))
    w.issues += list_issues(str(path), field, problems)
    b.count("allow" if allow else ("hosts" if exact else "domains"), n)
