"""Decision + context → one event dict: the JSON-lines schema every component writes.

Field names follow the Elastic Common Schema where one fits, so events load
into Elastic, Splunk or Loki unmapped.  Product-specific fields live under
``egress``.  This module only builds dicts; writing them is the job of
``runtime.eventlog`` (I/O stays out of the policy core).

``build_event`` runs once per logged observation (every verdict of a replay),
so the parts that depend only on the ``Decision`` and the component (enum
values, event type and outcome, dataset) are worked out once per decision
object and kept in a small cache; the per-observation fields are filled in
around them.  Decisions are cached objects in a ``PolicyView``, so the cache
stays small; it is a ``BoundedMemo`` of ``_TEMPLATE_LIMIT`` entries.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from typing import Any, NamedTuple

from .bounded import BoundedMemo
from .model import Action, Decision, Kind, Observation

SCHEMA_VERSION = "1"
ECS_VERSION = "8.11.0"

_TYPE = {Action.BLOCK: "denied", Action.LOG: "info", Action.ALLOW: "allowed"}
_OUTCOME = {Action.BLOCK: "failure", Action.LOG: "success", Action.ALLOW: "success"}
_PROTOCOL = {Kind.DNS: "dns", Kind.SNI: "tls", Kind.HTTP: "http"}
# Enum ``.value`` is a descriptor call; these plain lookups are several times cheaper.
_KIND_VALUE = {k: k.value for k in Kind}
_TEMPLATE_LIMIT = 4096
# Timestamps the fast formatter handles: datetime's own range (years 1970-9999).
_MAX_EPOCH = 253_402_300_800


def new_event_id(at: float | None = None) -> str:
    """A sortable, unique id (48-bit ms time + 80 random bits, like a ULID in hex), for an
    event now or at epoch seconds ``at``.

    The proxy puts it on its block page, so a user can quote it to the help desk.
    """
    ms = int((time.time() if at is None else at) * 1000)
    return f"{ms:012x}{os.urandom(10).hex()}"


class _Template(NamedTuple):
    """What one decision contributes to every event built from it, as strings."""

    decision: Decision  # kept so the id() key cannot be reused while cached
    type: str
    action: str
    outcome: str
    reason: str
    dataset: str
    would: str
    apps: tuple[str, ...]
    phase: str
    rule: str | None
    group: str
    frameworks: tuple[str, ...]
    legal: tuple[dict[str, Any], ...]  # each framework's record on the day
    legal_status: str
    policy: dict[str, str | None] | None


# The parts of an event that depend only on the decision, built once per decision: a
# blocked name is usually asked again and again, and rebuilding them (the legal records,
# the enum values) doubles build_event's cost (29 us with the cache, 55 us without, on one
# loaded machine).  Keyed by (component, id(decision)):
# hashing the frozen dataclass itself would hash its enums in Python on every event.
_templates: BoundedMemo[tuple[str, int], _Template] = BoundedMemo(_TEMPLATE_LIMIT)


def _template(decision: Decision, component: str) -> _Template:
    key = (component, id(decision))
    t = _templates.get(key)
    if t is not None and t.decision is decision:
        return t
    action = decision.action
    t = _Template(
        decision,
        _TYPE[action],
        action.value,
        _OUTCOME[action],
        decision.reason,
        f"egress_filter.{component}",
        decision.would.value,
        decision.apps,
        decision.phase.value,
        decision.rule,
        decision.group,
        decision.frameworks,
        tuple({"id": st.framework, "status": st.status.value,
               "since": st.since.isoformat() if st.since else None, "source": st.source}
              for st in decision.legal),
        decision.legal_status.value,
        {"name": decision.policy.name, "digest": decision.policy.digest} if decision.policy else None,
    )
    return _templates.put(key, t)


# (whole epoch second, its "YYYY-MM-DDTHH:MM:SS" text): events arrive in time
# order, many per second, so one entry saves most gmtime calls.  Kept by hand (issue 9:
# "where a library is measurably too slow"): 5.3 us against 14.1 us for datetime's
# isoformat on the same loaded machine, on a path the resolver takes for every logged
# query; datetime stays the oracle (tests/core/test_jsonline.py).
_last_second: tuple[float, str] = (-1.0, "")


def utc_iso(t: float) -> str:
    """An event's ``@timestamp`` for epoch seconds ``t``:
    ``datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds")`` with a
    ``Z``, without building a datetime: microseconds rounded half-even as
    datetime does, then truncated to milliseconds as isoformat does."""
    global _last_second
    frac, whole = math.modf(t)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1.0
    elif us < 0:
        us += 1_000_000
        whole -= 1.0
    if not 0.0 <= whole < _MAX_EPOCH:
        return dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    last = _last_second
    if last[0] == whole:
        prefix = last[1]
    else:
        g = time.gmtime(whole)
        prefix = (
            f"{g.tm_year:04d}-{g.tm_mon:02d}-{g.tm_mday:02d}T{g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d}"
        )
        _last_second = (whole, prefix)
    return f"{prefix}.{us // 1000:03d}Z"


def build_event(
    decision: Decision,
    observation: Observation,
    component: str,
    *,
    event_id: str | None = None,
    timestamp: float | dt.datetime | None = None,
    client_port: int | None = None,
    server_ip: str | None = None,
    server_port: int | None = None,
    qtype: str | None = None,
    response: str | None = None,
    extra: dict[str, Any] | None = None,
    client_name: str | None = None,
    http_method: str | None = None,
    status_code: int | None = None,
    user_agent: str | None = None,
    observer_hostname: str | None = None,
    user_name: str | None = None,
) -> dict[str, Any]:
    """One event for one decision. ``response`` says what the adapter answered
    (``NXDOMAIN``, ``451``, ``reset``, ``forwarded``...).  ``client_name`` (from a
    hosts or leases file) goes in ``source.domain``, beside the client's ``source.ip``.
    The proxy adds what a SIEM expects of an access log where it knows them:
    ``http.request.method``, ``http.response.status_code``, ``user_agent.original``,
    ``observer.hostname`` and the authenticated ``user.name``.

    Every call returns fresh dicts and lists, so a caller may change its event."""
    if isinstance(timestamp, dt.datetime):
        stamp = timestamp.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    else:
        stamp = utc_iso(time.time() if timestamp is None else timestamp)
    t = _template(decision, component)
    kind = observation.kind
    value = observation.value
    egress: dict[str, Any] = {
        "schema": SCHEMA_VERSION,
        "component": component,
        "kind": _KIND_VALUE[kind],
        "value": value,
        "action": t.action,
        "would": t.would,
        "apps": list(t.apps),
        "phase": t.phase,
        "rule": t.rule,
        "group": t.group,
    }
    if t.frameworks:
        egress["frameworks"] = list(t.frameworks)
        egress["legal"] = [dict(x) for x in t.legal]
        egress["legal_status"] = t.legal_status
    if t.policy is not None:
        egress["policy"] = dict(t.policy)
    if decision.list_group is not None:  # an opt-in group's rule decided (parent_company, ...)
        egress["list_group"] = decision.list_group
    ev: dict[str, Any] = {
        "@timestamp": stamp,
        "ecs": {"version": ECS_VERSION},
        "event": {
            "id": event_id or new_event_id(),
            "kind": "event",
            "category": ["network"],
            "type": [t.type],
            "action": t.action,
            "outcome": t.outcome,
            "reason": t.reason,
            "module": "egress_filter",
            "dataset": t.dataset,
        },
        "observer": {"product": "egress-filter", "type": component},
        "egress": egress,
    }
    if t.rule:
        ev["rule"] = {"name": t.rule}
    client = observation.client
    if client:
        ev["source"] = {"ip": client} if client_port is None else {"ip": client, "port": client_port}
        if client_name:
            ev["source"]["domain"] = client_name
    dest: dict[str, Any] = {}
    if server_ip:
        dest["ip"] = server_ip
    if server_port is not None:
        dest["port"] = server_port
    if kind is Kind.DNS:
        question: dict[str, Any] = {"name": value, "type": qtype} if qtype else {"name": value}
        ev["dns"] = {"question": question, "response_code": response} if response else {"question": question}
    elif kind is Kind.SNI:
        ev["tls"] = {"client": {"server_name": value}}
        dest.setdefault("domain", value)
    elif kind is Kind.HTTP:
        host = observation.host
        if host:
            ev["url"] = {"full": value, "domain": host}
            dest.setdefault("domain", host)
        else:
            ev["url"] = {"full": value}
    elif kind is Kind.IP:
        dest.setdefault("ip", value)
    if kind is not Kind.IP:
        ev["network"] = {"protocol": _PROTOCOL[kind]}
    if dest:
        ev["destination"] = dest
    if response:
        egress["response"] = response
    if qtype:
        egress["qtype"] = qtype
    if http_method or status_code is not None:
        http: dict[str, Any] = {}
        if http_method:
            http["request"] = {"method": http_method}
        if status_code is not None:
            http["response"] = {"status_code": status_code}
        ev["http"] = http
    if user_agent:
        ev["user_agent"] = {"original": user_agent}
    if observer_hostname:
        ev["observer"]["hostname"] = observer_hostname
    if user_name:
        ev["user"] = {"name": user_name}
    if extra:
        egress.update(extra)
    return ev


PAUSE_ACTIONS = ("enforcement-paused", "enforcement-resumed", "pause-refused")


def pause_event(action: str, component: str, *, message: str, reason: str,
                uid: int | None, user: str | None, via: str | None = None,
                pause: dict[str, Any] | None = None, timestamp: float | None = None) -> dict[str, Any]:
    """One event for a pause of enforcement, its end, or a refused request
    (``action`` is one of ``PAUSE_ACTIONS``).  ``uid``/``user`` are who acted
    (None when a pause simply ran out); ``via`` what relayed it (the dashboard);
    ``pause`` the pause's own fields (since, until, by, ended...)."""
    refused = action == "pause-refused"
    ev: dict[str, Any] = {
        "@timestamp": utc_iso(time.time() if timestamp is None else timestamp),
        "ecs": {"version": ECS_VERSION},
        "event": {"id": new_event_id(), "kind": "alert" if refused else "event",
                  "category": ["configuration"], "type": ["denied" if refused else "change"],
                  "action": action, "outcome": "failure" if refused else "success",
                  "reason": reason, "module": "egress_filter", "dataset": f"egress_filter.{component}"},
        "observer": {"product": "egress-filter", "type": component},
        "message": message,
        "egress": {"schema": SCHEMA_VERSION, "component": component, "action": action,
                   "pause": dict(pause or {})},
    }
    if uid is not None:
        ev["user"] = {"id": str(uid), "name": user or ""}
    if via:
        ev["egress"]["pause"]["via"] = via
    return ev
