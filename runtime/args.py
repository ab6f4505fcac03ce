"""The command-line pieces every policy-reading command shares.

The adapters' subcommands (``dns_blocker.cli``, ``proxy_addons.cli``,
``replay.cli``) and the composition root's own (``check``, ``explain``,
``phases``, ``export``, ``run``) build their parsers from these, so a flag
means the same everywhere: argparse namespace in, ``Policy`` out, or exit 1
with ``file:line: field: message`` lines on stderr.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import sys

from policies import LegalStatus, Phase, Policy, PolicyError, load_policy
from policies.legal import as_ordered_notices
from policies.legal_loader import legal_status as parse_legal_status

EXIT_POLICY = 1
LEGAL_CHOICES = ("as-ordered", "in-force")


def is_loopback(host: str) -> bool:
    """Whether a listen host is a loopback address ("" and other names are not: "" is every interface)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def parse_date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a date (YYYY-MM-DD)") from exc


def legal_status_arg(text: str) -> LegalStatus:
    try:
        return parse_legal_status(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not one of: {', '.join(LEGAL_CHOICES)}") from exc


def add_policy_args(p: argparse.ArgumentParser, *, moment: bool = True, serving: bool = False) -> None:
    """The flags every policy-reading command shares; ``serving``: a command
    that reloads the policy while it runs (dns, proxy, run)."""
    p.add_argument("--policy", metavar="P", help="policy YAML (default: the bundled policy)")
    if serving:
        p.add_argument("--allow-empty", action="store_true",
                       help="accept a reload that would block nothing the policy in force blocks "
                            "(refused by default; or set settings.allow_empty: true in the new file)")
        add_legal_args(p, group=False)
        p.add_argument("--control", metavar="PATH|off",
                       help="local control socket for egress-filter pause (default: "
                            "/run/egress-filter/control.sock as root, else under $XDG_RUNTIME_DIR "
                            "or /tmp/egress-filter-UID/; off: none)")
        # Set by ``run`` on its servers, which then leave the legal notices to it.
        p.add_argument("--no-legal-notice", action="store_true", help=argparse.SUPPRESS)
    if moment:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--at", type=parse_date, metavar="YYYY-MM-DD", help="read the schedules at this date")
        g.add_argument("--phase", choices=[x.value for x in Phase], help="force every app into this phase")


def add_legal_args(p: argparse.ArgumentParser, *, group: bool = True) -> None:
    """``--legal-status`` and, where a command reads one group, ``--group``/``--client``."""
    p.add_argument("--legal-status", type=legal_status_arg, metavar="|".join(LEGAL_CHOICES),
                   help="as-ordered: the frameworks' phases as announced (default); "
                        "in-force: only while their status history says in force")
    if group:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--group", metavar="G", help="read the phases of this client group")
        g.add_argument("--client", metavar="IP", help="read the phases of this client's group")


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


def print_legal_notices(prog: str, policy: Policy, args: argparse.Namespace) -> None:
    """At start (dns, proxy, run): one line per framework enforced as ordered
    that is not in force on the day (``policies.legal.as_ordered_notices``)."""
    if getattr(args, "no_legal_notice", False):
        return
    day = args.at or policy.today()
    for line in as_ordered_notices(policy.as_ordered_frameworks(args.legal_status), day):
        print(f"{prog}: {line}", file=sys.stderr, flush=True)


def group_of(policy: Policy, args: argparse.Namespace) -> str:
    """The group ``--group`` names or ``--client`` falls in; exit 2 for an unknown group."""
    if getattr(args, "group", None):
        if args.group not in policy.clients:
            known = ", ".join(sorted(policy.clients))
            raise SystemExit(f"egress-filter: unknown group '{args.group}' (groups: {known})")
        return str(args.group)
    return policy.group_for(getattr(args, "client", None))
