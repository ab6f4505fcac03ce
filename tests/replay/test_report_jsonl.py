"""JSON-lines output: orjson's line for every shape of sighting reads back (with
the standard library's json, the oracle) as exactly ``build_event``'s dict, on
one line; and a reader failing part-way loses none of the lines already built."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Action, Decision, Kind, Phase, PolicyView
from replay import Finding, Sighting, Summary
from replay.engine import ACTION_INDEX, Rendered
from replay.report import event
from replay.report_json import WRITE_CHARS, line, write_jsonl

from .cases import CASES, Case
from .conftest import replay_all

DECISIONS = [
    Decision(Action.ALLOW),
    Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "tiktok is in phase full"),
    Decision(
        Action.LOG, ("wechat", "wechat_pay"), Phase.DOWNLOADS, "sni:*.wechat.com", "monitor", Action.BLOCK
    ),
    # braces and quotes are format-string and JSON syntax; they must come through as text
    Decision(Action.BLOCK, ("x",), Phase.FULL, "url:{a}/b", 'reason with {0} and "quotes" and ünïcode'),
    # a NUL in a decision could pass for a placeholder: that shape is encoded plainly
    Decision(Action.LOG, ("x",), Phase.DOWNLOADS, None, "odd \x00ef2\x00 reason"),
]

SIGHTINGS = [
    pytest.param(Sighting(1605000000.0, Kind.DNS, "www.tiktok.com"), id="dns-bare"),
    pytest.param(
        Sighting(
            1605000000.1234567,
            Kind.DNS,
            "edge.www.tiktok.com",
            "10.0.0.5",
            "10.0.0.53",
            40000,
            53,
            via="cname",
            qtype="CNAME",
            file="a.pcap",
            packet=2,
            cname_of="www.tiktok.com",
        ),
        id="dns-cname-all-fields",
    ),
    pytest.param(
        Sighting(1605000000.9999996, Kind.DNS, "x.example", "", "", None, None, via="dns/udp", qtype=""),
        id="dns-empty-strings",
    ),
    pytest.param(
        Sighting(
            1605000000.5,
            Kind.SNI,
            "www.tiktok.com",
            "2001:db8::5",
            "2001:db8::1",
            0,
            443,
            via="tls",
            file="dir/b.pcapng",
            packet=10**9,
            ech=True,
        ),
        id="sni-ech-port-zero",
    ),
    pytest.param(
        Sighting(1605000000.5, Kind.SNI, "bücher.example", "10.0.0.5", via="quic", file="ü {x}.pcap"),
        id="sni-unicode-braces-in-file",
    ),
    pytest.param(
        Sighting(
            1605000001.0004995,
            Kind.HTTP,
            'http://www.tiktok.com/{0}?q="x"\\y',
            "10.0.0.5",
            "192.0.2.1",
            51000,
            80,
            host="www.tiktok.com",
            via="http",
            packet=7,
        ),
        id="http-host-braces-quotes-backslash",
    ),
    pytest.param(
        Sighting(1605000001.0, Kind.HTTP, "http://203.0.113.9/x\x00\u2028", None, "203.0.113.9", None, 80),
        id="http-no-host-control-chars",
    ),
    pytest.param(Sighting(0.0, Kind.IP, "203.0.113.5", "10.0.0.5", "203.0.113.5", 1, 443), id="ip-epoch"),
    pytest.param(Sighting(-1.5, Kind.IP, "2001:db8::9", via="zeek-conn"), id="ip-before-epoch"),
    pytest.param(
        Sighting(
            1605000002.0,
            Kind.SNI,
            "www.tiktok.com",
            "10.0.0.5",
            "198.51.100.7",
            40000,
            443,
            via="tls",
            file="mirror.pcap",
            packet=3,
            tunnel="vxlan,socks5",
        ),
        id="sni-inside-tunnels",
    ),
]


@pytest.mark.parametrize("sighting", SIGHTINGS)
def test_line_reads_back_as_the_event(sighting: Sighting) -> None:
    for decision in DECISIONS:
        v = Finding(sighting, decision)
        text = line(v)
        assert text.endswith("\n") and "\n" not in text[:-1], decision
        assert json.loads(text) == event(v), decision


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_crafted_capture_writes_its_events(
    case: Case, tmp_path: Path, view: PolicyView
) -> None:
    verdicts, _ = replay_all(view, case.build(tmp_path))
    assert len(verdicts) == len(case.expected)
    assert [json.loads(line(v)) for v in verdicts] == [event(v) for v in verdicts]


class ReaderFailed(Exception):
    pass


# Lines of a few hundred characters: the larger counts span one and several writes.
@pytest.mark.parametrize("count", [0, 1, 10, WRITE_CHARS // 100, WRITE_CHARS // 20], ids=str)
def test_lines_built_before_a_reader_fails_are_written(count: int, tmp_path: Path) -> None:
    def verdicts() -> Iterator[Finding]:
        for i in range(count):
            yield Finding(Sighting(1605000000.0 + i, Kind.DNS, f"n{i}.example", packet=i + 1), DECISIONS[1])
        raise ReaderFailed

    out = tmp_path / "events.jsonl"
    with out.open("w", encoding="utf-8") as f, pytest.raises(ReaderFailed):
        write_jsonl(verdicts(), f, Summary())
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["egress"]["packet"] for r in rows] == list(range(1, count + 1))


def test_a_run_of_lines_splits_back_into_its_lines() -> None:
    """A worker's run of lines (``Rendered``) gives back each line and its action, even for
    names holding the separators that ``splitlines`` would also cut at, and its worst action."""
    names = ["www.tiktok.com", "a\u2028b.example", "c\u2029d\x85e.example", "f\x1cg.example",
             "h\x0bi.example"]
    findings = [
        Finding(Sighting(1605000000.0 + i, Kind.DNS, name, packet=i + 1), DECISIONS[i % 3])
        for i, name in enumerate(names)
    ]
    actions = bytes(ACTION_INDEX[f.decision.action] for f in findings)
    run = Rendered(actions, "".join(line(f) for f in findings))
    assert list(run.each()) == [(f.decision.action, line(f)) for f in findings]
    assert run.severity() == Action.BLOCK.severity
    allowed = Rendered(bytes((ACTION_INDEX[Action.ALLOW],)), line(findings[0]))
    assert allowed.severity() == Action.ALLOW.severity
