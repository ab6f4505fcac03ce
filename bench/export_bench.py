"""Export benchmark: a 1,000,000-domain policy written as an RPZ zone and as Unbound lines.

    python -m bench.export_bench [--names 1000000] [--formats rpz,unbound] [--out DIR]

Data flows: ``bench.policy_bench.generate`` writes the policy and its list
files (the same data as the policy benchmark); for each format a fresh Python
process loads the policy (timed apart), then streams ``policies.export.render``
to a file under the output directory, timing the export and reading the
process's peak RSS (``ru_maxrss``, load included).  It prints one line per
format and a markdown table.

Targets (issue 10): export < 5 s and peak RSS < 300 MB for 1,000,000 domains.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import policy_bench

ROOT = Path(__file__).resolve().parent.parent
TARGET_S, TARGET_RSS_MB = 5.0, 300.0


def _child(policy: str, fmt: str, out: str) -> dict[str, Any]:
    import resource

    from policies import load_policy
    from policies.export import render

    t0 = time.perf_counter()
    p = load_policy(policy)
    t1, c1 = time.perf_counter(), time.process_time()
    lines = 0
    with open(out, "w", encoding="utf-8") as fh:
        for line in render(p, fmt):
            fh.write(line)
            fh.write("\n")
            lines += 1
    t2, c2 = time.perf_counter(), time.process_time()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"format": fmt, "load_s": t1 - t0, "export_s": t2 - t1, "cpu_s": c2 - c1, "peak_rss_mb": peak,
            "lines": lines, "bytes": Path(out).stat().st_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--formats", default="rpz,unbound")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "export")
    ap.add_argument("--child", nargs=3, metavar=("POLICY", "FORMAT", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(*args.child)))
        return 0
    policy_bench.OUT = args.out
    data = policy_bench.generate(args.names, 1000)
    rows = []
    for fmt in args.formats.split(","):
        out = args.out / f"export.{fmt}"
        cmd = [sys.executable, "-m", "bench.export_bench", "--child", str(data["policy"]), fmt, str(out)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"export {fmt} failed:\n{proc.stderr}")
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        # CPU seconds are what one core delivers; wall seconds what a shared machine gave us.
        ok = r["cpu_s"] < TARGET_S and r["peak_rss_mb"] < TARGET_RSS_MB
        print(f"{fmt}: load {r['load_s']:.2f} s, export {r['export_s']:.2f} s wall / {r['cpu_s']:.2f} s CPU, "
              f"peak RSS {r['peak_rss_mb']:.0f} MB, {r['lines']:,} lines, {r['bytes'] / 1e6:.0f} MB "
              f"({'meets' if ok else 'misses'} the targets < {TARGET_S:.0f} s, < {TARGET_RSS_MB:.0f} MB)")
        rows.append((fmt, r, ok))
    print("\n| format | names | load (s) | export wall (s) | export CPU (s) | peak RSS (MB) | lines "
          "| targets |")
    print("|---|---|---|---|---|---|---|---|")
    for fmt, r, ok in rows:
        print(f"| {fmt} | {args.names:,} | {r['load_s']:.2f} | {r['export_s']:.2f} | {r['cpu_s']:.2f} "
              f"| {r['peak_rss_mb']:.0f} | {r['lines']:,} | {'met' if ok else 'missed'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
