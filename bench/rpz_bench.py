"""RPZ primary benchmark: the zone of a large policy served by ``egress-filter dns --rpz``.

    python -m bench.rpz_bench [--names 1000000]

Data flows: ``bench.policy_bench.generate`` writes the policy and its list
files; ``egress-filter dns --rpz`` starts on a free loopback port (the time to
``ready`` includes loading the policy and encoding the zone); one AXFR is read
over TCP to the closing SOA, timed, and the resolver's peak RSS (VmHWM from
/proc) is read after it.  The resolver is stopped by PID.  Prints one JSON
line and a markdown row.

Targets (issue 10): the transfer of a 1,000,000-domain policy in < 5 s, with
the server under 300 MB peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench import policy_bench

TARGET_S, TARGET_RSS_MB = 5.0, 300.0
ZONE = "default.rpz.egress-filter."
START_DEADLINE = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def recv(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed mid-message")
        buf += chunk
    return bytes(buf)


def axfr(port: int) -> tuple[int, int, int]:
    """(messages, records, bytes) of one AXFR, read to the second SOA."""
    qname = b"".join(bytes((len(x),)) + x.encode() for x in ZONE.rstrip(".").split(".")) + b"\0"
    q = struct.pack("!HHHHHH", 0x4242, 0, 1, 0, 0, 0) + qname + struct.pack("!HH", 252, 1)
    messages = records = size = soas = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(len(q).to_bytes(2, "big") + q)
        while soas < 2:
            n = int.from_bytes(recv(s, 2), "big")
            m = recv(s, n)
            if m[3] & 0x0F:
                raise RuntimeError(f"rcode {m[3] & 0x0F}")
            an = struct.unpack("!H", m[6:8])[0]
            messages += 1
            records += an
            size += n
            # Only SOAs are counted by type: the SOA is the first and the last record.
            soas += m.count(b"\x00\x06\x00\x01\x00\x00\x00")
    return messages, records, size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--names", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=policy_bench.DEFAULT_OUT.parent / "rpz")
    args = ap.parse_args(argv)
    policy_bench.OUT = args.out
    policy_bench.generate(args.names, 10)
    port = free_port()
    log = args.out / "dns.log"
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "egress_filter.cli", "dns", "--policy",
                             str(args.out / "policy.yaml"), "--listen", f"127.0.0.1:{port}",
                             "--upstream", "127.0.0.1:9", "--rpz", "--rpz-allow-unsigned", "127.0.0.1/32",
                             "--reload-interval", "3600"], stderr=log.open("wb"), stdout=subprocess.DEVNULL)
    try:
        while "ready" not in log.read_text():
            if proc.poll() is not None or time.perf_counter() - t0 > START_DEADLINE:
                raise RuntimeError(f"the resolver did not start:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        start_s = time.perf_counter() - t0
        rss_before = _status(proc.pid, "VmRSS")
        t1 = time.perf_counter()
        messages, records, size = axfr(port)
        transfer_s = time.perf_counter() - t1
        peak = _status(proc.pid, "VmHWM")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    row = {"names": args.names, "start_s": round(start_s, 2), "transfer_s": round(transfer_s, 2),
           "messages": messages, "records": records, "mb": round(size / 1e6, 1),
           "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
           "target_s": TARGET_S, "target_rss_mb": TARGET_RSS_MB}
    print(json.dumps(row))
    print("| names | start (load + encode) | AXFR | records | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| {args.names:,} | {start_s:.1f} s | {transfer_s:.2f} s | {records:,} | {peak:.0f} MB |")
    return 0 if transfer_s < TARGET_S and peak < TARGET_RSS_MB else 1


def _status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for {pid}")


if __name__ == "__main__":
    raise SystemExit(main())
