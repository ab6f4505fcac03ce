"""A repeated event's shape renders the line ``encode(build_event(...))`` writes, byte for
byte, for every kind of decision and every value that changes; a name that carries a
token is refused, so a query cannot forge a slot."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from policies import Action, Decision, Observation, Phase, Policy, build_event, load_policy
from runtime.jsonline import encode
from runtime.shape import TOKENS, Shape, Slot, event_id_at, line_at

BLOCK = Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "because")
MONITOR = Decision(Action.LOG, ("tiktok",), Phase.FULL, "domain:tiktok.com", "monitor", Action.BLOCK)
CANARY = Decision(Action.BLOCK, (), Phase.NONE, "canary", "the DoH canary", list_group="canary")


def bundled(name: str, at: dt.date) -> Decision:
    policy: Policy = load_policy()
    return policy.view(at=at).decide(Observation.dns(name, "10.0.0.5"))


def shape_of(d: Decision, qname: str, qtype: str, response: str, named: bool) -> Shape | None:
    """What the resolver's telemetry makes (dns_blocker/chain/telemetry.py ``_shape``)."""
    ev = build_event(d, Observation.dns(qname, TOKENS[Slot.IP]), "dns", event_id=TOKENS[Slot.ID],
                     client_port=0, qtype=qtype, response=response,
                     client_name=TOKENS[Slot.NAME] if named else None)
    ev["@timestamp"] = TOKENS[Slot.TIME]
    ev["source"]["port"] = TOKENS[Slot.PORT]
    return Shape.of(ev)


DECISIONS = [
    pytest.param(BLOCK, id="block"),
    pytest.param(MONITOR, id="monitor-log"),
    pytest.param(CANARY, id="list-group"),
    pytest.param(bundled("www.tiktok.com", dt.date(2020, 11, 13)), id="bundled-frameworks-legal"),
    pytest.param(bundled("www.tiktok.com", dt.date(2026, 12, 3)), id="bundled-today"),
]

# (qname, client ip, port, client name)
VALUES = [
    pytest.param("www.tiktok.com", "10.0.0.5", 53000, None, id="ipv4"),
    pytest.param("www.tiktok.com", "2001:db8::5", 1, None, id="ipv6"),
    pytest.param("www.tiktok.com", "fe80::1%eth0", 65535, None, id="ipv6-scope"),
    pytest.param("www.tiktok.com", "10.0.0.5", 40000, "kids-tablet", id="named"),
    pytest.param('a"b\\c<script>.tiktok.com', "10.0.0.5", 40000, None, id="hostile-qname"),
    pytest.param("www.tiktok.com", "10.0.0.5", 40000, 'x"y\\z<script>', id="hostile-client-name"),
    pytest.param("\u00e9t\u00e9.tiktok.com", "10.0.0.5", 40000, "caf\u00e9", id="non-ascii"),
]

STAMPS = [
    pytest.param(1_700_000_000.1234, id="ms"),
    pytest.param(1_700_000_000.9999996, id="rounds-to-next-second"),
    pytest.param(0.0, id="epoch"),
]


@pytest.mark.parametrize("d", DECISIONS)
@pytest.mark.parametrize(("qname", "ip", "port", "name"), VALUES)
@pytest.mark.parametrize("ts", STAMPS)
def test_render_is_the_whole_event_line(d: Decision, qname: str, ip: str, port: int, name: str | None,
                                        ts: float) -> None:
    shape = shape_of(d, qname, "AAAA", "NXDOMAIN", name is not None)
    assert shape is not None
    event_id = event_id_at(ts)
    whole = build_event(d, Observation.dns(qname, ip), "dns", event_id=event_id, timestamp=ts,
                        client_port=port, qtype="AAAA", response="NXDOMAIN", client_name=name)
    line = line_at(shape, ts, event_id, ip, port, name)
    assert line == encode(whole)[:-1].decode()
    assert json.loads(line) == whole


@pytest.mark.parametrize("slot", list(Slot), ids=lambda s: s.name.lower())
def test_a_name_that_carries_a_token_is_refused(slot: Slot) -> None:
    assert shape_of(BLOCK, f"x{TOKENS[slot]}.tiktok.com", "A", "NXDOMAIN", True) is None
    assert shape_of(BLOCK, "www.tiktok.com", "A", "NXDOMAIN", True) is not None


def test_a_shape_without_a_name_slot_leaves_the_name_out() -> None:
    shape = shape_of(BLOCK, "www.tiktok.com", "A", "NXDOMAIN", False)
    assert shape is not None and Slot.NAME not in shape.slots
    ev: dict[str, Any] = json.loads(line_at(shape, 1.0, event_id_at(1.0), "10.0.0.5", 5, "ignored"))
    assert ev["source"] == {"ip": "10.0.0.5", "port": 5}


def test_event_ids_are_sortable_and_distinct() -> None:
    ids = [event_id_at(1_700_000_000.0 + i / 1000) for i in range(100)]
    assert ids == sorted(ids) and len(set(ids)) == 100
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
