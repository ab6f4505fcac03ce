"""Soak benchmark: egress-filter dns and proxy under steady load, with reloads, for a long time.

    python -m bench.soak [--minutes 30] [--qps 5000] [--clients 50] [--no-peer] [--json FILE]

Data flow.  The bench starts, all on 127.0.0.1 with random ports:

- an upstream (dnsmasq, answering every name under ``allowed.example``
  itself with a 60 s TTL, so allowed names keep being forwarded);
- ``egress-filter dns`` on a policy that blocks 10,000 ``blk*.example`` names,
  with ``--log`` and ``--metrics``;
- a TLS origin (``bench.proxy_bench``'s) and ``egress-filter proxy`` (real
  mitmproxy in-process) on the same policy, with ``--log`` and ``--metrics``.

Then, for ``--minutes``:

- dnsperf sends ``--qps`` queries a second, 20% blocked names and 80%
  allowed (``-v``: each answer's rcode and latency is streamed back, checked
  against what the name should get, and binned for p99);
- every 2 s the policy file is swapped between two valid policies (both
  block the same names; the second adds an app) and both servers get SIGHUP;
  every 10th swap writes a broken file instead, which must be refused while
  the last good policy stays (checked by every blocked name still getting
  NXDOMAIN, and by the event log still blocking);
- ``--clients`` proxy clients (one process, asyncio) each hold a tunnel:
  ``CONNECT 127.0.0.1:<origin>``, TLS with an SNI; ``allowed.example``
  passes through to the origin (a GET must get 200), a blocked name must be
  refused (the tunnel closed before TLS completes);
- every 10 s the bench reads VmRSS of each server from ``/proc/PID/status``.

At the end it reads the servers' metrics (``egress_{dns,proxy}_events_*``),
counts the lines of each event log, and prints per metric ours, the target
and PASS/FAIL:

- RSS flat within 10%: the mean of the last window against the mean of the
  first window after warm-up (window: 10 minutes, or half the time after
  warm-up on runs under 22 minutes; warm-up: 2 minutes, or a sixth of a run
  under 12 minutes);
- 0 lost queries (dnsperf's sent minus completed) and 0 wrong answers;
- 0 uncounted lost events: events the servers must have emitted (one per
  blocked DNS answer; one per proxy block decision, from
  ``egress_proxy_decisions_total``) minus written, dropped, write errors,
  unserialisable and still queued.  The log's line count must equal the
  written counter.

The peer (issue 8: each benchmark runs its peer in the same run): Unbound,
same blocklist (``local-zone: always_nxdomain``), same upstream, the same
dnsperf load and the same SIGHUP every 2 s (Unbound re-reads its config on
SIGHUP), for the same duration, *after* ours, so the two never share the
CPUs.  That doubles the run time; ``--no-peer`` skips it.  Ratios are ours /
Unbound's.

For 24 h: ``python -m bench.soak --minutes 1440 --json soak-24h.json``
(the bench's own memory does not grow with the duration: latencies are
binned, answers are streamed; the event logs in the temporary directory do
grow, by one line per blocked query and per refused tunnel: about 86 million
lines a day at 5k qps, so give ``$TMPDIR`` room, tens of GB for 24 h).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.dns_bench import free_port, have_tools, rss_mb, wait_dns
from bench.proxy_bench import make_origin_pki, run_origin

REPO = Path(__file__).resolve().parents[1]
TOOLS = ("dnsperf", "dnsmasq", "unbound")
BLOCKED = 10_000
ALLOWED = 20_000
RELOAD_EVERY = 2.0
BROKEN_EVERY = 10  # every 10th reload writes a broken policy
RSS_EVERY = 10.0
BLOCKED_SNI = "blk0000007.example"
ALLOWED_SNI = "allowed.example"
BROKEN_POLICY = "version: 1\napps: [ {id: broken, name: \n"


# --- latency bins ---------------------------------------------------------------------

class Latencies:
    """A log-binned histogram (1 us to 100 s, 2% wide bins): p99 over a run of any length."""

    STEP = math.log(1.02)

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0

    def add(self, seconds: float) -> None:
        b = int(math.log(max(seconds, 1e-6) / 1e-6) / self.STEP)
        self.bins[b] = self.bins.get(b, 0) + 1
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper edge of the bin holding quantile ``q``, in ms."""
        if not self.count:
            return float("nan")
        want = q * self.count
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= want:
                return 1e-3 * math.exp((b + 1) * self.STEP)
        return float("nan")


# --- the DNS load ----------------------------------------------------------------------

@dataclass
class DnsLoad:
    """One dnsperf run for the whole soak; its answers are checked as they arrive."""

    port: int
    datafile: Path
    seconds: float
    qps: int
    latencies: Latencies = field(default_factory=Latencies)
    window: Latencies = field(default_factory=Latencies)  # since the last RSS sample, for the progress lines
    steady: Latencies = field(default_factory=Latencies)  # after the warm-up (see rss_flat)
    steady_from: float = math.inf  # time.monotonic() when the warm-up ends
    blocked_answers: int = 0
    allowed_answers: int = 0
    wrong: dict[str, int] = field(default_factory=dict)
    sent: int = -1
    completed: int = -1
    summary: str = ""
    proc: subprocess.Popen[str] | None = None
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["dnsperf", "-s", "127.0.0.1", "-p", str(self.port), "-d", str(self.datafile),
             "-l", str(self.seconds), "-Q", str(self.qps), "-q", "2000", "-t", "5", "-b", "4096", "-v"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        verbose = re.compile(r"^> (\S+) (\S+) \S+ ([\d.]+)$")
        tail: list[str] = []
        for line in self.proc.stdout:
            m = verbose.match(line)
            if m is None:
                tail.append(line)
                continue
            rcode, name, latency = m.group(1), m.group(2), float(m.group(3))
            self.latencies.add(latency)
            self.window.add(latency)
            if time.monotonic() >= self.steady_from:
                self.steady.add(latency)
            if name.startswith("blk"):
                self.blocked_answers += 1
                expect = "NXDOMAIN"
            else:
                self.allowed_answers += 1
                expect = "NOERROR"
            if rcode != expect:
                key = f"{'blocked' if expect == 'NXDOMAIN' else 'allowed'} got {rcode}"
                self.wrong[key] = self.wrong.get(key, 0) + 1
        self.summary = "".join(tail)
        sent = re.search(r"Queries sent:\s+(\d+)", self.summary)
        completed = re.search(r"Queries completed:\s+(\d+)", self.summary)
        self.sent = int(sent.group(1)) if sent else -1
        self.completed = int(completed.group(1)) if completed else -1

    def wait(self, timeout: float) -> None:
        assert self.proc is not None and self.thread is not None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.thread.join(30)


def write_queries(workdir: Path) -> Path:
    """20% blocked names, 80% allowed, shuffled; dnsperf loops over the file."""
    rng = random.Random(8)
    lines = [f"blk{rng.randrange(BLOCKED):07d}.example A" if i % 5 == 0 else
             f"a{rng.randrange(ALLOWED)}.allowed.example A" for i in range(100_000)]
    path = workdir / "queries.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# --- servers ---------------------------------------------------------------------------

def policy_text(blocklist: Path, extra_app: bool) -> str:
    text = f"""version: 1
apps:
  - id: soakapp
    name: Soak App
    owner: Nobody
    legal_basis: {{order: "bench", citation: "bench"}}
    schedule:
      - {{from: 2020-01-01, phase: full, source: bench}}
    lists:
      - {{path: {blocklist}, as: domains}}
"""
    if extra_app:
        text += """  - id: otherapp
    name: Other App
    owner: Nobody
    legal_basis: {order: "bench", citation: "bench"}
    schedule:
      - {from: 2020-01-01, phase: full, source: bench}
    domains: [other-soak.example]
"""
    return text + 'sources:\n  bench: "soak benchmark"\n'


@dataclass
class Proc:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    stderr: Path | None = None

    def start(self, stderr: Path) -> None:
        self.stderr = stderr
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen(self.argv, cwd=REPO, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def wait_tcp(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing listening on port {port} after {timeout}s")


def metrics(port: int) -> dict[str, float]:
    """Prometheus text from a server's --metrics port, summed by metric name and first label."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = out.get(key, 0.0) + float(value)
        except ValueError:
            continue
        name = key.split("{", 1)[0]
        if name != key:
            out[name] = out.get(name, 0.0) + float(value)
    return out


def count_lines(path: Path) -> tuple[int, int]:
    """(whole JSON lines, lines that do not parse) of an event log."""
    good = bad = 0
    if not path.exists():
        return 0, 0
    with path.open("rb") as f:
        for line in f:
            try:
                json.loads(line)
                good += 1
            except ValueError:
                bad += 1
    return good, bad


# --- the proxy load --------------------------------------------------------------------

async def _client(proxy_port: int, origin_port: int, context: ssl.SSLContext, blocked_share: float,
                  deadline: float, seed: int, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    target = f"127.0.0.1:{origin_port}"
    while time.monotonic() < deadline:
        blocked = rng.random() < blocked_share
        sni = BLOCKED_SNI if blocked else ALLOWED_SNI
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", proxy_port), 10)
            writer.write(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            reply = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            if not reply.startswith(b"HTTP/1.1 200"):
                counts["connect_failed"] += 1
                continue
            try:
                await asyncio.wait_for(writer.start_tls(context, server_hostname=sni), 10)
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ConnectionError):
                counts["blocked_refused" if blocked else "allowed_failed"] += 1
                continue
            if blocked:
                counts["blocked_passed"] += 1
                continue
            for _ in range(5):  # a few keep-alive requests, with think time: 50 tunnels stay open
                writer.write(f"GET / HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                length = int(re.search(rb"content-length: (\d+)", head, re.I).group(1))  # type: ignore[union-attr]
                await asyncio.wait_for(reader.readexactly(length), 10)
                counts["allowed_ok" if head.startswith(b"HTTP/1.1 200") else "allowed_failed"] += 1
                await asyncio.sleep(0.2)
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError, ConnectionError,
                asyncio.LimitOverrunError, AttributeError):
            counts["blocked_refused" if blocked else "allowed_failed"] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(0.1)


def run_clients(proxy_port: int, origin_port: int, cafiles: list[str], clients: int, seconds: float,
                out: str) -> None:
    """The proxy clients' process: ``clients`` tunnels at once until ``seconds`` are over."""
    context = ssl.create_default_context()
    for ca in cafiles:
        context.load_verify_locations(ca)
    counts = dict.fromkeys(("allowed_ok", "allowed_failed", "blocked_refused", "blocked_passed",
                            "connect_failed"), 0)
    deadline = time.monotonic() + seconds

    async def main() -> None:
        await asyncio.gather(*(_client(proxy_port, origin_port, context, 0.2, deadline, i, counts)
                               for i in range(clients)))

    asyncio.run(main())
    Path(out).write_text(json.dumps(counts))


# --- one soak --------------------------------------------------------------------------

@dataclass
class Sample:
    t: float
    rss_mb: dict[str, float]
    p99_ms: float  # of the answers since the previous sample


@dataclass
class Soak:
    label: str
    samples: list[Sample] = field(default_factory=list)
    reloads: int = 0
    broken_reloads: int = 0
    dns: dict[str, float] = field(default_factory=dict)
    events: dict[str, dict[str, float]] = field(default_factory=dict)
    proxy: dict[str, int] = field(default_factory=dict)


def warmup_seconds(seconds: float) -> float:
    return min(120.0, seconds / 6)


def rss_flat(samples: list[Sample], server: str, seconds: float) -> tuple[float, float, float]:
    """(first window mean, last window mean, drift) of a server's RSS, after warm-up."""
    warmup = warmup_seconds(seconds)
    window = min(600.0, (seconds - warmup) / 2)  # a 30-minute run: 2 min warm-up, then 10 + 8 + 10
    xs = [(s.t, s.rss_mb[server]) for s in samples if server in s.rss_mb]
    first = [r for t, r in xs if warmup <= t < warmup + window]
    last = [r for t, r in xs if t >= seconds - window]
    if not first or not last:
        return float("nan"), float("nan"), float("nan")
    a, b = statistics.fmean(first), statistics.fmean(last)
    return a, b, b / a - 1


def soak(label: str, servers: dict[str, int], dns_port: int, queries: Path, seconds: float, qps: int,
         reload_files: list[tuple[Path, str]] | None, hup: list[int],
         reload_every: float = RELOAD_EVERY) -> tuple[Soak, DnsLoad]:
    """Drive dnsperf for ``seconds``, reload every 2 s, sample RSS every 10 s."""
    result = Soak(label)
    load = DnsLoad(dns_port, queries, seconds, qps)
    start = time.monotonic()
    load.steady_from = start + warmup_seconds(seconds)
    load.start()
    next_rss = start
    next_reload = start + reload_every if reload_every > 0 else math.inf
    good = 0
    out = sys.stderr  # progress: one line per RSS sample
    while time.monotonic() < start + seconds:
        now = time.monotonic()
        if now >= next_rss:
            sample = Sample(round(now - start, 1), {n: round(rss_mb(p)[0], 1) for n, p in servers.items()},
                            round(load.window.quantile(0.99), 2))
            result.samples.append(sample)
            print(f"[{label}] t={sample.t:7.1f}s rss " + "  ".join(f"{n} {v:.1f} MB"
                                                                   for n, v in sample.rss_mb.items())
                  + f"  answers {load.blocked_answers + load.allowed_answers:,}"
                  f"  p99 of the last {RSS_EVERY:g} s {sample.p99_ms:.2f} ms", file=out, flush=True)
            load.window = Latencies()
            next_rss += RSS_EVERY
        if now >= next_reload:
            if reload_files is not None:
                path, _ = reload_files[0]
                broken = (result.reloads + 1) % BROKEN_EVERY == 0
                text = BROKEN_POLICY if broken else reload_files[1 + good % 2][1]
                good += 0 if broken else 1
                result.broken_reloads += broken
                tmp = path.with_suffix(".tmp")
                tmp.write_text(text)
                os.replace(tmp, path)  # a whole file or the old one, never half
            for pid in hup:
                os.kill(pid, signal.SIGHUP)
            result.reloads += 1
            next_reload += reload_every
        time.sleep(max(0.0, min(next_rss, next_reload) - time.monotonic()))
    load.wait(60)
    return result, load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the soak (ours; the peer's too)")
    ap.add_argument("--qps", type=int, default=5000, help="DNS queries a second")
    ap.add_argument("--clients", type=int, default=50, help="concurrent proxy clients")
    ap.add_argument("--reload-every", type=float, default=RELOAD_EVERY,
                    help="seconds between policy reloads (0: none; to tell reload cost from load cost)")
    ap.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                    help="also soak Unbound afterwards for the same time (doubles the run)")
    ap.add_argument("--json", metavar="FILE", help="write the figures and RSS samples as JSON too")
    args = ap.parse_args(argv)
    if not have_tools(TOOLS):
        return 1
    seconds = args.minutes * 60
    load_avg = os.getloadavg()
    print(f"# Soak, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {args.minutes:g} min at "
          f"{args.qps} qps, {args.clients} proxy clients, reload every {RELOAD_EVERY:g} s; "
          f"{os.cpu_count()} CPUs, load average {load_avg[0]:.2f} {load_avg[1]:.2f} {load_avg[2]:.2f}",
          flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="egress-soak-"))
    procs: list[Proc] = []
    origin: multiprocessing.process.BaseProcess | None = None
    try:
        # upstream
        up_port = free_port()
        up_conf = workdir / "upstream.conf"
        up_conf.write_text(f"port={up_port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n"
                           "address=/allowed.example/192.0.2.1\nlocal-ttl=60\ncache-size=0\npid-file=\n")
        upstream = Proc("upstream", ["dnsmasq", "-k", "-C", str(up_conf), "-u", "root"])
        upstream.start(workdir / "upstream.err")
        procs.append(upstream)
        wait_dns(up_port, 20)
        # policy
        blocklist = workdir / "blocklist.txt"
        blocklist.write_text("".join(f"blk{i:07d}.example\n" for i in range(BLOCKED)))
        policy = workdir / "policy.yaml"
        texts = [policy_text(blocklist, False), policy_text(blocklist, True)]
        policy.write_text(texts[0])
        # ours: DNS
        dns_port, dns_metrics = free_port(), free_port()
        dns_log = workdir / "dns-events.jsonl"
        dns = Proc("egress-filter dns", [
            sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(policy),
            "--listen", f"127.0.0.1:{dns_port}", "--upstream", f"127.0.0.1:{up_port}",
            "--log", str(dns_log), "--metrics", f"127.0.0.1:{dns_metrics}", "--reload-interval", "3600"])
        dns.start(workdir / "dns.err")
        procs.append(dns)
        wait_dns(dns_port, 60)
        # ours: proxy, and its origin
        origin_ca, cert, key = make_origin_pki(workdir)
        origin_port = free_port()
        origin = multiprocessing.get_context("fork").Process(
            target=run_origin, args=(origin_port, str(cert), str(key)), daemon=True)
        origin.start()
        proxy_port, proxy_metrics = free_port(), free_port()
        proxy_log = workdir / "proxy-events.jsonl"
        confdir = workdir / "mitmproxy"
        proxy = Proc("egress-filter proxy", [
            sys.executable, "-m", "egress_filter.cli", "proxy", "--policy", str(policy),
            "--listen", f"127.0.0.1:{proxy_port}", "--log", str(proxy_log),
            "--metrics", f"127.0.0.1:{proxy_metrics}", "--confdir", str(confdir),
            "--set", f"ssl_verify_upstream_trusted_ca={origin_ca}", "--set", "egress_reload_interval=3600"])
        proxy.start(workdir / "proxy.err")
        procs.append(proxy)
        wait_tcp(proxy_port, 60)
        wait_tcp(origin_port, 20)
        wait_tcp(dns_metrics, 20)
        wait_tcp(proxy_metrics, 20)
        queries = write_queries(workdir)
        clients_out = workdir / "clients.json"
        cafiles = [str(origin_ca), str(confdir / "mitmproxy-ca-cert.pem")]
        clients = multiprocessing.get_context("spawn").Process(
            target=run_clients,
            args=(proxy_port, origin_port, cafiles, args.clients, seconds, str(clients_out)), daemon=True)
        if args.clients > 0:
            clients.start()
        ours, load = soak("ours", {"dns": dns.pid, "proxy": proxy.pid}, dns_port, queries, seconds, args.qps,
                          [(policy, ""), (policy, texts[1]), (policy, texts[0])], [dns.pid, proxy.pid],
                          args.reload_every)
        if args.clients > 0:
            clients.join(60)
            if clients.is_alive():
                clients.terminate()
        ours.proxy = json.loads(clients_out.read_text()) if clients_out.exists() else {}
        time.sleep(2)  # let the sinks drain
        for name, port, path, prefix in (("dns", dns_metrics, dns_log, "egress_dns"),
                                         ("proxy", proxy_metrics, proxy_log, "egress_proxy")):
            m = metrics(port)
            lines, torn = count_lines(path)
            figures = {k: m.get(f"{prefix}_events_{k}", float("nan"))
                       for k in ("written_total", "dropped_total", "write_errors_total",
                                 "unserialisable_total", "queued")}
            figures["lines_in_file"] = lines
            figures["torn_lines"] = torn
            if name == "dns":
                figures["emitted_expected"] = load.blocked_answers
                figures["queries_answered_server"] = m.get("egress_dns_queries_total", float("nan"))
                for k, v in m.items():  # why latency is what it is: cache flushes (reloads) and misses
                    if k.startswith(("egress_dns_cache_flushes_total{", "egress_dns_cache_lookups_total{")):
                        figures[k.removeprefix("egress_dns_")] = v
            else:
                figures["emitted_expected"] = m.get("egress_proxy_decisions_total", 0.0)  # absent: none yet
                figures["policy_changes"] = m.get("egress_proxy_policy_changes_total", float("nan"))
            accounted = sum(figures[k] for k in ("written_total", "dropped_total", "write_errors_total",
                                                 "unserialisable_total", "queued"))
            figures["uncounted_lost"] = figures["emitted_expected"] - accounted
            ours.events[name] = figures
        ours.dns = dns_figures(load)
        alive = {p.name: p.alive() for p in (dns, proxy)}
        for p in (proxy, dns):
            p.stop()
        peer: Soak | None = None
        if args.peer:
            ub_port = free_port()
            ub_conf = workdir / "unbound.conf"
            with ub_conf.open("w") as f:
                f.write(f"""server:
  interface: 127.0.0.1
  port: {ub_port}
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
  so-rcvbuf: 4m
""")
                for i in range(BLOCKED):
                    f.write(f'  local-zone: "blk{i:07d}.example." always_nxdomain\n')
                f.write(f'forward-zone:\n  name: "."\n  forward-addr: 127.0.0.1@{up_port}\n')
            unbound = Proc("unbound", ["unbound", "-d", "-c", str(ub_conf)])
            unbound.start(workdir / "unbound.err")
            procs.append(unbound)
            wait_dns(ub_port, 60)
            peer, peer_load = soak("unbound", {"dns": unbound.pid}, ub_port, queries, seconds, args.qps, None,
                                   [unbound.pid], args.reload_every)
            peer.dns = dns_figures(peer_load)
            alive["unbound"] = unbound.alive()
            unbound.stop()
    finally:
        for p in reversed(procs):
            p.stop()
        if origin is not None:
            origin.terminate()
            origin.join(5)
    ok = report(ours, peer, seconds, args.qps, alive)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "ours": asdict(ours),
                                               "peer": asdict(peer) if peer else None}, indent=2))
    shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 2


def dns_figures(load: DnsLoad) -> dict[str, float]:
    return {"sent": load.sent, "completed": load.completed, "lost": load.sent - load.completed,
            "wrong": sum(load.wrong.values()), "blocked_answers": load.blocked_answers,
            "allowed_answers": load.allowed_answers, "p50_ms": load.latencies.quantile(0.5),
            "p99_ms": load.latencies.quantile(0.99),
            "p99_steady_ms": load.steady.quantile(0.99), **{f"wrong: {k}": v for k, v in load.wrong.items()}}


def report(ours: Soak, peer: Soak | None, seconds: float, qps: int, alive: dict[str, bool]) -> bool:
    rows: list[tuple[str, str, str, str, bool | None]] = []  # metric, ours, target, theirs, pass

    def drift(s: Soak, server: str) -> tuple[str, float]:
        a, b, d = rss_flat(s.samples, server, seconds)
        return f"{a:.1f} -> {b:.1f} MB ({d:+.1%})", d

    dns_text, dns_drift = drift(ours, "dns")
    proxy_text, proxy_drift = drift(ours, "proxy")
    peer_text, peer_drift = drift(peer, "dns") if peer else ("not run (--no-peer)", float("nan"))
    rows.append(("DNS RSS drift (first vs last window)", dns_text, "within 10%", peer_text,
                 abs(dns_drift) <= 0.10))
    rows.append(("proxy RSS drift", proxy_text, "within 10%", "-", abs(proxy_drift) <= 0.10))
    d, pd = ours.dns, (peer.dns if peer else {})
    # dnsperf keeps at most 2,000 queries outstanding: a server slower than that gets fewer than --qps
    rows.append(("DNS queries sent a second (dnsperf -Q)", f"{d['sent'] / seconds:,.0f}", f"{qps:,}",
                 f"{pd['sent'] / seconds:,.0f}" if pd else "-", d["sent"] >= 0.99 * qps * seconds))
    rows.append(("lost DNS queries (sent - answered)", f"{d['lost']:,.0f} of {d['sent']:,.0f}", "0",
                 f"{pd['lost']:,.0f} of {pd['sent']:,.0f}" if pd else "-", d["lost"] == 0))
    rows.append(("wrong DNS answers", f"{d['wrong']:,.0f}", "0", f"{pd['wrong']:,.0f}" if pd else "-",
                 d["wrong"] == 0))
    for key, what in (("p99_ms", "DNS p99 latency, every answer"), ("p99_steady_ms", "DNS p99 after warm-up"),
                      ("p50_ms", "DNS p50 latency")):
        rows.append((what, f"{d[key]:.2f} ms", "-", f"{pd[key]:.2f} ms" if pd else "-", None))
    for name, e in ours.events.items():
        rows.append((f"{name} events: expected / written / dropped / write errors / queued",
                     f"{e['emitted_expected']:,.0f} / {e['written_total']:,.0f} / "
                     f"{e['dropped_total']:,.0f} / {e['write_errors_total']:,.0f} / {e['queued']:,.0f}",
                     "-", "-", None))
        rows.append((f"{name} events uncounted lost", f"{e['uncounted_lost']:,.0f}", "0", "-",
                     e["uncounted_lost"] == 0))
        rows.append((f"{name} event log lines = written counter", f"{e['lines_in_file']:,} lines, "
                     f"{e['torn_lines']} torn", f"{e['written_total']:,.0f}, 0 torn", "-",
                     e["lines_in_file"] == e["written_total"] and e["torn_lines"] == 0))
    p = ours.proxy
    rows.append(("proxy: allowed requests ok / failed", f"{p.get('allowed_ok', 0):,} / "
                 f"{p.get('allowed_failed', 0) + p.get('connect_failed', 0):,}", "failed 0", "-",
                 p.get("allowed_ok", 0) > 0 and p.get("allowed_failed", 0) + p.get("connect_failed", 0) == 0))
    rows.append(("proxy: blocked tunnels refused / passed", f"{p.get('blocked_refused', 0):,} / "
                 f"{p.get('blocked_passed', 0):,}", "passed 0", "-",
                 p.get("blocked_refused", 0) > 0 and p.get("blocked_passed", 0) == 0))
    rows.append(("reloads (of which broken)", f"{ours.reloads} ({ours.broken_reloads})", "-",
                 f"{peer.reloads} (SIGHUP only)" if peer else "-", None))
    rows.append(("servers alive at the end",
                 ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in alive.items()), "all", "-",
                 all(alive.values())))
    cache = {k: v for k, v in ours.events.get("dns", {}).items() if k.startswith("cache_")}
    if cache:
        print("\nDNS cache (ours): " + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(cache.items())))
    print("\n| metric | ours | target | unbound | verdict |\n|---|---|---|---|---|")
    for metric, mine, target, theirs, verdict in rows:
        v = "-" if verdict is None else ("PASS" if verdict else "FAIL")
        print(f"| {metric} | {mine} | {target} | {theirs} | {v} |")
    if peer and pd:
        last_ours = rss_flat(ours.samples, "dns", seconds)[1]
        last_peer = rss_flat(peer.samples, "dns", seconds)[1]
        print(f"\nours / unbound: p99 {d['p99_ms'] / pd['p99_ms']:.2f} (after warm-up "
              f"{d['p99_steady_ms'] / pd['p99_steady_ms']:.2f}); "
              f"RSS drift {dns_drift:+.1%} vs {peer_drift:+.1%}; "
              f"RSS in the last window {last_ours / last_peer:.2f}x")
    print("\nRSS samples (MB, every 10 s):")
    for s in (ours, peer):
        if s is None:
            continue
        for server in s.samples[0].rss_mb if s.samples else []:
            print(f"  {s.label} {server}: " + " ".join(f"{x.rss_mb[server]:.0f}" for x in s.samples))
        print(f"  {s.label} DNS p99 per 10 s (ms): " + " ".join(f"{x.p99_ms:.0f}" for x in s.samples[1:]))
    return all(v for *_, v in rows if v is not None)


if __name__ == "__main__":
    sys.exit(main())
