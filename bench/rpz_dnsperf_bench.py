"""RPZ at scale: Unbound fed by our RPZ vs Unbound ``local-zone`` vs our resolver, under dnsperf.

    python -m bench.rpz_dnsperf_bench [--names 100000] [--seconds 3] [--latency-runs 3] [--json FILE]

The figure for how far a company scales with egress-filter as its policy
source: the same 100,000 blocked domains served three ways, in one run, with
the method of ``bench.dns_bench`` (its servers, upstream, query mix, peak
search and latency runs are reused, so the figures compare with that
benchmark's):

- **unbound-rpz**: Unbound (``rpz:`` with ``primary:``) takes the zone from
  ``egress-filter dns --rpz`` over a real AXFR on loopback; the benchmark
  waits until Unbound answers NXDOMAIN for the last blocked name (the whole
  zone is in), then measures Unbound alone (our primary sits idle on the
  client CPU);
- **unbound-local-zone**: Unbound with the same names as ``local-zone:
  "d." always_nxdomain``;
- **egress-filter**: our resolver with the names as a policy list.

Every server gets the same dnsmasq upstream and the same query files (20%
blocked, 80% allowed; cache-warm and cache-cold); for each it finds the
highest rate under 1% loss and measures p50/p99 at half of *our* peak (the
same offered load for all).  Prints each server's QPS and p99, then the
ratios ours/theirs.  Every run is bounded; everything binds 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.dns_bench import (
    CLIENT_CPU,
    TOOLS,
    Server,
    Workload,
    dnsperf,
    find_peak,
    have_tools,
    latency_at,
    ours_server,
    start_on_client_cpu,
    unbound_server,
    upstream_server,
    write_blocklist,
)

ZONE = "default.rpz.egress-filter."
TRANSFER_DEADLINE = 300.0  # seconds for the primary to start and Unbound to hold the whole zone


def nxdomain(port: int, name: str) -> bool:
    """Does the server answer NXDOMAIN for ``name`` (A)?"""
    qname = b"".join(bytes((len(x),)) + x.encode() for x in name.split(".")) + b"\0"
    query = bytes.fromhex("beef01000001000000000000") + qname + b"\x00\x01\x00\x01"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        try:
            s.sendto(query, ("127.0.0.1", port))
            reply = s.recv(4096)
        except OSError:
            return False
    return len(reply) >= 4 and reply[:2] == query[:2] and reply[3] & 0x0F == 3


class RpzUnbound(Server):
    """Unbound whose blocklist is our zone, transferred from our primary (stopped with it)."""

    primary: Server | None = None

    def start(self, timeout: float = TRANSFER_DEADLINE) -> None:
        assert self.primary is not None
        started = time.monotonic()
        self.primary.start(timeout)
        try:
            super().start(timeout)
            deadline = time.monotonic() + timeout
            while not nxdomain(self.port, self.last_name):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Unbound did not take the whole zone within {timeout} s")
                time.sleep(0.5)
            self.startup = time.monotonic() - started  # primary start + Unbound start + the AXFR
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        super().stop()
        if self.primary is not None:
            self.primary.stop()

    last_name: str = ""


def rpz_unbound(workdir: Path, blockfile: Path, names: list[str], upstream: int) -> RpzUnbound:
    primary = ours_server(workdir, blockfile, upstream, "rpz-primary")
    primary.name = "egress-filter --rpz (primary)"
    primary.argv += ["--rpz", "--rpz-allow-unsigned", "127.0.0.1/32"]
    primary.cpus = CLIENT_CPU  # idle once the zone is transferred; off the measured server's CPU
    plain = unbound_server(workdir, [], upstream, "rpz")
    conf = Path(plain.argv[-1])
    text = conf.read_text().replace('module-config: "iterator"', 'module-config: "respip iterator"')
    text = text.replace("forward-zone:", f"""rpz:
  name: "{ZONE}"
  primary: 127.0.0.1@{primary.port}
  zonefile: "{workdir / 'unbound-secondary.rpz'}"
forward-zone:""")
    conf.write_text(text)
    server = RpzUnbound("unbound-rpz", plain.argv, plain.port)
    server.primary = primary
    server.last_name = names[-1]
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=100_000, help="blocked domains")
    ap.add_argument("--seconds", type=float, default=3.0, help="length of each dnsperf run")
    ap.add_argument("--latency-runs", type=int, default=3, help="latency runs per server and mode (median)")
    ap.add_argument("--json", metavar="FILE", help="write the figures as JSON too")
    args = ap.parse_args(argv)
    if not have_tools(TOOLS):
        return 1
    load = os.getloadavg()
    print(f"# RPZ dnsperf benchmark, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"load average {load[0]:.2f}, {args.names:,} blocked domains", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="egress-rpz-dnsperf-"))
    results: dict[str, dict[str, dict[str, float]]] = {}
    upstream = upstream_server(workdir)
    try:
        start_on_client_cpu(upstream)
        blockfile, names = write_blocklist(workdir, args.names)
        work = Workload(workdir, names)
        makers: list[Callable[[], Server]] = [
            lambda: ours_server(workdir, blockfile, upstream.port, "ours"),
            lambda: rpz_unbound(workdir, blockfile, names, upstream.port),
            lambda: unbound_server(workdir, names, upstream.port, "local-zone"),
        ]
        for make in makers:
            server = make()
            if server.name == "unbound":
                server.name = "unbound-local-zone"
            print(f"\n## {server.name}", flush=True)
            server.start(300)
            try:
                print(f"  ready in {server.startup:.1f} s", flush=True)
                figures: dict[str, dict[str, float]] = {"start": {"s": server.startup}}
                dnsperf(server.port, work.warmup_file(), 10)
                for mode in ("warm", "cold"):
                    rate, qps, probe = find_peak(server, work, mode == "cold", args.seconds,
                                                 lambda s: print(s, flush=True))
                    figures[mode] = {"peak_rate": rate, "peak_qps": qps, "closed_loop_qps": probe.qps}
                    half = results["egress-filter"][mode]["peak_qps"] / 2 if results else qps / 2
                    runs = [latency_at(server, work, mode == "cold", half, args.seconds)
                            for _ in range(args.latency_runs)]
                    figures[mode].update({"half_rate": half, "p50_ms": statistics.median(r[0] for r in runs),
                                          "p99_ms": statistics.median(r[1] for r in runs),
                                          "p99_all_ms": statistics.median(r[3] for r in runs)})
                    print(f"  {mode}: {qps:,.0f} qps under 1% loss; p99 {figures[mode]['p99_ms']:.2f} ms at "
                          f"{half:,.0f} qps", flush=True)
                results[server.name] = figures
            finally:
                server.stop()
    finally:
        upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    report(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def report(results: dict[str, dict[str, dict[str, float]]]) -> None:
    print("\n| server | ready (s) | warm QPS <1% loss (closed-loop) | warm p50 / p99 ms | "
          "cold QPS <1% loss (closed-loop) | cold p50 / p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        w, c = r["warm"], r["cold"]
        print(f"| {name} | {r['start']['s']:.1f} | {w['peak_qps']:,.0f} ({w['closed_loop_qps']:,.0f}) "
              f"| {w['p50_ms']:.2f} / {w['p99_ms']:.2f} "
              f"| {c['peak_qps']:,.0f} ({c['closed_loop_qps']:,.0f}) "
              f"| {c['p50_ms']:.2f} / {c['p99_ms']:.2f} |")
    ours = results.get("egress-filter")
    print("\nRatios a / b: QPS above 1 means a serves more; p99 below 1 means a answers sooner.")
    for a, b in (("egress-filter", "unbound-rpz"), ("egress-filter", "unbound-local-zone"),
                 ("unbound-rpz", "unbound-local-zone")):
        if a in results and b in results:
            for mode in ("warm", "cold"):
                x, y = results[a][mode], results[b][mode]
                qps = f"{x['peak_qps'] / y['peak_qps']:.2f}" if y["peak_qps"] else "n/a"
                p99 = f"{x['p99_ms'] / y['p99_ms']:.2f}" if y["p99_ms"] else "n/a"
                print(f"{a} / {b}, cache-{mode}: QPS {qps}, p99 {p99}")
    if ours:
        print(f"\nLatency at half of our peak ({ours['warm']['half_rate']:,.0f} warm / "
              f"{ours['cold']['half_rate']:,.0f} cold qps), the same offered load for every server.")


if __name__ == "__main__":
    sys.exit(main())
