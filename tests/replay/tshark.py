"""What tshark extracts from a capture: the names replay must agree with."""

from __future__ import annotations

import subprocess
from pathlib import Path

from replay import Finding

FIELDS = (
    "dns.qry.name",
    "tls.handshake.extensions_server_name",
    "http.host",
    "socks.remote_name",
    "socks.v4a_dns_name",
)
DNS_VIAS = ("dns/udp", "dns/tcp", "mdns", "llmnr")  # tshark shows mDNS and LLMNR questions as dns.qry.name


def tshark_names(tshark: str, path: Path, decode_as: tuple[str, ...] = ()) -> dict[str, set[str]]:
    """Per field, every value tshark shows in any packet (QUIC SNIs land in the TLS field).

    Out-of-order reassembly is off by default in tshark; replay always does it.
    """
    cmd = [
        tshark,
        "-n",
        "-r",
        str(path),
        "-T",
        "fields",
        "-E",
        "occurrence=a",
        "-E",
        "aggregator=\x1f",
        "-E",
        "separator=\t",
        "-o",
        "tcp.reassemble_out_of_order:TRUE",
    ]
    for rule in decode_as:
        cmd += ["-d", rule]
    for f in FIELDS:
        cmd += ["-e", f]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    out: dict[str, set[str]] = {f: set() for f in FIELDS}
    for line in proc.stdout.splitlines():
        for f, cell in zip(FIELDS, line.split("\t"), strict=False):
            out[f].update(v for v in cell.split("\x1f") if v)
    return out


def replay_names(verdicts: list[Finding]) -> dict[str, set[str]]:
    """The same fields from replay's sightings (CNAME targets are answers, not questions)."""
    out: dict[str, set[str]] = {f: set() for f in FIELDS}
    for v in verdicts:
        s = v.sighting
        if s.via in DNS_VIAS:
            out["dns.qry.name"].add(s.value)
        elif s.via == "socks5" and s.kind.value == "dns":
            out["socks.remote_name"].add(s.value)
        elif s.via == "socks4a" and s.kind.value == "dns":
            out["socks.v4a_dns_name"].add(s.value)
        elif s.via in ("tls", "quic") and s.kind.value == "sni":
            out["tls.handshake.extensions_server_name"].add(s.value)
        elif s.via == "http" and s.host:
            out["http.host"].add(s.host)
    return out
