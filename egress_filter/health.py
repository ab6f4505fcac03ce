"""``egress-filter health``: is a running server answering?  For container
HEALTHCHECKs and monitoring scripts; exit 0 when every check passes, else 1.

``--dns HOST:PORT`` sends ``version.bind CH TXT``, which the resolver answers
itself (REFUSED, or the configured string) and never forwards: any reply with
our ID proves it serves, whatever the upstreams are doing.  ``--proxy
HOST:PORT`` and ``--tcp HOST:PORT`` check that the port accepts a connection.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import sys
from typing import Any

from policies.addresses import split_hostport

PROG = "egress-filter health"


def register(sub: Any) -> None:
    p = sub.add_parser("health", help="check that a running DNS resolver or proxy answers (exit 0 or 1)",
                       description="Exit 0 when every check passes, 1 otherwise (one line per failure).")
    p.add_argument("--dns", action="append", default=[], metavar="HOST:PORT",
                   help="a DNS resolver that must answer a local query (repeatable)")
    p.add_argument("--proxy", "--tcp", dest="tcp", action="append", default=[], metavar="HOST:PORT",
                   help="a proxy or dashboard port that must accept a connection (repeatable)")
    p.add_argument("--timeout", type=float, default=2.0, metavar="SECONDS",
                   help="per check (default 2)")
    p.set_defaults(func=cmd_health)


def _address(text: str, default_port: int) -> tuple[str, int]:
    return split_hostport(text, default_port, need_ip=True)


def dns_answers(host: str, port: int, timeout: float) -> str | None:
    """None when the server answered; else why not."""
    from dnslib import CLASS, QTYPE, DNSQuestion, DNSRecord

    query = DNSRecord(q=DNSQuestion("version.bind", QTYPE.TXT, CLASS.CH))
    query.header.id = secrets.randbelow(65536)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query.pack(), (host, port))
            for _ in range(8):  # bounded: skip stray datagrams, not forever
                data = sock.recv(4096)
                if len(data) >= 2 and int.from_bytes(data[:2], "big") == query.header.id:
                    return None
        except OSError as exc:
            return f"no answer ({exc.strerror or exc})"
    return "no answer with our query ID"


def tcp_accepts(host: str, port: int, timeout: float) -> str | None:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return f"no connection ({exc.strerror or exc})"


def cmd_health(args: argparse.Namespace) -> int:
    if not args.dns and not args.tcp:
        print(f"{PROG}: give --dns HOST:PORT or --proxy HOST:PORT", file=sys.stderr)
        return 2
    checks = [("dns", a, 53, dns_answers) for a in args.dns]
    checks += [("tcp", a, 8080, tcp_accepts) for a in args.tcp]
    failed = 0
    for kind, text, default, check in checks:
        try:
            host, port = _address(text, default)
        except ValueError as exc:
            print(f"{PROG}: --{kind}: {exc}", file=sys.stderr)
            return 2
        why = check(host, port, args.timeout)
        if why:
            failed += 1
            print(f"{PROG}: {kind} {text}: {why}", file=sys.stderr)
    return 1 if failed else 0
