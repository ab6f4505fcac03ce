"""``egress-filter dashboard``'s flags; the server itself is ``dashboard``.

Only the flags are defined here, so that every other subcommand's start-up does
not import the web server (http.server, ssl, email, sqlite3 and the store:
40 ms, a tenth of ``replay``'s serial start, issue 11).  ``dashboard`` is
imported when the subcommand runs.
"""

from __future__ import annotations

import argparse
from typing import Any

from runtime.args import add_policy_args

DEFAULT_LISTEN = "127.0.0.1:8088"
# store.db.DEFAULT_PATH (a test keeps them equal), here without the store's import; run's too.
DEFAULT_DB = "~/.local/state/egress-filter/events.db"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dashboard",
        help="serve the web dashboard and JSON API over an event store",
        description="A read-only web dashboard over the SQLite event store (--db on dns, "
        "proxy and run). Loopback only unless --auth-token-file is given.",
    )
    add_policy_args(p, moment=False)
    p.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve (default {DEFAULT_LISTEN}; port 0 picks a free one)",
    )
    p.add_argument("--db", default=DEFAULT_DB, metavar="FILE", help=f"the event store (default {DEFAULT_DB})")
    p.add_argument(
        "--auth-token-file",
        metavar="FILE",
        help="file holding the token clients must send (Bearer, or Basic with it as the password); "
        "required for a listener off loopback, and for the pause switch (POST /api/pause, Bearer only)",
    )
    p.add_argument(
        "--control",
        metavar="PATH|off",
        help="the control socket of the server the pause switch talks to (default: the servers' "
        "default path; off: no switch)",
    )
    p.set_defaults(func=cmd_dashboard)


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .dashboard import serve

    return serve(args)
