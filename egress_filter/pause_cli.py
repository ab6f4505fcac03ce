"""``egress-filter pause 5m``, ``pause --status``, ``pause --resume`` and ``resume``.

Each sends one request to a running server's control socket
(``runtime.control``) and prints its answer.  Exit 0: done; 1: the server
refused (``settings.allow_pause: false``) or none answered; 2: a bad duration
or usage.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

PROG = "egress-filter pause"
EXIT_REFUSED = 1
EXIT_USAGE = 2


def register(sub: Any) -> None:
    from runtime.holder import MAX_PAUSE

    p = sub.add_parser(
        "pause", help="monitor instead of enforcing, for a while, on a running dns, proxy or run",
        description="Put enforcement of a running egress-filter dns, proxy or run in monitor "
                    "mode (blocks are logged, not enforced) for DURATION, then enforce again. "
                    f"At most {MAX_PAUSE / 3600:g} h. Refused when the policy sets "
                    "settings.allow_pause: false.")
    p.add_argument("duration", nargs="?", metavar="DURATION", help="how long: 90s, 5m, 1h30m, 2h")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--status", action="store_true", help="say whether enforcement is paused, and until when")
    g.add_argument("--resume", action="store_true", help="end the pause now")
    _common(p)
    p.set_defaults(func=cmd_pause)
    r = sub.add_parser("resume", help="end a pause now (as pause --resume)")
    _common(r)
    r.set_defaults(func=cmd_pause, duration=None, status=False, resume=True)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--control", action="append", metavar="PATH",
                   help="the server's control socket (repeatable, e.g. a dns and a proxy started "
                        "apart; default: the servers' default path)")
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")


def cmd_pause(args: argparse.Namespace) -> int:
    from runtime.control import ControlError, default_path, parse_duration, send_all

    if args.status or args.resume:
        if args.duration:
            print(f"{PROG}: a DURATION goes with neither --status nor --resume", file=sys.stderr)
            return EXIT_USAGE
        request: dict[str, Any] = {"op": "status" if args.status else "resume"}
    else:
        if not args.duration:
            print(f"{PROG}: give a DURATION (e.g. 5m), --status or --resume", file=sys.stderr)
            return EXIT_USAGE
        try:
            request = {"op": "pause", "seconds": parse_duration(args.duration)}
        except ValueError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    paths = args.control or [default_path()]
    try:
        reply = send_all(paths, request)
    except ControlError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(reply, indent=2, sort_keys=True))
    if not reply.get("ok"):
        print(f"{PROG}: refused: {reply.get('error')}", file=sys.stderr)
        return EXIT_REFUSED
    if not args.json:
        print(describe(reply, request["op"]))
    return 0


def describe(reply: dict[str, Any], op: str) -> str:
    """One sentence for a person."""
    if reply.get("paused"):
        left = reply.get("seconds_left")
        return (f"{reply.get('reason')} ({left:g} s left): blocks are logged, not enforced"
                if isinstance(left, (int, float)) else str(reply.get("reason")))
    if op == "resume":
        return "enforcing" + ("" if reply.get("resumed", True) else " (no pause was in force)")
    mode = reply.get("mode", "enforce")
    return f"not paused (mode {mode})" + ("" if reply.get("allow_pause", True) else
                                          "; the policy forbids pausing (settings.allow_pause: false)")
