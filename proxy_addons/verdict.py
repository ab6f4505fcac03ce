"""What the proxy's addons pass each other: one ``Verdict`` per observation.

The deciding addon (``decisions.PolicyDecisions``) turns what a hook saw
into a ``Verdict``; the addons after it in the chain read that verdict,
never the policy:

* on an HTTP flow (``http_connect``, ``request``) it travels in
  ``flow.metadata[KEY]``, as mitmproxy's own blocklist marks its flows;
  the telemetry addon, last in the chain, records it and leaves its plain
  ``summary()`` there instead, because mitmproxy saves and shows metadata
  (``mitmdump -w``, mitmweb) and can only serialise plain values;
* ``tls_clienthello`` and ``server_connect`` have no flow: the deciding
  addon keeps the verdict of the hook running now (``PolicyDecisions.verdict``),
  which the addons after it read within the same, synchronous, hook call.

A verdict that is not an allow gets its event id when it is made, so the
block page can cite the event that the telemetry addon writes afterwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from mitmproxy import http

from policies import Action, Decision, Observation, new_event_id
from policies.addresses import authority_host

KEY = "egress_filter"
"""``flow.metadata`` key of the verdict (then of its summary)."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """A decision, what it was about, and what the proxy did about it."""

    decision: Decision
    observation: Observation
    event_id: str | None = None
    # What was done, as the event's ``egress.response`` says it: 451, closed,
    # passthrough, intercepted, forwarded, quic-refused, refused.
    response: str | None = None
    # More for the event: the names judged, ECH, the transport.
    extra: dict[str, Any] = field(default_factory=dict)
    # The address dialled or about to be, for the event's server fields.
    server: tuple[str, int] | None = None
    # A request on a connection blocked at its ClientHello: that event recorded it.
    repeat: bool = False
    # The user mitmproxy's proxyauth authenticated, for the event's user.name.
    user: str | None = None

    @property
    def logged(self) -> bool:
        """Whether an event records it (every block and log decision)."""
        return self.decision.action is not Action.ALLOW

    def with_decision(self, decision: Decision) -> Verdict:
        """The same observation under another decision, with an event id if it now needs one."""
        event_id = self.event_id
        if event_id is None and decision.action is not Action.ALLOW:
            event_id = new_event_id()
        return replace(self, decision=decision, event_id=event_id)

    def summary(self) -> dict[str, Any]:
        """Plain values only: what mitmproxy keeps in the flow's metadata."""
        d = self.decision
        return {"action": d.action.value, "rule": d.rule, "apps": list(d.apps), "phase": d.phase.value,
                "value": self.observation.value, "response": self.response, "event_id": self.event_id}


def new_verdict(decision: Decision, observation: Observation, **kwargs: Any) -> Verdict:
    """A new verdict; one that an event will record gets its id now."""
    event_id = new_event_id() if decision.action is not Action.ALLOW else None
    return Verdict(decision, observation, event_id, **kwargs)


def flow_verdict(flow: http.HTTPFlow) -> Verdict | None:
    """The verdict the deciding addon left on this flow in the hook running now."""
    found = flow.metadata.get(KEY)
    return found if isinstance(found, Verdict) else None


def flow_user(flow: http.HTTPFlow) -> str | None:
    """The user name mitmproxy's ``proxyauth`` authenticated this request (or its CONNECT) as."""
    auth = flow.metadata.get("proxyauth")
    return str(auth[0]) if isinstance(auth, (tuple, list)) and auth else None


def placeholder_451(event_id: str) -> http.Response:
    """What a blocked request gets from the deciding addon itself: an empty
    451 that the block-page addon fills in.  A block never depends on the
    page addon being loaded."""
    resp = http.Response.make(451, b"", {"Cache-Control": "no-store", "X-Egress-Filter-Event": event_id})
    resp.reason = "Unavailable For Legal Reasons"  # not in mitmproxy's table of reason phrases
    return resp


# --- names -----------------------------------------------------------------------


# What separates names in one header value: the commas of joined repeated
# headers, the "@" of userinfo, stray whitespace.  Every piece is judged.
_NAME_SEPARATORS = re.compile(r"[\s,@]+")


def authority_names(value: str) -> list[str]:
    """The host names an origin could read out of a ``Host`` header, an
    ``:authority`` or a target, ports and brackets removed (case and
    trailing dots are left to the policy's own normalisation)."""
    names = []
    for piece in _NAME_SEPARATORS.split(value):
        if not piece:
            continue
        piece = authority_host(piece)
        if piece:
            names.append(piece)
    return names


def distinct(values: Iterable[str]) -> list[str]:
    """The names among ``values``, each once (by its normalised form), in order."""
    seen: dict[str, str] = {}
    for value in values:
        for name in authority_names(value):
            seen.setdefault(name.lower().rstrip("."), name)
    return list(seen.values())


def strictest(verdicts: list[Verdict]) -> Verdict:
    """Block > log > allow; at equal action the first (the connection target) decides."""
    best = verdicts[0]
    for v in verdicts[1:]:
        if v.decision.action.severity > best.decision.action.severity:
            best = v
    return best
