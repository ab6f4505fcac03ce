"""RPZ primary benchmark: the zone of a large policy served by ``egress-filter dns --rpz``.

    python -m bench.rpz_bench [--names 1000000]

Data flows: ``bench.policy_bench.generate`` writes the policy and its list
files; ``egress-filter dns --rpz`` starts on a free loopback port (the time to
``ready`` includes loading the policy and encoding the zone); one AXFR is read
over TCP to the closing SOA, timed, and the resolver's peak RSS (VmHWM from
/proc) is read after it.  The resolver is stopped by PID.  Prints one JSON
line and a markdown row.

Then one app changes (a new app of ``CHANGED`` domains is appended to the
policy) and the resolver gets SIGHUP: the time to the new serial, an IXFR
from the old serial (which must hold the difference only: 4 SOAs and two
records per added domain) and the peak RSS through the reload are printed.

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
CHANGED = 10  # domains of the app added before the IXFR
CHANGED_APP = ("  - id: changed\n    name: Changed App\n    owner: Bench Ltd.\n"
               "    legal_basis: {order: EO 0, citation: bench}\n"
               "    schedule:\n      - {from: 2020-01-01, phase: full, source: bench}\n"
               f"    domains: [{', '.join(f'changed{i}.example' for i in range(CHANGED))}]\n")
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


QNAME = b"".join(bytes((len(x),)) + x.encode() for x in ZONE.rstrip(".").split(".")) + b"\0"
SOA_TAIL = b"\x00\x06\x00\x01\x00\x00\x00"  # type SOA, class IN, the TTL's high byte


def serial(port: int) -> int:
    """The zone's SOA serial, asked over UDP."""
    q = struct.pack("!HHHHHH", 0x4243, 0, 1, 0, 0, 0) + QNAME + struct.pack("!HH", 6, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(q, ("127.0.0.1", port))
        m = s.recv(4096)
    return int(struct.unpack("!I", m[-20:-16])[0])  # serial, refresh, retry, expire, minimum end it


def axfr(port: int, since: int | None = None) -> tuple[int, int, int]:
    """(messages, records, bytes) of one AXFR, read to the second SOA; with
    ``since``, an IXFR from that serial, read to the fourth SOA (one
    difference sequence: new, old, new, new)."""
    if since is None:
        q = struct.pack("!HHHHHH", 0x4242, 0, 1, 0, 0, 0) + QNAME + struct.pack("!HH", 252, 1)
    else:
        soa = b"\0\0" + struct.pack("!IIIII", since, 0, 0, 0, 0)  # root mname and rname: 2 octets
        q = (struct.pack("!HHHHHH", 0x4244, 0, 1, 0, 1, 0) + QNAME + struct.pack("!HH", 251, 1)
             + QNAME + struct.pack("!HHIH", 6, 1, 0, len(soa)) + soa)
    want = 2 if since is None else 4
    messages = records = size = soas = 0
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(len(q).to_bytes(2, "big") + q)
        while soas < want:
            n = int.from_bytes(recv(s, 2), "big")
            m = recv(s, n)
            if m[3] & 0x0F:
                raise RuntimeError(f"rcode {m[3] & 0x0F}")
            an = struct.unpack("!H", m[6:8])[0]
            messages += 1
            records += an
            size += n
            # Only SOAs are counted by type: the SOA is the first and the last record.
            soas += m.count(SOA_TAIL)
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
        # One app changed: a new app of CHANGED domains, then SIGHUP; the IXFR
        # from the old serial must hold the difference only.
        old = serial(port)
        with open(args.out / "policy.yaml", "a", encoding="utf-8") as fh:
            fh.write(CHANGED_APP)
        t2 = time.perf_counter()
        os.kill(proc.pid, signal.SIGHUP)
        while serial(port) == old:
            if proc.poll() is not None or time.perf_counter() - t2 > START_DEADLINE:
                raise RuntimeError(f"no new serial after SIGHUP:\n{log.read_text()[-2000:]}")
            time.sleep(0.2)
        reload_s = time.perf_counter() - t2
        t3 = time.perf_counter()
        ix_messages, ix_records, ix_size = axfr(port, since=old)
        ixfr_s = time.perf_counter() - t3
        reload_peak = _status(proc.pid, "VmHWM")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(30)
    row = {"names": args.names, "start_s": round(start_s, 2), "transfer_s": round(transfer_s, 2),
           "messages": messages, "records": records, "mb": round(size / 1e6, 1),
           "rss_before_mb": round(rss_before, 1), "peak_rss_mb": round(peak, 1),
           "target_s": TARGET_S, "target_rss_mb": TARGET_RSS_MB, "reload_s": round(reload_s, 2),
           "ixfr_s": round(ixfr_s, 3), "ixfr_records": ix_records, "ixfr_bytes": ix_size,
           "ixfr_messages": ix_messages, "peak_rss_after_reload_mb": round(reload_peak, 1)}
    print(json.dumps(row))
    print("| names | start (load + encode) | AXFR | records | peak RSS |")
    print("|---|---|---|---|---|")
    print(f"| {args.names:,} | {start_s:.1f} s | {transfer_s:.2f} s | {records:,} | {peak:.0f} MB |")
    print(f"\nafter one app changed ({CHANGED} domains added) and SIGHUP: new serial in {reload_s:.1f} s; "
          f"IXFR {ix_records} records ({4 + 2 * CHANGED} expected: 4 SOA + 2 per domain), {ix_size:,} bytes, "
          f"{ixfr_s * 1000:.0f} ms; peak RSS through the reload {reload_peak:.0f} MB")
    if ix_records != 4 + 2 * CHANGED:
        return 1
    return 0 if transfer_s < TARGET_S and peak < TARGET_RSS_MB else 1


def _status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {key} for {pid}")


if __name__ == "__main__":
    raise SystemExit(main())
