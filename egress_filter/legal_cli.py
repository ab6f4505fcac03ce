"""``phases`` and ``timeline``: what applied to whom, and when, with the legal record.

Both read a loaded ``Policy`` and print; nothing here decides.  ``phases``
resolves every app for one client group on one day (``Policy.phases``);
``timeline`` lists every dated entry of the frameworks in order: phases
starting, status changes (injunctions, stays, revocations) and list additions,
each with its source.  ``register`` adds both to the ``egress-filter`` parser.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from typing import Any, NamedTuple

from policies import Phase, Policy
from runtime.args import add_legal_args, add_policy_args, group_of, load_or_exit


def cmd_phases(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)
    day = args.at or policy.today()
    group = group_of(policy, args)
    ls = policy.group_legal_status(group, args.legal_status)
    override = Phase(args.phase) if args.phase else None
    phases = policy.phases(day, override, group, args.legal_status)
    nexts = {a: policy.next_change(a, day, override, group, args.legal_status) for a in phases}
    if args.json:
        print(json.dumps({"at": day.isoformat(), "group": group, "legal_status": ls.value, "apps": [
            {"app": a.app, "name": policy.apps[a.app].name, "phase": a.phase.value,
             "since": a.since.isoformat() if a.since else None, "source": a.source,
             "overridden": a.overridden, "frameworks": list(a.frameworks),
             "next": _next_dict(nexts[a.app]),
             "status": [s.as_dict() for s in a.legal]} for a in phases.values()]}, indent=2))
        return 0
    print(f"Phases at {day} for group {group} (legal status: {ls.value.replace('_', ' ')}; "
          "* marks the frameworks that set the phase):")
    width = max(len(policy.apps[a].name) for a in phases) if phases else 4
    for a in phases.values():
        since = a.since.isoformat() if a.since else "-"
        print(f"  {policy.apps[a.app].name:<{width}}  {a.phase.value:<9}  since {since:<10}  {a.source}")
        print(f"  {'':<{width}}  {next_text(nexts[a.app])}")
        for state in a.legal:
            if not policy.frameworks[state.framework].implicit:  # v1: the source line says it all
                mark = "*" if state.framework in a.frameworks else " "
                print(f"  {'':<{width}}  {mark} {state.describe()}")
    return 0


def next_text(change: tuple[dt.date, Phase] | None) -> str:
    """``phases``' line for an app's next scheduled change."""
    return "no further change" if change is None else f"next change: {change[1].value} from {change[0]}"


def _next_dict(change: tuple[dt.date, Phase] | None) -> dict[str, str] | None:
    return None if change is None else {"date": change[0].isoformat(), "phase": change[1].value}


class Entry(NamedTuple):
    """One dated line of the timeline."""

    day: dt.date
    framework: str
    what: str
    apps: tuple[str, ...]
    source: str

    def as_dict(self) -> dict[str, Any]:
        return {"date": self.day.isoformat(), "framework": self.framework, "event": self.what,
                "apps": list(self.apps), "source": self.source}


def timeline(policy: Policy, app: str | None = None, framework: str | None = None) -> list[Entry]:
    """Every dated entry of the frameworks, oldest first; one line per
    (day, framework, event, source) with the apps it names gathered."""
    gathered: dict[tuple[dt.date, str, str, str], list[str]] = {}
    for fw in policy.frameworks.values():
        if framework and fw.id != framework:
            continue
        for app_id, entries in fw.schedules.items():
            if app and app_id != app:
                continue
            for i, e in enumerate(entries):
                what = f"phase {e.phase.value} starts" if i else f"listed; phase {e.phase.value} starts"
                gathered.setdefault((e.start, fw.label, what, e.source), []).append(app_id)
        for st in fw.status:
            if app and st.apps is not None and app not in st.apps:
                continue
            scope = f" ({st.phase.value} phase)" if st.phase else ""
            what = f"{st.status.value.replace('_', ' ')}{scope}" + (f": {st.note}" if st.note else "")
            names = sorted(st.apps) if st.apps is not None else []
            gathered.setdefault((st.start, fw.label, what, st.source), []).extend(names)
    out = [Entry(day, label, what, tuple(sorted(set(apps))), src)
           for (day, label, what, src), apps in gathered.items()]
    return sorted(out, key=lambda e: (e.day, e.framework))


def cmd_timeline(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)
    if args.app and args.app not in policy.apps:
        raise SystemExit(f"egress-filter: unknown app '{args.app}' (apps: {', '.join(policy.apps)})")
    if args.framework and args.framework not in policy.frameworks:
        known = ", ".join(policy.frameworks)
        raise SystemExit(f"egress-filter: unknown framework '{args.framework}' (frameworks: {known})")
    entries = timeline(policy, args.app, args.framework)
    if args.json:
        print(json.dumps({"timeline": [e.as_dict() for e in entries]}, indent=2))
        return 0
    for e in entries:
        names = ", ".join(policy.apps[a].name for a in e.apps)
        print(f"{e.day}  {e.framework}: {e.what}" + (f" [{names}]" if names else ""))
        print(f"            source: {e.source}")
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("phases", help="each app's phase for a client group at a date, the frameworks "
                                      "that produce it and their legal status")
    add_policy_args(p)
    add_legal_args(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_phases)

    p = sub.add_parser("timeline", help="every dated event of the frameworks in order, with its source")
    p.add_argument("--policy", metavar="P", help="policy YAML (default: the bundled policy)")
    p.add_argument("--app", metavar="A", help="only this app's events")
    p.add_argument("--framework", metavar="F", help="only this framework's events")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_timeline)

