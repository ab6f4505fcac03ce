"""``egress-filter replay``: formats, --output, --fail-on and exit codes, warnings, progress."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import re
import select
import subprocess
import sys
from pathlib import Path

import dpkt
import pytest

from egress_filter.cli import main

from . import craft as c
from .cases import CASES
from .conftest import POLICY


def _case(tmp: Path, case_id: str) -> Path:
    return next(x for x in CASES if x.id == case_id).build(tmp)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", "--policy", str(POLICY), *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def http_pcap(tmp_path: Path) -> Path:
    return _case(tmp_path, "http-keepalive-body-and-chunked")


EXIT_CASES = [
    # (id, case, extra args, exit code)
    ("clean-no-gate", "dns-udp-cname-chain", ["--at", "2020-11-10"], 0),
    ("fail-on-block-hit", "http-keepalive-body-and-chunked", ["--at", "2020-11-10", "--fail-on", "block"], 3),
    ("fail-on-block-only-logs", "dns-udp-cname-chain", ["--at", "2020-11-10", "--fail-on", "block"], 0),
    ("fail-on-log-hit", "dns-udp-cname-chain", ["--at", "2020-11-10", "--fail-on", "log"], 3),
    (
        "fail-on-before-schedule",
        "http-keepalive-body-and-chunked",
        ["--at", "2020-01-01", "--fail-on", "log"],
        0,
    ),
    ("phase-override", "dns-udp-cname-chain", ["--phase", "full", "--fail-on", "block"], 3),
    ("damaged-input", "truncated-pcap", ["--at", "2020-11-10"], 4),
    ("damaged-but-gate-hit", "truncated-pcap", ["--at", "2020-11-10", "--fail-on", "log"], 3),
    ("malformed-packets-only-warn", "malformed-packets", ["--at", "2020-11-10"], 0),
]


@pytest.mark.parametrize("case_id,extra,code", [x[1:] for x in EXIT_CASES], ids=[x[0] for x in EXIT_CASES])
def test_exit_codes(
    case_id: str, extra: list[str], code: int, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    got, out, err = _run(capsys, str(_case(tmp_path, case_id)), *extra)
    assert got == code
    assert "Traceback" not in out + err


def test_table(http_pcap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(http_pcap), "--at", "2020-11-10")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:8] == ["TIME", "CLIENT", "SERVER", "KIND", "QTYPE", "ACTION", "GROUP", "APPS"]
    assert re.search(
        r"10\.0\.0\.5:40000 +198\.51\.100\.7:80 +http +- +block +default +tiktok +downloads +"
        r"http://cdn\.shared\.example/tiktok/app\.apk +download:cdn\.shared\.example/tiktok/",
        out,
    )
    assert "3 observations: 2 block, 1 log, 0 allow" in out
    assert re.search(r"^tiktok +TikTok +downloads +3 +2 +1$", out, re.M)


def test_json(http_pcap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(http_pcap), "--at", "2020-11-10", "--format", "json")
    doc = json.loads(out)
    assert code == 0 and doc["at"] == "2020-11-10"
    assert [v["name"] for v in doc["verdicts"]] == [
        "http://api.tiktok.com/upload",
        "http://cdn.shared.example/tiktok/app.apk",
        "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically",
    ]
    first = doc["verdicts"][0]
    assert {k: first[k] for k in ("client", "server", "kind", "action", "apps", "phase", "rule")} == {
        "client": "10.0.0.5",
        "server": "198.51.100.7",
        "kind": "http",
        "action": "log",
        "apps": ["tiktok"],
        "phase": "downloads",
        "rule": "domain:tiktok.com",
    }
    assert first["time"] == "2020-11-10T09:20:00.010Z"  # the segment that completes the request head
    assert doc["summary"]["apps"] == [
        {
            "app": "tiktok",
            "name": "TikTok",
            "phase": "downloads",
            "observations": 3,
            "blocked": 2,
            "logged": 1,
            "first": first["time"],
            "last": doc["verdicts"][-1]["time"],
        }
    ]
    assert doc["inputs"] == [{"path": str(http_pcap), "format": "capture"}] and doc["warnings"] == []


def test_jsonl_events_in_shared_schema(http_pcap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(http_pcap), "--at", "2020-11-10", "--format", "jsonl")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(events) == 3
    ev = events[1]
    assert ev["observer"]["type"] == "replay" and ev["event"]["dataset"] == "egress_filter.replay"
    assert ev["egress"]["component"] == "replay" and ev["egress"]["action"] == "block"
    assert ev["url"]["full"] == "http://cdn.shared.example/tiktok/app.apk"
    assert ev["source"] == {"ip": "10.0.0.5", "port": 40000}
    assert ev["destination"]["ip"] == "198.51.100.7" and ev["destination"]["port"] == 80
    assert ev["egress"]["packet"] >= 1 and ev["egress"]["source_file"] == str(http_pcap)
    assert ev["@timestamp"].startswith("2020-11-10T09:20:00")


def test_html_is_self_contained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inputs = [
        _case(tmp_path / n, n)
        for n in ("http-keepalive-body-and-chunked", "ipv6", "quic-v2")
        if (tmp_path / n).mkdir() is None
    ]
    report = tmp_path / "report.html"
    code, out, err = _run(
        capsys, *map(str, inputs), "--at", "2020-11-10", "--format", "html", "-o", str(report)
    )
    text = report.read_text()
    assert code == 0 and out == "" and err == ""
    assert text.startswith("<!doctype html>") and "<svg" in text and "</html>" in text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", text)  # no external assets
    assert "<title>tiktok block: " in text and "<title>wechat block: " in text  # bars for both apps
    assert "solid: blocked · hatched: logged" in text


def test_warning_names_file_and_packet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _case(tmp_path, "truncated-pcap")
    code, out, err = _run(capsys, str(path), "--at", "2020-11-10", "--format", "jsonl")
    assert code == 4 and len(out.splitlines()) == 1  # the verdict before the damage is kept
    assert f"warning: {path} at packet 4: file ends inside the packet" in err


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "not a pcap, pcapng"),
        (b"hello, world\n", "not a pcap, pcapng"),
        (b"\x1f\x8b\x08\x00garbage", "unreadable gzip data"),
    ],
    ids=["empty", "text", "bad-gzip"],
)
def test_unreadable_inputs(
    content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "input"
    path.write_bytes(content)
    code, out, _ = _run(capsys, str(path))
    assert code == 4 and message in out and "Traceback" not in out


def test_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(tmp_path / "nope.pcap"))
    assert code == 4 and "cannot open" in out


def test_policy_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], http_pcap: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\napps: nope\n")
    try:
        code = main(["replay", "--policy", str(bad), str(http_pcap)])
    except SystemExit as exc:  # load_or_exit raises it; main may or may not turn it into a return
        code = int(exc.code or 0)
    assert code == 1
    assert "bad.yaml:2: apps: expected a list" in capsys.readouterr().err


def test_only_filters_rows_not_summary(http_pcap: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, str(http_pcap), "--at", "2020-11-10", "--only", "block", "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert [v["action"] for v in doc["verdicts"]] == ["block", "block"]
    assert doc["summary"]["observations"] == 3


def test_progress_bar_on_a_terminal(tmp_path: Path) -> None:
    """A real pseudo-terminal on stderr: the bar shows for a large capture and is erased at the end."""
    frames = c.link(
        c.tcp_segments(c.client_hello("www.tiktok.com"), 1400)
        + [c.udp(c.dns_query(f"n{i}.example")) for i in range(200)],
        c.LINK_ETHERNET,
    )
    pcap = c.write_pcap(tmp_path / "big.pcap", frames * 600)  # ~10 MB
    assert pcap.stat().st_size > 8 << 20
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "egress_filter.cli",
                "replay",
                "--policy",
                str(POLICY),
                "--format",
                "jsonl",
                "-o",
                os.devnull,
                str(pcap),
            ],
            stdout=subprocess.DEVNULL,
            stderr=slave,
        )
        os.close(slave)
        seen = b""
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=120) == 0
    finally:
        os.close(master)
    assert b"replay [" in seen and b"100%" in seen


SCHEDULE_CHANGE = dt.datetime(2020, 11, 12, tzinfo=dt.UTC).timestamp()  # TikTok: downloads → full


@pytest.mark.parametrize(
    "extra,actions,at,dates",
    [
        ([], ["log", "block"], None, ["2020-11-11", "2020-11-12"]),
        (["--at", "2020-11-10"], ["log", "log"], "2020-11-10", ["2020-11-10"]),
        (["--phase", "full"], ["block", "block"], "today", None),
    ],
    ids=["each-on-its-own-day", "fixed-date", "forced-phase"],
)
def test_observations_judged_on_their_day(
    extra: list[str],
    actions: list[str],
    at: str | None,
    dates: list[str] | None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    query = c.link([c.udp(c.dns_query("www.tiktok.com"))], c.LINK_ETHERNET)
    path = tmp_path / "midnight.pcap"
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f)
        w.writepkt(query[0], ts=SCHEDULE_CHANGE - 1)
        w.writepkt(query[0], ts=SCHEDULE_CHANGE + 1)
    code, out, _ = _run(capsys, str(path), "--format", "json", *extra)
    doc = json.loads(out)
    assert [v["action"] for v in doc["verdicts"]] == actions
    if at == "today":
        assert doc["at"] == dt.date.today().isoformat()
    else:
        assert doc["at"] == at
    if dates is not None:
        assert doc["dates"] == dates
    assert code == 0
