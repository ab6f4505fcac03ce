"""``egress-filter proxy``: mitmproxy with the egress-filter addon, in-process.

Flags become mitmproxy options (``--policy`` → ``egress_policy``, ``--at`` →
``egress_at``, ``--listen`` → ``listen_host``/``listen_port``...), then every
``--set NAME=VALUE`` is applied as mitmproxy's own ``--set`` would be.  The
policy is loaded once up front so that a bad file exits 1 with its
``file:line`` problems before any port is opened; a bad option exits 1 with
mitmproxy's ``OptionsError`` message.

mitmproxy's *proxy* mode is ``--proxy-mode`` (``regular``, ``transparent``,
``wireguard``, ``socks5``, ``local``, ``upstream:URL``...), because ``--mode``
is the enforcement mode (``enforce``/``monitor``), as in ``egress-filter dns``.
``--mode`` also accepts a proxy mode spec for convenience: any value other
than ``enforce`` or ``monitor`` is taken as one.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from policies.addresses import AddressError, split_hostport
from runtime import notify
from runtime.args import add_policy_args, load_or_exit, print_legal_notices

ENFORCEMENT_MODES = ("enforce", "monitor")


def register(sub: Any) -> None:
    p = sub.add_parser(
        "proxy", help="run mitmproxy with the egress-filter addon (forward/transparent proxy)",
        description="Run mitmproxy in-process with the egress-filter addon. "
                    "Same settings as: mitmdump -s proxy_addons/egress_filter.py --set egress_...")
    p.add_argument("--listen", metavar="HOST:PORT",
                   help="where the proxy listens (default: settings.proxy.listen, 127.0.0.1:8080)")
    p.add_argument("--proxy-mode", action="append", metavar="SPEC",
                   help="mitmproxy proxy mode: regular, transparent, wireguard, socks5, local, "
                        "upstream:URL, reverse:URL... (repeatable; default: settings.proxy.mode, regular)")
    add_policy_args(p, serving=True)
    p.add_argument("--mode", metavar="enforce|monitor",
                   help="enforcement mode (default: the policy's mode); any other value is taken as "
                        "--proxy-mode")
    p.add_argument("--block", choices=["reset", "page"],
                   help="refuse blocked TLS by closing it (reset; a blocked CONNECT gets a bare 451) or "
                        "by serving the 451 page (page: a blocked CONNECT is accepted without dialling "
                        "and its TLS intercepted, so browsers show it; clients must trust mitmproxy's CA)")
    p.add_argument("--log", metavar="FILE|-", help="event log (JSON lines; default: stdout)")
    p.add_argument("--log-all", action="store_true",
                   help="an access log: also log allowed requests (with their status) and allowed TLS "
                        "connections (with their SNI), as Squid's access.log does")
    p.add_argument("--metrics", metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--db", metavar="FILE", help="also store events in this SQLite file (the dashboard's)")
    p.add_argument("--resolver", metavar="IP:PORT",
                   help="resolve upstream names through this DNS server (the egress-filter DNS filter; "
                        "run sets it), never the system resolver; a name it does not resolve gets 502")
    p.add_argument("--pac-listen", metavar="HOST:PORT",
                   help="serve the proxy auto-config file (/proxy.pac, /wpad.dat) here; a bare PORT "
                        "listens on 127.0.0.1 (default: off)")
    p.add_argument("--pac-proxy", metavar="HOST:PORT",
                   help="the proxy address the PAC file advertises (default: --listen; the PAC's own "
                        "host when the proxy listens on every address)")
    p.add_argument("--pac-direct", action="append", default=[], metavar="CIDR|DOMAIN",
                   help="also send this network or domain DIRECT in the PAC file (repeatable; loopback, "
                        "RFC 1918, link-local and single-label hosts always are)")
    p.add_argument("--confdir", metavar="DIR",
                   help="mitmproxy's configuration directory, where its CA lives (default: ~/.mitmproxy)")
    p.add_argument("--set", dest="setoptions", action="append", default=[], metavar="NAME=VALUE",
                   help="set any mitmproxy or egress_* option (repeatable; applied last)")
    p.set_defaults(func=cmd_proxy)


def parse_listen(text: str) -> tuple[str, int]:
    try:
        host, port = split_hostport(text, default_host="127.0.0.1")
    except AddressError as exc:
        raise ValueError(f"--listen: {exc}") from exc
    if not port:
        raise ValueError(f"--listen: '{text}': port 0 is not a port to listen on")
    return host, port


def build_options(args: argparse.Namespace, settings: Any) -> tuple[dict[str, Any], list[str]]:
    """The mitmproxy option values for these flags, and the --set specs to apply after them."""
    proxy_modes = list(args.proxy_mode or [])
    mode = args.mode
    if mode and mode not in ENFORCEMENT_MODES:
        proxy_modes.append(mode)
        mode = None
    host, port = parse_listen(args.listen or settings.listen)
    opts: dict[str, Any] = {
        "listen_host": host,
        "listen_port": port,
        "mode": proxy_modes or [settings.mode],
        "egress_policy": args.policy,
        "egress_at": args.at.isoformat() if args.at else None,
        "egress_phase": args.phase,
        "egress_mode": mode,
        "egress_legal_status": args.legal_status.value if args.legal_status else None,
        "egress_block": args.block,
        "egress_log": args.log,
        "egress_log_all": args.log_all,
        "egress_metrics": args.metrics,
        "egress_db": args.db,
        "egress_allow_empty": args.allow_empty,
        "egress_resolver": args.resolver,
        "egress_control": args.control,
        "egress_pac_listen": args.pac_listen,
        "egress_pac_proxy": args.pac_proxy,
        "egress_pac_direct": list(args.pac_direct),
    }
    if args.confdir:
        opts["confdir"] = args.confdir
    return opts, list(args.setoptions)


def cmd_proxy(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)
    try:
        opts, sets = build_options(args, policy.settings.proxy)
    except ValueError as exc:
        print(f"egress-filter proxy: {exc}", file=sys.stderr)
        return 2
    print_legal_notices("egress-filter proxy", policy, args)
    import asyncio

    try:
        return asyncio.run(_serve(opts, sets))
    except KeyboardInterrupt:
        return 0


async def _serve(opts: dict[str, Any], sets: list[str]) -> int:
    import asyncio
    import logging
    import signal

    from mitmproxy import exceptions, hooks
    from mitmproxy.addons import termlog
    from mitmproxy.options import Options
    from mitmproxy.tools.dump import DumpMaster

    from proxy_addons.egress_filter import EgressFilter

    # As mitmdump does: the root logger passes everything, termlog_verbosity
    # filters; chatty libraries are held at warnings.
    logging.getLogger().setLevel(logging.DEBUG)
    for name in ("asyncio", "hpack", "quic", "tornado", "passlib"):
        logging.getLogger(name).setLevel(logging.WARNING)
    options = Options()
    # mitmproxy's log goes to stderr, so stdout carries only the event log (its default).
    master = DumpMaster(options, with_termlog=False, with_dumper=False)
    master.addons.add(termlog.TermLog(out=sys.stderr))  # type: ignore[no-untyped-call]
    addon = EgressFilter()
    master.addons.add(addon)  # type: ignore[no-untyped-call]
    try:
        options.update(**opts)  # type: ignore[no-untyped-call]
        if sets:
            options.set(*sets)
        if addon.holder is None:  # no egress option differed from its default: configure once anyway
            master.addons.invoke_addon_sync(addon, hooks.ConfigureHook(set(options.keys())))  # type: ignore[no-untyped-call]
    except exceptions.OptionsError as exc:
        print(f"egress-filter proxy: {exc}", file=sys.stderr)
        return 1
    loop = asyncio.get_running_loop()

    def stop() -> None:
        notify.stopping()
        master.shutdown()  # type: ignore[no-untyped-call]

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    errors = ListenErrors()
    logging.getLogger("mitmproxy.addons.proxyserver").addFilter(errors)
    master.addons.add(Ready(options))  # type: ignore[no-untyped-call]
    try:
        await master.run()
    except SystemExit as exc:  # mitmproxy's errorcheck exits when a server failed to start
        notify.status(errors.first or "the proxy failed to start (see its log)")
        return int(exc.code or 0)
    finally:
        logging.getLogger("mitmproxy.addons.proxyserver").removeFilter(errors)
    return 0


class ListenErrors:
    """A logging filter on mitmproxy's proxy server: keeps the first error (for
    ``STATUS=``) and words a busy port in this command's flags, not mitmproxy's
    ``--mode regular@PORT``."""

    def __init__(self) -> None:
        self.first: str | None = None

    def filter(self, record: Any) -> bool:
        import logging

        if record.levelno < logging.ERROR:
            return True
        import re

        text = record.getMessage()
        head, hint, _ = text.partition("\nTry specifying a different port")  # mitmproxy's --mode advice
        failed = re.match(r"(?:\[Errno \d+\] )?(.*?) ?failed to listen on (\S+) with (.*)", head, re.S)
        if failed:
            # "[Errno 98] HTTP(S) proxy failed to listen on H:P with [Errno 98] error while
            # attempting to bind on address ('H', P): address already in use"
            what, where, why = failed.groups()
            flag = " (--listen)" if hint else ""  # the port came from --listen, not a @PORT mode
            text = f"{what or 'proxy'} cannot listen on {where}{flag}: {why.rsplit(': ', 1)[-1]}"
            record.msg, record.args = text, None
        if self.first is None:
            self.first = text
        return True


class Ready:
    """An addon whose ``running`` hook comes after mitmproxy bound every server:
    only then the banner, and ``READY=1`` to a service manager."""

    def __init__(self, options: Any) -> None:
        self.options = options

    def running(self) -> None:
        import os

        options = self.options
        confdir = Path(options.confdir).expanduser()
        where = f"{options.listen_host or '*'}:{options.listen_port}"
        print(f"egress-filter proxy: listening on {where} ({', '.join(options.mode)}); "
              f"mitmproxy CA: {confdir / 'mitmproxy-ca-cert.pem'}; "
              f"reload the policy: kill -HUP {os.getpid()}", file=sys.stderr, flush=True)
        notify.ready(f"proxy listening on {where}")
