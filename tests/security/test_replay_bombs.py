"""Replay on hostile inputs: decompression bombs and lying length fields.

The red team's attack: a few MB of gzip that inflate to one huge line (JSON
lines, a Zeek TSV) climbed to 2.9 GB and ended in a ``MemoryError`` traceback
with exit code 1, the code for policy errors.  Each case here builds such an
input, written through ``gzip`` a MiB at a time so the test itself stays small,
with a valid record on either side of the bomb, runs ``egress-filter replay``
as a child process and checks: the exit code, the exact warning (file and line,
packet or flow), that the records around the bomb are still judged, and the
peak RSS of the replay process (``wait4``'s ``ru_maxrss``).

300 MiB bombs: enough to prove memory is flat (before the fix the same inputs
peaked at 0.7 to 1.3 GB, or stopped at the bomb), and a few seconds each; the
red team's 3 GB line takes ten times as long and costs the same 30-odd MB.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest
from mitmproxy import io as mio
from mitmproxy.test import tflow, tutils

from tests.replay import craft as c

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "tests" / "replay" / "data" / "policy.yaml"
BOMB = 300 << 20
MIB = 1 << 20
RSS_BOUND_MB = 100
RUN_TIMEOUT = 120.0  # seconds for one replay run; each bomb takes a few


@dataclass(frozen=True)
class Run:
    code: int
    verdicts: list[tuple[str, str, str]]  # (kind, name, action)
    warnings: list[str]  # stderr's warning lines, without the "egress-filter replay: warning: " prefix
    stderr: str
    peak_rss_mb: float


# Peak RSS is measured by a small parent of its own, not by this process: a child's
# ``ru_maxrss`` keeps the high-water mark of the memory image it was forked with, and a
# child forked straight from pytest (with scapy, mitmproxy... loaded) starts at pytest's size.
MEASURE = """
import os, resource, subprocess, sys
limit = int(sys.argv[1])
if limit:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
child = subprocess.Popen(sys.argv[3:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[2], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def replay(tmp: Path, *args: str, limit_as: int | None = None) -> Run:
    """``egress-filter replay --format json`` in a child, under an address-space limit if given."""
    out, err, rss = tmp / "stdout.json", tmp / "stderr.txt", tmp / "maxrss"
    cmd = [sys.executable, "-c", MEASURE, str(limit_as or 0), str(rss)]
    cmd += [sys.executable, "-m", "egress_filter.cli", "replay", "--policy", str(POLICY)]
    cmd += ["--at", "2020-11-10", "--no-progress", "--format", "json", *args]
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(cmd, stdout=o, stderr=e, cwd=ROOT, start_new_session=True)
    try:
        code = proc.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the session this test started: the parent and replay
        proc.wait()
        pytest.fail(f"replay ran longer than {RUN_TIMEOUT}s")
    stderr = err.read_text(encoding="utf-8", errors="replace")
    text = out.read_text(encoding="utf-8")
    doc = json.loads(text) if text.strip() else {"verdicts": []}
    prefix = "egress-filter replay: warning: "
    return Run(
        code,
        [(v["kind"], v["name"], v["action"]) for v in doc["verdicts"]],
        [line.removeprefix(prefix) for line in stderr.splitlines() if line.startswith(prefix)],
        stderr,
        int(rss.read_text()) / 1024,
    )


def pad(out: IO[bytes], count: int, byte: bytes = b"A") -> None:
    """``count`` filler bytes, a MiB at a time: the test never holds the bomb."""
    chunk = byte * MIB
    while count >= MIB:
        out.write(chunk)
        count -= MIB
    out.write(byte * count)


def gz(path: Path, build: Callable[[IO[bytes]], None]) -> Path:
    with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as g:
        build(g)
    return path


# --- the valid records around each bomb ------------------------------------------------------


def eve(kind: str, name: str, second: int) -> bytes:
    base = {
        "timestamp": f"2020-11-10T10:00:0{second}+0000",
        "src_ip": c.CLIENT,
        "src_port": 40000 + second,
        "dest_ip": c.SERVER,
        "dest_port": 53 if kind == "dns" else 443,
    }
    if kind == "dns":
        row = {**base, "event_type": "dns", "dns": {"type": "query", "rrname": name, "rrtype": "A"}}
    else:
        row = {**base, "event_type": "tls", "tls": {"sni": name}}
    return json.dumps(row).encode() + b"\n"


def zeek_ssl_json(name: str, second: int) -> bytes:
    row = {"ts": 1605002400.0 + second, "id.orig_h": c.CLIENT, "id.orig_p": 40000 + second}
    row |= {"id.resp_h": c.SERVER, "id.resp_p": 443, "server_name": name}
    return json.dumps(row).encode() + b"\n"


ZEEK_TSV_HEAD = (
    b"#separator \\x09\n#path\tssl\n#fields\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tserver_name\n"
)


def zeek_tsv_row(name: str, second: int) -> bytes:
    return f"{1605002400 + second}.0\t{c.CLIENT}\t{40000 + second}\t{c.SERVER}\t443\t{name}\n".encode()


def pcap_record(data: bytes, second: int, caplen: int | None = None, wire_len: int | None = None) -> bytes:
    n = len(data) if caplen is None else caplen
    return struct.pack("<IIII", int(c.T0) + second, 0, n, n if wire_len is None else wire_len) + data


PCAP_HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, c.LINK_ETHERNET)
# A capture record may claim at most 256 MiB and at most the file's snap length, else the read
# stops (issue 11; tests/replay/test_inputs.py): the record bombs stay under both.
RECORD_BOMB = 200 << 20
BIG_SNAP_HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 1 << 30, c.LINK_ETHERNET)
SHB, IDB, epb, dns_frame = c.pcapng_shb(), c.pcapng_idb(), c.pcapng_epb, c.dns_frame


def huge_epb_header(size: int) -> tuple[bytes, int]:
    """The leading 28 bytes of an enhanced packet block carrying ``size`` bytes, and its length."""
    blen = 32 + size + (-size % 4)
    return struct.pack("<IIIIIII", 6, blen, 0, 0, 0, size, size), blen


def flow_record(sni: str) -> bytes:
    f = tflow.tflow(req=tutils.treq(host=sni, port=443, scheme=b"https", path=b"/", authority=sni.encode()))
    f.client_conn.sni = sni
    buf = io.BytesIO()
    mio.FlowWriter(buf).add(f)
    return buf.getvalue()


# --- the bombs ------------------------------------------------------------------------------


def jsonl_bomb(g: IO[bytes]) -> None:
    g.write(eve("dns", "www.tiktok.com", 0))
    g.write(b'{"event_type": "dns", "pad": "')
    pad(g, BOMB)
    g.write(b'"}\n')
    g.write(eve("tls", "www.wechat.com", 2))


def zeek_json_bomb(g: IO[bytes]) -> None:
    g.write(zeek_ssl_json("www.tiktok.com", 0))
    g.write(b'{"server_name": "')
    pad(g, BOMB)
    g.write(b'"}\n')
    g.write(zeek_ssl_json("www.wechat.com", 2))


def zeek_tsv_bomb(g: IO[bytes]) -> None:
    g.write(ZEEK_TSV_HEAD + zeek_tsv_row("www.tiktok.com", 0))
    g.write(b"1605002401.0\t10.0.0.5\t1\t198.51.100.7\t443\t")
    pad(g, BOMB)
    g.write(b"\n" + zeek_tsv_row("www.wechat.com", 2))


def pcap_bomb(g: IO[bytes]) -> None:
    g.write(BIG_SNAP_HEAD + pcap_record(dns_frame("www.tiktok.com"), 0))
    g.write(pcap_record(b"", 1, caplen=RECORD_BOMB))  # a record really as long as its header says
    pad(g, RECORD_BOMB, b"\0")
    g.write(pcap_record(dns_frame("www.wechat.com"), 2))


PCAPNG_BOMB_OFFSET = len(SHB) + len(IDB) + len(epb(dns_frame("www.tiktok.com")))


def pcapng_bomb(g: IO[bytes]) -> None:
    g.write(SHB + IDB + epb(dns_frame("www.tiktok.com")))
    head, blen = huge_epb_header(RECORD_BOMB)
    g.write(head)
    pad(g, blen - 32, b"\0")
    g.write(struct.pack("<I", blen) + epb(dns_frame("www.wechat.com"), t=c.T0 + 2))


def mitm_bomb(g: IO[bytes]) -> None:
    g.write(flow_record("www.tiktok.com"))
    g.write(f"{BOMB}:".encode())  # one tnetstring of BOMB bytes: mitmproxy's reader would hold it all
    pad(g, BOMB)
    g.write(b",")
    g.write(flow_record("www.wechat.com"))


def limit_warning(path: Path, where: str, what: str, limit: str) -> str:
    return f"{path} at {where}: {what} over the {limit}-byte limit (--max-record); skipped"


LINE_SKIPPED = "line longer than 1048576 bytes (--max-line); skipped"
LOG_PAIR = [("sni", "www.tiktok.com", "log"), ("sni", "www.wechat.com", "block")]
DNS_PAIR = [("dns", "www.tiktok.com", "log"), ("dns", "www.wechat.com", "block")]
FLOW_PAIR = [
    ("sni", "www.tiktok.com", "log"),
    ("http", "https://www.tiktok.com/", "log"),
    ("sni", "www.wechat.com", "block"),
    ("http", "https://www.wechat.com/", "block"),
]

BOMBS = [
    pytest.param(
        "eve.json.gz",
        jsonl_bomb,
        lambda p: f"{p} at line 2: {LINE_SKIPPED}",
        [("dns", "www.tiktok.com", "log"), ("sni", "www.wechat.com", "block")],
        id="suricata-eve-jsonl",
    ),
    pytest.param(
        "ssl.json.gz", zeek_json_bomb, lambda p: f"{p} at line 2: {LINE_SKIPPED}", LOG_PAIR, id="zeek-json"
    ),
    pytest.param(
        "ssl.log.gz", zeek_tsv_bomb, lambda p: f"{p} at line 5: {LINE_SKIPPED}", LOG_PAIR, id="zeek-tsv"
    ),
    pytest.param(
        "bomb.pcap.gz",
        pcap_bomb,
        lambda p: limit_warning(p, "packet 2", f"record of {RECORD_BOMB} bytes is", "16777216"),
        DNS_PAIR,
        id="pcap-record",
    ),
    pytest.param(
        "bomb.pcapng.gz",
        pcapng_bomb,
        lambda p: limit_warning(
            p,
            "packet 2",
            f"enhanced packet block at offset {PCAPNG_BOMB_OFFSET} "
            f"is {huge_epb_header(RECORD_BOMB)[1]} bytes,",
            "16777216",
        ),
        DNS_PAIR,
        id="pcapng-block",
    ),
    pytest.param(
        "bomb.mitm.gz",
        mitm_bomb,
        lambda p: limit_warning(p, "flow 2", f"flow of {BOMB} bytes is", "16777216"),
        FLOW_PAIR,
        id="mitm-flow",
    ),
]


@pytest.mark.parametrize("name,build,warning,judged", BOMBS)
def test_bomb_is_skipped_in_flat_memory(
    name: str,
    build: Callable[[IO[bytes]], None],
    warning: Callable[[Path], str],
    judged: list[tuple[str, str, str]],
    tmp_path: Path,
) -> None:
    path = gz(tmp_path / name, build)
    assert path.stat().st_size < 8 * MIB  # a small file on disk, 300 MiB inflated
    run = replay(tmp_path, str(path))
    assert run.warnings == [warning(path)], run.stderr
    assert run.code == 0, run.stderr  # a skipped record only warns: the input as a whole was read
    assert run.verdicts == judged  # the records on both sides of the bomb
    assert "Traceback" not in run.stderr
    assert run.peak_rss_mb < RSS_BOUND_MB, f"peak RSS {run.peak_rss_mb:.0f} MB"


def many_long_lines(g: IO[bytes]) -> None:
    for _ in range(15):
        g.write(b'{"pad": "')
        pad(g, 2 * MIB)
        g.write(b'"}\n')
    g.write(eve("dns", "www.tiktok.com", 0))


def test_many_long_lines_warn_ten_times_then_count(tmp_path: Path) -> None:
    """A file of over-long lines does not make a warning per line: ten are named, the rest counted."""
    path = gz(tmp_path / "long.json.gz", many_long_lines)
    run = replay(tmp_path, str(path))
    named = [f"{path} at line {n}: {LINE_SKIPPED}" for n in range(1, 11)]
    assert run.warnings == [
        *named,
        f"{path} at line 11: 5 more line(s) skipped likewise (the first of them shown)",
    ]
    assert run.code == 0 and run.verdicts == [("dns", "www.tiktok.com", "log")]


def test_max_line_is_configurable(tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    path.write_bytes(eve("dns", "www.tiktok.com", 0) + eve("tls", "www.wechat.com", 1))
    run = replay(tmp_path, "--max-line", "200", str(path))
    assert run.warnings == [f"{path} at line 1: line longer than 200 bytes (--max-line); skipped"]
    assert run.verdicts == [("sni", "www.wechat.com", "block")]  # 176 bytes: under the limit


# --- length fields that lie, on small files: a warning and exit 4, memory untouched ---------


def _pcap_lies_caplen(g: IO[bytes]) -> None:
    g.write(PCAP_HEAD + pcap_record(dns_frame("www.tiktok.com"), 0))
    g.write(pcap_record(b"x" * 60, 1, caplen=1 << 31, wire_len=60))


def _pcap_cut_short(g: IO[bytes]) -> None:
    g.write(PCAP_HEAD + pcap_record(dns_frame("www.tiktok.com"), 0))
    g.write(pcap_record(b"x" * 100, 1, caplen=1 << 31))


def _pcapng_cut_short(g: IO[bytes]) -> None:
    head, _ = huge_epb_header(1 << 31)
    g.write(SHB + IDB + epb(dns_frame("www.tiktok.com")) + head + b"x" * 100)


def _flow_cut_short(g: IO[bytes]) -> None:
    g.write(flow_record("www.tiktok.com") + b"999999999999:" + b"x" * 100)


def _flow_prefix_too_long(g: IO[bytes]) -> None:
    g.write(flow_record("www.tiktok.com") + b"1234567890123:x")


OVER_CEILING = "more than the 256 MiB any capture record may hold"
LIES = [
    pytest.param(
        _pcap_lies_caplen,
        "pcap",
        f"at packet 2: corrupt record header (it claims 2147483648 bytes, {OVER_CEILING}); stopped here",
        id="pcap-caplen-2g-over-its-wire-length",
    ),
    pytest.param(
        _pcap_cut_short,
        "pcap",
        f"at packet 2: corrupt record header (it claims 2147483648 bytes, {OVER_CEILING}); stopped here",
        id="pcap-caplen-2g-file-ends",
    ),
    pytest.param(
        _pcapng_cut_short,
        "pcapng",
        f"at packet 2: enhanced packet block at offset {PCAPNG_BOMB_OFFSET} claims {(1 << 31) + 32} bytes, "
        f"{OVER_CEILING}; stopped here",
        id="pcapng-block-2g-file-ends",
    ),
    pytest.param(
        _flow_cut_short,
        "mitm",
        "at flow 2: unreadable flow (file ends inside a flow of 999999999999 bytes); stopped here",
        id="mitm-length-1t-file-ends",
    ),
    pytest.param(
        _flow_prefix_too_long,
        "mitm",
        "at flow 2: unreadable flow (no tnetstring length prefix (b'1234567890123')); stopped here",
        id="mitm-length-prefix-13-digits",
    ),
]


@pytest.mark.parametrize("build,suffix,warning", LIES)
def test_lying_length_stops_with_exit_4(
    build: Callable[[IO[bytes]], None], suffix: str, warning: str, tmp_path: Path
) -> None:
    path = gz(tmp_path / f"lie.{suffix}.gz", build)
    run = replay(tmp_path, str(path))
    assert run.warnings == [f"{path} {warning}"], run.stderr
    assert run.code == 4 and run.verdicts[0] == (
        "dns" if suffix.startswith("pcap") else "sni",
        "www.tiktok.com",
        "log",
    )
    assert run.peak_rss_mb < RSS_BOUND_MB and "Traceback" not in run.stderr


# --- exit codes: one meaning each; an input's defect is never 1 (policy errors) nor a traceback ---


def _gzip_member(text: bytes, corrupt: bool = False) -> bytes:
    member = bytearray(gzip.compress(text))
    if corrupt:
        member[10] = 0xFF  # the first deflate block header: block type 3 does not exist
    return bytes(member)


def _gzip_corrupt_at_start(path: Path) -> None:
    path.write_bytes(_gzip_member(eve("dns", "www.tiktok.com", 0), corrupt=True))


def _gzip_corrupt_mid_stream(path: Path) -> None:
    path.write_bytes(
        _gzip_member(eve("dns", "www.tiktok.com", 0)) + _gzip_member(eve("tls", "x", 1), corrupt=True)
    )


def _line_bomb(path: Path) -> None:
    gz(path, jsonl_bomb)


EXITS = [
    pytest.param(
        _gzip_corrupt_at_start,
        (),
        None,
        4,
        "{p}: unreadable gzip data: Error -3 while decompressing data: invalid block type",
        [],
        id="gzip-corrupt-at-start",
    ),
    pytest.param(
        _gzip_corrupt_mid_stream,
        (),
        None,
        4,
        "{p}: unreadable gzip data: Error -3 while decompressing data: invalid block type; stopped here",
        [("dns", "www.tiktok.com", "log")],
        id="gzip-corrupt-mid-stream",
    ),
    pytest.param(
        _line_bomb,
        ("--max-line", "1G"),
        256 * MIB,
        4,
        "{p}: out of memory while reading; stopped here",
        [("dns", "www.tiktok.com", "log")],
        id="limit-raised-past-the-memory-there-is",
    ),
]


@pytest.mark.parametrize("build,args,limit_as,code,warning,judged", EXITS)
def test_input_defects_exit_4_without_traceback(
    build: Callable[[Path], None],
    args: tuple[str, ...],
    limit_as: int | None,
    code: int,
    warning: str,
    judged: list[tuple[str, str, str]],
    tmp_path: Path,
) -> None:
    path = tmp_path / "input.json.gz"
    build(path)
    run = replay(tmp_path, *args, str(path), limit_as=limit_as)
    assert (run.code, run.warnings, run.verdicts) == (code, [warning.format(p=path)], judged), run.stderr
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    "args,code,message",
    [
        (("-o", "/dev/full"), 5, "egress-filter replay: cannot write /dev/full: No space left on device"),
        (("--max-line", "lots"), 2, "argument --max-line: not a size: 'lots' (e.g. 65536, 64K, 1M)"),
        (("--max-record", "8"), 2, "argument --max-record: too small: '8' (at least 64 bytes)"),
    ],
    ids=["output-disk-full", "max-line-not-a-size", "max-record-too-small"],
)
def test_output_and_usage_exit_codes(args: tuple[str, ...], code: int, message: str, tmp_path: Path) -> None:
    path = tmp_path / "eve.json"
    path.write_bytes(eve("dns", "www.tiktok.com", 0))
    run = replay(tmp_path, *args, str(path))
    assert run.code == code and message in run.stderr.splitlines()[-1], run.stderr
    assert "Traceback" not in run.stderr
