"""Link types, tunnels and proxies (issue 11): replay reads the inner names, notes the
tunnel, and reads exactly what tshark reads from the same crafted capture."""

from __future__ import annotations

import json
from pathlib import Path

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import PolicyView
from replay.report import event, row

from . import craft as c
from .conftest import need, replay_all
from .encaps import ENCAPS, Encap
from .tshark import replay_names, tshark_names


@pytest.mark.parametrize("case", ENCAPS, ids=[e.id for e in ENCAPS])
def test_encapsulation(case: Encap, view: PolicyView, tmp_path: Path) -> None:
    path = case.build(tmp_path)
    verdicts, rep = replay_all(view, path)
    got = [(v.sighting.kind.value, v.sighting.value, v.sighting.via, v.sighting.tunnel) for v in verdicts]
    assert got == case.expected
    assert [str(d) for d in rep.damage] == [
        f"{path} {d}" if d.startswith("at ") else f"{path}: {d}" for d in case.damage
    ]


@pytest.mark.parametrize("case", ENCAPS, ids=[e.id for e in ENCAPS])
def test_encapsulation_names_match_tshark(case: Encap, view: PolicyView, tmp_path: Path) -> None:
    tshark = need("tshark")
    path = case.build(tmp_path)
    verdicts, _ = replay_all(view, path)
    assert replay_names(verdicts) == tshark_names(tshark, path, case.decode_as)


def test_inner_endpoints_and_tunnel_in_the_report(view: PolicyView, tmp_path: Path) -> None:
    """Inside VXLAN the client and server are the inner packet's; the tunnel is named in the
    JSON row and in the event's ``egress`` extras."""
    case = next(e for e in ENCAPS if e.id == "vxlan")
    verdicts, _ = replay_all(view, case.build(tmp_path))
    sni = verdicts[1]
    assert (sni.sighting.client, sni.sighting.server, sni.sighting.server_port) == (
        "10.0.0.5",
        "198.51.100.7",
        443,
    )
    assert row(sni)["tunnel"] == "vxlan"
    ev = json.loads(json.dumps(event(sni)))
    assert ev["egress"]["tunnel"] == "vxlan"
    assert ev["source"]["ip"] == "10.0.0.5" and ev["destination"]["ip"] == "198.51.100.7"
    assert (ev["event"]["action"], sni.decision.apps) == ("log", ("tiktok",))


FUZZED = [e for e in ENCAPS if not e.damage]
_BUILT: dict[str, tuple[int, list[bytes]]] = {}


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    case=st.sampled_from(FUZZED),
    where=st.integers(0, 10_000),
    flip=st.integers(1, 255),
    cut=st.integers(0, 400),
)
def test_damaged_encapsulations_cost_a_packet_at_most(
    case: Encap, where: int, flip: int, cut: int, view: PolicyView, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """One byte changed and one frame cut short, in any header of any encapsulation: the
    packet may be lost (counted as malformed), the read never stops and nothing raises."""
    tmp = tmp_path_factory.mktemp("fuzz")
    if case.id not in _BUILT:  # scapy takes a second or two per capture: build each once
        path = case.build(tmp)
        _BUILT[case.id] = (_linktype(path), [bytes(f) for _, f in _records(path)])
    linktype, frames = _BUILT[case.id][0], list(_BUILT[case.id][1])
    victim = bytearray(frames[where % len(frames)])
    victim[where % len(victim)] ^= flip
    frames[where % len(frames)] = bytes(victim)
    frames.append(frames[(where + 1) % len(frames)][: cut % (len(frames[0]) + 1)])
    damaged = c.write_pcap(tmp / "damaged.pcap", frames, linktype)
    _, rep = replay_all(view, damaged)
    assert all(not d.stopped for d in rep.damage), [str(d) for d in rep.damage]
    assert all("internal error" not in str(d) for d in rep.damage)


def _records(path: Path) -> list[tuple[float, bytes]]:
    with path.open("rb") as f:
        return list(dpkt.pcap.Reader(f))


def _linktype(path: Path) -> int:
    with path.open("rb") as f:
        return int(dpkt.pcap.Reader(f).datalink())


def test_one_byte_segment_without_syn_is_not_malformed(view: PolicyView, tmp_path: Path) -> None:
    """A SOCKS5 greeting's first byte alone, in a stream whose SYN was not captured, is just
    not (yet) a stream start: no packet is counted as malformed."""
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    ip = IP(src=c.CLIENT, dst=c.SERVER)
    packets = [
        ip / TCP(sport=40200, dport=1080, flags="PA", seq=7) / Raw(b"\x05"),
        c.udp(c.dns_query("a.example")),
    ]
    verdicts, rep = replay_all(view, c.write_pcap(tmp_path / "one.pcap", c.link(packets, c.LINK_ETHERNET)))
    assert [str(d) for d in rep.damage] == []
    assert [v.sighting.value for v in verdicts] == ["a.example"]


# Juniper's link types (pcap-linktype(7)): dpkt has no decoder for any of them, so replay
# reads none of them (issue 11: "where dpkt supports them"); each gets one note per file,
# and the other interfaces of the same capture are still read.
JUNIPER = [
    pytest.param(130, id="juniper-mlppp"),
    pytest.param(167, id="juniper-pppoe"),
    pytest.param(178, id="juniper-ether"),
    pytest.param(179, id="juniper-ppp"),
    pytest.param(181, id="juniper-chdlc"),
]


@pytest.mark.parametrize("linktype", JUNIPER)
def test_juniper_link_types_are_named_and_skipped(linktype: int, view: PolicyView, tmp_path: Path) -> None:
    eth = c.link([c.udp(c.dns_query("a.example"))], c.LINK_ETHERNET)
    # A Juniper cookie-prefixed frame: 'MGC' magic, flags, then an Ethernet frame.
    juniper = [b"MGC\x01" + eth[0]] * 3
    path = c.write_pcapng(tmp_path / "juniper.pcapng", [(c.LINK_ETHERNET, eth), (linktype, juniper)])
    verdicts, rep = replay_all(view, path)
    assert [v.sighting.value for v in verdicts] == ["a.example"]
    assert [str(d) for d in rep.damage] == [
        f"{path}: link type {linktype} is not supported; its packets were skipped"
    ]
