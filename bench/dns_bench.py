"""DNS benchmark: egress-filter dns against dnsmasq and unbound, in one run.

    python -m bench.dns_bench [--seconds 3] [--skip-1m] [--workers N] [--latency-runs 3] [--json FILE]
                              [--no-plain] [--compare REF [--rounds N] [--cold]]

All three servers get the same 100,000-domain blocklist (dnsmasq
``address=/d/``, unbound ``local-zone: d always_nxdomain``, ours a policy
list in phase ``full``) and the same upstream: a dnsmasq on loopback that
answers every name under ``allowed.example`` itself (authoritative-style,
``address=/allowed.example/192.0.2.1``).  dnsperf sends 20% blocked names
and 80% allowed names:

- cache-warm: the allowed names are 1,000 names asked before the run;
- cache-cold: every allowed name is new (a fresh prefix per dnsperf run), so
  each one is forwarded.

For each server and mode it finds the highest rate it keeps up with under
1% loss (a closed-loop probe gives the starting rate, then open-loop ``-Q``
rates go up until one fails and are bisected below it: ``find_peak``),
measures p50 and p99 latency at half of *our* peak rate (the same offered
load for all), and reads each server's RSS and peak RSS (VmHWM).
unbound gets ``so-rcvbuf: 4m`` like ours; dnsmasq has no such option.  Then each server is started with a
1,000,000-domain list for its RSS and start-up time.  The server runs on CPU
1, dnsperf and the upstream on CPU 0 (``taskset``); ``--workers`` processes are left
unpinned, since their point is to use both cores.  On a shared machine every
process of the run (each server, the upstream, dnsperf) gets the same raised
priority (``nice -n -10``, when allowed), so that other work is not scheduled
in front of them; dnsperf gets 4 MiB socket buffers (``-b``), so answers are
not lost in the client while it waits for its core.  Latency is measured
``--latency-runs`` times and the median is reported; p50/p99 leave out the
first half second of each run (dnsperf's start-up burst, see ``latency_at``),
and the p99 over all answers is printed beside it.
Every run is bounded (``-l`` seconds, a fixed number of steps); everything
binds 127.0.0.1 only.

``--compare REF`` measures only ours, cache-warm, against ours at the git
revision REF (checked out with ``git worktree`` in a temporary directory and
run from there, removed at the end): the two alternate ``--rounds`` times, so
both see the same background load, and the medians and their ratio are
printed.  This is how a restructuring shows that it kept the speed.
With ``--cold`` the two are compared cache-cold instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("dnsperf", "dnsmasq", "unbound", "taskset")
SERVER_CPU = "1"
CLIENT_CPU = "0"
WARM_ALLOWED = 1000
NICE = -10
CLIENT_BUFFER_KB = 4096
LATENCY_WARMUP = 0.5  # seconds of each latency run whose answers p50/p99 leave out (see latency_at)


def priority() -> list[str]:
    """``nice -n -10`` for every process of the run, if this user may raise priority."""
    try:
        probe = subprocess.run(["nice", "-n", str(NICE), "true"], capture_output=True, timeout=10)
        ok = probe.returncode == 0
        ok = ok and os.getpriority(os.PRIO_PROCESS, 0) >= 0 and os.geteuid() == 0
    except OSError:
        ok = False
    return ["nice", "-n", str(NICE)] if ok else []


PRIORITY = priority()


def have_tools(tools: tuple[str, ...]) -> bool:
    """Whether every tool is on PATH; if not, say which are missing and where they come from."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        print(f"missing tools: {', '.join(missing)} (Debian: apt-get install dnsperf dnsmasq unbound)",
              file=sys.stderr)
    return not missing


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def wait_dns(port: int, timeout: float) -> None:
    """Until the server answers a query on UDP."""
    query = bytes.fromhex("abcd01000001000000000000") + b"\x05probe\x07allowed\x07example\x00\x00\x01\x00\x01"
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        while time.monotonic() < deadline:
            try:
                s.sendto(query, ("127.0.0.1", port))
                s.recv(4096)
                return
            except OSError:
                time.sleep(0.1)
    raise RuntimeError(f"no DNS answer on port {port} after {timeout}s")


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) in MB, over the process and its children."""
    total = [0.0, 0.0]
    pids = [pid]
    try:
        pids += [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    for p in pids:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except OSError:
            continue
        for i, key in enumerate(("VmRSS", "VmHWM")):
            m = re.search(rf"^{key}:\s+(\d+) kB", status, re.M)
            if m:
                total[i] += int(m.group(1)) / 1024
    return total[0], total[1]


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    proc: subprocess.Popen[bytes] | None = None
    startup: float = 0.0
    cpus: str = SERVER_CPU
    cwd: Path | None = None  # where it runs: ``python -m`` imports the checkout found there first

    def start(self, timeout: float = 120.0) -> None:
        started = time.monotonic()
        self.proc = subprocess.Popen([*PRIORITY, "taskset", "-c", self.cpus, *self.argv],
                                     stdin=subprocess.DEVNULL, cwd=self.cwd,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_dns(self.port, timeout)
        except RuntimeError:
            self.stop()
            raise
        self.startup = time.monotonic() - started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss(self) -> tuple[float, float]:
        assert self.proc is not None
        return rss_mb(self.proc.pid)


@dataclass
class Run:
    sent: int
    completed: int
    qps: float
    loss: float
    latencies: list[float] = field(default_factory=list)


def dnsperf(port: int, datafile: Path, seconds: float, rate: float | None = None, outstanding: int = 200,
            verbose: bool = False) -> Run:
    cmd = [*PRIORITY, "taskset", "-c", CLIENT_CPU, "dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d",
           str(datafile), "-l", str(seconds), "-n", "1", "-t", "1", "-q", str(outstanding),
           "-b", str(CLIENT_BUFFER_KB)]
    if rate:
        cmd += ["-Q", str(int(rate))]
    if verbose:
        cmd.append("-v")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
    sent = int(re.search(r"Queries sent:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    completed = int(re.search(r"Queries completed:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    qps = float(re.search(r"Queries per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = [float(x) for x in re.findall(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M)] if verbose else []
    # An answer that says SERVFAIL or REFUSED is not a resolved query (every name of the
    # workload has an answer): a server that sheds load that way must not look fast.
    failed = sum(int(n) for n in re.findall(r"(?:SERVFAIL|REFUSED) (\d+)", out))
    if completed:
        qps *= (completed - failed) / completed
    return Run(sent, completed - failed, qps, (sent - completed + failed) / sent if sent else 1.0, lat)


class Workload:
    """Query files: 20% names from the blocklist, 80% allowed names."""

    def __init__(self, workdir: Path, blocked: list[str], seed: int = 1):
        self.workdir = workdir
        self.blocked = blocked
        self.rng = random.Random(seed)
        self.counter = 0
        self.warm_names = [f"w{i}.allowed.example" for i in range(WARM_ALLOWED)]

    def file(self, n: int, cold: bool) -> Path:
        self.counter += 1
        prefix = f"c{self.counter}x"
        rng = self.rng
        lines = []
        for i in range(n):
            if i % 5 == 0:
                lines.append(f"{rng.choice(self.blocked)} A")
            elif cold:
                lines.append(f"{prefix}{i}.allowed.example A")
            else:
                lines.append(f"{rng.choice(self.warm_names)} A")
        path = self.workdir / f"q{self.counter}.txt"
        path.write_text("\n".join(lines) + "\n")
        return path

    def warmup_file(self) -> Path:
        path = self.workdir / "warmup.txt"
        path.write_text("".join(f"{n} A\n" for n in self.warm_names))
        return path


KEPT_UP = 0.95  # of the offered rate answered, for a run to count as kept up with (dnsperf's pacing falls
# a few percent short by itself: dnsmasq, which drops rather than queues, answered 97.5% at its peak)


def find_peak(server: Server, work: Workload, cold: bool, seconds: float, log: Callable[[str], None],
              steps: int = 8) -> tuple[float, float, Run]:
    """Highest offered rate that a server keeps up with, under 1% loss: a
    closed-loop probe to start from, then open-loop ``-Q`` runs (``steps`` at
    most), up by a quarter at a time until one fails, then a bisection between
    the last rate that passed and the first that failed.  A run passes when
    under 1% of its queries went unanswered and at least ``KEPT_UP`` of the
    offered rate was answered: a server that queues rather than drops (ours,
    unbound with its 4 MiB buffer) never loses a query, because dnsperf stops
    sending while 5,000 are outstanding, so loss alone never ends the search.
    The closed-loop figure is only where the search starts, not a ceiling:
    with 200 queries outstanding a server whose answers wait on the upstream
    is held by its latency, not its CPU."""
    probe = dnsperf(server.port, work.file(200_000 if cold else 400_000, cold), seconds)
    log(f"    probe: {probe.qps:,.0f} qps closed-loop, loss {probe.loss:.2%}")
    lo, hi = 0.0, math.inf
    rate = probe.qps
    best: tuple[float, float] = (0.0, 0.0)
    for _ in range(steps):
        n = int(rate * seconds * 1.2) + 1000
        run = dnsperf(server.port, work.file(n, cold), seconds, rate=rate, outstanding=5000)
        ok = run.loss < 0.01 and run.qps >= rate * KEPT_UP
        why = "" if ok else "  (over 1%)" if run.loss >= 0.01 else "  (fell behind)"
        log(f"    -Q {rate:,.0f}: {run.qps:,.0f} qps, loss {run.loss:.2%}{why}")
        if ok:
            lo = rate
            if run.qps > best[1]:
                best = (rate, run.qps)
        else:
            hi = rate
        if hi == math.inf:
            rate *= 1.25
            continue
        if hi - lo < hi * 0.03:
            break
        rate = (lo + hi) / 2
    return best[0], best[1], probe


def latency_at(server: Server, work: Workload, cold: bool, rate: float,
               seconds: float) -> tuple[float, float, float, float]:
    """(p50, p99, loss, p99 of all answers) of an open-loop run at ``rate``.

    p50 and p99 leave out the answers of the first ``LATENCY_WARMUP`` seconds:
    about 0.13 s into every run dnsperf sends a catch-up burst of over a
    thousand queries (dnsmasq loses 1,000-1,700 of them from its socket
    buffer; a server that queues them answers them late).  The last figure
    counts every answer, burst included."""
    run = dnsperf(server.port, work.file(int(rate * seconds * 1.2) + 1000, cold), seconds, rate=rate,
                  outstanding=5000, verbose=True)
    if not run.latencies:
        return float("nan"), float("nan"), run.loss, float("nan")
    steady = sorted(run.latencies[int(rate * LATENCY_WARMUP):] or run.latencies)
    every = sorted(run.latencies)
    return (statistics.median(steady) * 1000, percentile(steady, 0.99) * 1000, run.loss,
            percentile(every, 0.99) * 1000)


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


# --- configurations -----------------------------------------------------------

def write_blocklist(workdir: Path, n: int) -> tuple[Path, list[str]]:
    names = [f"blk{i:07d}.example" for i in range(n)]
    path = workdir / f"blocklist-{n}.txt"
    path.write_text("\n".join(names) + "\n")
    return path, names


def upstream_server(workdir: Path) -> Server:
    port = free_port()
    conf = workdir / "upstream.conf"
    conf.write_text(f"port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
                    f"address=/allowed.example/192.0.2.1\nlocal-ttl=3600\ncache-size=0\npid-file=\n")
    return Server("upstream", ["dnsmasq", "-k", "-C", str(conf), "-u", "root"], port)


def dnsmasq_server(workdir: Path, names: list[str], upstream: int, tag: str) -> Server:
    port = free_port()
    conf = workdir / f"dnsmasq-{tag}.conf"
    with conf.open("w") as f:
        f.write(f"port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
                f"server=127.0.0.1#{upstream}\ncache-size=10000\npid-file=\n")
        for n in names:
            f.write(f"address=/{n}/\n")
    return Server("dnsmasq", ["dnsmasq", "-k", "-C", str(conf), "-u", "root"], port)


def unbound_server(workdir: Path, names: list[str], upstream: int, tag: str) -> Server:
    port = free_port()
    conf = workdir / f"unbound-{tag}.conf"
    with conf.open("w") as f:
        f.write(f"""server:
  interface: 127.0.0.1
  port: {port}
  do-daemonize: no
  use-syslog: no
  logfile: ""
  verbosity: 0
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: ""
  num-threads: 1
  do-not-query-localhost: no
  access-control: 127.0.0.0/8 allow
  module-config: "iterator"
  so-reuseport: no
  so-rcvbuf: 4m
  msg-cache-size: 64m
  rrset-cache-size: 128m
""")
        for n in names:
            f.write(f'  local-zone: "{n}." always_nxdomain\n')
        f.write(f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{upstream}\n')
    return Server("unbound", ["unbound", "-d", "-c", str(conf)], port)


# ``--groups``: the same list under one framework, with a second client group
# that has a network (127.0.0.2/32, not dnsperf's address), so every query
# pays the group lookup while the verdicts stay those of the plain policy.
GROUPED_POLICY = """version: 2
frameworks:
  bench:
    title: Benchmark
    kind: company_rule
    schedule:
      benchapp:
        - {{from: 2020-01-01, phase: full, source: bench}}
clients:
  default: {{frameworks: [bench]}}
  other: {{networks: [127.0.0.2/32], frameworks: [bench], mode: monitor}}
apps:
  - id: benchapp
    name: Bench App
    owner: Nobody
    lists:
      - {{path: {blocklist}, as: domains}}
"""


def ours_server(workdir: Path, blocklist: Path, upstream: int, tag: str, workers: int = 1,
                groups: bool = False, transport: str = "auto") -> Server:
    port = free_port()
    policy = workdir / f"policy-{tag}.yaml"
    policy.write_text(GROUPED_POLICY.format(blocklist=blocklist) if groups else f"""version: 1
apps:
  - id: benchapp
    name: Bench App
    owner: Nobody
    legal_basis: {{order: "bench", citation: "bench"}}
    schedule:
      - {{from: 2020-01-01, phase: full, source: bench}}
    lists:
      - {{path: {blocklist}, as: domains}}
sources:
  bench: "benchmark blocklist"
""")
    argv = [sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(policy), "--listen",
            f"127.0.0.1:{port}", "--upstream", f"127.0.0.1:{upstream}", "--cache-size", "100000",
            "--workers", str(workers), "--reload-interval", "3600"]
    if transport != "auto":  # only when asked: a --compare REF from before the flag would refuse it
        argv += ["--udp-transport", transport]
    if workers == 1:
        name = "egress-filter" if transport == "auto" else f"egress-filter {transport} udp"
        return Server(name, argv, port)
    # Workers are there to use both cores, so they are not pinned (dnsperf shares CPU 0 with them).
    return Server(f"egress-filter x{workers}", argv, port, cpus="0,1")


# --- the run ------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each dnsperf run")
    ap.add_argument("--skip-1m", action="store_true", help="skip the 1,000,000-domain RSS runs")
    ap.add_argument("--workers", type=int, default=2, help="also measure ours with N SO_REUSEPORT workers")
    ap.add_argument("--latency-runs", type=int, default=3,
                    help="latency runs per server and mode (the median p99 is reported)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    ap.add_argument("--plain", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure ours with --udp-transport plain (one system call per datagram)")
    ap.add_argument("--compare", metavar="REF",
                    help="only measure ours cache-warm against ours at git revision REF, side by side")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of --compare (alternating; medians)")
    ap.add_argument("--cold", action="store_true", help="--compare cache-cold instead of cache-warm")
    ap.add_argument("--groups", type=int, metavar="ROUNDS", default=0,
                    help="only measure ours cache-warm without and with client groups, ROUNDS times each "
                         "(alternating), and print the cost of the group lookup")
    args = ap.parse_args(argv)
    if not have_tools(TOOLS):
        return 1
    load = os.getloadavg()
    print(f"# DNS benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"priority {' '.join(PRIORITY) or 'unchanged (nice -n -10 not allowed)'}")
    workdir = Path(tempfile.mkdtemp(prefix="egress-dns-bench-"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    upstream = upstream_server(workdir)
    try:
        start_on_client_cpu(upstream)
        blockfile, names = write_blocklist(workdir, 100_000)
        work = Workload(workdir, names)
        if args.groups:
            groups_cost(workdir, blockfile, upstream, work, args.groups, args.seconds)
            return 0
        if args.compare:
            compare(workdir, blockfile, upstream, work, args.compare, args.rounds, args.seconds, args.cold)
            return 0
        makers: list[Callable[[], Server]] = [
            lambda: ours_server(workdir, blockfile, upstream.port, "100k"),
            lambda: dnsmasq_server(workdir, names, upstream.port, "100k"),
            lambda: unbound_server(workdir, names, upstream.port, "100k"),
        ]
        if args.workers > 1:
            makers.insert(1, lambda: ours_server(workdir, blockfile, upstream.port, "100k-w", args.workers))
        if args.plain:  # the one-call-per-datagram path, beside the batched one (issue 13)
            makers.insert(1, lambda: ours_server(workdir, blockfile, upstream.port, "100k-p",
                                                 transport="plain"))
        for make in makers:
            server = make()
            print(f"\n## {server.name}", flush=True)
            server.start()
            try:
                figures: dict[str, dict[str, float]] = {}
                dnsperf(server.port, work.warmup_file(), 10)
                for mode in ("warm", "cold"):
                    print(f"  {mode}:", flush=True)
                    rate, qps, probe = find_peak(server, work, mode == "cold", args.seconds,
                                                 lambda s: print(s, flush=True))
                    figures[mode] = {"peak_rate": rate, "peak_qps": qps, "closed_loop_qps": probe.qps}
                rss, hwm = server.rss()
                figures["rss_mb"] = {"rss": rss, "hwm": hwm}
                results[server.name] = figures
            finally:
                server.stop()
        # Latency at half of our peak, the same offered load for every server.
        ours = results["egress-filter"]
        for make in makers:
            server = make()
            server.start()
            try:
                dnsperf(server.port, work.warmup_file(), 10)
                for mode in ("warm", "cold"):
                    half = ours[mode]["peak_qps"] / 2
                    runs = [latency_at(server, work, mode == "cold", half, args.seconds)
                            for _ in range(args.latency_runs)]
                    p99s, alls = [r[1] for r in runs], [r[3] for r in runs]
                    print(f"  {server.name} {mode} at {half:,.0f} qps: p99 "
                          f"{' / '.join(f'{x:.2f}' for x in p99s)} ms after the first {LATENCY_WARMUP} s, "
                          f"{' / '.join(f'{x:.2f}' for x in alls)} ms over all answers; loss "
                          f"{' / '.join(f'{r[2]:.2%}' for r in runs)}", flush=True)
                    results[server.name][mode].update({
                        "half_rate": half, "p50_ms": statistics.median(r[0] for r in runs),
                        "p99_ms": statistics.median(p99s), "p99_all_ms": statistics.median(alls),
                        "half_loss": max(r[2] for r in runs)})
            finally:
                server.stop()
        if not args.skip_1m:
            big, big_names = write_blocklist(workdir, 1_000_000)
            for make in (lambda: ours_server(workdir, big, upstream.port, "1m"),
                         lambda: dnsmasq_server(workdir, big_names, upstream.port, "1m"),
                         lambda: unbound_server(workdir, big_names, upstream.port, "1m")):
                server = make()
                server.start(timeout=300)
                try:
                    dnsperf(server.port, work.warmup_file(), 10)
                    run = dnsperf(server.port, work.file(20_000, False), 2, rate=5000, outstanding=2000)
                    rss, hwm = server.rss()
                    results[server.name]["1m"] = {"rss_mb": rss, "hwm_mb": hwm, "startup_s": server.startup,
                                                  "loss_at_5k": run.loss}
                finally:
                    server.stop()
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def alternate(variants: dict[str, Callable[[int], Server]], work: Workload, rounds: int,
              seconds: float, cold: bool = False) -> dict[str, list[tuple[float, float]]]:
    """Cache-warm, or with ``cold`` cache-cold, (peak QPS under 1% loss, closed-loop ceiling) of each variant,
    ``rounds`` times, the variants taking turns within each round so that all of
    them see the same background load.  ``variants`` maps a label to a function
    of the round number that builds that variant's (unstarted) server."""
    out: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for i in range(rounds):
        for name, make in variants.items():
            server = make(i)
            server.start()
            try:
                if not cold:
                    dnsperf(server.port, work.warmup_file(), 10)
                _, qps, probe = find_peak(server, work, cold, seconds, lambda s: None)
            finally:
                server.stop()
            out[name].append((qps, probe.qps))
            print(f"  round {i + 1} {name}: {qps:,.0f} qps under 1% loss ({probe.qps:,.0f} closed-loop)",
                  flush=True)
    return out


def groups_cost(workdir: Path, blockfile: Path, upstream: Server, work: Workload, rounds: int,
                seconds: float) -> None:
    """Cache-warm peak QPS of ours without and with client groups, and the cost of the lookup."""
    runs = alternate({
        "without groups": lambda i: ours_server(workdir, blockfile, upstream.port, f"groups-False-{i}"),
        "with groups": lambda i: ours_server(workdir, blockfile, upstream.port, f"groups-True-{i}",
                                             groups=True),
    }, work, rounds, seconds)
    plain = statistics.median(q for q, _ in runs["without groups"])
    grouped_qps = statistics.median(q for q, _ in runs["with groups"])
    print(f"cache-warm peak, median of {rounds}: without groups {plain:,.0f} qps, with groups "
          f"{grouped_qps:,.0f} qps; the group lookup costs {1 - grouped_qps / plain:+.1%}", flush=True)


def compare(workdir: Path, blockfile: Path, upstream: Server, work: Workload, ref: str, rounds: int,
            seconds: float, cold: bool = False) -> None:
    """Cache-warm (with ``cold``, cache-cold) peak QPS of this checkout and of ``ref``, alternating, with the
    medians and their ratio.  ``ref`` runs from a detached ``git worktree`` in
    ``workdir``, with this venv's interpreter and packages."""
    old = workdir / "ref"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True,
                              timeout=120).stdout.strip()

    commit = git("rev-parse", "--short", ref)
    git("worktree", "add", "--detach", str(old), ref)
    head = git("rev-parse", "--short", "HEAD")
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""

    def variant(which: str, cwd: Path) -> Callable[[int], Server]:
        def make(i: int) -> Server:
            server = ours_server(workdir, blockfile, upstream.port, f"compare-{which}-{i}")
            server.cwd = cwd
            return server
        return make

    try:
        runs = alternate({"old": variant("old", old), "new": variant("new", REPO)}, work, rounds, seconds,
                         cold)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(old)],
                       capture_output=True, timeout=120)
    new, before = (statistics.median(q for q, _ in runs[w]) for w in ("new", "old"))
    what = "cache-cold" if cold else "cache-warm"
    print(f"{what} peak, median of {rounds}: {ref} ({commit}) {before:,.0f} qps, HEAD ({head}{dirty}) "
          f"{new:,.0f} qps; new / old {new / before:.3f}", flush=True)
    new_c, before_c = (statistics.median(c for _, c in runs[w]) for w in ("new", "old"))
    print(f"closed-loop ceiling, median of {rounds}: {ref} {before_c:,.0f} qps, HEAD {new_c:,.0f} qps; "
          f"new / old {new_c / before_c:.3f}", flush=True)


def start_on_client_cpu(upstream: Server) -> None:
    """The upstream runs beside dnsperf on the client CPU, not beside the server."""
    upstream.proc = subprocess.Popen([*PRIORITY, "taskset", "-c", CLIENT_CPU, *upstream.argv],
                                     stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_dns(upstream.port, 20)


def report(results: dict[str, dict[str, dict[str, float]]]) -> None:
    nan = float("nan")
    ours = results.get("egress-filter", {})
    print("\n| server | warm QPS <1% loss (closed-loop max) | cold QPS <1% loss (closed-loop max) "
          "| warm p50 / p99 ms (p99, all answers) | cold p50 / p99 ms (p99, all answers) "
          "| RSS MB 100k (peak) | RSS MB 1M (peak) | start s 1M |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        w, c, big, mem = r.get("warm", {}), r.get("cold", {}), r.get("1m", {}), r.get("rss_mb", {})
        print(f"| {name} | {w.get('peak_qps', 0):,.0f} ({w.get('closed_loop_qps', 0):,.0f}) "
              f"| {c.get('peak_qps', 0):,.0f} ({c.get('closed_loop_qps', 0):,.0f}) "
              f"| {w.get('p50_ms', nan):.2f} / {w.get('p99_ms', nan):.2f} ({w.get('p99_all_ms', nan):.2f}) "
              f"| {c.get('p50_ms', nan):.2f} / {c.get('p99_ms', nan):.2f} ({c.get('p99_all_ms', nan):.2f}) "
              f"| {mem.get('rss', nan):.0f} ({mem.get('hwm', nan):.0f}) "
              f"| {big.get('rss_mb', nan):.0f} ({big.get('hwm_mb', nan):.0f}) "
              f"| {big.get('startup_s', nan):.1f} |")
    if ours:
        print(f"\nLatency columns: at half of our cache-warm / cache-cold peak "
              f"({ours['warm'].get('half_rate', nan):,.0f} / {ours['cold'].get('half_rate', nan):,.0f} qps), "
              "the same offered load for every server.")
    print()
    for peer in ("egress-filter plain udp", "dnsmasq", "unbound"):
        if peer in results and ours:
            for mode in ("warm", "cold"):
                for key, what in (("peak_qps", "<1% loss"), ("closed_loop_qps", "closed-loop")):
                    mine, theirs = ours[mode][key], results[peer][mode][key]
                    ratio = f"{mine / theirs:.2f}" if theirs else "n/a (peer met <1% loss at no rate)"
                    print(f"ours / {peer}, cache-{mode} QPS ({what}): {ratio}")
                mine, theirs = ours[mode].get("p99_all_ms", nan), results[peer][mode].get("p99_all_ms", nan)
                print(f"ours / {peer}, cache-{mode} p99 over all answers at half our peak: "
                      f"{mine / theirs if theirs else nan:.2f}")
            if "1m" in results[peer] and "1m" in ours:
                print(f"ours / {peer}, RSS with 1M domains: "
                      f"{ours['1m']['rss_mb'] / results[peer]['1m']['rss_mb']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
