"""One target judged as `egress-filter explain` judges it: a target in, a decision and its JSON out.

``decide_target`` guesses the observation's kind (unless given), builds the
view at the asked date, phase, mode and legal status, and asks the client's
group; ``explain_dict`` is the ``--json`` document.  The CLI and the
dashboard's Explain page both call these, so they give the same answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from policies import Decision, Kind, Mode, Observation, Phase, Policy, PolicyView
from policies.addresses import is_ip
from runtime.args import group_of


def guess_kind(value: str) -> Kind:
    if "://" in value or "/" in value:
        return Kind.HTTP
    return Kind.IP if is_ip(value.strip("[]")) else Kind.DNS


def decide_target(policy: Policy, args: argparse.Namespace) -> tuple[Kind, str, Decision, PolicyView]:
    """``explain``'s decision for ``args.target`` (the dashboard's Explain page asks the same)."""
    kind = Kind(args.kind) if args.kind else guess_kind(args.target)
    value = args.target
    host = None
    if kind is Kind.HTTP:
        if "://" not in value:
            value = "https://" + value
        from urllib.parse import urlsplit

        host = urlsplit(value).hostname
    group = group_of(policy, args)
    obs = Observation(kind, value, args.client, host)
    view = policy.view(args.at, Phase(args.phase) if args.phase else None,
                       Mode(args.mode) if args.mode else None, args.legal_status)
    return kind, value, view.groups[group].decide(obs), view


def explain_dict(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """``explain --json``'s document."""
    kind, value, d, view = decide_target(policy, args)
    return {
        "observation": {"kind": kind.value, "value": value, "client": args.client},
        "action": d.action.value, "would": d.would.value, "apps": list(d.apps), "phase": d.phase.value,
        "rule": d.rule, "reason": d.reason, "inspect": d.inspect, "at": view.at.isoformat(),
        "group": d.group, "frameworks": [s.as_dict() for s in d.legal],
        "legal_status": d.legal_status.value,
        "policy": {"name": policy.name, "digest": policy.digest},
    }
