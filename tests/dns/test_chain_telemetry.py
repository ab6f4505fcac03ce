"""The telemetry link alone, against fake metrics and a fake event sink: what each
kind of answer counts, and when it is logged (blocks and logs always, allowed
answers only with log_all), with the client's name from a real hosts file; the
same events whether the sink takes whole events or, for answers from stored
bytes, their shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dnslib
import pytest

from dns_blocker.chain.telemetry import Served, Telemetry
from dns_blocker.client_names import ClientNames
from dns_blocker.metrics import NullMetrics
from dns_blocker.wire import Query, parse_query
from policies import Decision, Kind, load_policy_text
from runtime.shape import Shape, line_at

from .test_chain_verdict import PLAIN, POLICY


class FakeMetrics(NullMetrics):
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def query(self, result: str) -> None:
        self.calls.append(("query", result))

    def decision(self, apps: tuple[str, ...], action: str) -> None:
        self.calls.append(("decision", apps, action))

    def cache(self, hit: bool) -> None:
        self.calls.append(("cache", hit))

    def client(self, name: str) -> None:
        self.calls.append(("client", name))


class FakeEvents:
    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.events: list[dict[str, Any]] = []

    def emit(self, event: dict[str, Any]) -> None:
        self.events.append(event)


class ShapedEvents(FakeEvents):
    """A sink that also takes shapes (as the event log and the store do): each is rendered
    here, so the test reads the same event either way."""

    def __init__(self, enabled: bool = True) -> None:
        super().__init__(enabled)
        self.shaped = 0

    def emit_shaped(self, shape: Shape, ts: float, ip: str, port: int, name: str | None) -> None:
        self.shaped += 1
        self.events.append(json.loads(line_at(shape, ts, "0" * 32, ip, port, name)))

    def shaped_door(self) -> Any:
        return self.emit_shaped


def decision(name: str) -> Decision:
    return load_policy_text(POLICY).view().group(PLAIN).decide_name(name, Kind.DNS, PLAIN)


def query(name: str) -> Query:
    q = parse_query(bytes(dnslib.DNSRecord.question(name).pack()))
    assert q is not None
    return q


BLOCKED, LOGGED, FREE = "www.blocked.example", "logged.example", "free.example"
BLOCK_COUNT = [("query", "block"), ("decision", ("blocked",), "block")]
LOG_COUNT = [("query", "log"), ("decision", ("logged",), "log")]
HIT = ("cache", True)


# (kind of answer, name, log_all) -> (metrics calls, events: list of (response, extra keys))
@pytest.mark.parametrize(("kind", "name", "log_all", "calls", "logged"), [
    pytest.param("served-block", BLOCKED, False, BLOCK_COUNT, ["NXDOMAIN"], id="ready-block"),
    pytest.param("served-canary", BLOCKED, False, [("query", "canary")], ["NXDOMAIN"], id="ready-canary"),
    pytest.param("served-cached", FREE, False, [HIT, ("query", "allow")], [], id="cached-allowed"),
    pytest.param("served-cached", FREE, True, [HIT, ("query", "allow")], ["NOERROR"],
                 id="cached-allowed-log-all"),
    pytest.param("served-cached", LOGGED, False,
                 [HIT, *LOG_COUNT], ["NOERROR"],
                 id="cached-logged"),
    pytest.param("forwarded", FREE, False, [("query", "allow")], [], id="upstream-allowed"),
    pytest.param("forwarded", FREE, True, [("query", "allow")], ["NOERROR"], id="upstream-allowed-log-all"),
    pytest.param("forwarded", LOGGED, False, LOG_COUNT, ["NOERROR"], id="upstream-logged"),
    pytest.param("failed", FREE, False, [("query", "servfail")], [], id="servfail-allowed"),
    pytest.param("failed", LOGGED, False, [("query", "servfail")], ["SERVFAIL"], id="servfail-logged"),
    pytest.param("local", FREE, False, [("query", "local")], [], id="local-allowed"),
    pytest.param("local", LOGGED, False, [("query", "local")], ["NOERROR local"], id="local-logged"),
    pytest.param("blocked-via", BLOCKED, False, BLOCK_COUNT, ["NXDOMAIN cname"], id="cname-block"),
])
@pytest.mark.parametrize("sink", [FakeEvents, ShapedEvents], ids=["events", "shapes"])
def test_each_answer(kind: str, name: str, log_all: bool, calls: list[tuple[Any, ...]], logged: list[str],
                     sink: type[FakeEvents], tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(f"{PLAIN} laptop-anna\n")
    metrics, events = FakeMetrics(), sink()
    t = Telemetry(metrics, events, ClientNames(str(hosts)), log_all)
    d, q = decision(name), query(name)
    response = "SERVFAIL" if kind == "failed" else ("NXDOMAIN" if d.action.value == "block" else "NOERROR")
    if kind.startswith("served-"):
        tally = t.tally(Served(kind.removeprefix("served-")), d, q, response)
        assert tally is not None
        t.served(tally, PLAIN, 5353)
    elif kind == "forwarded":
        t.forwarded(d, q, PLAIN, 5353, response)
    elif kind == "failed":
        t.failed(d, q, PLAIN, 5353)
    elif kind == "local":
        t.local(d, q, PLAIN, 5353, response)
    else:
        t.blocked_via(d, q, PLAIN, 5353, response, "cdn.blocked.example")
    assert metrics.calls == calls
    got = []
    for e in events.events:
        egress = e.get("egress", {})
        extra = " local" if egress.get("local") else " cname" if egress.get("cname") else ""
        assert (e["source"]["ip"], e["source"]["port"], e["source"]["domain"]) == (PLAIN, 5353, "laptop-anna")
        assert e["dns"]["question"]["name"] == name
        got.append(e["dns"]["response_code"] + extra)
    assert got == logged
    # Only answers from stored bytes come as shapes.
    shaped = len(logged) if isinstance(events, ShapedEvents) and kind.startswith("served-") else 0
    assert getattr(events, "shaped", 0) == shaped


@pytest.mark.parametrize(("line", "shaped"), [
    pytest.param(f"{PLAIN} laptop-anna\n", 1, id="named-client-by-shape"),
    pytest.param("192.0.2.99 other\n", 0, id="unnamed-client-in-full"),
])
def test_a_client_without_a_name_is_logged_in_full(line: str, shaped: int, tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(line)
    events = ShapedEvents()
    t = Telemetry(NullMetrics(), events, ClientNames(str(hosts)))
    tally = t.tally(Served.BLOCKED, decision(BLOCKED), query(BLOCKED), "NXDOMAIN")
    assert tally is not None and tally.shape is not None
    t.served(tally, PLAIN, 5353)
    assert events.shaped == shaped and len(events.events) == 1
    assert events.events[0]["source"]["ip"] == PLAIN
    assert ("domain" in events.events[0]["source"]) is bool(shaped)


@pytest.mark.parametrize(("metrics", "enabled", "silent"), [
    pytest.param(NullMetrics(), False, True, id="nothing-to-count"),
    pytest.param(NullMetrics(), True, False, id="events-only"),
    pytest.param(FakeMetrics(), False, False, id="metrics-only"),
])
def test_silent_makes_no_tally(metrics: NullMetrics, enabled: bool, silent: bool) -> None:
    t = Telemetry(metrics, FakeEvents(enabled))
    assert t.silent is silent
    assert (t.tally(Served.BLOCKED, decision(BLOCKED), query(BLOCKED), "NXDOMAIN") is None) is silent


# (metrics, log_all, name) -> whether an allowed or logged cache hit still gets a Tally
@pytest.mark.parametrize(("metrics", "log_all", "name", "tallied"), [
    pytest.param(NullMetrics(), False, FREE, False, id="allowed-unseen"),
    pytest.param(NullMetrics(), True, FREE, True, id="allowed-log-all"),
    pytest.param(FakeMetrics(), False, FREE, True, id="allowed-counted"),
    pytest.param(NullMetrics(), False, LOGGED, True, id="logged-still-logged"),
])
def test_an_allowed_hit_no_one_sees_makes_no_tally(metrics: NullMetrics, log_all: bool, name: str,
                                                    tallied: bool) -> None:
    t = Telemetry(metrics, FakeEvents(True), log_all=log_all)
    assert (t.tally(Served.CACHED, decision(name), query(name), "NOERROR") is not None) is tallied


@pytest.mark.parametrize(("line", "opted_in", "want"), [
    pytest.param(f"{PLAIN} laptop-anna\n", True, [("client", "laptop-anna")], id="named"),
    pytest.param("192.0.2.99 other\n", True, [("client", "unknown")], id="unnamed"),
    pytest.param(f"{PLAIN} laptop-anna\n", False, None, id="not-opted-in"),
])
def test_arrived_counts_names_only(line: str, opted_in: bool, want: list[tuple[str, str]] | None,
                                   tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text(line)
    metrics = FakeMetrics()
    t = Telemetry(metrics, FakeEvents(), ClientNames(str(hosts)), name_metrics=opted_in)
    assert t.name_metrics is opted_in
    if want is not None:
        t.arrived(PLAIN)
        assert metrics.calls == want


@pytest.mark.parametrize(("served", "name", "log_all", "events"), [
    pytest.param(Served.BLOCKED, BLOCKED, False, 1, id="block"),
    pytest.param(Served.CANARY, BLOCKED, False, 1, id="canary"),
    pytest.param(Served.CACHED, LOGGED, False, 1, id="logged-hit"),
    pytest.param(Served.CACHED, FREE, True, 1, id="allowed-hit-log-all"),
])
def test_with_nothing_to_count_a_repeat_is_its_shape(served: Served, name: str, log_all: bool,
                                                     events: int) -> None:
    """No metrics and no client names (a household's store, the bench): one call per repeat."""
    sink = ShapedEvents()
    t = Telemetry(NullMetrics(), sink, log_all=log_all)
    assert t.bare
    tally = t.tally(served, decision(name), query(name), "NOERROR")
    assert tally is not None and tally.shape is not None
    for port in (5353, 5354):
        t.served(tally, PLAIN, port)
    assert sink.shaped == 2 * events
    assert [(e["source"], e["dns"]["question"]["name"]) for e in sink.events] == [
        ({"ip": PLAIN, "port": p}, name) for p in (5353, 5354)]


def test_a_name_that_forges_a_token_is_logged_whole_every_time() -> None:
    from runtime.shape import TOKENS, Slot

    name = f"{TOKENS[Slot.IP]}.blocked.example"
    sink = ShapedEvents()
    t = Telemetry(NullMetrics(), sink)
    tally = t.tally(Served.BLOCKED, decision(name), query(name), "NXDOMAIN")
    assert tally is not None and tally.shape is None  # refused: the events are built whole
    for _ in range(3):
        t.served(tally, PLAIN, 5353)
    assert sink.shaped == 0 and len(sink.events) == 3
    assert {e["dns"]["question"]["name"] for e in sink.events} == {name}
