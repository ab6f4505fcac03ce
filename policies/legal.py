"""Which phase each app is in, for one client group, on one day, and why.

Frameworks (orders, statutes, clauses, state or company rules) each schedule
phases per app and keep a status history.  For a group the loader resolved,
``app_phase`` asks every framework that binds the group what it orders for the
app on the day, keeps what counts under the group's legal-status setting, and
takes the strictest:

* ``as_ordered``: a framework's scheduled phase counts whatever its status;
* ``in_force``: the scheduled phase counts only while the status history says
  ``in_force`` for that app and phase; an injunction scoped to one phase drops
  only that phase, so the strictest lower phase still in force counts instead.

Either way each framework's status on the day is reported, with its source.
Pure: values in, values out.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable

from .model import (
    PHASES_DOWN,
    AppPhase,
    Framework,
    FrameworkState,
    LegalStatus,
    Phase,
    ScheduleEntry,
    Status,
)


def framework_state(fw: Framework, app: str, day: dt.date,
                    legal_status: LegalStatus) -> FrameworkState | None:
    """What ``fw`` says of ``app`` on ``day``; None when it schedules nothing for the app yet."""
    entry = fw.scheduled(app, day)
    if entry is None:
        return None
    ordered = entry.phase
    record = fw.status_on(day, app, ordered)
    status = record.status if record is not None else Status.IN_FORCE
    effective = ordered
    if legal_status is LegalStatus.IN_FORCE:
        effective = Phase.NONE
        for candidate in PHASES_DOWN:
            if candidate.rank > ordered.rank or candidate is Phase.NONE:
                continue
            held = fw.status_on(day, app, candidate)
            if held is None or held.status is Status.IN_FORCE:
                effective = candidate
                break
    if record is not None:
        since: dt.date | None = record.start
        source = record.source
    else:
        since, source = entry.start, entry.source
    title, citation = fw.record(app)
    return FrameworkState(fw.id, fw.label, title, ordered, effective, status, since, source,
                          citation or entry.source)


def app_phase(app: str, frameworks: Iterable[Framework], day: dt.date, legal_status: LegalStatus,
              group: str, override: Phase | None = None, override_source: str = "") -> AppPhase:
    """The strictest phase over ``frameworks`` for ``app`` on ``day``."""
    states: list[FrameworkState] = []
    entries: dict[str, ScheduleEntry] = {}
    best = Phase.NONE
    since: dt.date | None = None
    source = "no framework of this group schedules the app"
    for fw in frameworks:
        if app in fw.schedules:
            source = "before the schedule starts"
        state = framework_state(fw, app, day, legal_status)
        if state is None:
            continue
        states.append(state)
        entry = fw.scheduled(app, day)
        if entry is not None:
            entries[fw.id] = entry
        if state.effective.rank > best.rank:
            best = state.effective
    producing = tuple(s.framework for s in states if s.effective is best and best is not Phase.NONE)
    if producing:
        first = next(s for s in states if s.framework == producing[0])
        entry = entries.get(first.framework)
        if entry is not None and entry.phase is best:
            since, source = entry.start, entry.source
        else:  # a lower phase still in force after an injunction of the scheduled one
            since, source = first.since, first.describe()
    elif states:
        source = "; ".join(s.describe() for s in states)
        since = max((s.since for s in states if s.since), default=None)
    if override is not None:
        return AppPhase(app, override, None, override_source, True, producing, tuple(states), group)
    return AppPhase(app, best, since, source, False, producing, tuple(states), group)


def next_change(app: str, frameworks: Iterable[Framework], day: dt.date, legal_status: LegalStatus,
                group: str) -> tuple[dt.date, Phase] | None:
    """The first day after ``day`` on which ``app``'s phase for ``group`` differs from its
    phase on ``day``, and that phase; None when no dated entry (a schedule step or a status
    change) of the group's frameworks would change it.  At most one ``app_phase`` per dated
    entry, so the cost is bounded by the policy's own size."""
    frameworks = tuple(frameworks)
    days: set[dt.date] = set()
    for fw in frameworks:
        days.update(e.start for e in fw.schedules.get(app, ()) if e.start > day)
        if app in fw.schedules:
            days.update(st.start for st in fw.status
                        if st.start > day and (st.apps is None or app in st.apps))
    now = app_phase(app, frameworks, day, legal_status, group).phase
    for when in sorted(days):
        then = app_phase(app, frameworks, when, legal_status, group).phase
        if then is not now:
            return when, then
    return None


def not_in_force(frameworks: Iterable[Framework], day: dt.date) -> list[tuple[Framework, FrameworkState]]:
    """Frameworks whose status on ``day`` is not ``in_force`` for some app they
    schedule: what ``dns``/``proxy``/``run`` warn about when enforcing as ordered."""
    out: list[tuple[Framework, FrameworkState]] = []
    for fw in frameworks:
        for app in fw.schedules:
            state = framework_state(fw, app, day, LegalStatus.AS_ORDERED)
            if state is not None and state.status is not Status.IN_FORCE:
                out.append((fw, state))
                break
    return out


# What ``--legal-status in-force`` would follow, per status that is not in force.
_FOLLOWS = {Status.ENJOINED: "the courts", Status.STAYED: "the courts", Status.REVOKED: "the revocation",
            Status.EXPIRED: "the expiry"}
_VERB = {Status.ENJOINED: "was enjoined on", Status.STAYED: "was stayed on", Status.REVOKED: "was revoked on",
         Status.EXPIRED: "expired on"}
_SOURCE_ID = re.compile(r"\s*\[[^\]]*\]$")  # the trailing ``[source-id]`` of a cited source


def as_ordered_notices(frameworks: Iterable[Framework], day: dt.date) -> list[str]:
    """One line per framework enforced as ordered whose status on ``day`` is
    not ``in_force``, e.g. "EO 13942 was revoked on 2021-06-09 (EO 14034 ...);
    enforcing as ordered; --legal-status in-force follows the courts and the
    revocation".  The caller passes only the frameworks of groups whose
    setting is ``as_ordered``."""
    out = []
    for fw, state in not_in_force(frameworks, day):
        since = f" {state.since}" if state.since else ""
        source = _SOURCE_ID.sub("", state.source)
        seen = [st.status for st in fw.status if st.start <= day and st.status is not Status.IN_FORCE]
        follows = list(dict.fromkeys(_FOLLOWS[st] for st in seen if st in _FOLLOWS))
        follows = follows or [_FOLLOWS.get(state.status, "its status history")]
        out.append(f"{fw.label} {_VERB.get(state.status, 'is ' + state.status.value + ' since')}{since}"
                   f"{f' ({source})' if source else ''}; enforcing as ordered; "
                   f"--legal-status in-force follows {' and '.join(follows)}")
    return out
