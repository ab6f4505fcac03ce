"""The telemetry link: what every answer counts in the metrics and writes to the event log.

One method per kind of answer the chain gives, each with the rule of what it
counts and when it logs: a block or a log is always counted per app and
logged; an allowed answer is logged only with ``log_all``.  The resolver
calls these after the answer is sent, so counting and logging never delay
an answer.  Answers whose only trace is one counter (REFUSED, FORMERR,
NOTIMP, dropped, CH identity, shed SERVFAIL) and the cache's counters go to
``metrics`` directly.  A ``Tally`` is what an answer made from stored bytes
still has to count and log each time the same bytes go out again (the
ready-answer link keeps it beside the bytes); with no metrics and no event
log (``silent``) there is nothing to count, and no ``Tally`` is made; with no
metrics and no ``log_all``, none is made for an allowed cache hit either.

Where the sink takes shapes (``emit_shaped``: the event log and the store), a ``Tally``
that logs carries its event's ``Shape``, made once with the ready answer: each repeat hands
the sink the shape and the values that change (time, client, port, name) instead of building
the event again (about 15 us an event on the answer path, issue 12); the sink renders the
same line later, off that path.  Sans-IO: the metrics and the event sink are injected.
"""

from __future__ import annotations

import time
from enum import Enum
from typing import Any, NamedTuple, Protocol

from policies import Action, Decision, Observation, build_event
from runtime.shape import TOKENS, Shape, ShapedDoor, Slot

from ..client_names import ClientNames
from ..metrics import NullMetrics
from ..responses import qtype_name
from ..wire import Query


class Served(Enum):
    """What an answer made from stored bytes counts as in the metrics and the event log."""

    BLOCKED = "block"
    CANARY = "canary"
    CACHED = "cached"


class Tally(NamedTuple):
    """What a repeated answer still has to count and log."""

    served: Served
    decision: Decision
    query: Query
    response: str
    shape: Shape | None = None  # the repeated event's, where the sink takes shapes


class EventSink(Protocol):
    @property
    def enabled(self) -> bool: ...

    def emit(self, event: dict[str, Any]) -> None: ...


class Telemetry:
    def __init__(self, metrics: NullMetrics, events: EventSink, names: ClientNames | None = None,
                 log_all: bool = False, name_metrics: bool = False):
        self.metrics = metrics
        self.events = events
        self.names = names
        self.log_all = log_all
        self.name_metrics = names is not None and name_metrics  # the opt-in per-name query count
        # With no metrics and no event log there is nothing to count or log.
        self.silent = type(metrics) is NullMetrics and not events.enabled
        # With no metrics and no log_all, an allowed answer leaves no trace: no Tally for it, so
        # that the repeated allows of a cache-warm resolver (most of its answers) cost nothing
        # more when an event log or the store is on (issue 12).
        self.allows_unseen = type(metrics) is NullMetrics and not log_all
        door = getattr(events, "shaped_door", None)  # a sink that takes shapes (runtime.eventlog)
        self.shaped: ShapedDoor | None = door() if door is not None and events.enabled else None
        # Nothing to count and no names to look up: a repeat with a shape is one call to the sink.
        self.bare = type(metrics) is NullMetrics and names is None and self.shaped is not None

    def arrived(self, client: str) -> None:
        """The opt-in per-name query count (names only, never addresses: bounded labels)."""
        assert self.names is not None
        self.metrics.client(self.names.get(client) or "unknown")

    def tally(self, served: Served, d: Decision, q: Query, response: str) -> Tally | None:
        """What an answer from stored bytes counts, or None when nothing is counted or logged."""
        if self.silent or (self.allows_unseen and served is Served.CACHED and d.action is Action.ALLOW):
            return None
        logs = served is not Served.CACHED or d.action is not Action.ALLOW or self.log_all
        return Tally(served, d, q, response, self._shape(d, q, response) if logs and self.shaped else None)

    def served(self, tally: Tally, client: str, port: int) -> None:
        """An answer made from stored bytes: a block, the canary, or a cache hit."""
        emit = self.shaped
        if self.bare and tally.shape is not None and emit is not None:  # a shape only where it logs
            emit(tally.shape, time.time(), client, port, None)
            return
        served, d = tally.served, tally.decision
        m = self.metrics
        if served is Served.BLOCKED:
            m.query("block")
            m.decision(d.apps, "block")
            self.repeat(tally, client, port)
        elif served is Served.CANARY:
            m.query("canary")
            self.repeat(tally, client, port)
        else:
            m.cache(True)
            m.query(d.action.value)
            if d.action is not Action.ALLOW:
                m.decision(d.apps, d.action.value)
                self.repeat(tally, client, port)
            elif self.log_all:
                self.repeat(tally, client, port)

    def repeat(self, tally: Tally, client: str, port: int) -> None:
        """The event of an answer from stored bytes: by its shape where it has one."""
        emit, shape = self.shaped, tally.shape
        name = self.names.get(client) if self.names is not None else None
        if emit is None or shape is None or (name is None and self.names is not None):
            self.log(tally.decision, tally.query, client, port, tally.response)
            return
        emit(shape, time.time(), client, port, name)

    def _shape(self, d: Decision, q: Query, response: str) -> Shape | None:
        """The shape of this answer's event: with a ``NAME`` slot where client names are
        known (a client with none is logged in full)."""
        ev = build_event(d, Observation.dns(q.name, TOKENS[Slot.IP]), "dns", event_id=TOKENS[Slot.ID],
                         client_port=0, qtype=qtype_name(q.qtype), response=response,
                         client_name=TOKENS[Slot.NAME] if self.names is not None else None)
        ev["@timestamp"] = TOKENS[Slot.TIME]
        ev["source"]["port"] = TOKENS[Slot.PORT]
        return Shape.of(ev)

    def forwarded(self, d: Decision, q: Query, client: str, port: int, response: str) -> None:
        """An upstream's answer."""
        self.metrics.query(d.action.value)
        if d.action is not Action.ALLOW:
            self.metrics.decision(d.apps, d.action.value)
        if d.action is not Action.ALLOW or self.log_all:
            self.log(d, q, client, port, response)

    def failed(self, d: Decision, q: Query, client: str, port: int) -> None:
        """No upstream answered: SERVFAIL."""
        self.metrics.query("servfail")
        if d.action is not Action.ALLOW or self.log_all:
            self.log(d, q, client, port, "SERVFAIL")

    def local(self, d: Decision, q: Query, client: str, port: int, response: str) -> None:
        """An answer made here from local records or a local domain."""
        self.metrics.query("local")
        if d.action is not Action.ALLOW or self.log_all:
            self.log(d, q, client, port, response, {"local": True})

    def blocked_via(self, d: Decision, q: Query, client: str, port: int, response: str, target: str) -> None:
        """A block because a CNAME target of the answer is blocked."""
        self.metrics.query("block")
        self.metrics.decision(d.apps, "block")
        self.log(d, q, client, port, response, {"cname": target})

    def log(self, d: Decision, q: Query, client: str, port: int, response: str,
            extra: dict[str, Any] | None = None) -> None:
        if not self.events.enabled:
            return
        name = self.names.get(client) if self.names is not None else None
        self.events.emit(build_event(d, Observation.dns(q.name, client), "dns", client_port=port,
                                     qtype=qtype_name(q.qtype), response=response, extra=extra,
                                     client_name=name))
