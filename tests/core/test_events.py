"""The one event schema: ECS field names per observation kind, for every component."""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest

from policies import Action, Decision, Observation, Phase, Policy, build_event, new_event_id
from tests.core.conftest import FULL

BLOCK = Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "because")


def path(ev: dict[str, Any], dotted: str) -> Any:
    node: Any = ev
    for key in dotted.split("."):
        node = node[key]
    return node


COMMON = {
    "event.action",
    "event.reason",
    "event.id",
    "event.kind",
    "event.category",
    "event.type",
    "event.outcome",
    "event.dataset",
    "observer.type",
    "ecs.version",
    "egress.component",
    "egress.kind",
    "egress.value",
    "egress.action",
    "egress.would",
    "egress.apps",
    "egress.phase",
    "egress.rule",
    "egress.schema",
}

# (observation, the kind-specific ECS fields and their values)
KIND_CASES = [
    pytest.param(
        Observation.dns("www.tiktok.com", "10.0.0.5"),
        {
            "dns.question.name": "www.tiktok.com",
            "dns.question.type": "A",
            "dns.response_code": "NXDOMAIN",
            "network.protocol": "dns",
            "source.ip": "10.0.0.5",
            "source.port": 5353,
            "egress.kind": "dns",
            "egress.qtype": "A",
            "egress.response": "NXDOMAIN",
        },
        id="dns",
    ),
    pytest.param(
        Observation.sni("www.tiktok.com", "10.0.0.5"),
        {
            "tls.client.server_name": "www.tiktok.com",
            "destination.domain": "www.tiktok.com",
            "network.protocol": "tls",
            "source.ip": "10.0.0.5",
            "egress.kind": "sni",
        },
        id="sni",
    ),
    pytest.param(
        Observation.http("https://www.tiktok.com/@a", "www.tiktok.com", "10.0.0.5"),
        {
            "url.full": "https://www.tiktok.com/@a",
            "url.domain": "www.tiktok.com",
            "destination.domain": "www.tiktok.com",
            "network.protocol": "http",
            "egress.kind": "http",
        },
        id="http",
    ),
    pytest.param(
        Observation.ip("203.0.113.5", "10.0.0.5"),
        {"destination.ip": "203.0.113.5", "source.ip": "10.0.0.5", "egress.kind": "ip"},
        id="ip",
    ),
]

KIND_KEYS = {"dns", "tls", "url"}


@pytest.mark.parametrize(("obs", "fields"), KIND_CASES)
@pytest.mark.parametrize("component", ["dns", "proxy", "replay"], ids=str)
def test_event_schema_per_kind(
    policy: Policy, obs: Observation, fields: dict[str, Any], component: str
) -> None:
    d = policy.view(at=FULL).decide(obs)
    qtype, response = ("A", "NXDOMAIN") if obs.kind.value == "dns" else (None, None)
    ev = build_event(
        d,
        obs,
        component,
        client_port=5353 if obs.kind.value == "dns" else None,
        qtype=qtype,
        response=response,
        timestamp=dt.datetime(2020, 11, 13, 12, 0, 0, 123456, tzinfo=dt.UTC),
    )
    for dotted in COMMON:
        path(ev, dotted)  # present
    for dotted, want in fields.items():
        assert path(ev, dotted) == want, dotted
    assert ev["@timestamp"] == "2020-11-13T12:00:00.123Z"
    assert ev["event"]["action"] == "block" and ev["event"]["type"] == ["denied"]
    assert ev["event"]["outcome"] == "failure"
    assert ev["event"]["dataset"] == f"egress_filter.{component}"
    assert ev["rule"]["name"] == d.rule == ev["egress"]["rule"]
    assert ev["egress"]["apps"] == ["tiktok"] and ev["egress"]["phase"] == "full"
    # only the observation's own protocol section is present
    own = {"dns": "dns", "sni": "tls", "http": "url", "ip": None}[obs.kind.value]
    assert {k for k in KIND_KEYS if k in ev} == ({own} if own else set())
    assert json.loads(json.dumps(ev)) == ev


ACTION_CASES = [
    pytest.param(Decision(Action.ALLOW), "allow", "allowed", "success", "allow", id="allow"),
    pytest.param(
        Decision(Action.LOG, ("tiktok",), Phase.DOWNLOADS, "domain:tiktok.com", "r"),
        "log",
        "info",
        "success",
        "log",
        id="log",
    ),
    pytest.param(
        Decision(Action.LOG, ("tiktok",), Phase.FULL, "domain:tiktok.com", "monitor", Action.BLOCK),
        "log",
        "info",
        "success",
        "block",
        id="monitor-downgrade",
    ),
    pytest.param(BLOCK, "block", "denied", "failure", "block", id="block"),
]


@pytest.mark.parametrize(("d", "action", "etype", "outcome", "would"), ACTION_CASES)
def test_event_action_fields(d: Decision, action: str, etype: str, outcome: str, would: str) -> None:
    ev = build_event(d, Observation.dns("x.example"), "dns")
    assert (ev["event"]["action"], ev["event"]["type"], ev["event"]["outcome"], ev["egress"]["would"]) == (
        action,
        [etype],
        outcome,
        would,
    )
    assert ("rule" in ev) is (d.rule is not None)


def test_no_client_means_no_source() -> None:
    ev = build_event(BLOCK, Observation.dns("www.tiktok.com"), "replay")
    assert "source" not in ev


def test_server_address_and_extra_fields() -> None:
    ev = build_event(
        BLOCK,
        Observation.sni("www.tiktok.com", "10.0.0.1"),
        "proxy",
        server_ip="192.0.2.1",
        server_port=443,
        event_id="abc",
        extra={"flow": "f1"},
    )
    assert ev["destination"] == {"ip": "192.0.2.1", "port": 443, "domain": "www.tiktok.com"}
    assert ev["event"]["id"] == "abc"
    assert ev["egress"]["flow"] == "f1"


def test_timestamps_from_epoch_and_now() -> None:
    ev = build_event(BLOCK, Observation.dns("a.example"), "dns", timestamp=0.5)
    assert ev["@timestamp"] == "1970-01-01T00:00:00.500Z"
    ev = build_event(BLOCK, Observation.dns("a.example"), "dns")
    when = dt.datetime.fromisoformat(ev["@timestamp"].replace("Z", "+00:00"))
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 5


def test_event_ids_are_unique_and_time_ordered() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)


def reference_event(
    decision: Decision,
    observation: Observation,
    component: str,
    *,
    event_id: str,
    timestamp: float,
    client_port: int | None = None,
    server_ip: str | None = None,
    server_port: int | None = None,
    qtype: str | None = None,
    response: str | None = None,
    extra: dict[str, Any] | None = None,
    http_method: str | None = None,
    status_code: int | None = None,
    user_agent: str | None = None,
    observer_hostname: str | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """The event built the plain way, field by field from the schema, as the
    oracle for ``build_event``'s cached per-decision parts and its timestamp
    formatting (which skips datetime objects)."""
    action = decision.action
    ev: dict[str, Any] = {
        "@timestamp": dt.datetime.fromtimestamp(timestamp, dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
        "ecs": {"version": "8.11.0"},
        "event": {
            "id": event_id,
            "kind": "event",
            "category": ["network"],
            "type": [{"block": "denied", "log": "info", "allow": "allowed"}[action.value]],
            "action": action.value,
            "outcome": "failure" if action is Action.BLOCK else "success",
            "reason": decision.reason,
            "module": "egress_filter",
            "dataset": f"egress_filter.{component}",
        },
        "observer": {"product": "egress-filter", "type": component},
        "egress": {
            "schema": "1",
            "component": component,
            "kind": observation.kind.value,
            "value": observation.value,
            "action": action.value,
            "would": decision.would.value,
            "apps": list(decision.apps),
            "phase": decision.phase.value,
            "rule": decision.rule,
            "group": decision.group,
        },
    }
    if decision.frameworks:
        ev["egress"]["frameworks"] = list(decision.frameworks)
        ev["egress"]["legal"] = [
            {"id": st.framework, "status": st.status.value,
             "since": st.since.isoformat() if st.since else None, "source": st.source}
            for st in decision.legal]
        ev["egress"]["legal_status"] = decision.legal_status.value
    if decision.policy is not None:
        ev["egress"]["policy"] = {"name": decision.policy.name, "digest": decision.policy.digest}
    if decision.rule:
        ev["rule"] = {"name": decision.rule}
    if observation.client:
        ev["source"] = {"ip": observation.client}
        if client_port is not None:
            ev["source"]["port"] = client_port
    dest: dict[str, Any] = {}
    if server_ip:
        dest["ip"] = server_ip
    if server_port is not None:
        dest["port"] = server_port
    kind = observation.kind.value
    if kind == "dns":
        ev["dns"] = {"question": {"name": observation.value}}
        if qtype:
            ev["dns"]["question"]["type"] = qtype
        if response:
            ev["dns"]["response_code"] = response
    elif kind == "sni":
        ev["tls"] = {"client": {"server_name": observation.value}}
        dest.setdefault("domain", observation.value)
    elif kind == "http":
        ev["url"] = {"full": observation.value}
        if observation.host:
            ev["url"]["domain"] = observation.host
            dest.setdefault("domain", observation.host)
    else:
        dest.setdefault("ip", observation.value)
    if kind != "ip":
        ev["network"] = {"protocol": {"dns": "dns", "sni": "tls", "http": "http"}[kind]}
    if dest:
        ev["destination"] = dest
    if response:
        ev["egress"]["response"] = response
    if qtype:
        ev["egress"]["qtype"] = qtype
    if http_method:
        ev.setdefault("http", {})["request"] = {"method": http_method}
    if status_code is not None:
        ev.setdefault("http", {})["response"] = {"status_code": status_code}
    if user_agent:
        ev["user_agent"] = {"original": user_agent}
    if observer_hostname:
        ev["observer"]["hostname"] = observer_hostname
    if user_name:
        ev["user"] = {"name": user_name}
    if extra:
        ev["egress"].update(extra)
    return ev


SAME_DECISIONS: list[Decision] = [d for p in ACTION_CASES if isinstance(d := p.values[0], Decision)] + [
    Decision(Action.BLOCK, ("wechat", "wechat_pay"), Phase.DOWNLOADS, None, 'ünïcode "quoted" reason')
]
SAME_OBSERVATIONS = [
    Observation.dns("www.tiktok.com", "10.0.0.5"),
    Observation.dns("bücher.example"),
    Observation.sni("www.tiktok.com", "2001:db8::5"),
    Observation.http('https://www.tiktok.com/@a?q="x"', "www.tiktok.com", "10.0.0.5"),
    Observation.http("http://203.0.113.9/x", None, "10.0.0.5"),
    Observation.ip("203.0.113.5", "10.0.0.5"),
    Observation.ip("2001:db8::1"),
]
# (timestamp, keyword arguments): epoch edges and the half-even microsecond
# rounding datetime applies before isoformat truncates to milliseconds
SAME_CONTEXTS = [
    pytest.param(0.0, {}, id="epoch"),
    pytest.param(0.5, {"client_port": 5353, "qtype": "A", "response": "NXDOMAIN"}, id="dns-answer"),
    pytest.param(1605268800.1234567, {"server_ip": "192.0.2.1", "server_port": 443}, id="server"),
    pytest.param(1605268800.9999996, {"server_port": 0, "client_port": 0}, id="round-up-second"),
    pytest.param(1605268800.0004995, {"extra": {"via": "tls", "packet": 7, "ech": True}}, id="extra"),
    pytest.param(1605268859.999, {"response": "451", "extra": {"action": "log"}}, id="extra-overrides"),
    pytest.param(-1.25, {"qtype": "AAAA"}, id="before-epoch"),
    pytest.param(4102444800.5, {}, id="year-2100"),
    pytest.param(1605268800.0, {"http_method": "GET", "status_code": 200, "user_agent": 'curl/8 "x"',
                                "observer_hostname": "gw1", "user_name": "anna"}, id="access-log"),
    pytest.param(1605268800.0, {"status_code": 451, "user_name": ""}, id="status-only"),
    pytest.param(1605268800.0, {"http_method": "CONNECT"}, id="method-only"),
    pytest.param(1e-7, {"server_ip": ""}, id="tiny"),
]


@pytest.mark.parametrize(("timestamp", "context"), SAME_CONTEXTS)
@pytest.mark.parametrize("component", ["dns", "proxy", "replay"], ids=str)
def test_build_event_is_byte_identical_to_the_plain_construction(
    timestamp: float, context: dict[str, Any], component: str
) -> None:
    for decision in SAME_DECISIONS:
        for obs in SAME_OBSERVATIONS:
            for _ in range(2):  # the first call fills the per-decision cache, the second reads it
                got = build_event(decision, obs, component, event_id="e1", timestamp=timestamp, **context)
                want = reference_event(
                    decision, obs, component, event_id="e1", timestamp=timestamp, **context
                )
                for ensure_ascii in (True, False):
                    assert json.dumps(got, ensure_ascii=ensure_ascii) == json.dumps(
                        want, ensure_ascii=ensure_ascii
                    ), (decision, obs)
            got["event"]["category"].append("mutated")
            got["egress"]["apps"].append("mutated")
            again = build_event(decision, obs, component, event_id="e1", timestamp=timestamp, **context)
            assert again == want, "a caller's change to one event must not leak into the next"
