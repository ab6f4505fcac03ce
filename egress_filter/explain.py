"""One target judged as `egress-filter explain` judges it: a target in, a decision and its JSON out.

``decide_target`` guesses the observation's kind (unless given), builds the
view at the asked date, phase, mode and legal status, and asks the client's
group; ``explain_dict`` is the ``--json`` document.  The CLI and the
dashboard's Explain page both call these, so they give the same answer.
"""

from __future__ import annotations

import argparse
from typing import Any

from policies import Action, Decision, Kind, Mode, Observation, Phase, Policy, PolicyView
from policies.addresses import is_ip
from runtime.args import group_of

_VERB = {Action.BLOCK: "blocked", Action.LOG: "logged", Action.ALLOW: "allowed"}


def target_arg(text: str) -> str:
    """argparse's check of ``explain``'s target: an empty one is a usage error (exit 2),
    not a question the policy answers with ALLOW."""
    if not text.strip():
        raise argparse.ArgumentTypeError("give a DNS name, SNI, URL or IP address (it is empty)")
    return text


def guess_kind(value: str) -> Kind:
    if "://" in value or "/" in value:
        return Kind.HTTP
    return Kind.IP if is_ip(value.strip("[]")) else Kind.DNS


def decide_target(policy: Policy, args: argparse.Namespace) -> tuple[Kind, str, Decision, PolicyView]:
    """``explain``'s decision for ``args.target`` (the dashboard's Explain page asks the same)."""
    if not args.target.strip():
        raise ValueError("the target is empty: give a DNS name, SNI, URL or IP address")
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


def summary(d: Decision, value: str, view: PolicyView, client: str | None) -> str:
    """The decision as one short sentence; the whole ``reason`` (sources, frameworks) is
    ``--json``'s.  A block that monitor mode or an exempt client turned into a log says
    it would be blocked and is logged: never that it is blocked."""
    gv = view.groups[d.group]
    if d.action is Action.LOG and d.enforced is Action.BLOCK:
        if gv.group.exempt:
            who = f"client {client} is exempt" if client else "the client is exempt"
        elif gv.group.mode is Mode.MONITOR:
            who = f"group {d.group} is in monitor mode"
        else:
            who = "monitor mode is on"
        outcome = f"would be blocked; {who}, so it is logged instead"
    else:
        outcome = f"is {_VERB[d.action]}"
    if d.apps:
        ph = gv.phases.get(d.apps[0])
        since = f" since {ph.since}" if ph is not None and ph.since else ""
        names = ", ".join(d.app_names or d.apps)
        via = f" (opt-in group {d.list_group})" if d.list_group else ""
        return f"{value} belongs to {names}{via}, in phase {d.phase.value}{since}, so it {outcome}."
    if d.rule is None:
        return f"No rule matches {value}, so it {outcome}."
    # A built-in or the allow list: the first clause of its own reason says what it is.
    core = d.reason.split("; ", 1)[1] if d.enforced is not None else d.reason
    core = core.split("; ", 1)[0]
    if d.inspect:
        return f"{core}; the name itself {outcome}."
    return f"{core}, so it {outcome}."


def explain_dict(policy: Policy, args: argparse.Namespace) -> dict[str, Any]:
    """``explain --json``'s document: ``summary`` is the sentence the text output shows,
    ``reason`` the whole one."""
    kind, value, d, view = decide_target(policy, args)
    return {
        "observation": {"kind": kind.value, "value": value, "client": args.client},
        "action": d.action.value, "would": d.would.value, "apps": list(d.apps), "phase": d.phase.value,
        "rule": d.rule, "summary": summary(d, value, view, args.client), "reason": d.reason,
        "list_group": d.list_group, "inspect": d.inspect, "at": view.at.isoformat(),
        "group": d.group, "frameworks": [s.as_dict() for s in d.legal],
        "legal_status": d.legal_status.value,
        "policy": {"name": policy.name, "digest": policy.digest},
    }
