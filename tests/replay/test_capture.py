"""Crafted captures → the sightings and verdicts replay must produce."""

from __future__ import annotations

from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import Action, PolicyView

from . import craft as c
from .cases import CASES, Case
from .conftest import replay_all


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_capture_case(case: Case, view: PolicyView, tmp_path: Path) -> None:
    path = case.build(tmp_path)
    verdicts, rep = replay_all(view, path)
    got = [(v.sighting.kind.value, v.sighting.value, v.sighting.via) for v in verdicts]
    assert got == case.expected
    warnings = [str(d) for d in rep.damage]
    for text in case.damage:
        assert any(text in w for w in warnings), warnings
    if not case.damage:
        assert warnings == []
    for v in verdicts:
        assert v.sighting.file == str(path) and v.sighting.packet >= 1


VERDICTS = [
    # (case id, name, action, apps, rule)
    ("dns-udp-cname-chain", "www.tiktok.com", Action.LOG, ("tiktok",), "domain:tiktok.com"),
    ("dns-udp-cname-chain", "www.tiktok.com.edge.example", Action.ALLOW, (), None),
    ("ipv6", "web.wechat.com", Action.BLOCK, ("wechat",), "domain:wechat.com"),
    ("tls-without-sni", "203.0.113.9", Action.LOG, ("tiktok",), "network:203.0.113.0/24"),
    (
        "http-keepalive-body-and-chunked",
        "http://cdn.shared.example/tiktok/app.apk",
        Action.BLOCK,
        ("tiktok",),
        "download:cdn.shared.example/tiktok/",
    ),
    (
        "http-keepalive-body-and-chunked",
        "http://play.google.com/store/apps/details?id=com.zhiliaoapp.musically",
        Action.BLOCK,
        ("tiktok",),
        "store:google_play:com.zhiliaoapp.musically",
    ),
    ("quic-v2", "www.wechat.com", Action.BLOCK, ("wechat",), "domain:wechat.com"),
]


@pytest.mark.parametrize("case_id,name,action,apps,rule", VERDICTS, ids=[f"{v[0]}:{v[1]}" for v in VERDICTS])
def test_verdicts(
    case_id: str,
    name: str,
    action: Action,
    apps: tuple[str, ...],
    rule: str | None,
    view: PolicyView,
    tmp_path: Path,
) -> None:
    case = next(c for c in CASES if c.id == case_id)
    verdicts, _ = replay_all(view, case.build(tmp_path))
    (v,) = [v for v in verdicts if v.sighting.value == name]
    assert (v.decision.action, v.decision.apps, v.decision.rule) == (action, apps, rule)


def test_ech_is_flagged(view: PolicyView, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "tls-ech-outer-sni")
    (v,) = replay_all(view, case.build(tmp_path))[0]
    assert v.sighting.ech and v.sighting.value == "public.example"


def test_sightings_carry_endpoints(view: PolicyView, tmp_path: Path) -> None:
    case = next(c for c in CASES if c.id == "dns-over-tcp")
    query, cname = replay_all(view, case.build(tmp_path))[0]
    assert (
        query.sighting.client,
        query.sighting.server,
        query.sighting.client_port,
        query.sighting.server_port,
    ) == ("10.0.0.5", "10.0.0.53", 41000, 53)
    assert cname.sighting.cname_of == "api.tiktokv.com" and cname.sighting.client == "10.0.0.5"


# A shared, loaded machine makes generation slow at times; that is not a failure of the code.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]
LINKS = [c.LINK_ETHERNET, c.LINK_SLL, c.LINK_SLL2, c.LINK_RAW, c.LINK_NULL, c.LINK_LOOP]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, *SLOW_OK]
)
@given(
    link=st.sampled_from(LINKS),
    frames=st.lists(st.binary(max_size=200), min_size=1, max_size=8),
    mutate=st.integers(0, 2000),
)
def test_random_frames_never_raise(
    link: int, frames: list[bytes], mutate: int, view: PolicyView, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Random bytes, and real frames with one byte changed, cost a packet at most."""
    real = c.link(
        [*c.tcp_segments(c.client_hello("www.tiktok.com"), 300), c.udp(c.dns_query("a.example"))], link
    )
    victim = bytearray(real[mutate % len(real)])
    victim[mutate % len(victim)] ^= 0xA5
    path = c.write_pcap(tmp_path_factory.mktemp("fuzz") / "f.pcap", [*frames, bytes(victim), *real], link)
    verdicts, rep = replay_all(view, path)
    assert all(not d.stopped for d in rep.damage)
    assert all("internal error" not in str(d) for d in rep.damage)
    # The untouched DNS query, the last packet, is never the one damaged and gets the policy's verdict.
    assert len(frames) + 1 + len(real) not in {d.packet for d in rep.damage}
    last = [v for v in verdicts if (v.sighting.kind.value, v.sighting.value) == ("dns", "a.example")]
    assert last and last[-1].decision == view.decide_name("a.example")


def test_every_truncation_point_keeps_earlier_verdicts(view: PolicyView, tmp_path: Path) -> None:
    path = next(x for x in CASES if x.id == "pcapng-three-interfaces").build(tmp_path)
    data = path.read_bytes()
    full = [v.sighting.value for v in replay_all(view, path)[0]]
    cut = tmp_path / "cut.pcapng"
    for size in range(0, len(data), 7):
        cut.write_bytes(data[:size])
        got = [v.sighting.value for v in replay_all(view, cut)[0]]
        assert got == full[: len(got)]


PCAP_CASES = [x for x in CASES if not x.damage and x.id.split("-")[0] != "pcapng"]


@pytest.mark.parametrize("case", PCAP_CASES, ids=[x.id for x in PCAP_CASES])
def test_pcapng_reads_like_pcap(case: Case, view: PolicyView, tmp_path: Path) -> None:
    """The same frames as pcapng give the same sightings (times and packet numbers too)."""
    path = case.build(tmp_path)
    with path.open("rb") as f:
        reader = dpkt.pcap.Reader(f)
        link, frames = reader.datalink(), [buf for _, buf in reader]
    ng = c.write_pcapng(tmp_path / "same.pcapng", [(link, frames)])
    as_pcap = [(v.sighting.value, v.sighting.time, v.sighting.packet) for v in replay_all(view, path)[0]]
    as_pcapng = [(v.sighting.value, v.sighting.time, v.sighting.packet) for v in replay_all(view, ng)[0]]
    assert as_pcapng == as_pcap and as_pcap


def test_held_bytes_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streams that never fill their gaps are given up, oldest first, so memory stays bounded."""
    from replay import capture, tcp

    monkeypatch.setattr(tcp, "MAX_HELD", 8)
    packets = []
    for i in range(40):  # a SYN, then only a segment after a gap: bytes that can never be used
        syn, _first, second = c.tcp_segments(c.client_hello("www.tiktok.com"), 120, sport=20000 + i)[:3]
        packets += [syn, second]
    packets += c.tcp_segments(c.client_hello("www.wechat.com"), 100, sport=30000)
    dec = capture.Decoder("gaps")
    most = 0
    for n, frame in enumerate(c.link(packets, c.LINK_ETHERNET), 1):
        dec.packet(c.T0 + n, frame, c.LINK_ETHERNET, n)
        most = max(most, len(dec.live))
    assert most == 8 and len(dec.live) <= 8
    assert [(s.kind.value, s.value) for s in dec.out] == [("sni", "www.wechat.com")]
    assert dec.malformed == 0
