"""The ``egress-filter`` command: one entry point, one subcommand per job.

Policy errors become exit code 1 and ``file:line: field: message`` lines;
usage errors exit 2 (argparse).  The servers' subcommands live with their
packages (``dns_blocker.cli``, ``proxy_addons.cli``, ``replay.cli``); each
exposes ``register(subparsers)`` and is imported only here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

from policies import (
    Decision,
    Kind,
    Mode,
    Observation,
    Phase,
    Policy,
    PolicyError,
    PolicyView,
    load_policy,
    policy_summary,
)

EXIT_POLICY = 1


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from exc


def add_policy_args(p: argparse.ArgumentParser, *, moment: bool = True, serving: bool = False) -> None:
    """The flags every policy-reading command shares; ``serving``: a command
    that reloads the policy while it runs (dns, proxy, run)."""
    p.add_argument("--policy", metavar="P", help="policy YAML (default: the bundled policy)")
    if serving:
        from .legal_cli import add_legal_args  # legal_cli builds on this module

        p.add_argument("--allow-empty", action="store_true",
                       help="accept a reload that would block nothing the policy in force blocks "
                            "(refused by default; or set settings.allow_empty: true in the new file)")
        add_legal_args(p, group=False)
        # Set by ``run`` on its servers, which then leave the legal notices to it.
        p.add_argument("--no-legal-notice", action="store_true", help=argparse.SUPPRESS)
    if moment:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--at", type=parse_date, metavar="YYYY-MM-DD", help="read the schedules at this date")
        g.add_argument("--phase", choices=[x.value for x in Phase], help="force every app into this phase")


def load_or_exit(path: str | None) -> Policy:
    """Load a policy, or print its problems (``file:line: field: message``) and exit 1."""
    try:
        return load_policy(path)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        n = len(exc.issues)
        print(f"egress-filter: {n} problem{'s' if n != 1 else ''} in the policy; nothing was changed",
              file=sys.stderr)
        raise SystemExit(EXIT_POLICY) from exc


def cmd_check(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy_file or args.policy)
    if args.upgrade:
        return print_upgrade(policy)
    summary = policy_summary(policy)
    for warning in summary["warnings"]:
        print(f"{summary['source']}: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{summary['source']}: OK")
    print(f"  mode: {summary['mode']}")
    print(f"  apps ({len(summary['apps'])}): {', '.join(summary['apps'])}")
    for key, n in summary["rules"].items():
        print(f"  {key}: {n}")
    if summary["exempt_clients"]:
        print(f"  exempt clients: {', '.join(summary['exempt_clients'])}")
    print(f"  frameworks: {', '.join(summary['frameworks'])}")
    for name, g in summary["groups"].items():
        nets = ", ".join(g["networks"]) or "no networks"
        print(f"  group {name}: {', '.join(g['frameworks']) or 'no frameworks'} ({nets})")
    print(f"  legal status: {summary['legal_status']}")
    print(f"  name: {summary['name'] or '-'}")
    print(f"  digest: {summary['digest']}")
    return 0


def print_upgrade(policy: Policy) -> int:
    """``check --upgrade``: the version-2 form of a version-1 policy, on stdout."""
    from pathlib import Path

    from policies.upgrade import upgrade_text

    source = policy.source or ""
    print(upgrade_text(Path(source).read_text(encoding="utf-8")), end="")
    return 0


def guess_kind(value: str) -> Kind:
    if "://" in value or "/" in value:
        return Kind.HTTP
    try:
        import ipaddress

        ipaddress.ip_address(value.strip("[]"))
        return Kind.IP
    except ValueError:
        return Kind.DNS


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
    from .legal_cli import group_of

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


def cmd_explain(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)
    if args.json:
        print(json.dumps(explain_dict(policy, args), indent=2))
    else:
        kind, value, d, view = decide_target(policy, args)
        print(f"{d.action.value.upper()}  {kind.value} {value}")
        print(f"  apps:   {', '.join(d.apps) or '-'}")
        print(f"  phase:  {d.phase.value}")
        print(f"  rule:   {d.rule or '-'}")
        print(f"  at:     {view.at}")
        print(f"  group:  {d.group} (legal status: {d.legal_status.value.replace('_', ' ')})")
        for state in d.legal:
            print(f"  framework: {state.describe()}")
        if d.inspect:
            print("  inspect: yes (a proxy must decrypt to see the URL)")
        print(f"  reason: {d.reason}")
    return 0


SUBSYSTEMS = ("egress_filter.legal_cli", "dns_blocker.cli", "proxy_addons.cli", "replay.cli",
              "egress_filter.run",
              "egress_filter.export_cli", "store.dashboard")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-filter", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a policy and print a summary")
    p.add_argument("policy_file", nargs="?", metavar="POLICY", help="policy YAML (default: bundled)")
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--upgrade", action="store_true",
                   help="print the version-2 form of a version-1 policy (frameworks and client groups)")
    p.set_defaults(func=cmd_check)

    from .legal_cli import add_legal_args

    p = sub.add_parser("explain", help="decide one name, SNI, URL or IP and say why")
    p.add_argument("target", metavar="NAME_OR_URL")
    add_policy_args(p)
    add_legal_args(p)
    p.add_argument("--kind", choices=[k.value for k in Kind], help="what the target is (guessed by default)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="override the policy's mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    for name in SUBSYSTEMS:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SystemExit as exc:  # load_or_exit and friends: keep main(argv) a function
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
