"""``egress-filter run``: the DNS resolver and the proxy together, as ``make run`` starts them.

Each server runs as its own child process (``egress-filter dns`` and
``egress-filter proxy``), so each keeps its own event loop and signal
handling; this process only starts them, prints how to use them, forwards
SIGHUP (policy reload) and, on Ctrl-C or SIGTERM, stops both by PID and waits.
With the event store on (the default, ``--db``), both servers write the one
SQLite file and a third child, ``egress-filter dashboard``, serves it on
loopback.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from policies.addresses import split_hostport
from runtime.args import add_policy_args, load_or_exit, print_legal_notices

DEFAULT_DNS = "127.0.0.1:5353"
DEFAULT_PROXY = "127.0.0.1:8080"
DEFAULT_DASHBOARD = "127.0.0.1:8088"


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="start the DNS resolver and the proxy together (what `make run` does)")
    add_policy_args(p, serving=True)
    p.add_argument("--dns-listen", default=DEFAULT_DNS, metavar="HOST:PORT")
    p.add_argument("--proxy-listen", default=DEFAULT_PROXY, metavar="HOST:PORT")
    p.add_argument("--upstream", action="append", metavar="UPSTREAM",
                   help="DNS upstream: IP[:PORT], tls://HOST[:853][#NAME] or https://HOST/dns-query "
                        "(repeatable; default: the resolver's default)")
    p.add_argument("--upstream-ca", metavar="FILE", help="CA bundle for tls:// and https:// upstreams")
    p.add_argument("--mode", choices=["enforce", "monitor"], help="override the policy's mode")
    p.add_argument("--log", default="-", metavar="FILE|-",
                   help="event log for both servers (default: stdout)")
    p.add_argument("--no-proxy", action="store_true", help="start only the DNS resolver")
    from store.db import DEFAULT_PATH

    p.add_argument("--db", default=DEFAULT_PATH, metavar="FILE",
                   help=f"event store both servers share and the dashboard reads (default {DEFAULT_PATH})")
    p.add_argument("--no-db", action="store_true", help="no event store, no dashboard")
    p.add_argument("--dashboard-listen", default=DEFAULT_DASHBOARD, metavar="HOST:PORT",
                   help=f"where the dashboard listens (default {DEFAULT_DASHBOARD}, loopback)")
    p.add_argument("--no-dashboard", action="store_true", help="store events but start no dashboard")
    p.set_defaults(func=cmd_run)


def _child_args(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    if args.policy:
        out += ["--policy", args.policy]
    if args.at:
        out += ["--at", args.at.isoformat()]
    if args.phase:
        out += ["--phase", args.phase]
    if args.mode:
        out += ["--mode", args.mode]
    if args.allow_empty:
        out.append("--allow-empty")
    if args.legal_status:
        out += ["--legal-status", args.legal_status.value]
    out.append("--no-legal-notice")  # printed once, by run
    out += ["--log", args.log]
    if not args.no_db:
        out += ["--db", args.db]
    return out


def cmd_run(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)  # fail fast, with file:line errors, before starting anything
    print_legal_notices("egress-filter run", policy, args)
    me = [sys.executable, "-m", "egress_filter.cli"]
    common = _child_args(args)
    dns_cmd = [*me, "dns", "--listen", args.dns_listen, *common]
    for up in args.upstream or []:
        dns_cmd += ["--upstream", up]
    if args.upstream_ca:
        dns_cmd += ["--upstream-ca", args.upstream_ca]
    commands = {"dns": dns_cmd}
    if not args.no_proxy:
        commands["proxy"] = [*me, "proxy", "--listen", args.proxy_listen, *common]
    if not args.no_db and not args.no_dashboard:
        commands["dashboard"] = [*me, "dashboard", "--listen", args.dashboard_listen, "--db", args.db,
                                 *(["--policy", args.policy] if args.policy else [])]

    children: dict[str, subprocess.Popen[bytes]] = {}
    stopping = False

    def stop(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def reload(signum: int, frame: object) -> None:
        for child in children.values():
            child.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, reload)
    try:
        for name, cmd in commands.items():
            children[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        time.sleep(1.0)
        _banner(args, children)
        while not stopping:
            for name, child in children.items():
                code = child.poll()
                if code is not None:
                    print(f"egress-filter run: the {name} server exited with code {code}; stopping",
                          file=sys.stderr)
                    stopping = True
                    break
            time.sleep(0.2)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
    failed = [n for n, c in children.items() if c.returncode not in (0, -signal.SIGTERM, None)]
    return 1 if failed else 0


def _banner(args: argparse.Namespace, children: dict[str, Any]) -> None:
    dns_host, dns_port = split_hostport(args.dns_listen, 53)
    lines = [
        "",
        "egress-filter is running (Ctrl-C stops both servers).",
        f"  DNS    {args.dns_listen}  (pid {children['dns'].pid})",
        f"         try: dig @{dns_host} -p {dns_port} www.tiktok.com",
    ]
    if "proxy" in children:
        ca = Path(os.path.expanduser("~/.mitmproxy/mitmproxy-ca-cert.pem"))
        lines += [
            f"  proxy  {args.proxy_listen}  (pid {children['proxy'].pid})",
            f"         try: curl -x http://{args.proxy_listen} https://www.tiktok.com/",
            f"         point clients at http://{args.proxy_listen} (HTTP and HTTPS proxy)",
            f"         mitmproxy's CA certificate (trust it only to see block pages): {ca}",
        ]
    if "dashboard" in children:
        lines += [f"  dashboard  http://{args.dashboard_listen}/  (pid {children['dashboard'].pid})",
                  f"         events are stored in {args.db}"]
    lines.append(f"  reload the policy: kill -HUP {os.getpid()}")
    print("\n".join(lines), file=sys.stderr, flush=True)
