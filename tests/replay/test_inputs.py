"""Inputs at scale (issue 11): compressed files recognised by content, directories and
globs, ``--jobs`` (the same bytes for any N), and records whose claimed length cannot be
true."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import dpkt
import pytest
import zstandard

from egress_filter.cli import main
from policies import PolicyView
from replay.engine import expand

from . import craft as c
from .cases import CASES
from .conftest import POLICY, replay_all
from .encaps import ENCAPS

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bzip2": bz2.compress,
    "xz": lzma.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}
EVE = (
    b'{"timestamp": "2020-11-10T09:20:00.000000+0000", "event_type": "dns", "src_ip": "10.0.0.5", '
    b'"dest_ip": "10.0.0.53", "dns": {"type": "query", "rrname": "www.tiktok.com", "rrtype": "A"}}\n'
    b'{"timestamp": "2020-11-10T09:20:01.000000+0000", "event_type": "tls", "src_ip": "10.0.0.5", '
    b'"dest_ip": "198.51.100.7", "tls": {"sni": "www.wechat.com"}}\n'
)
ZEEK_TSV = (
    b"#separator \\x09\n#path\tssl\n#fields\tts\tid.orig_h\tid.orig_p\tid.resp_h\tid.resp_p\tserver_name\n"
    b"1605000000.0\t10.0.0.5\t40000\t198.51.100.7\t443\twww.tiktok.com\n"
)


def _inputs(tmp: Path) -> dict[str, Path]:
    """One input of each kind: a pcap, a pcapng, a VXLAN capture, Suricata EVE, a Zeek TSV log."""
    pcap = next(x for x in CASES if x.id == "http-keepalive-body-and-chunked").build(tmp)
    pcapng = next(x for x in CASES if x.id == "pcapng-three-interfaces").build(tmp)
    vxlan = next(x for x in ENCAPS if x.id == "vxlan").build(tmp)
    (tmp / "eve.json").write_bytes(EVE)
    (tmp / "ssl.log").write_bytes(ZEEK_TSV)
    return {"pcap": pcap, "pcapng": pcapng, "vxlan": vxlan, "eve": tmp / "eve.json", "zeek": tmp / "ssl.log"}


def _seen(view: PolicyView, path: Path) -> list[tuple[str, str, str, str, float]]:
    verdicts, rep = replay_all(view, path)
    assert rep.damage == []
    return [
        (v.sighting.kind.value, v.sighting.value, v.sighting.via, v.sighting.tunnel, v.sighting.time)
        for v in verdicts
    ]


@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=str)
@pytest.mark.parametrize("kind", ["pcap", "pcapng", "vxlan", "eve", "zeek"], ids=str)
def test_compressed_inputs_read_by_content(
    kind: str, compression: str, view: PolicyView, tmp_path: Path
) -> None:
    """A compressed copy, under a name that says nothing of it (or says the wrong thing), reads
    exactly as the plain file, and the input list names the compression it found."""
    plain = _inputs(tmp_path)[kind]
    misleading = tmp_path / f"copy-of-{kind}.gz" if compression != "gzip" else tmp_path / f"copy-of-{kind}"
    misleading.write_bytes(COMPRESSORS[compression](plain.read_bytes()))
    assert _seen(view, misleading) == _seen(view, plain) != []
    _, rep = replay_all(view, misleading)
    assert rep.inputs[0][1].endswith(f"({compression})")


@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=str)
def test_corrupt_compressed_data_is_an_input_error(
    compression: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = bytearray(COMPRESSORS[compression](EVE * 200))
    for i in range(len(data) // 2, len(data) // 2 + 16):
        data[i] ^= 0x55
    path = tmp_path / "eve.json.x"
    path.write_bytes(bytes(data))
    code = main(["replay", "--policy", str(POLICY), "--at", "2020-11-10", "--format", "jsonl", str(path)])
    err = capsys.readouterr().err
    assert code == 4, err
    assert f"warning: {path}: unreadable {compression} data: " in err and "Traceback" not in err


BOMB = 64 << 20  # inflates to 64 MiB: one line 64 times the --max-line limit


def _bomb(compression: str, tmp: Path) -> Path:
    """A log line of 64 MiB between two good ones, compressed a piece at a time (never held)."""
    path = tmp / f"bomb.{compression}"
    first, second = EVE.split(b"\n")[:2]
    with path.open("wb") as out:
        if compression == "zstd":
            writer = zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False)
        elif compression == "gzip":
            writer = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1)
        elif compression == "bzip2":
            writer = bz2.BZ2File(out, "wb", compresslevel=1)
        else:
            writer = lzma.LZMAFile(out, "wb", preset=0)
        with writer:
            writer.write(first + b"\n" + b'{"event_type": "dns", "pad": "')
            for _ in range(BOMB >> 20):
                writer.write(b"A" * (1 << 20))
            writer.write(b'"}\n' + second + b"\n")
    return path


@pytest.mark.parametrize("compression", list(COMPRESSORS), ids=str)
def test_decompression_bomb_is_skipped_in_flat_memory(compression: str, tmp_path: Path) -> None:
    """The line the bomb inflates to is skipped with the --max-line warning, its neighbours
    judged; the replay process's peak RSS stays under the issue-8 bound."""
    from tests.security.test_replay_bombs import RSS_BOUND_MB, replay

    path = _bomb(compression, tmp_path)
    assert path.stat().st_size < 4 << 20
    run = replay(tmp_path, str(path))
    assert run.warnings == [f"{path} at line 2: line longer than 1048576 bytes (--max-line); skipped"]
    assert (run.code, run.verdicts) == (
        0,
        [("dns", "www.tiktok.com", "log"), ("sni", "www.wechat.com", "block")],
    )
    assert run.peak_rss_mb < RSS_BOUND_MB, f"peak RSS {run.peak_rss_mb:.0f} MB"


PCAP_HEAD = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, c.LINK_ETHERNET)


def _record(data: bytes, caplen: int | None = None) -> bytes:
    n = len(data) if caplen is None else caplen
    return struct.pack("<IIII", int(c.T0), 0, n, n) + data


OFFSET = len(c.pcapng_shb() + c.pcapng_idb() + c.pcapng_epb(c.dns_frame("www.tiktok.com")))  # block 2's
CLAIMS = [
    pytest.param(
        PCAP_HEAD + _record(c.dns_frame("www.tiktok.com")) + _record(bytes(70_000)),
        "at packet 2: corrupt record header (it claims 70000 bytes, more than the snap length of 65535); "
        "stopped here",
        id="pcap-over-snaplen",
    ),
    pytest.param(
        PCAP_HEAD.replace(struct.pack("<I", 65535), bytes(4))
        + _record(c.dns_frame("www.tiktok.com"))
        + _record(b"", caplen=(256 << 20) + 1),
        f"at packet 2: corrupt record header (it claims {(256 << 20) + 1} bytes, more than the 256 MiB any "
        "capture record may hold); stopped here",
        id="pcap-over-256mib-snaplen-unknown",
    ),
    pytest.param(
        c.pcapng_shb()
        + bytes(dpkt.pcapng.InterfaceDescriptionBlockLE(linktype=1, snaplen=1000))
        + c.pcapng_epb(c.dns_frame("www.tiktok.com"))
        + c.pcapng_epb(bytes(1200)),
        f"at packet 2: enhanced packet block at offset {OFFSET} claims 1200 bytes, more than the snap length "
        "of 1000; stopped here",
        id="pcapng-over-interface-snaplen",
    ),
    pytest.param(
        c.pcapng_shb()
        + c.pcapng_idb()
        + c.pcapng_epb(c.dns_frame("www.tiktok.com"))
        + struct.pack("<II", 6, (256 << 20) + 36),
        f"at packet 2: enhanced packet block at offset {OFFSET} claims {(256 << 20) + 36} bytes,"
        " more than the 256 MiB any capture record may hold; stopped here",
        id="pcapng-block-over-256mib",
    ),
]


@pytest.mark.parametrize("data,warning", CLAIMS)
def test_records_claiming_too_much_stop_the_read(
    data: bytes, warning: str, view: PolicyView, tmp_path: Path
) -> None:
    path = tmp_path / "lies.cap"
    path.write_bytes(data)
    verdicts, rep = replay_all(view, path)
    assert [v.sighting.value for v in verdicts] == ["www.tiktok.com"]
    assert [(str(d), d.stopped) for d in rep.damage] == [(f"{path} {warning}", True)]


def _tree(tmp: Path) -> Path:
    """8 inputs in nested directories, two of them compressed, one of them damaged."""
    root = tmp / "sensors"
    made = _inputs(tmp)
    (root / "a" / "deep").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "a" / "1.pcap").write_bytes(made["pcap"].read_bytes())
    (root / "a" / "deep" / "2.pcapng.zst").write_bytes(COMPRESSORS["zstd"](made["pcapng"].read_bytes()))
    (root / "a" / "3.pcap").write_bytes(made["vxlan"].read_bytes())
    (root / "b" / "eve.json.xz").write_bytes(COMPRESSORS["xz"](EVE))
    (root / "b" / "ssl.log").write_bytes(ZEEK_TSV)
    (root / "b" / "truncated.pcap").write_bytes(made["pcap"].read_bytes()[:-30])
    for i, enc in enumerate(("gre", "socks5-domain-tls")):
        (root / f"c{i}.pcap").write_bytes(next(x for x in ENCAPS if x.id == enc).build(tmp).read_bytes())
    return root


def test_directories_and_globs_expand_sorted(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    files = [
        str(root / p)
        for p in (
            "a/1.pcap",
            "a/3.pcap",
            "a/deep/2.pcapng.zst",
            "b/eve.json.xz",
            "b/ssl.log",
            "b/truncated.pcap",
            "c0.pcap",
            "c1.pcap",
        )
    ]
    assert expand([str(root)]) == files
    assert expand([f"{root}/**/*.pcap"]) == [f for f in files if f.endswith(".pcap")]
    assert expand([f"{root}/b/*", str(root / "c0.pcap")]) == files[3:7]
    assert expand([f"{root}/nothing-*.pcap"]) == [f"{root}/nothing-*.pcap"]  # reported as missing


def _cli(*argv: str) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "egress_filter.cli",
            "replay",
            "--policy",
            str(POLICY),
            "--no-progress",
            *argv,
        ],
        capture_output=True,
        timeout=240,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


JOBS_CASES = [
    pytest.param("jsonl", (), id="jsonl-by-date"),
    pytest.param("json", (), id="json-by-date"),
    pytest.param("html", (), id="html-by-date"),
    pytest.param("table", (), id="table-by-date"),
    # The workers judge (and write jsonl lines) with the parent's options, not their defaults.
    pytest.param("jsonl", ("--at", "2020-11-13"), id="jsonl-at-a-date"),
    pytest.param("jsonl", ("--only", "block"), id="jsonl-only-block"),
    # A worker's run of lines is judged whole for --fail-on: the exit code is that of --jobs 1.
    pytest.param("jsonl", ("--fail-on", "block"), id="jsonl-fail-on-block"),
    pytest.param("jsonl", ("--only", "log", "--fail-on", "block"), id="jsonl-only-log-fail-on-block"),
]


@pytest.mark.parametrize(("fmt", "extra"), JOBS_CASES)
def test_jobs_give_the_same_bytes(fmt: str, extra: tuple[str, ...], tmp_path: Path) -> None:
    """--jobs 1, 2 and 3 over a directory of 8 inputs (one damaged) and a missing file: the
    same report, byte for byte, the same warnings in the same order, the same exit code."""
    root = _tree(tmp_path)
    runs = [
        _cli(str(root), str(tmp_path / "missing.pcap"), "--format", fmt, *extra, "--jobs", str(n))
        for n in (1, 2, 3)
    ]
    assert runs[0][0] == (3 if "--fail-on" in extra else 4)  # 3: a block seen, before damage's 4
    seen = b"www.wechat.com" if extra[:2] == ("--only", "block") else b"www.tiktok.com"
    assert runs[0][1].count(seen) >= 4
    said = runs[0][2] if fmt != "table" else runs[0][1]  # the table shows its warnings itself
    assert b"file ends inside the packet" in said and b"cannot open" in said
    assert runs[1] == runs[0] and runs[2] == runs[0]


def test_jobs_option_is_checked(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["replay", "--policy", str(POLICY), "--jobs", "0", "x.pcap"])
    assert exit_.value.code == 2
    assert "argument --jobs/-j: '0': between 1 and 256 processes" in capsys.readouterr().err


def test_bombs_in_parallel_keep_memory_flat_per_process(tmp_path: Path) -> None:
    """--jobs 2 on two bombs: each worker skips its bomb's line with the warning, the parent
    reports both in input order, and the largest process of the run stays under the bound."""
    from tests.security.test_replay_bombs import RSS_BOUND_MB, replay

    first, second = _bomb("zstd", tmp_path), _bomb("gzip", tmp_path)
    run = replay(tmp_path, "--jobs", "2", str(first), str(second))
    skipped = "at line 2: line longer than 1048576 bytes (--max-line); skipped"
    assert run.warnings == [f"{first} {skipped}", f"{second} {skipped}"]
    pair = [("dns", "www.tiktok.com", "log"), ("sni", "www.wechat.com", "block")]
    assert (run.code, run.verdicts) == (0, pair + pair)
    assert run.peak_rss_mb < RSS_BOUND_MB, f"peak RSS {run.peak_rss_mb:.0f} MB"
