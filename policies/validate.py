"""Validation: the policy format's keys, and the readers of its plain sections.

    a mapping node ─▶ Walker.mapping(node, field, KEYS) ─▶ known keys, each with its node
                      (unknown key, missing required key ─▶ file:line: field: message)
    settings: / builtins: ─▶ read_settings / read_builtins ─▶ Settings, Builtins
                             (each value checked against the dataclass default's type,
                             policies/setting_types.py)
    a list entry ─▶ read_entry ─▶ (value, source, group, value node)
    a compiled Policy ─▶ policy_warnings / blocks_anything ─▶ what is legal but likely a mistake

The key tables say which keys each part of the format allows and which are
required (``key → required``); the JSON Schema (schema.json) says the same for
editors, and tests/core/test_schema.py keeps the two in step.  Nothing here
builds rules: policies/compiler.py does, calling these readers.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from dataclasses import fields, replace
from typing import Any, TypeVar

import yaml

from . import dns_local, legal_loader
from .builtins import BUILTIN_KEYS, Builtins, EchAction
from .list_files import Caps
from .model import (
    AppPhase,
    DnsSettings,
    EventQueueSettings,
    Mode,
    Phase,
    ProxySettings,
    Settings,
    Tier,
)
from .policy import Policy
from .schema_keys import APP_FORBIDDEN_V2, APP_REQUIRED_V1, VERSION_2_ONLY, keys
from .setting_types import setting_kind
from .yaml_walk import Walker

T = TypeVar("T")
SUPPORTED_VERSIONS = (1, 2)
APP_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
PLAY_PKG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")
# The format's keys (key → required), read from schema.json: policies/schema_keys.py.
TOP_KEYS = keys()
V2_ONLY = VERSION_2_ONLY
APP_KEYS = keys("$defs", "app", required=APP_REQUIRED_V1)
# Version 2 keeps schedules and the legal record under frameworks:.
APP_KEYS_V2 = keys("$defs", "app", without=APP_FORBIDDEN_V2)
ENTRY_KEYS = keys("$defs", "name_entry")
CIDR_ENTRY_KEYS = keys("$defs", "cidr_entry")
STORE_ENTRY_KEYS = keys("$defs", "app", "properties", "store", "properties", "apple", "items")
DOWNLOAD_KEYS = keys("$defs", "download")
LIST_KEYS = keys("$defs", "list")
LEGAL_KEYS = keys("$defs", "app", "properties", "legal_basis")
SCHEDULE_KEYS = legal_loader.SCHEDULE_KEYS
ALLOW_KEYS = keys("properties", "allow")
GROUP_KEYS = keys("properties", "groups", "additionalProperties")
SETTINGS_KEYS = keys("properties", "settings")
PHASES = tuple(p.value for p in Phase)
CONFIDENCE = ("high", "medium", "low")


def read_settings(w: Walker, node: yaml.Node, caps: Caps) -> tuple[Settings, Caps]:
    """``settings:``, and the list-file caps its ``max_file_size`` sets."""
    top = w.mapping(node, "settings", SETTINGS_KEYS)
    if top is None:
        return Settings(), caps
    dns = dataclass_from(w, top.get("dns"), "settings.dns", DnsSettings)
    proxy = dataclass_from(w, top.get("proxy"), "settings.proxy", ProxySettings)
    queue = dataclass_from(w, top.get("event_queue"), "settings.event_queue", EventQueueSettings)
    for key in ("max_events", "max_bytes"):
        if getattr(queue, key) < 1:
            w.err(top["event_queue"], f"settings.event_queue.{key}", "must be at least 1")
    allow_empty = False
    if "allow_empty" in top:
        allow_empty = bool(w.scalar(top["allow_empty"], "settings.allow_empty", bool, "true or false"))
    allow_pause = True
    if "allow_pause" in top:
        allow_pause = bool(w.scalar(top["allow_pause"], "settings.allow_pause", bool, "true or false"))
    max_file_size = caps.file_size
    if "max_file_size" in top:
        size = w.scalar(top["max_file_size"], "settings.max_file_size", int, "an integer (bytes)")
        if size is not None and size < 1:
            w.err(top["max_file_size"], "settings.max_file_size", "must be at least 1")
        elif size is not None:
            max_file_size = size
            caps = Caps(size, caps.line)
    return Settings(dns=dns, proxy=proxy, event_queue=queue, allow_empty=allow_empty,
                    allow_pause=allow_pause, max_file_size=max_file_size), caps


def read_builtins(w: Walker, node: yaml.Node | None, settings: Settings) -> Builtins:
    """``builtins:``; a switch left out follows the older setting it replaces."""
    out = Builtins(doh=settings.proxy.block_doh, canary=settings.dns.canary,
                   ech=EchAction.LOG if settings.proxy.log_ech else EchAction.OFF)
    if node is None:
        return out
    keys = w.mapping(node, "builtins", BUILTIN_KEYS)
    if keys is None:
        return out
    values: dict[str, Any] = {}
    for key, vnode in keys.items():
        if key == "ech" and w.value(vnode) is False:
            values[key] = EchAction.OFF  # an unquoted YAML off is the boolean false
        elif key == "ech":
            choice = w.choice(vnode, "builtins.ech", tuple(e.value for e in EchAction))
            if choice:
                values[key] = EchAction(choice)
        else:
            v = w.scalar(vnode, f"builtins.{key}", bool, "true or false")
            if v is not None:
                values[key] = bool(v)
    return replace(out, **values)


def dataclass_from(w: Walker, node: yaml.Node | None, field: str, cls: type[T]) -> T:
    """Fill a settings dataclass from a mapping, checking each value's type
    against the dataclass default (tuples take lists of strings)."""
    if node is None:
        return cls()
    specs = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    keys = w.mapping(node, field, {k: False for k in specs})
    if keys is None:
        return cls()
    default = cls()
    values: dict[str, Any] = {}
    for key, vnode in keys.items():
        current = getattr(default, key)
        name = f"{field}.{key}"
        if cls is DnsSettings and key in dns_local.KEYS:  # structured: local records, forwards
            got = dns_local.read(w, key, vnode, name)
            if got is not None:
                values[key] = got
            continue
        kind, what = setting_kind(current)
        if kind is tuple:
            items = [w.text(i, f) for f, i in w.seq(vnode, name)]
            if all(i is not None for i in items):
                values[key] = tuple(items)
        else:
            v = w.text(vnode, name) if kind is str else w.scalar(vnode, name, kind, what)
            if v is not None:
                values[key] = v
    if "block_response" in values and values["block_response"] not in ("nxdomain", "null", "refused"):
        w.err(keys["block_response"], f"{field}.block_response", "must be nxdomain, null or refused")
    if "block" in values and values["block"] not in ("reset", "page"):
        w.err(keys["block"], f"{field}.block", "must be reset or page")
    return cls(**values)


def read_entry(w: Walker, node: yaml.Node, field: str, keys: dict[str, bool], main: str
           ) -> tuple[str | None, str | None, str | None, yaml.Node]:
    """A list entry: a plain string, or a mapping with the main key and metadata.
    Returns (value, source, group, node-of-value)."""
    if isinstance(node, yaml.ScalarNode):
        return w.text(node, field), None, None, node
    m = w.mapping(node, field, keys)
    if m is None or main not in m:
        return None, None, None, node
    if "confidence" in m:
        w.choice(m["confidence"], f"{field}.confidence", CONFIDENCE)
    if "note" in m:
        w.text(m["note"], f"{field}.note")
    source = w.sources(m["source"], f"{field}.source") if "source" in m else None
    group = w.text(m["group"], f"{field}.group") if "group" in m else None
    val = w.scalar(m[main], f"{field}.{main}", str, "a string") if main != "id" else w.value(m[main])
    return val, source, group, m[main]


def app_field(node: yaml.Node, field: str, seen: dict[str, int]) -> str:
    """``apps[<id>]`` when the entry has a usable, not yet seen id, else ``apps[<index>]``."""
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if (isinstance(knode, yaml.ScalarNode) and knode.value == "id"
                    and isinstance(vnode, yaml.ScalarNode) and APP_ID.match(vnode.value)
                    and vnode.value not in seen):
                return f"apps[{vnode.value}]"
    return field


def blocks_anything(policy: Policy, phases: Mapping[str, AppPhase]) -> bool:
    """Whether some rule blocks in these phases (whatever the mode: monitor
    turns a block into a log, not into an allow).  Traffic rules block in
    ``full``; download rules and store ids in ``downloads`` and ``full``."""
    for app in policy.apps.values():
        phase = phases[app.id].phase if app.id in phases else Phase.NONE
        if phase is Phase.NONE:
            continue
        tiers = policy.tiers.get(app.id, frozenset())
        if Tier.DOWNLOAD in tiers or app.store.apple or app.store.google_play:
            return True
        if phase is Phase.FULL and Tier.TRAFFIC in tiers:
            return True
    return False


def policy_warnings(policy: Policy, at: dt.date | None = None, phase: Phase | None = None,
                    mode: Mode | None = None) -> list[str]:
    """What is legal but likely a mistake (a gutted file): no apps, or
    nothing blocked on ``at`` in enforce mode."""
    day = at or policy.today()
    if not policy.apps:
        return ["the policy has no apps, so it blocks nothing"]
    if (mode or policy.mode) is Mode.ENFORCE and not any(
            blocks_anything(policy, policy.phases(day, phase, group)) for group in policy.clients):
        return [f"the policy blocks nothing on {day} in enforce mode "
                "(no app is in a phase that blocks one of its rules)"]
    return []
