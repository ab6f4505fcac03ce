"""YAML (+ list files) → a compiled, immutable ``Policy``.

The YAML is composed into nodes first, so every value keeps its line; the
walker below checks each key against the format (unknown keys are errors),
converts values, and records every problem as ``file:line: field: message``.
Only a policy with no problems is compiled into indexes; a bad one raises
``PolicyError`` carrying all of them.

Every file (the YAML and each list file) is opened by ``_open_regular``:
non-blocking, so a FIFO cannot hang the load, and refused unless it is a
regular file within the size cap; list lines are read with a length cap, and
YAML nesting is limited while composing, before any recursion gets deep.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import ipaddress
import itertools
import os
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from . import dns_local, legal_loader, subscriptions
from .addresses import is_ip
from .builtins import BUILTIN_KEYS, Builtins, EchAction
from .decide import Policy
from .matching import (
    STORE_HOSTS,
    GlobMatcher,
    NameIndexBuilder,
    NetworkMatcher,
    glob_to_regex,
    is_valid_name,
    normalize_name,
    suffixes,
    validate_glob,
)
from .model import (
    DEFAULT_MAX_FILE_SIZE,
    App,
    AppPhase,
    DnsSettings,
    EventQueueSettings,
    LegalBasis,
    LegalStatus,
    Mode,
    Phase,
    ProxySettings,
    Rule,
    RuleKind,
    ScheduleEntry,
    Settings,
    StoreIds,
    Subscription,
    Tier,
)
from .setting_types import check_value, setting_kind

BUNDLED = Path(__file__).with_name("bundled.yaml")
SCHEMA = Path(__file__).with_name("schema.json")  # JSON Schema of this format, for editors
SUPPORTED_VERSIONS = (1, 2)
_APP_ID = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PLAY_PKG = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)+$")
_LIST_NAME = re.compile(r"^(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}$")
_MAX_LIST_ISSUES = 20
MAX_LIST_LINE = 4096  # characters: a name is at most 253; hosts-file lines with aliases stay far below
MAX_DEPTH = 64  # YAML collections inside each other; the format itself needs 6
_MERGE_TAG = "tag:yaml.org,2002:merge"
# A store host, or a domain above one, would block the store for every app;
# store traffic is judged per app, by URL (see matching.recognize_store_url).
_STORE_HOSTS = STORE_HOSTS
_STORE_COVER = frozenset(s for h in STORE_HOSTS for s in suffixes(h) if "." in s)
_HOSTS_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "255.255.255.255"})
_HOSTS_SKIP = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost",
                         "ip6-localhost", "ip6-loopback", "0.0.0.0"})


@dataclass(frozen=True, slots=True)
class PolicyIssue:
    file: str
    line: int
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.field}: {self.message}"


class PolicyError(ValueError):
    """A policy that cannot be used; ``issues`` lists every problem found.

    ``files`` names every file the load read or tried to read (the YAML, list
    files, missing ones too), so that a watcher knows what to wait on."""

    def __init__(self, issues: list[PolicyIssue], files: tuple[str, ...] = ()):
        self.issues = issues
        self.files = files
        super().__init__("\n".join(str(i) for i in issues))


T = TypeVar("T")


class _Unreadable(Exception):
    """A file that must not or cannot be read; the message says why, as the
    rest of a sentence about the file ("is a FIFO, ...", "cannot be read: ...")."""

    def __init__(self, message: str, os_error: str | None = None, too_big: bool = False):
        super().__init__(message)
        self.os_error = os_error  # the system's reason, when the OS refused
        self.too_big = too_big  # over the size cap (the caller names the setting)


_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _not_regular(mode: int) -> str | None:
    for test, kind in _KINDS:
        if test(mode):
            return f"is {kind}, not a regular file"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def _open_regular(path: Path, max_size: int) -> io.BufferedReader:
    """The one way this module opens a file: without blocking (a FIFO would
    hang ``open`` until a writer came), and only a regular file of at most
    ``max_size`` bytes (``/dev/zero`` behind a symlink is a character device).
    Raises ``_Unreadable``."""
    try:
        st = os.stat(path)  # a socket cannot be opened at all: say what it is first
        problem = _not_regular(st.st_mode)
        if problem:
            raise _Unreadable(problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise _Unreadable(f"cannot be read: {reason}", reason) from exc
    try:
        st = os.fstat(fd)  # what was opened, should the path have changed since
        problem = _not_regular(st.st_mode)
        if problem:
            raise _Unreadable(problem)
        if st.st_size > max_size:
            raise _Unreadable(f"is {st.st_size} bytes, over the limit of {max_size}", too_big=True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _read_capped(fh: io.BufferedReader, cap: int) -> bytes:
    """At most ``cap + 1`` bytes, read in pieces: ``read(cap + 1)`` would
    allocate the whole cap (1 GiB by default) up front, whatever the file holds."""
    parts: list[bytes] = []
    total = 0
    while total <= cap:
        chunk = fh.read(min(1 << 20, cap + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)


class _TooDeep(yaml.YAMLError):
    def __init__(self, mark: yaml.Mark, field: str, limit: int):
        super().__init__(f"nesting deeper than {limit} levels")
        self.mark, self.field, self.limit = mark, field, limit


class _DepthLimitedLoader(yaml.SafeLoader):
    """A SafeLoader whose composer refuses collections nested deeper than
    ``max_depth``: composing recurses once per level, so a 950-level document
    would otherwise end in a RecursionError.  Checked before each collection
    is composed, so the stack never gets deep."""

    max_depth = MAX_DEPTH

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._top = "(yaml)"  # the top-level key being composed, for the error's field

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self._depth == 1 and isinstance(index, yaml.ScalarNode):
            self._top = str(index.value)
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        if self._depth >= self.max_depth:
            mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
            raise _TooDeep(mark, self._top, self.max_depth)
        self._depth += 1
        try:
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1


class _Walker:
    """Checks YAML nodes against the format, collecting positioned issues."""

    def __init__(self, file: str):
        self.file = file
        self.issues: list[PolicyIssue] = []
        self.files: list[str] = [file]
        self._constructor = yaml.constructor.SafeConstructor()

    def err(self, node: yaml.Node | None, field: str, message: str, line: int | None = None) -> None:
        if line is None:
            line = node.start_mark.line + 1 if node is not None else 1
        self.issues.append(PolicyIssue(self.file, line, field, message))

    def value(self, node: yaml.Node) -> Any:
        try:
            return self._constructor.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError):
            # e.g. 2020-02-30 resolves to a timestamp that is no date: keep
            # the text and let the field's own check say what is wrong.
            return node.value if isinstance(node, yaml.ScalarNode) else None

    def mapping(self, node: yaml.Node, field: str, allowed: dict[str, bool]) -> dict[str, yaml.Node] | None:
        """Keys of a mapping node; ``allowed`` maps key → required."""
        if not isinstance(node, yaml.MappingNode):
            self.err(node, field or "(top level)", f"expected a mapping, got {_describe(node)}")
            return None
        pairs, merged = self._merge(node, field)
        out: dict[str, yaml.Node] = {}
        from_merge: set[str] = set()
        for i, (knode, vnode) in enumerate(pairs):
            key = knode.value if isinstance(knode, yaml.ScalarNode) else None
            name = f"{field}.{key}" if field else str(key)
            if not key:
                self.err(knode, field or "(top level)", "keys must be plain, non-empty strings")
            elif key in out:
                if i < merged:
                    continue  # merged in twice: the first mapping merged wins, as in YAML
                if key in from_merge:
                    out[key] = vnode  # a key written out overrides a merged one
                    from_merge.discard(key)
                else:
                    self.err(knode, name, "duplicate key")
            elif not field and key.startswith("x-"):
                continue  # top-level extension keys hold anchors for merge keys and aliases
            elif key not in allowed:
                close = ", ".join(sorted(allowed))
                self.err(knode, name, f"unknown key '{key}' (allowed: {close})")
            else:
                out[key] = vnode
                if i < merged:
                    from_merge.add(key)
        for key, required in allowed.items():
            if required and key not in out:
                self.err(node, f"{field}.{key}" if field else key, "required key is missing")
        return out

    def _merge(self, node: yaml.MappingNode, field: str) -> tuple[list[tuple[yaml.Node, yaml.Node]], int]:
        """Apply YAML merge keys (``<<: *defaults``): the pairs, merged ones
        first, and how many were merged in."""
        if not any(k.tag == _MERGE_TAG for k, _ in node.value):
            return node.value, 0
        explicit = sum(1 for k, _ in node.value if k.tag != _MERGE_TAG)
        try:
            self._constructor.flatten_mapping(node)
        except yaml.YAMLError as exc:
            self.err(node, field or "(top level)", f"bad merge key: {getattr(exc, 'problem', None) or exc}")
            return [(k, v) for k, v in node.value if k.tag != _MERGE_TAG], 0
        return node.value, len(node.value) - explicit

    def seq(self, node: yaml.Node, field: str) -> list[tuple[str, yaml.Node]]:
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            return []
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, field, f"expected a list, got {_describe(node)}")
            return []
        return [(f"{field}[{i}]", item) for i, item in enumerate(node.value)]

    def scalar(self, node: yaml.Node, field: str, kind: type[T], what: str | None = None) -> T | None:
        if not isinstance(node, yaml.ScalarNode):
            self.err(node, field, f"expected {what or kind.__name__}, got {_describe(node)}")
            return None
        try:
            return check_value(kind, self.value(node))
        except TypeError:
            shown = node.value if len(node.value) < 60 else node.value[:57] + "..."
            self.err(node, field, f"expected {what or kind.__name__}, got {shown!r}")
            return None

    def text(self, node: yaml.Node, field: str) -> str | None:
        val = self.scalar(node, field, str, "a string")
        if val is not None and not val.strip():
            self.err(node, field, "must not be empty")
            return None
        return val

    def choice(self, node: yaml.Node, field: str, choices: tuple[str, ...]) -> str | None:
        val = self.scalar(node, field, str, "one of " + ", ".join(choices))
        if val is not None and val not in choices:
            self.err(node, field, f"'{val}' is not one of: {', '.join(choices)}")
            return None
        return val

    def date(self, node: yaml.Node, field: str) -> dt.date | None:
        if isinstance(node, yaml.ScalarNode) and not isinstance(self.value(node), dt.date):
            try:
                return dt.date.fromisoformat(str(node.value))
            except ValueError:
                self.err(node, field, f"'{node.value}' is not a valid date (YYYY-MM-DD)")
                return None
        return self.scalar(node, field, dt.date, "a date (YYYY-MM-DD)")

    def cidr(self, node: yaml.Node, field: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
        val = self.scalar(node, field, str, "a CIDR such as 10.0.0.0/8")
        if val is None:
            return None
        try:
            return ipaddress.ip_network(val.strip(), strict=False)
        except ValueError as exc:
            detail = "" if val.strip() in str(exc) else f" ({exc})"
            self.err(node, field, f"'{val}' is not a valid CIDR{detail}")
            return None

    def sources(self, node: yaml.Node, field: str) -> str | None:
        if isinstance(node, yaml.SequenceNode):
            parts = [self.text(item, f) for f, item in self.seq(node, field)]
            return "; ".join(p for p in parts if p) or None
        return self.text(node, field)


def _describe(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return f"{node.value!r}"


# --- the format ---------------------------------------------------------------

TOP_KEYS = {"version": True, "name": False, "description": False, "mode": False, "timezone": False,
            "exempt_clients": False, "allow": False, "sources": False, "groups": False,
            "settings": False, "apps": True, "frameworks": False, "clients": False,
            "legal_status": False, "builtins": False}
V2_ONLY = ("frameworks", "clients", "legal_status")
APP_KEYS = {"id": True, "name": True, "owner": True, "legal_basis": True, "schedule": True,
            "phase": False, "domains": False, "hosts": False, "sni": False, "downloads": False,
            "store": False, "networks": False, "lists": False, "notes": False}
# Version 2 keeps schedules and the legal record under frameworks:.
APP_KEYS_V2 = {k: False if k == "legal_basis" else v for k, v in APP_KEYS.items() if k != "schedule"}
ENTRY_KEYS = {"name": True, "source": False, "confidence": False, "group": False, "note": False}
CIDR_ENTRY_KEYS = {"cidr": True, "source": False, "confidence": False, "group": False, "note": False}
STORE_ENTRY_KEYS = {"id": True, "source": False, "confidence": False, "note": False}
DOWNLOAD_KEYS = {"host": True, "path": False, "source": False, "confidence": False, "group": False,
                 "note": False}
LIST_KEYS = {"path": False, "as": False, "source": False, "group": False, **subscriptions.KEYS}
LEGAL_KEYS = {"order": True, "citation": True, "signed": False, "url": False, "note": False}
SCHEDULE_KEYS = legal_loader.SCHEDULE_KEYS
ALLOW_KEYS = {"domains": False, "hosts": False, "lists": False}
GROUP_KEYS = {"enabled": True, "description": False}
SETTINGS_KEYS = {"dns": False, "proxy": False, "event_queue": False, "allow_empty": False,
                 "max_file_size": False}
PHASES = tuple(p.value for p in Phase)
CONFIDENCE = ("high", "medium", "low")


@dataclass
class _Build:
    """Mutable state while compiling; frozen into a Policy at the end."""

    names: NameIndexBuilder
    globs: list[tuple[str, Rule]]
    networks: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, Rule]]
    download_paths: dict[str, list[Rule]]
    download_path_globs: list[tuple[str, Rule]]
    store: dict[tuple[str, str], list[str]]
    counts: dict[str, int]
    groups: dict[str, bool]
    files: list[str]
    rules: dict[Rule, Rule]
    caps: _Caps
    version: int = 1
    schedules: dict[str, tuple[ScheduleEntry, ...]] = field(default_factory=dict)
    subscriptions: list[Subscription] = field(default_factory=list)

    def rule(self, *args: Any, **kw: Any) -> Rule:
        r = Rule(*args, **kw)
        return self.rules.setdefault(r, r)

    def count(self, key: str, n: int = 1) -> None:
        self.counts[key] = self.counts.get(key, 0) + n


def load_policy(path: str | os.PathLike[str] | None = None, *, max_file_size: int | None = None,
                max_line: int = MAX_LIST_LINE, max_depth: int = MAX_DEPTH) -> Policy:
    """Load, validate and compile a policy file (the bundled one by default).

    ``max_file_size`` caps the YAML and every list file (default 1 GiB; a
    policy's ``settings.max_file_size`` replaces it for its own list files);
    ``max_line`` caps a list file's lines, ``max_depth`` the YAML's nesting."""
    p = Path(path) if path is not None else BUNDLED
    cap = DEFAULT_MAX_FILE_SIZE if max_file_size is None else max_file_size
    try:
        with _open_regular(p, cap) as fh:
            data = _read_capped(fh, cap)
        if len(data) > cap:
            raise _Unreadable(f"grew past the limit of {cap} bytes while read", too_big=True)
        text = data.decode("utf-8")
    except _Unreadable as exc:
        message = f"cannot read: {exc.os_error}" if exc.os_error else str(exc)
        raise PolicyError([PolicyIssue(str(p), 0, "(file)", message)], (str(p),)) from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PolicyError([PolicyIssue(str(p), line, "(file)",
                                       f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                       f"at offset {exc.start})")]) from exc
    return load_policy_text(text, str(p), base=p.parent, max_file_size=cap, max_line=max_line,
                            max_depth=max_depth)


def load_policy_text(text: str, file: str = "<policy>", base: Path | None = None, *,
                     max_file_size: int = DEFAULT_MAX_FILE_SIZE, max_line: int = MAX_LIST_LINE,
                     max_depth: int = MAX_DEPTH) -> Policy:
    loader = _DepthLimitedLoader(text)
    loader.max_depth = max_depth
    try:
        root = loader.get_single_node()
    except _TooDeep as exc:
        raise PolicyError([PolicyIssue(file, exc.mark.line + 1, exc.field, str(exc))]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        msg = " ".join(filter(None, [exc.context, exc.problem]))
        raise PolicyError([PolicyIssue(file, line, "(yaml)", f"syntax error: {msg}")]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue(file, 0, "(yaml)", f"syntax error: {exc}")]) from exc
    finally:
        loader.dispose()
    w = _Walker(file)
    if root is None:
        raise PolicyError([PolicyIssue(file, 1, "(file)", "the policy is empty")])
    policy = _compile(w, root, base or Path.cwd(), _Caps(max_file_size, max_line))
    if w.issues or policy is None:
        issues = sorted(w.issues, key=lambda i: (i.file != file, i.file, i.line))  # stable: keeps field order
        raise PolicyError(issues or [PolicyIssue(file, 1, "(file)", "invalid policy")], tuple(w.files))
    try:
        pending = {s.cache for s in policy.subscriptions if not os.path.exists(s.cache)}  # not fetched yet
        digest = policy_digest(text, [f for f in policy.files[1:] if f not in pending], max_file_size)
    except _Unreadable as exc:
        raise PolicyError([PolicyIssue(file, 0, "(file)", f"a list file changed while loading: {exc}")],
                          tuple(w.files)) from exc
    return replace(policy, digest=digest)


def policy_digest(text: str, list_files: Iterable[str], max_size: int = DEFAULT_MAX_FILE_SIZE) -> str:
    """sha256 over the policy text and each list file's bytes, each preceded by
    its length (8 bytes, big-endian), so no two sets of files share a digest.
    An auditor recomputes it from the same files: ``egress-filter check`` prints it."""
    h = hashlib.sha256()
    data = text.encode("utf-8")
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)
    for name in list_files:
        with _open_regular(Path(name), max_size) as fh:  # as the load itself opened it
            h.update(os.fstat(fh.fileno()).st_size.to_bytes(8, "big"))
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return f"sha256:{h.hexdigest()}"


@dataclass(frozen=True, slots=True)
class _Caps:
    """How much of a list file is read: bytes per file, characters per line."""

    file_size: int
    line: int


def _compile(w: _Walker, root: yaml.Node, base: Path, caps: _Caps) -> Policy | None:
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
            w.err(top["sources"], "sources", f"expected a mapping, got {_describe(top['sources'])}")
    b = _Build(NameIndexBuilder(), [], [], {}, [], {}, {}, {}, w.files, {}, caps, version)
    if "groups" in top and isinstance(top["groups"], yaml.MappingNode):
        for knode, vnode in top["groups"].value:
            g = w.mapping(vnode, f"groups.{knode.value}", GROUP_KEYS)
            if g and "enabled" in g:
                enabled = w.scalar(g["enabled"], f"groups.{knode.value}.enabled", bool, "true or false")
                b.groups[str(knode.value)] = bool(enabled)
            if g and "description" in g:
                w.text(g["description"], f"groups.{knode.value}.description")
    elif "groups" in top:
        w.err(top["groups"], "groups", f"expected a mapping, got {_describe(top['groups'])}")
    settings = _settings(w, b, top["settings"]) if "settings" in top else Settings()
    builtins = _builtins(w, top.get("builtins"), settings)
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
        legal_status=ls,
        name=policy_name,
        subscriptions=tuple(b.subscriptions),
    )


def _tiers(b: _Build) -> dict[str, frozenset[Tier]]:
    """Each app's rule tiers (traffic, download): which phases can block it."""
    out: dict[str, set[Tier]] = {}
    for rule in b.rules:
        if rule.app:
            out.setdefault(rule.app, set()).add(rule.tier)
    return {app: frozenset(t) for app, t in out.items()}


def _settings(w: _Walker, b: _Build, node: yaml.Node) -> Settings:
    top = w.mapping(node, "settings", SETTINGS_KEYS)
    if top is None:
        return Settings()
    dns = _dataclass_from(w, top.get("dns"), "settings.dns", DnsSettings)
    proxy = _dataclass_from(w, top.get("proxy"), "settings.proxy", ProxySettings)
    queue = _dataclass_from(w, top.get("event_queue"), "settings.event_queue", EventQueueSettings)
    for key in ("max_events", "max_bytes"):
        if getattr(queue, key) < 1:
            w.err(top["event_queue"], f"settings.event_queue.{key}", "must be at least 1")
    allow_empty = False
    if "allow_empty" in top:
        allow_empty = bool(w.scalar(top["allow_empty"], "settings.allow_empty", bool, "true or false"))
    max_file_size = b.caps.file_size
    if "max_file_size" in top:
        size = w.scalar(top["max_file_size"], "settings.max_file_size", int, "an integer (bytes)")
        if size is not None and size < 1:
            w.err(top["max_file_size"], "settings.max_file_size", "must be at least 1")
        elif size is not None:
            max_file_size = size
            b.caps = _Caps(size, b.caps.line)
    return Settings(dns=dns, proxy=proxy, event_queue=queue, allow_empty=allow_empty,
                    max_file_size=max_file_size)


def _builtins(w: _Walker, node: yaml.Node | None, settings: Settings) -> Builtins:
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


def _dataclass_from(w: _Walker, node: yaml.Node | None, field: str, cls: type[T]) -> T:
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


def _entry(w: _Walker, node: yaml.Node, field: str, keys: dict[str, bool], main: str
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


def _enabled(w: _Walker, b: _Build, group: str | None, node: yaml.Node, field: str) -> bool:
    if group is None:
        return True
    if group not in b.groups:
        w.err(node, f"{field}.group", f"unknown group '{group}' (declare it under groups:)")
        return False
    return b.groups[group]


def _allow(w: _Walker, b: _Build, node: yaml.Node, base: Path) -> None:
    m = w.mapping(node, "allow", ALLOW_KEYS)
    if m is None:
        return
    for key, kind in (("domains", RuleKind.DOMAIN), ("hosts", RuleKind.HOST)):
        if key not in m:
            continue
        for f, item in w.seq(m[key], f"allow.{key}"):
            raw, source, _group, vnode = _entry(w, item, f, ENTRY_KEYS, "name")
            name = dns_local.domain_name(w, raw, vnode, f) if raw else None
            if name:
                b.names.add(name, b.rule(RuleKind.ALLOW, Tier.ALLOW, None, source),
                            exact=kind is RuleKind.HOST)
                b.count("allow")
    if "lists" in m:
        for f, item in w.seq(m["lists"], "allow.lists"):
            _list(w, b, item, f, base, None, allow=True)


def _app(w: _Walker, b: _Build, node: yaml.Node, field: str, base: Path, seen: dict[str, int]) -> App | None:
    field = _app_field(node, field, seen)
    m = w.mapping(node, field, APP_KEYS if b.version < 2 else APP_KEYS_V2)
    if m is None:
        return None
    app_id = None
    if "id" in m:
        app_id = w.text(m["id"], f"{field}.id")
        if app_id is not None and not _APP_ID.match(app_id):
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
            raw, source, group, vnode = _entry(w, item, f, ENTRY_KEYS, "name")
            nm = dns_local.domain_name(w, raw, vnode, f) if raw else None
            if nm and nm in (_STORE_HOSTS if kind is RuleKind.HOST else _STORE_COVER):
                w.err(vnode, f, _store_cover_message(nm, raw))
            elif nm and _enabled(w, b, group, item, f):
                b.names.add(nm, b.rule(kind, Tier.TRAFFIC, aid, source), exact=kind is RuleKind.HOST)
                b.count(key)
    if "sni" in m:
        for f, item in w.seq(m["sni"], f"{field}.sni"):
            raw, source, group, vnode = _entry(w, item, f, ENTRY_KEYS, "name")
            if not raw:
                continue
            pat = normalize_name(raw)
            problem = validate_glob(pat)
            if problem is None and _glob_covers_store(pat):
                w.err(vnode, f, _store_cover_message(pat, raw).replace("would block the", "would match the"))
            elif problem:
                w.err(vnode, f, f"invalid SNI pattern '{raw}': {problem}")
            elif _enabled(w, b, group, item, f):
                if "*" in pat:
                    b.globs.append((pat, b.rule(RuleKind.SNI, Tier.TRAFFIC, aid, source, pat)))
                else:
                    b.names.add(pat, b.rule(RuleKind.SNI, Tier.TRAFFIC, aid, source), exact=True)
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
                b.networks.append((net, b.rule(RuleKind.NETWORK, Tier.TRAFFIC, aid, source, str(net))))
                b.count("networks")
    if "lists" in m:
        for f, item in w.seq(m["lists"], f"{field}.lists"):
            _list(w, b, item, f, base, aid)
    if not (app_id and name and owner and (legal or b.version >= 2)):
        return None
    b.schedules[app_id] = schedule
    return App(app_id, name, owner, legal, store, override)


def _app_field(node: yaml.Node, field: str, seen: dict[str, int]) -> str:
    """``apps[<id>]`` when the entry has a usable, not yet seen id, else ``apps[<index>]``."""
    if isinstance(node, yaml.MappingNode):
        for knode, vnode in node.value:
            if (isinstance(knode, yaml.ScalarNode) and knode.value == "id"
                    and isinstance(vnode, yaml.ScalarNode) and _APP_ID.match(vnode.value)
                    and vnode.value not in seen):
                return f"apps[{vnode.value}]"
    return field


def _download(w: _Walker, b: _Build, node: yaml.Node, field: str, app: str) -> None:
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
    if not path and bare in (_STORE_COVER if wildcard else _STORE_HOSTS):
        w.err(m["host"], f"{field}.host", _store_cover_message(bare, raw))
        return
    if not _enabled(w, b, group, node, field):
        return
    pattern = host if (wildcard or path) else None
    prefix = path if path and path != "/" else None
    rule = b.rule(RuleKind.DOWNLOAD, Tier.DOWNLOAD, app, source, pattern, prefix)
    b.count("downloads")
    if rule.path:
        if wildcard:
            b.download_path_globs.append((host, rule))
        else:
            b.download_paths.setdefault(host, []).append(rule)
    elif wildcard:
        b.names.add(bare, b.rule(RuleKind.DOWNLOAD, Tier.DOWNLOAD, app, source), exact=False)
    else:
        b.names.add(host, rule, exact=True)


def _store(w: _Walker, b: _Build, node: yaml.Node, field: str, app: str) -> StoreIds:
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
        if not isinstance(val, str) or not _PLAY_PKG.match(val):
            w.err(vnode, f, f"'{vnode.value}' is not a Google Play package name (like com.example.app)")
            continue
        play.append(val)
        b.store.setdefault(("google_play", val), []).append(app)
        b.count("store_ids")
    return StoreIds(tuple(apple), tuple(play))


def _store_items(w: _Walker, m: dict[str, yaml.Node], key: str, field: str
                 ) -> Iterator[tuple[str, yaml.ScalarNode]]:
    """The id nodes of one store: plain scalars, or ``{id: ..., source: ...}`` entries."""
    if key not in m:
        return
    for f, item in w.seq(m[key], f"{field}.{key}"):
        if isinstance(item, yaml.MappingNode):
            vnode = _entry(w, item, f, STORE_ENTRY_KEYS, "id")[3]
            f = f"{f}.id"
        else:
            vnode = item
        if isinstance(vnode, yaml.ScalarNode):
            yield f, vnode
        elif vnode is item and not isinstance(item, yaml.MappingNode):
            w.err(item, f, f"expected a store id, got {_describe(item)}")


def _list(w: _Walker, b: _Build, node: yaml.Node, field: str, base: Path, app: str | None,
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
        raw = _open_regular(path, b.caps.file_size)
    except _Unreadable as exc:
        w.err(node, field, f"list file '{rel}' {exc}" + (" (settings.max_file_size)" if exc.too_big else ""))
        return
    exact = as_ == "hosts"
    if allow:
        rule = b.rule(RuleKind.ALLOW, Tier.ALLOW, None, source or f"list:{rel}")
    else:
        rule = b.rule(RuleKind.HOST if exact else RuleKind.DOMAIN, Tier.TRAFFIC, app, source or f"list:{rel}")
    store_cover: frozenset[str] = frozenset() if allow else (_STORE_HOSTS if exact else _STORE_COVER)
    problems: list[tuple[int, str, str]] = []  # (line, the line, message)
    # Streamed, so a 1,000,000-line file is never held whole as text and as
    # a list of lines (tens of MB of peak RSS).  Universal newlines split on
    # \n, \r\n and \r alone, as editors count lines.
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as fh:
        lines = _capped_lines(fh, b.caps, problems)
        n = b.names.add_many(_list_names(lines, store_cover, problems), rule, exact=exact)
    where = str(path)
    problems.sort(key=lambda p: p[0])  # a cap's problem is found while streaming, after earlier lines'
    for lineno, _line, message in problems[:_MAX_LIST_ISSUES]:
        w.issues.append(PolicyIssue(where, lineno, field, message))
    if len(problems) > _MAX_LIST_ISSUES:
        more = len(problems) - _MAX_LIST_ISSUES
        w.issues.append(PolicyIssue(where, problems[-1][0], field, f"{more} more bad lines like these"))
    b.count("allow" if allow else ("hosts" if exact else "domains"), n)


def list_problems(data: bytes, exact: bool) -> tuple[int, list[tuple[int, str]]]:
    """(names, [(line, message)]) of a list file's bytes, checked as ``_list`` checks a list file
    (the subscription downloader validates a download with it before swapping it in)."""
    problems: list[tuple[int, str, str]] = []
    with io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="replace") as fh:
        lines = _capped_lines(fh, _Caps(len(data) + 1, MAX_LIST_LINE), problems)
        n = sum(1 for _ in _list_names(lines, _STORE_HOSTS if exact else _STORE_COVER, problems))
    return n, [(line, message) for line, _text, message in sorted(problems)]


def _capped_lines(fh: io.TextIOWrapper, caps: _Caps, problems: list[tuple[int, str, str]]) -> Iterator[str]:
    """A list file's lines without their line ends, each at most ``caps.line``
    characters and all together at most ``caps.file_size``: a file that breaks
    a cap (a line with no end, a file still growing) stops with a problem at
    that line, so memory stays bounded whatever the file holds."""
    read = fh.readline
    limit = caps.line + 1  # room for the line end
    total = 0
    for lineno in itertools.count(1):
        line = read(limit)
        if not line:
            return
        total += len(line)
        body = line[:-1] if line.endswith("\n") else line
        if len(body) > caps.line:
            problems.append((lineno, "", f"line is longer than {caps.line} characters"))
            return
        if total > caps.file_size:
            problems.append((lineno, "", f"the file grew past the limit of {caps.file_size} bytes "
                                         "(settings.max_file_size)"))
            return
        yield body


def _list_names(lines: Iterable[str], store_cover: frozenset[str], problems: list[tuple[int, str, str]]
                ) -> Iterator[str]:
    """The names of a list file's lines; bad lines go to ``problems``.

    Nearly every line of a real list is already a bare, lower-case name: one
    regex match accepts it, and only the other lines take the slow path."""
    match = _LIST_NAME.match
    for lineno, raw in enumerate(lines, 1):
        if match(raw) is not None and len(raw) <= 253:
            names: Iterable[str | None] = (raw,)
        else:
            names = _parse_list_line(raw)
        for name in names:
            if name is None:
                line = raw.strip()
                shown = line if len(line) <= 60 else line[:57] + "..."
                problems.append((lineno, line, f"{shown!r} is not a domain name"))
            elif name in store_cover:
                problems.append((lineno, name, _store_cover_message(name)))
            else:
                yield name


def _parse_list_line(raw: str) -> list[str | None]:
    """The slow path of ``_list_names``: comments, hosts-file and adblock
    lines, upper case, IDNs.  ``None`` marks a bad name."""
    line = raw.strip()
    if not line or line[0] == "#" or line[0] == "!":
        return []
    if "#" in line:
        line = line.split("#", 1)[0].strip()
        if not line:
            return []
    match = _LIST_NAME.match
    if " " in line or "\t" in line:
        parts = line.split()
        if parts[0] in _HOSTS_SINKS or is_ip(parts[0]):
            out: list[str | None] = []
            for part in parts[1:]:
                if part.lower() not in _HOSTS_SKIP:
                    name = normalize_name(part)
                    out.append(name if match(name) and len(name) <= 253 else None)
            return out
        return [None]
    if line.startswith("||") and line.endswith("^"):
        line = line[2:-1]
    name = normalize_name(line)
    return [name if match(name) and len(name) <= 253 else None]


def _glob_covers_store(pattern: str) -> bool:
    rx = re.compile(glob_to_regex(pattern))
    return any(rx.fullmatch(h) for h in STORE_HOSTS) if "*" in pattern else pattern in STORE_HOSTS


def _store_cover_message(name: str, raw: str | None = None) -> str:
    if "*" in name:
        rx = re.compile(glob_to_regex(name))
        covered = [h for h in STORE_HOSTS if rx.fullmatch(h)]
    else:
        covered = [h for h in STORE_HOSTS if h == name or h.endswith("." + name)]
    hosts = ", ".join(sorted(covered))
    return (f"'{raw or name}' would block the app-store host {hosts} for every app; "
            "list the app's store ids under store: instead (store pages are judged per app, by URL)")


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


def policy_summary(policy: Policy, at: dt.date | None = None) -> dict[str, Any]:
    """Counts for ``egress-filter check``."""
    return {
        "source": policy.source,
        "mode": policy.mode.value,
        "apps": list(policy.apps),
        "rules": {k: v for k, v in sorted(policy.counts.items()) if k != "apps"},
        "exempt_clients": [str(n) for n in policy.exempt],
        "warnings": policy_warnings(policy, at),
        "name": policy.name,
        "digest": policy.digest,
        "frameworks": list(policy.frameworks),
        "groups": {g: {"networks": [str(n) for n in c.networks], "frameworks": list(c.frameworks),
                       "mode": c.mode.value if c.mode else None,
                       "legal_status": c.legal_status.value if c.legal_status else None}
                   for g, c in policy.clients.items()},
        "legal_status": policy.legal_status.value,
    }

