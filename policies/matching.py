"""Name normalisation and the matchers a compiled policy is made of.

Names are normalised once (``normalize_name``) and then looked up label by
label, most specific first, in a plain ``dict`` keyed by the normalised name:
a 1,000,000-entry list costs one dict probe per label of the query, not a scan.
SNI globs and CIDRs are rarer and get their own small matchers.  App-store
recognisers pull the app id out of a store URL.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from .model import Network, Rule

V = TypeVar("V")

_LABEL_OK = re.compile(r"^[a-z0-9_*-]{1,63}$")


_IDNA_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def normalize_name(name: str) -> str:
    """Lower-case, strip white space and the trailing dot, IDNA-encode.

    Lenient by design: a name that is not valid IDNA is still lower-cased and
    matched, because traffic is judged as it is, not as it should be.  The
    ideographic full stops IDNA treats as dots are dots here too.  The result
    normalises to itself: IDNA can drop characters (U+00AD) and bare white
    space or a dot, and trimming can make a label encodable, so the steps
    repeat until nothing changes (at most a few rounds: each one shortens the
    name or makes it ASCII).
    """
    for _ in range(8):
        out = _normalize_once(name)
        if out == name:
            break
        name = out
    return name


def _normalize_once(name: str) -> str:
    name = _trim(name.lower())
    if not name.isascii():
        labels = []
        for label in name.translate(_IDNA_DOTS).split("."):
            if not label.isascii():
                try:
                    label = label.encode("idna").decode("ascii")
                except UnicodeError:
                    pass
            labels.append(label)
        name = _trim(".".join(labels))
    return name


def _trim(name: str) -> str:
    """White space at both ends, and trailing dots among it ("a. ." is "a")."""
    name = name.strip()
    end = len(name)
    while end and (name[end - 1] == "." or name[end - 1].isspace()):
        end -= 1
    return name[:end]


def fast_normalize(name: str) -> str:
    """``normalize_name`` with a shortcut for ASCII names (nearly all on the wire)."""
    if name.isascii():
        low = name.lower()
        if low and low[-1] != "." and len(low.strip()) == len(low):
            return low
    return normalize_name(name)


def is_valid_name(name: str) -> bool:
    """A policy entry must be a syntactically sound name (after normalisation)."""
    if not name or len(name) > 253:
        return False
    return all(_LABEL_OK.match(label) for label in name.split("."))


def suffixes(name: str) -> Iterator[str]:
    """``a.b.c`` → ``a.b.c``, ``b.c``, ``c``: the label-boundary candidates."""
    yield name
    start = name.find(".")
    while start != -1:
        yield name[start + 1 :]
        start = name.find(".", start + 1)


class NameIndex:
    """Label-suffix index: the most specific matching name wins.

    Keys are normalised names; values are interned tuples of rules, so a list
    of a million names holding the same rule costs one tuple, not a million.
    ``exact`` rules apply to the key itself only; ``suffix`` rules to the key
    and every name below it.  Specificity is ``2 * labels`` (+1 for an exact
    hit).  A host rule and a domain rule on the queried name itself are equally
    specific (both name it exactly), so ``build`` files their union under the
    exact key: the decision sees them together, and an allow among them wins.
    """

    __slots__ = ("_exact", "_suffix", "_top_level")

    def __init__(self, suffix: dict[str, tuple[Rule, ...]], exact: dict[str, tuple[Rule, ...]]):
        self._suffix = suffix
        self._exact = exact
        # Whether any suffix key is a bare top-level label ("cn"): when none
        # is, the last probe of every lookup (the TLD) can be skipped.
        self._top_level = any("." not in key for key in suffix)

    def __len__(self) -> int:
        return len(self._suffix) + len(self._exact)

    def lookup(self, name: str) -> tuple[str, int, tuple[Rule, ...]] | None:
        """(matched key, specificity, rules) of the most specific match, or None."""
        exact = self._exact.get(name)
        if exact is not None:
            return name, 2 * name.count(".") + 3, exact
        suffix = self._suffix
        rules = suffix.get(name)
        if rules is not None:
            return name, 2 * name.count(".") + 2, rules
        stop = -1 if self._top_level else name.rfind(".")
        start = name.find(".")
        while start != stop:
            key = name[start + 1 :]
            rules = suffix.get(key)
            if rules is not None:
                return key, 2 * key.count(".") + 2, rules
            start = name.find(".", start + 1)
        return None

    def entries(self) -> Iterator[tuple[str, tuple[Rule, ...] | None, tuple[Rule, ...] | None]]:
        """Every key once, as (key, suffix rules, exact rules), in insertion
        order: what an export walks.  Either side may be None."""
        exact = self._exact
        for key, rules in self._suffix.items():
            yield key, rules, exact.get(key)
        suffix = self._suffix
        for key, rules in exact.items():
            if key not in suffix:
                yield key, None, rules

    def covering(self, name: str) -> tuple[str, tuple[Rule, ...]] | None:
        """The most specific suffix entry at ``name`` or above it, ignoring exact
        entries: what a name's subdomains fall back to without its own entry."""
        suffix = self._suffix
        rules = suffix.get(name)
        if rules is not None:
            return name, rules
        start = name.find(".")
        while start != -1:  # suffixes(), inlined: an export calls this once per entry
            key = name[start + 1 :]
            rules = suffix.get(key)
            if rules is not None:
                return key, rules
            start = name.find(".", start + 1)
        return None


class NameIndexBuilder:
    """Collects (name, rule) pairs; ``build`` interns the rule tuples."""

    def __init__(self) -> None:
        self._suffix: dict[str, tuple[Rule, ...]] = {}
        self._exact: dict[str, tuple[Rule, ...]] = {}
        self._interned: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}

    def add(self, name: str, rule: Rule, *, exact: bool) -> None:
        table = self._exact if exact else self._suffix
        old = table.get(name)
        if old is None:
            key: tuple[Rule, ...] = (rule,)
        elif rule in old:
            return
        else:
            key = (*old, rule)
        table[name] = self._interned.setdefault(key, key)

    def add_many(self, names: Iterable[str], rule: Rule, *, exact: bool) -> int:
        """``add`` for a whole list file: one dict operation per new name."""
        table = self._exact if exact else self._suffix
        single: tuple[Rule, ...] = (rule,)
        single = self._interned.setdefault(single, single)
        setdefault = table.setdefault
        n = 0
        for name in names:
            n += 1
            old = setdefault(name, single)
            if old is not single and rule not in old:
                merged = (*old, rule)
                table[name] = self._interned.setdefault(merged, merged)
        return n

    def build(self) -> NameIndex:
        interned = self._interned
        exact = self._exact
        for name, rules in exact.items():
            below = self._suffix.get(name)
            if below:
                merged = rules + tuple(r for r in below if r not in rules)
                exact[name] = interned.setdefault(merged, merged)
        return NameIndex(self._suffix, exact)


def glob_to_regex(pattern: str) -> str:
    """``*`` matches within one label; a leading ``*.`` needs at least one label."""
    parts = []
    for label in pattern.split("."):
        if label == "*":
            parts.append(r"[^.]+")
        else:
            parts.append(r"[^.]*".join(re.escape(p) for p in label.split("*")))
    return r"\.".join(parts)


def validate_glob(pattern: str) -> str | None:
    """Return an error message, or None when the glob is usable."""
    if "**" in pattern:
        return "'**' is not allowed; '*' matches within one label"
    if any(c in pattern for c in "?[]{}\\/ "):
        return "only '*' is a wildcard; '?', brackets, braces, slashes and spaces are not allowed"
    labels = pattern.split(".")
    if len(labels) < 2:
        return "a pattern needs at least two labels"
    if not is_valid_name(pattern):
        return "labels may hold only letters, digits, '-', '_' and '*'"
    if all("*" in label for label in labels):
        return "at least one label must be literal"
    if "*" in labels[-1]:
        return "the top-level label must be literal"
    return None


class GlobMatcher:
    """SNI glob patterns, checked with one combined regex first so that the
    common case (no glob matches) costs a single ``fullmatch``."""

    __slots__ = ("_any", "_globs", "_interned")

    def __init__(self, globs: Iterable[tuple[str, Rule]]):
        items = list(globs)
        self._interned: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}
        self._globs = [(re.compile(glob_to_regex(p)), 2 * p.count(".") + 2, r) for p, r in items]
        self._any = re.compile("|".join(f"(?:{glob_to_regex(p)})" for p, _ in items)) if items else None

    def __len__(self) -> int:
        return len(self._globs)

    def rules(self) -> tuple[Rule, ...]:
        return tuple(rule for _, _, rule in self._globs)

    def lookup(self, name: str) -> tuple[int, tuple[Rule, ...]] | None:
        """Most specific matching glob(s): (specificity, rules) or None."""
        if self._any is None or self._any.fullmatch(name) is None:
            return None
        best = 0
        rules: list[Rule] = []
        for rx, labels, rule in self._globs:
            if rx.fullmatch(name):
                if labels > best:
                    best, rules = labels, [rule]
                elif labels == best:
                    rules.append(rule)
        found = tuple(rules)
        # Interned, so that callers may cache verdicts by the tuple's identity.
        return best, self._interned.setdefault(found, found)


class NetworkMatcher(Generic[V]):
    """Longest-prefix match over CIDRs: one dict probe per distinct prefix length.
    Values are app rules for destinations, or client groups for sources."""

    __slots__ = ("_tables",)

    def __init__(self, networks: Iterable[tuple[Network, V]]):
        tables: dict[tuple[int, int], dict[int, list[V]]] = {}
        for net, rule in networks:
            key = (net.version, net.prefixlen)
            tables.setdefault(key, {}).setdefault(int(net.network_address), []).append(rule)
        # longest prefix first
        self._tables = sorted(
            ((v, plen, {k: tuple(r) for k, r in t.items()}) for (v, plen), t in tables.items()),
            key=lambda item: -item[1],
        )

    def __len__(self) -> int:
        return sum(len(t) for _, _, t in self._tables)

    def entries(self) -> Iterator[tuple[str, tuple[V, ...]]]:
        """Every (CIDR, values), longest prefix first."""
        for version, plen, table in self._tables:
            make = ipaddress.IPv4Address if version == 4 else ipaddress.IPv6Address
            for net, values in table.items():
                yield f"{make(net)}/{plen}", values

    def lookup(self, address: str) -> tuple[str, tuple[V, ...]] | None:
        try:
            ip = ipaddress.ip_address(address.strip().strip("[]"))
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value, bits = int(ip), ip.max_prefixlen
        for version, plen, table in self._tables:
            if version != ip.version:
                continue
            masked = value & (((1 << plen) - 1) << (bits - plen)) if plen else 0
            rules = table.get(masked)
            if rules:
                return f"{ipaddress.ip_address(masked)}/{plen}", rules
        return None


# --- App stores -------------------------------------------------------------

APPLE_STORE_HOSTS = frozenset({"apps.apple.com", "itunes.apple.com"})
PLAY_STORE_HOSTS = frozenset({"play.google.com", "android.clients.google.com", "market.android.com"})
STORE_HOSTS = APPLE_STORE_HOSTS | PLAY_STORE_HOSTS

_APPLE_ID = re.compile(r"/id(\d{5,12})(?:[/?#]|$)")
_PLAY_FDFE = ("/fdfe/details", "/fdfe/delivery", "/fdfe/purchase", "/fdfe/acquire")


@dataclass(frozen=True, slots=True)
class StoreRef:
    """An app identified in a store URL: ``store`` is ``apple`` or ``google_play``."""

    store: str
    app_id: str


def recognize_store_url(host: str, url: str, body: bytes | None = None) -> StoreRef | None:
    """Find the app a store URL is about, or None for any other URL.

    Apple: ``apps.apple.com/<cc>/app/<slug>/id<N>``, ``itunes.apple.com/...id<N>``,
    ``itunes.apple.com/lookup?id=<N>`` (any numeric ``id=`` on an Apple store host).  Google Play:
    ``play.google.com/store/apps/details?id=<pkg>`` and the Play client's
    ``android.clients.google.com/fdfe/details|delivery|purchase?doc=<pkg>``
    (``doc`` may also sit in a form body).
    """
    if host not in STORE_HOSTS:
        return None
    parts = urlsplit(url)
    path = parts.path
    query = parse_qs(parts.query)
    if host in APPLE_STORE_HOSTS:
        m = _APPLE_ID.search(path)
        if m:
            return StoreRef("apple", m.group(1))
        # lookup?id=N, the old WebObjects viewSoftware?id=N, and the like: an
        # id that is no app's harms nothing, the store index decides.
        if query.get("id"):
            first = query["id"][0].split(",")[0]
            if first.isdigit():
                return StoreRef("apple", first)
        return None
    if host == "play.google.com" or host == "market.android.com":
        if path.rstrip("/") in ("/store/apps/details", "/details") and query.get("id"):
            return StoreRef("google_play", query["id"][0])
        return None
    if path.startswith(_PLAY_FDFE):
        doc = query.get("doc")
        if not doc and body:
            try:
                doc = parse_qs(body.decode("ascii", "replace")).get("doc")
            except ValueError:
                doc = None
        if doc:
            return StoreRef("google_play", doc[0])
    return None
