"""``egress-filter dns``: flags → settings → policy holder, event log, metrics → ``server.serve``.

Settings precedence (later wins, key by key): built-in defaults < the
policy's ``settings.dns`` < ``--config FILE`` < command-line flags.  Heavy
imports happen inside ``cmd_dns`` so that ``egress-filter --help`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from typing import Any

from runtime import notify
from runtime.args import add_policy_args, print_legal_notices

PROG = "egress-filter dns"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "dns", help="run the DNS resolver that enforces the policy",
        description="A filtering DNS resolver on the shared policy. Settings: defaults < policy "
                    "settings.dns < --config FILE < these flags.")
    add_policy_args(p, serving=True)
    p.add_argument("--config", metavar="FILE",
                   help="YAML file with settings.dns keys (overrides the policy's)")
    p.add_argument("--listen", action="append", metavar="HOST:PORT",
                   help="address to serve UDP and TCP on (repeatable; IPv4 or [IPv6]; "
                        "default 127.0.0.1:5353)")
    p.add_argument("--upstream", action="append", dest="upstreams", metavar="UPSTREAM",
                   help="upstream resolver, tried in order (repeatable; default 1.1.1.1 and 9.9.9.9): "
                        "IP[:PORT], tls://HOST[:853][#NAME] (DNS-over-TLS) or "
                        "https://HOST[:PORT]/dns-query[#NAME] (DNS-over-HTTPS); #NAME is the name the "
                        "certificate must carry")
    p.add_argument("--upstream-ca", metavar="FILE",
                   help="PEM CA bundle trusted for tls:// and https:// upstreams, besides the system's")
    p.add_argument("--block-response", choices=["nxdomain", "null", "refused"],
                   help="answer to blocked names (default nxdomain)")
    p.add_argument("--log", metavar="FILE|-", help="JSON-lines event log (default: none)")
    p.add_argument("--db", metavar="FILE", help="also store events in this SQLite file (the dashboard's)")
    p.add_argument("--db-days", type=float, metavar="DAYS",
                   help="days of events the store keeps (default 30)")
    p.add_argument("--db-max-bytes", type=int, metavar="BYTES", help="bytes the store keeps (default 1 GiB)")
    p.add_argument("--log-all", action="store_true", default=None, help="log plain allows too")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics here (e.g. 127.0.0.1:9153)")
    p.add_argument("--mode", choices=["enforce", "monitor"], help="override the policy's mode")
    p.add_argument("--canary", action=argparse.BooleanOptionalAction, default=None,
                   help="answer use-application-dns.net with NXDOMAIN (default on)")
    p.add_argument("--acl", action="append", metavar="CIDR",
                   help="clients allowed to ask (repeatable; default loopback and private ranges)")
    p.add_argument("--cache-size", type=int, metavar="N", help="answer cache entries (default 100000)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="budget for all upstreams together before SERVFAIL (default 2.0)")
    p.add_argument("--workers", type=int, metavar="N", help="processes sharing the ports (SO_REUSEPORT)")
    p.add_argument("--udp-transport", choices=["auto", "batched", "plain"], default="auto",
                   help="batched: recvmmsg/sendmmsg, up to 64 datagrams a system call (Linux); plain: one "
                        "call per datagram; auto (default): batched where the calls exist")
    p.add_argument("--max-udp-size", type=int, metavar="BYTES",
                   help="largest UDP answer; bigger ones go out truncated (TC) (default 1232)")
    p.add_argument("--tcp-timeout", type=float, metavar="SECONDS",
                   help="a TCP connection closes when idle this long, or when one message takes "
                        "longer to arrive (default 10)")
    p.add_argument("--tcp-connections", type=int, metavar="N",
                   help="TCP connections at once (default 1024, lowered to leave file descriptors "
                        "for upstreams and reloads)")
    p.add_argument("--tcp-per-client", type=int, metavar="N",
                   help="TCP connections at once from one client address (default 16)")
    p.add_argument("--server-identity", metavar="TEXT",
                   help="answer to CH TXT hostname.bind/id.server (default: REFUSED)")
    p.add_argument("--server-version", metavar="TEXT",
                   help="answer to CH TXT version.bind/version.server (default: REFUSED)")
    p.add_argument("--rpz", action=argparse.BooleanOptionalAction, default=None,
                   help="serve one Response Policy Zone per client group (<group>.rpz.egress-filter.) "
                        "over TCP AXFR/IXFR, with SOA and NS on UDP and TCP")
    p.add_argument("--rpz-notify", action="append", metavar="HOST:PORT",
                   help="secondary sent a NOTIFY when a zone's serial changes (repeatable)")
    p.add_argument("--rpz-allow", action="append", metavar="CIDR",
                   help="sources allowed a TSIG-signed transfer (repeatable; default loopback)")
    p.add_argument("--rpz-allow-unsigned", action="append", metavar="CIDR",
                   help="sources allowed a transfer without TSIG (repeatable; default none)")
    p.add_argument("--rpz-transfers", type=int, metavar="N", help="zone transfers at once (default 4)")
    p.add_argument("--tsig-key", metavar="NAME:ALG:SECRET|FILE",
                   help="TSIG key for transfers (hmac-sha256, base64 secret), or a BIND key file")
    p.add_argument("--reload-interval", type=float, default=1.0, metavar="SECONDS",
                   help="how often to check the policy files and the date")
    p.add_argument("--reuseport", action="store_true", help=argparse.SUPPRESS)  # set on worker processes
    p.set_defaults(func=cmd_dns)


CLI_KEYS = ("listen", "upstreams", "block_response", "log", "db", "db_days", "db_max_bytes", "log_all",
            "metrics", "canary", "acl",
            "cache_size", "timeout", "workers", "max_udp_size", "tcp_timeout", "tcp_connections",
            "tcp_per_client", "server_identity", "server_version", "rpz", "rpz_notify", "rpz_allow",
            "rpz_allow_unsigned", "rpz_transfers", "tsig_key", "upstream_ca")


def cmd_dns(args: argparse.Namespace) -> int:
    import gc
    import logging

    from policies import Mode, Phase, PolicyError
    from runtime.eventlog import EventLog, metrics_collector
    from runtime.holder import PolicyHolder

    from .config import ConfigError, merge, parse_hostport, read_config_file
    from .metrics import MULTIPROC_ENV, NullMetrics, PromMetrics
    from .server import bind_pair, fmt, serve

    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s", stream=sys.stderr)
    try:
        holder = PolicyHolder(args.policy, at=args.at, phase=Phase(args.phase) if args.phase else None,
                              mode=Mode(args.mode) if args.mode else None, allow_empty=args.allow_empty,
                              legal_status=args.legal_status)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        notify.status(f"{exc.issues[0]}" if exc.issues else "the policy did not load")
        return 1
    try:
        from_file = read_config_file(args.config) if args.config else {}
        cli = {k: getattr(args, k) for k in CLI_KEYS}
        for k in ("listen", "upstreams", "acl", "rpz_notify", "rpz_allow", "rpz_allow_unsigned"):
            if cli[k] is not None:
                cli[k] = tuple(cli[k])
        settings = merge(holder.policy.settings.dns, from_file, cli)
    except ConfigError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        notify.status(str(exc))
        return 1
    if not args.reuseport:  # a worker leaves the notices to the process that started it
        print_legal_notices(PROG, holder.policy, args)

    # The policy's indexes are millions of long-lived objects; freezing them
    # keeps the collector from walking them all in the middle of answering.
    gc.collect()
    gc.freeze()
    # A full collection still walks every object made since (the decision for
    # each distinct blocked name, in-flight state): under a cache-cold load
    # those pauses reached tens of ms and set the p99.  Ten times fewer of them
    # (after 100 middle-generation collections instead of 10) kept the
    # cache-cold p99 at half our peak under 2 ms instead of 2-15 ms.
    young, middle, full = gc.get_threshold()
    gc.set_threshold(young, middle, full * 10)

    reuse = settings.workers > 1 or args.reuseport
    try:
        sockets = [bind_pair(*parse_hostport(a, 53), reuse) for a in settings.listen]
    except OSError as exc:
        why = f"cannot listen on {', '.join(settings.listen)} (--listen): {exc.strerror or exc}"
        print(f"{PROG}: {why}", file=sys.stderr)
        notify.status(why)
        return 1

    metrics: NullMetrics = NullMetrics()
    multiproc: str | None = None
    if settings.metrics and settings.workers > 1 and not args.reuseport:
        multiproc = tempfile.mkdtemp(prefix="egress-dns-metrics-")
        os.environ[MULTIPROC_ENV] = multiproc  # before prometheus_client is imported, here and in workers
    if settings.metrics and args.reuseport:
        if os.environ.get(MULTIPROC_ENV):
            metrics = PromMetrics()  # counted here, served by the first process
    elif settings.metrics:
        prom = PromMetrics()
        host, port = parse_hostport(settings.metrics, 9153)
        try:
            port = prom.serve(host, port)
        except OSError as exc:
            why = f"cannot serve metrics on {settings.metrics} (--metrics): {exc.strerror or exc}"
            print(f"{PROG}: {why}", file=sys.stderr)
            notify.status(why)
            return 1
        print(f"{PROG}: metrics on http://{fmt(host, port)}/metrics", file=sys.stderr, flush=True)
        metrics = prom

    relaying = settings.workers > 1 and not args.reuseport
    control_dir = tempfile.mkdtemp(prefix="egress-dns-control-") if relaying else None
    workers = _start_workers(args, settings.workers, settings.log, [s[0].getsockname()[:2] for s in sockets],
                             control_dir)
    queue = holder.policy.settings.event_queue
    from store.hook import open_store, retention  # workers share the one file: WAL takes turns

    db = open_store(PROG, settings.db, queue.max_events, retention(settings.db_days, settings.db_max_bytes))
    events = EventLog(_worker_log(settings.log, 0) if workers else settings.log,
                      max_events=queue.max_events, max_bytes=queue.max_bytes,
                      also=db.put if db else None, also_shaped=db.put_shaped if db else None)
    # The control socket (egress-filter pause): with workers, this process relays to each one's.
    from runtime.control import HolderControl, Relay, start_for

    local = HolderControl(holder, "dns", events.emit)
    handler = Relay({f"worker{i}": os.path.join(control_dir, f"worker{i}.sock")
                     for i in range(1, len(workers) + 1)}, local, "dns") if control_dir else local
    control = start_for(args.control, handler, PROG)
    if isinstance(metrics, PromMetrics):
        metrics.registry.register(metrics_collector("egress_dns", lambda: events))
        if db:
            metrics.registry.register(db.collector("egress_dns"))
    try:
        def hup_workers() -> None:
            for w in workers:
                w.send_signal(signal.SIGHUP)

        code = _run(serve(settings, holder, events, metrics, sockets, args.reload_interval,
                          forward_hup=hup_workers, udp_transport=args.udp_transport))
    finally:
        if control is not None:
            control.close()
        if control_dir:
            shutil.rmtree(control_dir, ignore_errors=True)
        events.close()
        if db:
            db.close()
        for w in workers:
            if w.poll() is None:
                w.terminate()
        for w in workers:
            try:
                w.wait(10)
            except subprocess.TimeoutExpired:
                w.kill()
                w.wait()
        if multiproc:
            shutil.rmtree(multiproc, ignore_errors=True)
    return code


def _run(coro: Any) -> int:
    import asyncio

    try:
        import uvloop
    except ImportError:
        return int(asyncio.run(coro))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return int(runner.run(coro))


def _worker_log(log: str | None, n: int) -> str | None:
    """Each worker writes its own event file (``events.jsonl`` → ``events.w1.jsonl``),
    so lines from two processes never interleave; stdout is shared line by line."""
    if log is None or log == "-" or n == 0:
        return log
    root, ext = os.path.splitext(log)
    return f"{root}.w{n}{ext}"


def _start_workers(args: argparse.Namespace, n: int, log: str | None,
                   bound: list[tuple[str, int]], control_dir: str | None) -> list[subprocess.Popen[bytes]]:
    """Start n-1 more processes on the same (already bound) ports."""
    if n <= 1 or args.reuseport:
        return []
    from .server import fmt

    argv = [a for a in sys.argv[1:]]
    base = _strip(argv, {"--listen", "--workers", "--log", "--control"})
    procs = []
    for i in range(1, n):
        cmd = [sys.executable, "-m", "egress_filter.cli", *base, "--workers", "1", "--reuseport"]
        for host, port in bound:
            cmd += ["--listen", fmt(host, port)]
        if log:
            cmd += ["--log", str(_worker_log(log, i))]
        if control_dir:  # the first process relays pause requests to each worker's socket
            cmd += ["--control", os.path.join(control_dir, f"worker{i}.sock")]
        # Only this process speaks to the service manager (NotifyAccess=main).
        env = {k: v for k, v in os.environ.items() if k != notify.ENV}
        procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env))
    return procs


def _strip(argv: list[str], flags: set[str]) -> list[str]:
    out: list[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
            continue
        name = a.split("=", 1)[0]
        if name in flags:
            skip = "=" not in a
            continue
        out.append(a)
    return out
