"""From a compiled ``Policy`` and a moment to a ``Decision`` per observation.

    Policy (policy.py) ─ .view(at, phase, mode) ─▶ PolicyView: every app's phase
        resolved for one moment, one GroupView per client group
    Observation ─▶ PolicyView.decide / decide_name / decide_http / decide_ip
        ─▶ the client's GroupView ─▶ name index, globs, networks, store URLs,
           built-ins ─▶ rules ─▶ Decision (cached per matched rule set)

The view is what the adapters call on their hot paths, and it caches one
``Decision`` per matched rule set, so deciding a name is a few dict probes.
A reload or a new day means a new view: one reference swap for the caller.
The data types (``Policy``, ``Decision``, ``Observation``, ...) live in
policy.py and model.py; this module only decides.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import posixpath
import re
from collections.abc import Iterable
from dataclasses import replace
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .addresses import authority_host, is_ip
from .bounded import BoundedMemo
from .builtins import (
    DOH_PORTS,
    ECH_RULE,
    BuiltinRule,
    EchAction,
    Signal,
    address_rules,
    name_rules,
    signal_rule,
)
from .matching import (
    STORE_HOSTS,
    fast_normalize,
    normalize_name,
    recognize_store_url,
)
from .model import (
    ALLOW,
    DEFAULT_GROUP,
    Action,
    ClientGroup,
    Decision,
    FrameworkState,
    Kind,
    LegalStatus,
    Mode,
    Observation,
    Phase,
    PolicyRef,
    Rule,
    RuleKind,
    Tier,
)

if TYPE_CHECKING:
    from .policy import Policy

_SLASHES = re.compile(r"/{2,}")
_CACHE_MAX = 200_000  # distinct matched keys per view (policies/bounded.py: emptied when full)
# Enum members bound once: on Python 3.11 ``Action.BLOCK`` costs a class
# attribute lookup (~70 ns), which the hot path pays per call otherwise.
_BLOCK, _SNI, _MONITOR = Action.BLOCK, Kind.SNI, Mode.MONITOR
_BLOCKED_END = ", so this is blocked"  # how ``_judge`` ends a block's reason

# What each kind of rule says of the name it matched (``{path}``: a download rule's path).
_WHAT = {
    RuleKind.DOMAIN: "{subject} and its subdomains belong",
    RuleKind.HOST: "the host {subject} belongs",
    RuleKind.SNI: "names matching {subject} belong",
    RuleKind.DOWNLOAD: "the download endpoint {subject}{path} belongs",
    RuleKind.STORE: "the app-store listing {subject} belongs",
    RuleKind.NETWORK: "the network {subject} belongs",
}
# What a rule's tier does in each phase: the phase table of the README.
_ACTION: dict[tuple[Tier, Phase], Action] = {
    (Tier.TRAFFIC, Phase.NONE): Action.ALLOW,
    (Tier.TRAFFIC, Phase.DOWNLOADS): Action.LOG,
    (Tier.TRAFFIC, Phase.FULL): Action.BLOCK,
    (Tier.DOWNLOAD, Phase.NONE): Action.ALLOW,
    (Tier.DOWNLOAD, Phase.DOWNLOADS): Action.BLOCK,
    (Tier.DOWNLOAD, Phase.FULL): Action.BLOCK,
}


def decide(policy: Policy, observation: Observation, at: dt.date | None = None,
           phase: Phase | None = None, mode: Mode | None = None,
           legal_status: LegalStatus | None = None) -> Decision:
    """One-shot decision. Adapters should keep a ``PolicyView`` instead."""
    return policy.view(at, phase, mode, legal_status).decide(observation)


class PolicyView:
    """A policy at one moment: one ``GroupView`` per client group, chosen by
    the client's address.  With no group networks every client is in
    ``default`` and no lookup is made."""

    def __init__(self, policy: Policy, at: dt.date, phase: Phase | None, mode: Mode | None,
                 legal_status: LegalStatus | None = None, paused: str | None = None):
        self.policy = policy
        self.at = at
        self.phase_override = phase
        self.paused = paused
        self.groups = {g: GroupView(policy, policy.clients[g], at, phase, mode, legal_status, paused)
                       for g in policy.clients}
        self.default = self.groups[DEFAULT_GROUP]
        # As asked; each group may monitor on its own.  A pause monitors everywhere.
        self.mode = _MONITOR if paused else mode or policy.mode
        self.legal_status = legal_status
        self.phases = self.default.phases
        self.store_interest = any(v.store_interest for v in self.groups.values())
        self.grouped = len(policy.client_networks) > 0
        self._client_cache: BoundedMemo[str, GroupView] = BoundedMemo(65_536)

    @property
    def fingerprint(self) -> tuple[tuple[str, tuple[tuple[str, Phase], ...]], ...]:
        """Changes exactly when some app's effective phase changes in some group."""
        return tuple((g, v.fingerprint) for g, v in sorted(self.groups.items()))

    def group(self, client: str | None, user: str | None = None) -> GroupView:
        """The view of the client's group (cached per address, bounded); a proxy
        user listed in a group's ``users`` gets that group wherever it connects from."""
        if user and self.policy.client_users:
            gid = self.policy.client_users.get(user)
            if gid is not None:
                return self.groups[gid]
        if not self.grouped or not client:
            return self.default
        v = self._client_cache.get(client)
        if v is None:
            v = self._client_cache.put(client, self.groups[self.policy.group_for(client)])
        return v

    def decide(self, obs: Observation) -> Decision:
        return self.group(obs.client).decide(obs)

    def decide_name(self, name: str, kind: Kind = Kind.DNS, client: str | None = None,
                    user: str | None = None) -> Decision:
        """Hot path: one dict probe picks the client's group (``group`` inlined)."""
        if user:
            return self.group(client, user).decide_name(name, kind, client)
        if client and self.grouped:
            v = self._client_cache.get(client)
            if v is None:
                v = self.group(client)
            return v.decide_name(name, kind, client)
        return self.default.decide_name(name, kind, client)

    def decide_http(self, url: str, host: str | None = None, client: str | None = None,
                    body: bytes | None = None, user: str | None = None) -> Decision:
        return self.group(client, user).decide_http(url, host, client, body)

    def decide_ip(self, address: str, client: str | None = None, port: int | None = None,
                  user: str | None = None) -> Decision:
        return self.group(client, user).decide_ip(address, client, port)

    def decide_builtin(self, signal: Signal, subject: str, client: str | None = None,
                       user: str | None = None) -> Decision:
        return self.group(client, user).decide_builtin(signal, subject, client)

    def with_ech(self, d: Decision, outer_sni: str, client: str | None = None,
                 user: str | None = None) -> Decision:
        return self.group(client, user).with_ech(d, outer_sni, client)


class GroupView:
    """A policy at one moment for one client group: app phases fixed, decisions cached."""

    def __init__(self, policy: Policy, group: ClientGroup, at: dt.date, phase: Phase | None,
                 mode: Mode | None, legal_status: LegalStatus | None = None, paused: str | None = None):
        self.policy = policy
        self.group = group
        self.at = at
        self.phase_override = phase
        self.mode = _MONITOR if paused else mode or group.mode or policy.mode
        self.legal_status = policy.group_legal_status(group.id, legal_status)
        self.phases = policy.phases(at, phase, group.id, legal_status)
        self._phase = {a: p.phase for a, p in self.phases.items()}
        # Store URLs need decrypting only while some app with store ids is enforced.
        self.store_interest = any(
            self._phase[a.id] is not Phase.NONE and (a.store.apple or a.store.google_play)
            for a in policy.apps.values()
        )
        self._inspect_hosts = frozenset(
            host for host, rules in policy.download_paths.items()
            if any(self._phase.get(r.app or "") is not Phase.NONE for r in rules)
        )
        self._inspect_globs = any(self._phase.get(r.app or "") is not Phase.NONE
                                  for r in policy.download_path_globs.rules())
        self._lookup = policy.names.lookup
        self._glob = policy.globs.lookup if len(policy.globs) else None
        self._exact_cache: BoundedMemo[str, Decision] = BoundedMemo(_CACHE_MAX)
        self._suffix_cache: BoundedMemo[str, Decision] = BoundedMemo(_CACHE_MAX)
        self._cache: BoundedMemo[tuple[str | None, int], Decision] = BoundedMemo(_CACHE_MAX)
        self._downgraded: BoundedMemo[tuple[int, str], tuple[Decision, Decision]] = BoundedMemo(100_000)
        self._merged: dict[tuple[Rule, ...], tuple[Rule, ...]] = {}
        # (app, action, apps, opt-in group) -> what the reason says after the rule's own words;
        # bounded by the policy's rules, which the view never outlives.
        self._told: dict[tuple[str, Action, tuple[str, ...], str | None],
                         tuple[str, tuple[str, ...], tuple[FrameworkState, ...]]] = {}
        self._monitor_why = (f"{paused}: would be blocked, logged instead" if paused
                             else f"group {group.id} is in monitor mode: would be blocked, logged instead"
                             if group.mode is _MONITOR else "monitor mode: would be blocked, logged instead")
        self._ref = PolicyRef(policy.name, policy.digest) if policy.digest or policy.name else None
        self._allow = replace(ALLOW, group=group.id, legal_status=self.legal_status, policy=self._ref)
        self._store_inspect = replace(
            self._allow, rule="builtin:store-host",
            reason="app-store host: the URL decides, so it is inspected", inspect=True)
        self._path_inspect = replace(
            self._allow, rule="builtin:download-host",
            reason="shared download host: the URL path decides, so it is inspected", inspect=True)
        # Built-in bypass names and addresses, consulted only where no policy rule matched.
        self._builtin_names = {n: self._builtin(r, n) for n, r in name_rules(policy.builtins).items()}
        self._builtin_addresses = {a: self._builtin(r, a) for a, r in address_rules(policy.builtins).items()}

    @property
    def fingerprint(self) -> tuple[tuple[str, Phase], ...]:
        """Changes exactly when some app's effective phase changes."""
        return tuple(sorted(self._phase.items()))

    # --- entry points -------------------------------------------------------

    def decide(self, obs: Observation) -> Decision:
        kind = obs.kind
        if kind is Kind.DNS or kind is Kind.SNI:
            return self.decide_name(obs.value, kind, obs.client)
        if kind is Kind.HTTP:
            return self.decide_http(obs.value, obs.host, obs.client)
        return self.decide_ip(obs.value, obs.client)

    def decide_name(self, name: str, kind: Kind = Kind.DNS, client: str | None = None) -> Decision:
        """Hot path for DNS names and SNIs."""
        # fast_normalize, inlined: this is the hottest line of the product.
        if name.isascii():
            name = name.lower()
            if not name or name[-1] == "." or len(name.strip()) != len(name):
                name = normalize_name(name)
        else:
            name = normalize_name(name)
        d = self._name(name)
        if d.action is _BLOCK:
            return self._enforce(d, client)
        if kind is _SNI and not d.inspect:
            # A store or shared download host is never blocked for one app's
            # sake; its URL decides, so a TLS adapter must decrypt to see it.
            if self.store_interest and name in STORE_HOSTS:
                return self._store_inspect if d.rule is None else replace(d, inspect=True)
            if name in self._inspect_hosts or (self._inspect_globs and self._path_glob_enforced(name)):
                return self._path_inspect if d.rule is None else replace(d, inspect=True)
        return d

    def decide_http(self, url: str, host: str | None = None, client: str | None = None,
                    body: bytes | None = None) -> Decision:
        """An HTTP request: its host as a name, plus what only the URL shows
        (app-store listings, download paths).  ``host`` is the Host header or
        the proxy's target; without it the URL's authority is used."""
        parts = urlsplit(url)
        name = fast_normalize(authority_host(host) if host else (parts.hostname or ""))
        path = _canonical_path(parts.path)
        if is_ip(name):
            best = self._ip(name)
        else:
            best = self._name(name)
        ref = recognize_store_url(name, url, body)
        if ref is not None:
            best = _stricter(best, self._store(ref.store, ref.app_id))
        rules = self.policy.download_paths.get(name, ())
        globbed = self.policy.download_path_globs.lookup(name)
        if globbed:
            rules = rules + globbed[1]
        hits = [r for r in rules if path.startswith(r.path or "/")]
        if hits:
            best = _stricter(best, self._judge(hits, name))
        return self._enforce(best, client) if best.action is Action.BLOCK else best

    def decide_ip(self, address: str, client: str | None = None, port: int | None = None) -> Decision:
        """A connection that carries no name: the app networks decide, then the
        public resolvers' addresses (on the encrypted-DNS ports, or any port
        when the caller does not know it)."""
        d = self._ip(address)
        if d is self._allow and self._builtin_addresses and (port is None or port in DOH_PORTS):
            if ":" in address:
                try:
                    address = str(ipaddress.ip_address(address))
                except ValueError:
                    return d
            d = self._builtin_addresses.get(address, d)
        return self._enforce(d, client) if d.action is Action.BLOCK else d

    def decide_builtin(self, signal: Signal, subject: str, client: str | None = None) -> Decision:
        """The verdict on what only an adapter can see: a DoH-shaped request
        (blocked as ``builtin:doh``) or an ECH ClientHello (``builtin:ech``, a log)."""
        if signal is Signal.ECH:
            if self.policy.builtins.ech is not EchAction.LOG:
                return self._allow
            return replace(self._allow, action=Action.LOG, rule=ECH_RULE,
                           reason=f"the ClientHello carries Encrypted ClientHello; the outer SNI is "
                                  f"{subject or '-'} and the inner name is hidden")
        rule = signal_rule(self.policy.builtins, signal)
        return self._allow if rule is None else self._enforce(self._builtin(rule, subject), client)

    def with_ech(self, d: Decision, outer_sni: str, client: str | None = None) -> Decision:
        """The verdict on a ClientHello that carries ECH, whose name (the outer SNI) got ``d``:
        ``d`` itself unless it allows and ``builtin:ech`` logs, then that log with ``d``'s apps,
        phase and inspection.  The proxy and replay both call this, so both judge ECH alike."""
        if d.action is not Action.ALLOW:
            return d
        ech = self.decide_builtin(Signal.ECH, outer_sni, client)
        if ech.action is Action.ALLOW:
            return d
        return replace(ech, apps=d.apps, phase=d.phase, inspect=d.inspect)

    # --- internals ----------------------------------------------------------

    def _name(self, name: str) -> Decision:
        found = self._lookup(name)
        if self._glob is not None:
            globbed = self._glob(name)
            if globbed is not None:
                return self._name_and_glob(found, globbed)
        if found is None:
            # No policy rule: only now may a built-in name decide, so names
            # the policy covers never pay for this probe.
            return self._builtin_names.get(name, self._allow)
        key, specificity, rules = found
        # One rule tuple per (table, key) for the policy's life, so the key
        # alone identifies the verdict; odd specificity means the exact table.
        cache = self._exact_cache if specificity & 1 else self._suffix_cache
        d = cache.get(key)
        if d is None:
            d = cache.put(key, self._judge(rules, key))
        return d

    def _name_and_glob(self, found: tuple[str, int, tuple[Rule, ...]] | None,
                       globbed: tuple[int, tuple[Rule, ...]]) -> Decision:
        """The rarer case where an SNI glob matched too: the more specific
        side wins; at equal specificity both are judged together."""
        if found is None or globbed[0] > found[1]:
            key, rules = None, globbed[1]  # glob rules cite their own pattern
        elif globbed[0] < found[1]:
            key, rules = found[0], found[2]
        else:
            merged = found[2] + globbed[1]
            key, rules = found[0], self._merged.setdefault(merged, merged)
        cache_key = (key, id(rules))  # rules are interned: ids are stable
        d = self._cache.get(cache_key)
        if d is None:
            d = self._cache.put(cache_key, self._judge(rules, key))
        return d

    def _path_glob_enforced(self, name: str) -> bool:
        """Whether a ``*.host`` download rule with a path covers ``name`` for an enforced app."""
        hit = self.policy.download_path_globs.lookup(name)
        return hit is not None and any(self._phase.get(r.app or "") is not Phase.NONE for r in hit[1])

    def _ip(self, address: str) -> Decision:
        hit = self.policy.networks.lookup(address)
        return self._allow if hit is None else self._judge(hit[1], hit[0])

    def _store(self, store: str, app_id: str) -> Decision:
        apps = self.policy.store_index.get((store, app_id))
        if not apps:
            return self._allow
        rules = [Rule(RuleKind.STORE, Tier.DOWNLOAD, a, pattern=f"{store}:{app_id}") for a in apps]
        return self._judge(rules, None)

    def _judge(self, rules: Iterable[Rule], key: str | None) -> Decision:
        """The strictest verdict over rules that matched at equal specificity;
        ``key`` is the name or network they were filed under."""
        rules = list(rules)
        allows = [r for r in rules if r.tier is Tier.ALLOW]
        if allows:
            return Decision(Action.ALLOW, rule=allows[0].cite(key),
                            reason=f"{allows[0].pattern or key} is on the allow list", group=self.group.id,
                            legal_status=self.legal_status, policy=self._ref)
        best: tuple[Action, Rule] | None = None
        apps: list[str] = []
        for rule in rules:
            app_id = rule.app or ""
            if app_id not in apps:
                apps.append(app_id)
            action = _ACTION[(rule.tier, self._phase.get(app_id, Phase.NONE))]
            # At equal severity a rule of the policy's own wins over an opt-in group's:
            # the group decided only when nothing else would have.
            if (best is None or action.severity > best[0].severity
                    or (action.severity == best[0].severity and best[1].list_group and not rule.list_group)):
                best = (action, rule)
        assert best is not None
        action, rule = best
        app_id = rule.app or ""
        apps.sort(key=lambda a: (a != app_id, a))
        subject = rule.pattern or key or ""
        what = _WHAT.get(rule.kind, "{subject} belongs").format(subject=subject, path=rule.path or "")
        told_key = (app_id, action, tuple(apps), rule.list_group)
        told = self._told.get(told_key)
        if told is None:
            told = self._told[told_key] = self._tell(app_id, action, apps, rule.list_group)
        tail, names, legal = told
        ph = self.phases[app_id]
        return Decision(action, tuple(apps), ph.phase, rule.cite(key), what + tail, group=self.group.id,
                        app_names=names, frameworks=ph.frameworks, legal=legal,
                        legal_status=self.legal_status, policy=self._ref, list_group=rule.list_group)

    def _tell(self, app_id: str, action: Action, apps: list[str], list_group: str | None
              ) -> tuple[str, tuple[str, ...], tuple[FrameworkState, ...]]:
        """What a verdict of ``action`` for ``app_id`` says after its rule's own words, its
        apps' names and its legal record: the same for every name the app's rules match, so
        made once per view (a first-time block's decision was a fifth of its cost)."""
        app = self.policy.apps[app_id]
        ph = self.phases[app.id]
        since = f" since {ph.since}" if ph.since else ""
        verb = {Action.BLOCK: "blocked", Action.LOG: "logged", Action.ALLOW: "allowed"}[action]
        names = tuple(self.policy.apps[a].name for a in apps)
        others = f" (also claimed by {', '.join(names[1:])})" if names[1:] else ""
        if list_group:
            others = f" through the opt-in group {list_group}{others}"
        by = ""
        labels = [fw.label for f in ph.frameworks if not (fw := self.policy.frameworks[f]).implicit]
        if labels:
            by = f" under {', '.join(labels)}"
        plain = self.group.id == DEFAULT_GROUP or self.group.exempt
        group = "" if plain else f" for group {self.group.id}"
        tail = (f" to {app.name}{others}; {app.name} is in phase "
                f"'{ph.phase}'{since}{by}{group} ({ph.source}), so this is {verb}")
        legal = tuple(st for st in ph.legal if st.framework in ph.frameworks) or ph.legal
        return tail, names, legal

    def _builtin(self, rule: BuiltinRule, subject: str) -> Decision:
        return replace(self._allow, action=Action.BLOCK, rule=rule.rule, reason=rule.reason.format(subject))

    def _enforce(self, d: Decision, client: str | None) -> Decision:
        """Monitor mode, a monitoring group and exempt clients turn a block into a log."""
        if self.group.exempt:
            return self._downgrade(d, f"client {client} is exempt: would be blocked, logged instead")
        if self.mode is _MONITOR:
            return self._downgrade(d, self._monitor_why)
        return d

    def _downgrade(self, d: Decision, why: str) -> Decision:
        # Keyed by identity for speed; the entry keeps ``d`` alive and is
        # checked against it, so a recycled id can never return a stale verdict.
        key = (id(d), why)
        hit = self._downgraded.get(key)
        if hit is not None and hit[0] is d:
            return hit[1]
        # The verdict's own ending ("so this is blocked") is not what happens here.
        out = replace(d, action=Action.LOG, enforced=d.action,
                      reason=f"{why}; {d.reason.removesuffix(_BLOCKED_END)}")
        self._downgraded.put(key, (d, out))
        return out


def _canonical_path(path: str) -> str:
    """The path a server will serve, so that ``//tiktok/``, ``/a/../tiktok/``
    or ``/%74iktok/`` cannot slip past a download rule for ``/tiktok/``."""
    if not path:
        return "/"
    if "%" not in path and "//" not in path and "/." not in path:
        return path
    clean = posixpath.normpath("/" + _SLASHES.sub("/", unquote(path)).lstrip("/"))
    if path.endswith("/") and clean != "/":
        clean += "/"
    return clean


def _stricter(a: Decision, b: Decision) -> Decision:
    """The stricter verdict; at equal action the one that names a rule, so
    that an allowed store listing still says whose it is."""
    sa, sb = a.action.severity, b.action.severity
    return b if sb > sa or (sb == sa and a.rule is None and b.rule is not None) else a
