"""Dashboard benchmark: what the event store costs the DNS resolver, how fast it ingests,
and how fast the events API answers over a large store.

    python -m bench.dashboard_bench [--seconds 5] [--rounds 3] [--ingest 200000]
                                    [--events 10000000] [--requests 200] [--workdir DIR]
                                    [--only dns|ingest|api]

- DNS cost: ``egress-filter dns`` cache-warm (the dns_bench workload: 20% blocked names, each
  one an event), closed-loop dnsperf, with ``--db`` off and on, alternating for ``--rounds``
  rounds; the median QPS of each and the cost (target: under 5%).  Only the QPS is compared.
  The store's writer is a process of its own, which inherits the resolver's pinned CPU; with
  ``--writer-cpu N`` one more mode, ``db-cpuN``, moves it to CPU N after start (the sizing
  question: what the store costs the resolver's own core when the writer has another).
- Ingest: ``Store.put`` of ``--ingest`` distinct events built by ``build_event`` (what the
  servers emit), timed until ``flush`` says every one is on disk (target: >= 50,000/s).
- Page speed: a store of ``--events`` rows (built in SQL, in the store's schema, with documents
  the shape of real events, 30 days, 20 apps, 1,000 clients, 200,000 names), served by a real
  ``egress-filter dashboard``; p50/p95 of ``/api/events`` for several filters over
  ``--requests`` requests each (target: p95 under 200 ms).
Everything binds 127.0.0.1; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.dns_bench import Workload, dnsperf, ours_server, upstream_server, write_blocklist
from policies import Action, Decision, Observation, Phase
from policies.events import build_event
from store import Store
from store.db import SCHEMA, connect

TARGET_COST = 0.05
TARGET_INGEST = 50_000
TARGET_P95_MS = 200.0


MODES = {"off": [], "log": ["--log", "{log}"], "db": ["--db", "{db}"],
         "log+db": ["--log", "{log}", "--db", "{db}"]}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (all its threads, none of its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stored(db: Path) -> tuple[int, int]:
    """(events stored, events the store counted as dropped) in a store the server has closed."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        row = conn.execute("SELECT value FROM counters WHERE name = 'dropped'").fetchone()
    finally:
        conn.close()
    return int(stored), int(row[0]) if row else 0


def dns_cost(workdir: Path, seconds: float, rounds: int, writer_cpu: int | None = None,
             only: tuple[str, ...] = tuple(MODES), warm_blocked: int = 0,
             cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Median closed-loop cache-warm QPS per mode: nothing recorded (the resolver then skips
    building events at all), a JSON-lines log, the store, and both; with ``writer_cpu``, the
    store with its writer process moved to that CPU too.  With ``warm_blocked`` N, the blocked
    fifth of the queries are drawn from N names that the warm-up asked too (as the allowed
    names are): every block a repeat, as at home; without, from all 100,000 listed names, so
    that most blocks are the resolver's first for their name.  ``cpu``, when given, is filled
    with the median CPU time of the resolver's own process per answered query, in us: what
    the store costs the resolver itself, apart from what its writer takes from dnsperf's
    core."""
    blocklist, names = write_blocklist(workdir, 100_000)
    upstream = upstream_server(workdir)
    upstream.start()
    work = Workload(workdir, names[:warm_blocked] if warm_blocked else names)
    warmup = work.warmup_file()
    if warm_blocked:
        with warmup.open("a") as f:
            f.writelines(f"{n} A\n" for n in names[:warm_blocked])
    modes = {m: MODES[m] for m in only}
    if writer_cpu is not None:
        modes[f"db-cpu{writer_cpu}"] = MODES["db"]
    qps: dict[str, list[float]] = {m: [] for m in modes}
    per_query: dict[str, list[float]] = {m: [] for m in modes}
    try:
        for r in range(rounds):
            for mode, extra in modes.items():
                server = ours_server(workdir, blocklist, upstream.port, f"{mode}{r}")
                db, log = workdir / f"store-{mode}{r}.db", workdir / f"events-{mode}{r}.jsonl"
                server.argv += [a.replace("{db}", str(db)).replace("{log}", str(log)) for a in extra]
                server.start()
                if writer_cpu is not None and mode.startswith("db-cpu") and server.proc is not None:
                    writers = _children(server.proc.pid)
                    if len(writers) != 1:
                        raise RuntimeError(f"expected the store's writer as the one child, found {writers}")
                    os.sched_setaffinity(writers[0], {writer_cpu})
                try:
                    dnsperf(server.port, warmup, 2)
                    queries = work.file(int(60_000 * seconds), False)
                    assert server.proc is not None
                    before = _cpu_seconds(server.proc.pid)
                    run = dnsperf(server.port, queries, seconds)
                    used = (_cpu_seconds(server.proc.pid) - before) / max(1, run.completed) * 1e6
                    qps[mode].append(run.qps)
                    per_query[mode].append(used)
                    print(f"  round {r + 1} {mode:<6}: {run.qps:,.0f} qps (loss {run.loss:.2%}), "
                          f"resolver {used:.2f} us CPU a query", flush=True)
                finally:
                    server.stop()
                if db.exists():  # what the store kept and what it dropped (warm-up included)
                    stored, dropped = _stored(db)
                    print(f"  round {r + 1} {mode:<6}: {stored:,} events stored, {dropped:,} dropped",
                          flush=True)
                db.unlink(missing_ok=True)
                log.unlink(missing_ok=True)
    finally:
        upstream.stop()
    if cpu is not None:
        cpu.update({m: statistics.median(v) for m, v in per_query.items()})
    return {m: statistics.median(v) for m, v in qps.items()}


def ingest(workdir: Path, n: int) -> float:
    d = Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "tiktok is in phase full")
    events = [build_event(d, Observation.dns(f"n{i}.tiktok.com", f"10.0.{i % 250}.{i % 200}"), "dns")
              for i in range(n)]
    store = Store(str(workdir / "ingest.db"), max_queue=n + 1)
    start = time.perf_counter()
    for ev in events:
        store.put(ev)
    assert store.flush(600), "the store did not catch up in 600 s"
    took = time.perf_counter() - start
    st = store.stats()
    store.close()
    assert st.written == n and st.dropped == 0, st
    return n / took


FILL = """
WITH RECURSIVE seq(i) AS (SELECT ? UNION ALL SELECT i + 1 FROM seq WHERE i < ?)
INSERT INTO events (timestamp, event_id, event_action, event_reason, observer_type, egress_kind,
                    egress_value, egress_app, egress_apps, egress_group, egress_phase, rule_name, source_ip,
                    egress_response, doc)
SELECT ts, printf('%012x%020x', ts, i), act, 'app' || (i % 20) || ' is in phase full', 'dns', 'dns',
       'n' || (i * 7919 % 200000) || '.app' || (i % 20) || '.example', 'app' || (i % 20), 'app' || (i % 20),
       'default', 'full', 'domain:app' || (i % 20) || '.example',
       '10.0.' || (i % 1000 / 250) || '.' || (i % 250),
       'NXDOMAIN',
       '{"@timestamp":"' || strftime('%Y-%m-%dT%H:%M:%fZ', ts / 1000.0, 'unixepoch') ||
       '","ecs":{"version":"8.11.0"},"event":{"id":"' || printf('%012x%020x', ts, i) ||
       '","kind":"event","category":["network"],"type":["denied"],"action":"' || act ||
       '","outcome":"failure","reason":"app' || (i % 20) || ' is in phase full","module":"egress_filter",' ||
       '"dataset":"egress_filter.dns"},"observer":{"product":"egress-filter","type":"dns"},' ||
       '"egress":{"schema":"1",' ||
       '"component":"dns","kind":"dns","value":"n' || (i * 7919 % 200000) || '.app' || (i % 20) ||
       '.example","action":"' || act || '","would":"block","apps":["app' || (i % 20) ||
       '"],"phase":"full","rule":"domain:app' || (i % 20) || '.example","group":"default",' ||
       '"response":"NXDOMAIN",' ||
       '"qtype":"A"},"rule":{"name":"domain:app' || (i % 20) || '.example"},"source":{"ip":"10.0.' ||
       (i % 1000 / 250) || '.' || (i % 250) || '","port":40000},"dns":{"question":{"name":"n' ||
       (i * 7919 % 200000) || '.app' || (i % 20) || '.example","type":"A"},"response_code":"NXDOMAIN"},' ||
       '"network":{"protocol":"dns"}}'
FROM (SELECT i, ? + i * ? AS ts, CASE WHEN i % 10 = 0 THEN 'log' ELSE 'block' END AS act FROM seq)
"""


def fill(path: Path, n: int) -> float:
    conn = connect(str(path))
    have = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    start = time.perf_counter()
    if have < n:  # rows first, indexes after: building an index from sorted rows is many times faster
        conn.execute("PRAGMA synchronous=OFF")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                    "AND name LIKE 'events_%'").fetchall():
            conn.execute(f"DROP INDEX {name}")
    now = int(time.time() * 1000)
    step = max(1, 30 * 86400 * 1000 // max(n, 1))
    first = now - step * n
    chunk = 500_000
    for lo in range(have, n, chunk):
        hi = min(n, lo + chunk) - 1
        with conn:
            conn.execute("BEGIN")
            conn.execute(FILL, (lo, hi, first, step))
        print(f"    {hi + 1:,} rows", flush=True)
    conn.executescript(SCHEMA)  # the indexes again
    conn.close()
    return time.perf_counter() - start


QUERIES = {
    "newest page": {},
    "app": {"app": "app7"},
    "app + action": {"app": "app10", "action": "log"},
    "client": {"client": "10.0.2.17"},
    "client + app": {"client": "10.0.1.33", "app": "app3"},
    "name search, last day": {"q": "n1234", "since": "{day}"},
    "time window (a day, 10 days ago)": {"since": "{d10}", "until": "{d9}"},
    "page 50 of app (cursor)": {"app": "app5", "cursor": "{cursor}"},
}


def page_speed(path: Path, requests: int) -> dict[str, tuple[float, float, int]]:
    proc = subprocess.Popen([sys.executable, "-m", "egress_filter.cli", "dashboard",
                             "--listen", "127.0.0.1:0", "--db", str(path)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    try:
        line = proc.stderr.readline()
        m = re.search(r"(http://\S+/)", line)
        assert m, line
        url = m.group(1)
        now = time.time()
        conn = sqlite3.connect(path)
        cursor = conn.execute("SELECT id FROM events WHERE egress_app = 'app5' "
                              "ORDER BY id DESC LIMIT 1 OFFSET 5000").fetchone()[0]
        conn.close()
        subst = {"{day}": str(now - 86400), "{d10}": str(now - 10 * 86400), "{d9}": str(now - 9 * 86400),
                 "{cursor}": str(cursor)}
        out: dict[str, tuple[float, float, int]] = {}
        with httpx.Client(timeout=30) as client:
            for label, params in QUERIES.items():
                p = {k: subst.get(v, v) for k, v in params.items()}
                client.get(url + "api/events", params=p)  # one to warm the page cache
                times = []
                refused = 0  # answered 400: interrupted at the 2 s query deadline
                for _ in range(requests):
                    t = time.perf_counter()
                    r = client.get(url + "api/events", params=p)
                    times.append((time.perf_counter() - t) * 1000)
                    if r.status_code == 400:
                        refused += 1
                        continue
                    r.raise_for_status()
                    assert r.json()["events"], label
                times.sort()
                out[label] = (times[len(times) // 2], times[int(len(times) * 0.95) - 1], refused)
        return out
    finally:
        proc.terminate()
        proc.wait(20)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ingest", type=int, default=200_000)
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--workdir", help="keep files here (the big store is reused when it is already filled)")
    ap.add_argument("--skip-dns", action="store_true")
    ap.add_argument("--only", choices=("dns", "ingest", "api"), help="run one part")
    ap.add_argument("--modes", default=",".join(MODES), metavar="M,M",
                    help=f"the DNS modes to measure, a subset of {','.join(MODES)} (off must be one)")
    ap.add_argument("--warm-blocked", type=int, default=0, metavar="N",
                    help="draw the blocked queries from N names the warm-up asked too (default: "
                         "from all 100,000, mostly first-time blocks)")
    ap.add_argument("--writer-cpu", type=int, metavar="N",
                    help="also measure the store with its writer process moved to CPU N")
    args = ap.parse_args(argv)
    tmp = None if args.workdir else tempfile.TemporaryDirectory(prefix="dashboard-bench-")
    workdir = Path(args.workdir or tmp.name)  # type: ignore[union-attr]
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_dns and args.only in (None, "dns"):
            print("DNS cache-warm QPS, store off vs on:", flush=True)
            modes = tuple(args.modes.split(","))
            if "off" not in modes or not set(modes) <= set(MODES):
                ap.error(f"--modes: a subset of {','.join(MODES)} that includes off")
            cpu: dict[str, float] = {}
            c = dns_cost(workdir, args.seconds, args.rounds, args.writer_cpu, modes, args.warm_blocked, cpu)
            print("  median qps: " + ", ".join(f"{m} {v:,.0f}" for m, v in c.items()), flush=True)
            print("  median resolver CPU a query (us): " + ", ".join(f"{m} {v:.2f}" for m, v in cpu.items()),
                  flush=True)
            for m in cpu:
                if m != "off":
                    print(f"  {m}: the resolver's own CPU a query {cpu[m] / cpu['off'] - 1:+.1%} over off",
                          flush=True)
            costs = (("store over a log", "log+db", "log"),
                     ("store alone over nothing recorded", "db", "off"),
                     ("log alone over nothing", "log", "off"))
            for label, on, base in costs:
                if on in c and base in c:
                    print(f"  {label}: {1 - c[on] / c[base]:.1%} (target < {TARGET_COST:.0%})", flush=True)
            if args.writer_cpu is not None:
                moved = c[f"db-cpu{args.writer_cpu}"]
                print(f"  store alone, its writer on CPU {args.writer_cpu}, over nothing recorded: "
                      f"{1 - moved / c['off']:.1%}", flush=True)
        if args.only == "dns":
            return 0
        if args.only in (None, "ingest"):
            print("Ingest:", flush=True)
            rate = ingest(workdir, args.ingest)
            print(f"  {rate:,.0f} events/s into the store (target >= {TARGET_INGEST:,})", flush=True)
        if args.only == "ingest":
            return 0
        big = workdir / "big.db"
        print(f"Filling a store of {args.events:,} events:", flush=True)
        took = fill(big, args.events)
        print(f"  filled in {took:.0f} s; file {big.stat().st_size / 1e9:.1f} GB", flush=True)
        print(f"/api/events over {args.events:,} events ({args.requests} requests each), ms:", flush=True)
        for label, (p50, p95, refused) in page_speed(big, args.requests).items():
            flag = "" if p95 < TARGET_P95_MS else "  (over target)"
            if refused:
                flag += f"  ({refused} stopped at the 2 s query deadline)"
            print(f"  {label:<34} p50 {p50:7.1f}  p95 {p95:7.1f}{flag}", flush=True)
        print(f"  target: p95 < {TARGET_P95_MS:.0f} ms")
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
