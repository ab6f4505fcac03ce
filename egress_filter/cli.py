"""The ``egress-filter`` command: one entry point, one subcommand per job.

Policy errors become exit code 1 and ``file:line: field: message`` lines;
usage errors exit 2 (argparse).  The servers' subcommands live with their
packages (``dns_blocker.cli``, ``proxy_addons.cli``, ``replay.cli``); each
exposes ``register(subparsers)`` and is imported only here.  The flags they
share, and the policy loading that exits 1, are ``runtime.args``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from dns_blocker import cli as dns_cli
from policies import (
    Kind,
    Mode,
    Policy,
    policy_summary,
)
from proxy_addons import cli as proxy_cli
from replay import cli as replay_cli
from runtime.args import add_legal_args, add_policy_args, load_or_exit

from . import dashboard_cli, export_cli, health, legal_cli, pause_cli, policy_cli, run
from .explain import decide_target, explain_dict, summary, target_arg


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
        print(f"  reason: {summary(d, value, view, args.client)}")
    return 0


# The subcommands that live with their packages, in --help order.  Imported
# plainly: every one of them imports ``runtime``, never this module, so there
# is no cycle to hide (tests/test_layers.py keeps it so).
SUBSYSTEMS = (legal_cli, dns_cli, proxy_cli, replay_cli, run, export_cli, dashboard_cli, pause_cli,
              policy_cli, health)


# Plain text: --help prints it as is (the module docstring is reStructuredText).
DESCRIPTION = ("One policy for banned apps, enforced at DNS and at the proxy, and proven on captures. "
               "Each command takes --help.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="egress-filter", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("check", help="validate a policy and print a summary")
    p.add_argument("policy_file", nargs="?", metavar="POLICY", help="policy YAML (default: bundled)")
    p.add_argument("--policy", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--upgrade", action="store_true",
                   help="print the version-2 form of a version-1 policy (frameworks and client groups)")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("explain", help="decide one name, SNI, URL or IP and say why")
    p.add_argument("target", metavar="NAME_OR_URL", type=target_arg)
    add_policy_args(p)
    add_legal_args(p)
    p.add_argument("--kind", choices=[k.value for k in Kind], help="what the target is (guessed by default)")
    p.add_argument("--mode", choices=[m.value for m in Mode], help="override the policy's mode")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_explain)

    for module in SUBSYSTEMS:
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
