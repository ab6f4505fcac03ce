"""``egress-filter run``: the DNS resolver and the proxy together, as ``make run`` starts them.

Each server runs as its own child process (``egress-filter dns`` and
``egress-filter proxy``), so each keeps its own event loop and signal
handling; this process only starts them, prints how to use them, forwards
SIGHUP (policy reload) and, on Ctrl-C or SIGTERM, stops both by PID and waits.

"Running" is printed only once every child has sent ``READY=1`` to the
``$NOTIFY_SOCKET`` run gave it (``runtime.notify``: the sd_notify protocol, so
the same servers under systemd say the same).  A child that exits first, or
is not ready within ``--start-timeout``, makes run stop the others and exit 1
with that child's ``STATUS=`` (its error) and the run flag that places it.
With the event store on (the default, ``--db``), both servers write the one
SQLite file and a third child, ``egress-filter dashboard``, serves it on
loopback.  The proxy resolves the names it dials through the DNS resolver
(``proxy --resolver``), so DNS-level blocks and CNAME inspection apply to
proxied traffic too.

One pause covers both servers: this process serves the control socket
(``--control``, the default path otherwise) and relays each request to the
children's own sockets, in a private directory (``runtime.control.Relay``);
the dashboard's switch talks to this socket too.
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from policies.addresses import join_hostport, split_hostport
from runtime import notify
from runtime.args import add_policy_args, load_or_exit, print_legal_notices

from .dashboard_cli import DEFAULT_DB

DEFAULT_DNS = "127.0.0.1:5353"
DEFAULT_PROXY = "127.0.0.1:8080"
DEFAULT_DASHBOARD = "127.0.0.1:8088"


def register(sub: Any) -> None:
    p = sub.add_parser("run", help="start the DNS resolver and the proxy together (what make run does)",
                       description="Start the DNS resolver, the proxy and the dashboard as child "
                                   "processes; report running only once each has said it is ready.")
    add_policy_args(p, serving=True)
    p.add_argument("--dns-listen", default=DEFAULT_DNS, metavar="HOST:PORT",
                   help=f"where the DNS resolver listens, UDP and TCP (default {DEFAULT_DNS})")
    p.add_argument("--proxy-listen", default=DEFAULT_PROXY, metavar="HOST:PORT",
                   help=f"where the proxy listens (default {DEFAULT_PROXY})")
    p.add_argument("--upstream", action="append", metavar="UPSTREAM",
                   help="DNS upstream: IP[:PORT], tls://HOST[:853][#NAME] or https://HOST/dns-query "
                        "(repeatable; default: the resolver's default)")
    p.add_argument("--upstream-ca", metavar="FILE", help="CA bundle for tls:// and https:// upstreams")
    p.add_argument("--mode", choices=["enforce", "monitor"], help="override the policy's mode")
    p.add_argument("--log", default="-", metavar="FILE|-",
                   help="event log for both servers (default: stdout)")
    p.add_argument("--no-proxy", action="store_true", help="start only the DNS resolver")
    p.add_argument("--db", default=DEFAULT_DB, metavar="FILE",
                   help=f"event store both servers share and the dashboard reads (default {DEFAULT_DB})")
    p.add_argument("--no-db", action="store_true", help="no event store, no dashboard")
    p.add_argument("--dashboard-listen", default=DEFAULT_DASHBOARD, metavar="HOST:PORT",
                   help=f"where the dashboard listens (default {DEFAULT_DASHBOARD}, loopback)")
    p.add_argument("--no-dashboard", action="store_true", help="store events but start no dashboard")
    p.add_argument("--start-timeout", type=float, default=60.0, metavar="SECONDS",
                   help="how long each server may take to report ready before run gives up (default 60)")
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


def resolver_address(listen: str) -> str:
    """Where the proxy asks the DNS filter listening on ``listen``: a wildcard means loopback."""
    host, port = split_hostport(listen, 53, default_host="127.0.0.1")
    if host in ("0.0.0.0", "localhost"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return join_hostport(host, port)


FLAGS = {"dns": "--dns-listen", "proxy": "--proxy-listen", "dashboard": "--dashboard-listen"}
RELOAD_TIMEOUT = 60.0  # seconds run waits for its servers' READY=1 after a SIGHUP
MAX_NOTIFY = 4096  # bytes of one notification read; systemd's own limit is larger, ours say little


def cmd_run(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)  # fail fast, with file:line errors, before starting anything
    print_legal_notices("egress-filter run", policy, args)
    me = [sys.executable, "-m", "egress_filter.cli"]
    common = _child_args(args)
    from runtime.control import OFF, Relay, start_for

    private = tempfile.mkdtemp(prefix="egress-run-control-")  # 0700: the children's sockets
    sockets = {} if args.control == OFF else {n: os.path.join(private, f"{n}.sock") for n in ("dns", "proxy")}
    dns_cmd = [*me, "dns", "--listen", args.dns_listen, *common, "--control", sockets.get("dns", OFF)]
    for up in args.upstream or []:
        dns_cmd += ["--upstream", up]
    if args.upstream_ca:
        dns_cmd += ["--upstream-ca", args.upstream_ca]
    commands = {"dns": dns_cmd}
    if not args.no_proxy:
        # One resolver: the proxy looks its upstream names up through the DNS filter beside it.
        commands["proxy"] = [*me, "proxy", "--listen", args.proxy_listen,
                             "--resolver", resolver_address(args.dns_listen), *common,
                             "--control", sockets.get("proxy", OFF)]
    else:
        sockets.pop("proxy", None)
    control = start_for(args.control, Relay(sockets), "egress-filter run") if sockets else None
    if not args.no_db and not args.no_dashboard:
        # The dashboard's switch talks to this socket, or to none: never to another server's.
        commands["dashboard"] = [*me, "dashboard", "--listen", args.dashboard_listen, "--db", args.db,
                                 "--control", control.path if control else OFF,
                                 *(["--policy", args.policy] if args.policy else [])]
    try:
        with tempfile.TemporaryDirectory(prefix="egress-filter-run-") as tmp:
            return Supervisor(args, commands, Path(tmp)).run()
    finally:
        if control is not None:
            control.close()
        shutil.rmtree(private, ignore_errors=True)


class Supervisor:
    """Starts each server with its own ``$NOTIFY_SOCKET`` (a datagram socket in a
    private directory), waits for every ``READY=1``, forwards SIGHUP and stops
    them all by PID.  Its own manager (systemd) hears from it the same way."""

    def __init__(self, args: argparse.Namespace, commands: dict[str, list[str]], tmp: Path):
        self.args = args
        self.commands = commands
        self.tmp = tmp
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self.sockets: dict[str, socket.socket] = {}
        self.status: dict[str, str] = {}
        self.stopping = False
        self.reload_asked = False

    def run(self) -> int:
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        try:
            code = self._supervise()
        finally:
            self._stop_all()
            for sock in self.sockets.values():
                sock.close()
        # A server that failed while stopping fails the run too.  Ctrl-C in a terminal
        # reaches every server as well, and 130 is how a Python one says it stopped for it.
        clean = (0, -signal.SIGTERM, -signal.SIGINT, 130, None)
        failed = [f"{n} ({c.returncode})" for n, c in self.children.items() if c.returncode not in clean]
        if failed:
            print(f"egress-filter run: {', '.join(failed)} did not stop cleanly", file=sys.stderr, flush=True)
        return 1 if failed else code

    def _stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _hup(self, signum: int, frame: object) -> None:
        self.reload_asked = True

    def _supervise(self) -> int:
        for name, cmd in self.commands.items():
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            path = self.tmp / f"{name}.notify"
            sock.bind(str(path))
            sock.setblocking(False)
            self.sockets[name] = sock
            env = {**os.environ, notify.ENV: str(path)}
            self.children[name] = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, env=env)
            print(f"egress-filter run: started the {name} server, pid {self.children[name].pid}; "
                  f"waiting for it to be ready", file=sys.stderr, flush=True)
        waiting = set(self.children)
        deadline = time.monotonic() + self.args.start_timeout
        while waiting:
            for name in self._receive(0.2):
                waiting.discard(name)
            if self.stopping:
                return 0
            failed = self._exited(waiting)
            if failed:
                self._receive(0)  # a STATUS= sent just before the exit: the server's own error
                code = self.children[failed].returncode
                return self._fail(failed, self.status.get(failed, f"exited with code {code}"))
            if time.monotonic() > deadline:
                late = sorted(waiting)[0]
                return self._fail(late, f"was not ready within {self.args.start_timeout:g} s "
                                        f"(--start-timeout)")
        _banner(self.args, self.children)
        notify.ready("serving: " + ", ".join(f"{n} pid {c.pid}" for n, c in self.children.items()))
        return self._serve()

    def _serve(self) -> int:
        reloading: set[str] = set()
        reload_deadline = 0.0
        while not self.stopping:
            if self.reload_asked and not reloading:
                self.reload_asked = False
                notify.reloading()
                reloading = {n for n, c in self.children.items() if c.poll() is None}
                reload_deadline = time.monotonic() + RELOAD_TIMEOUT
                for child in self.children.values():
                    child.send_signal(signal.SIGHUP)
            for name in self._receive(0.2):
                reloading.discard(name)
            if self.stopping:  # Ctrl-C reaches the servers too: their exit now is no failure
                break
            if reloading and time.monotonic() > reload_deadline:
                print(f"egress-filter run: no READY=1 after the reload from {', '.join(sorted(reloading))}",
                      file=sys.stderr, flush=True)
                reloading = set()
                reload_deadline = 0.0
                notify.ready("reload: not every server answered")
            elif reload_deadline and not reloading:
                reload_deadline = 0.0
                notify.ready("policy reloaded by every server")
            failed = self._exited(set(self.children))
            if failed:
                print(f"egress-filter run: the {failed} server exited with code "
                      f"{self.children[failed].returncode}; stopping", file=sys.stderr, flush=True)
                return 1
        return 0

    def _receive(self, timeout: float) -> list[str]:
        """The servers that sent READY=1 within ``timeout``; keeps each one's STATUS=."""
        ready: list[str] = []
        names = {sock.fileno(): name for name, sock in self.sockets.items()}
        try:
            readable, _, _ = select.select(list(names), [], [], timeout)
        except InterruptedError:  # a signal: the caller looks at its flags
            return ready
        for fd in readable:
            name = names[fd]
            for _ in range(64):  # bounded: a chatty server cannot hold the loop
                try:
                    fields = notify.parse(self.sockets[name].recv(MAX_NOTIFY))
                except BlockingIOError:
                    break
                if "STATUS" in fields:
                    self.status[name] = fields["STATUS"]
                if fields.get("READY") == "1":
                    ready.append(name)
        return ready

    def _exited(self, names: set[str]) -> str | None:
        for name in self.children:
            if name in names and self.children[name].poll() is not None:
                return name
        return None

    def _fail(self, name: str, why: str) -> int:
        why = why.replace("--listen", FLAGS[name])  # the server's own flag, as run spells it
        addr = getattr(self.args, FLAGS[name][2:].replace("-", "_"))
        message = f"the {name} server ({FLAGS[name]} {addr}) failed to start: {why}"
        print(f"egress-filter run: {message}; stopping the others", file=sys.stderr, flush=True)
        notify.status(message)
        return 1

    def _stop_all(self) -> None:
        notify.stopping()
        for child in self.children.values():
            if child.poll() is None:
                child.terminate()
        deadline = time.monotonic() + 10
        for child in self.children.values():
            try:
                child.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


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
