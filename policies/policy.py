"""The compiled policy: what the loader builds once and every adapter decides against.

    loader (compiler.py) ─▶ Policy: apps, name index, glob and network matchers,
        download paths, store ids, settings, built-ins, frameworks, client groups
    Policy.phases(at, ...) ─▶ each app's phase for a group on a day (legal.py)
    Policy.next_change(app, at, ...) ─▶ the next scheduled change of an app's phase
    Policy.view(at, ..., paused) ─▶ PolicyView (decide.py), the object the hot paths call

Immutable: a reload builds a new ``Policy``.  It sits above model.py (the
plain values every module imports) because it holds the matchers and makes
views; decide.py only names it for type checking, so there is no import cycle.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from .builtins import Builtins
from .decide import PolicyView
from .legal import app_phase, next_change
from .matching import GlobMatcher, NameIndex, NetworkMatcher
from .model import (
    DEFAULT_GROUP,
    App,
    AppPhase,
    ClientGroup,
    Framework,
    LegalStatus,
    Mode,
    Network,
    Phase,
    Rule,
    Settings,
    Subscription,
    Tier,
)


@dataclass(frozen=True)
class Policy:
    """A validated, compiled policy. Immutable: reloading builds a new one."""

    apps: Mapping[str, App]
    names: NameIndex
    globs: GlobMatcher
    networks: NetworkMatcher[Rule]
    download_paths: Mapping[str, tuple[Rule, ...]]  # exact host -> path-prefixed download rules
    download_path_globs: GlobMatcher  # '*.host' download rules with a path prefix
    store_index: Mapping[tuple[str, str], tuple[str, ...]]  # (store, id) -> app ids
    exempt: tuple[Network, ...] = ()
    mode: Mode = Mode.ENFORCE
    timezone: str = "UTC"
    settings: Settings = field(default_factory=Settings)
    source: str | None = None
    files: tuple[str, ...] = ()  # the YAML and every list file, for reload-on-change
    counts: Mapping[str, int] = field(default_factory=dict)
    tiers: Mapping[str, frozenset[Tier]] = field(default_factory=dict)  # each app's rule tiers
    frameworks: Mapping[str, Framework] = field(default_factory=dict)
    # Always holds DEFAULT_GROUP (and EXEMPT_GROUP when exempt_clients is set).
    clients: Mapping[str, ClientGroup] = field(
        default_factory=lambda: {DEFAULT_GROUP: ClientGroup(DEFAULT_GROUP, (), ())})
    client_networks: NetworkMatcher[str] = field(default_factory=lambda: NetworkMatcher(()))
    client_users: Mapping[str, str] = field(default_factory=dict)  # proxy user name -> group id
    legal_status: LegalStatus = LegalStatus.AS_ORDERED
    name: str | None = None
    digest: str | None = None  # sha256 over the policy file and its list files
    builtins: Builtins = field(default_factory=Builtins)
    subscriptions: tuple[Subscription, ...] = ()  # lists: entries with a url (policies/subscriptions.py)

    def today(self, now: dt.datetime | None = None) -> dt.date:
        """The date the schedules are read at, in the policy's time zone."""
        now = now or dt.datetime.now(dt.UTC)
        return now.astimezone(ZoneInfo(self.timezone)).date()

    def group_for(self, client: str | None, user: str | None = None) -> str:
        """The client's group: the group that lists its authenticated proxy ``user``,
        else its most specific matching network, else ``default``."""
        if user and user in self.client_users:
            return self.client_users[user]
        if not client or not len(self.client_networks):
            return DEFAULT_GROUP
        hit = self.client_networks.lookup(client)
        return hit[1][0] if hit is not None else DEFAULT_GROUP

    def group_frameworks(self, group: str) -> tuple[Framework, ...]:
        return tuple(self.frameworks[f] for f in self.clients[group].frameworks)

    def group_legal_status(self, group: str, legal_status: LegalStatus | None = None) -> LegalStatus:
        """A setting given by the caller (the command line) wins over the group's and the policy's."""
        return legal_status or self.clients[group].legal_status or self.legal_status

    def as_ordered_frameworks(self, legal_status: LegalStatus | None = None) -> tuple[Framework, ...]:
        """The frameworks that bind some group whose setting (``legal_status``
        from the caller, else the group's, else the policy's) is ``as_ordered``."""
        ids = {f for g, c in self.clients.items()
               if self.group_legal_status(g, legal_status) is LegalStatus.AS_ORDERED for f in c.frameworks}
        return tuple(fw for f, fw in self.frameworks.items() if f in ids)

    def phases(self, at: dt.date | None = None, phase: Phase | None = None, group: str = DEFAULT_GROUP,
               legal_status: LegalStatus | None = None) -> dict[str, AppPhase]:
        """Each app's phase for ``group`` on ``at``, with the frameworks and their record."""
        day = at or self.today()
        frameworks = self.group_frameworks(group)
        ls = self.group_legal_status(group, legal_status)
        out: dict[str, AppPhase] = {}
        for app in self.apps.values():
            if phase is not None:
                out[app.id] = app_phase(app.id, frameworks, day, ls, group, phase, "override (--phase)")
            elif app.phase_override is not None:
                out[app.id] = app_phase(app.id, frameworks, day, ls, group, app.phase_override,
                                        "override (policy phase:)")
            else:
                out[app.id] = app_phase(app.id, frameworks, day, ls, group)
        return out

    def next_change(self, app: str, at: dt.date | None = None, phase: Phase | None = None,
                    group: str = DEFAULT_GROUP, legal_status: LegalStatus | None = None
                    ) -> tuple[dt.date, Phase] | None:
        """The next scheduled change of ``app``'s phase for ``group`` after ``at``: (day, phase),
        or None when none is scheduled or an override (``phase``, the app's ``phase:``) holds it."""
        if phase is not None or self.apps[app].phase_override is not None:
            return None
        return next_change(app, self.group_frameworks(group), at or self.today(),
                           self.group_legal_status(group, legal_status), group)

    def view(self, at: dt.date | None = None, phase: Phase | None = None,
             mode: Mode | None = None, legal_status: LegalStatus | None = None,
             paused: str | None = None) -> PolicyView:
        """``paused``: enforcement is paused (``egress-filter pause``); every group
        monitors, and this text (who paused it, until when) leads each downgraded reason."""
        return PolicyView(self, at or self.today(), phase, mode, legal_status, paused)
