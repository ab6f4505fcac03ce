"""What a policy reload changed, said in one line and as one event.

    old view ─┐
              ├─ change() ─▶ Change: apps and rules before -> after, apps added and removed,
    new view ─┘                      and every (group, app) whose effective phase moved
                                         │
                       describe() ─▶ "apps 2 -> 3, rules 40 -> 52; phases moved: WeChat downloads -> full"
                       event()    ─▶ an ECS event (event.action policy-reload) for the event log

Pure but for the clock read of the event's timestamp; the holder
(runtime/holder.py) logs the line and emits the event after every reload,
and the failure event when a reload is refused and the last good policy kept.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from policies import DEFAULT_GROUP, SCHEMA_VERSION, Phase, Policy, PolicyView
from policies.events import ECS_VERSION, utc_iso


@dataclass(frozen=True, slots=True)
class Moved:
    """One app whose effective phase changed, in one client group."""

    group: str
    app: str
    name: str
    before: Phase
    after: Phase


@dataclass(frozen=True, slots=True)
class Change:
    apps: tuple[int, int]  # before, after
    rules: tuple[int, int]
    added: tuple[str, ...]  # app ids
    removed: tuple[str, ...]
    moved: tuple[Moved, ...]
    grouped: bool  # the policy has client groups of its own: each move names its group

    def describe(self) -> str:
        parts = [f"apps {self.apps[0]} -> {self.apps[1]}", f"rules {self.rules[0]} -> {self.rules[1]}"]
        if self.added:
            parts.append(f"added {', '.join(self.added)}")
        if self.removed:
            parts.append(f"removed {', '.join(self.removed)}")
        text = ", ".join(parts)
        return f"{text}; phases moved: {self.moves()}" if self.moved else f"{text}; no phase moved"

    def moves(self) -> str:
        """``WeChat downloads -> full; ...`` (each led by ``group G:`` when the policy has groups)."""
        return "; ".join(f"{'group ' + m.group + ': ' if self.grouped else ''}{m.name} {m.before.value} -> "
                         f"{m.after.value}" for m in self.moved)

    def as_dict(self) -> dict[str, Any]:
        return {"apps": {"before": self.apps[0], "after": self.apps[1]},
                "rules": {"before": self.rules[0], "after": self.rules[1]},
                "added": list(self.added), "removed": list(self.removed),
                "moved": [{"group": m.group, "app": m.app, "before": m.before.value, "after": m.after.value}
                          for m in self.moved]}


def rule_count(policy: Policy) -> int:
    """Every compiled entry (names, hosts, SNI patterns, downloads, store ids, networks, allows)."""
    return sum(n for k, n in policy.counts.items() if k != "apps")


def _own_groups(policy: Policy) -> list[str]:
    """The client groups whose phases are their own (the exempt group follows ``default``)."""
    return [g for g, c in policy.clients.items() if not c.exempt]


def change(old: PolicyView, new: PolicyView) -> Change:
    """What going from ``old`` to ``new`` changed."""
    po, pn = old.policy, new.policy
    moved: list[Moved] = []
    for g in _own_groups(pn):
        before, after = old.groups.get(g), new.groups[g]
        if before is None:
            continue
        for app, ph in after.phases.items():
            was = before.phases.get(app)
            if was is not None and was.phase is not ph.phase:
                moved.append(Moved(g, app, pn.apps[app].name, was.phase, ph.phase))
    added = tuple(a for a in pn.apps if a not in po.apps)
    removed = tuple(a for a in po.apps if a not in pn.apps)
    return Change((len(po.apps), len(pn.apps)), (rule_count(po), rule_count(pn)), added, removed,
                  tuple(moved), _own_groups(pn) != [DEFAULT_GROUP])


def event(component: str, ok: bool, message: str, policy: Policy, detail: dict[str, Any]) -> dict[str, Any]:
    """The ECS event of one reload: ``ok`` with the change, or a failure with the problems;
    ``policy`` is the one in force afterwards (the last good one after a failure)."""
    return {
        "@timestamp": utc_iso(time.time()),
        "ecs": {"version": ECS_VERSION},
        "event": {"kind": "event", "category": ["configuration"], "type": ["change"],
                  "action": "policy-reload" if ok else "policy-reload-failed",
                  "outcome": "success" if ok else "failure", "module": "egress_filter",
                  "dataset": f"egress_filter.{component}", "reason": message},
        "observer": {"product": "egress-filter", "type": component},
        "message": message,
        "egress": {"schema": SCHEMA_VERSION, "component": component,
                   "policy": {"name": policy.name, "digest": policy.digest, "source": policy.source},
                   "reload": detail},
    }
