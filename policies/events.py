"""Decision + context → one event dict: the JSON-lines schema every component writes.

Field names follow the Elastic Common Schema where one fits, so events load
into Elastic, Splunk or Loki unmapped.  Product-specific fields live under
``egress``.  This module only builds dicts; writing them is the job of
``egress_filter.eventlog`` (I/O stays out of the policy core).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from typing import Any

from .model import Action, Decision, Kind, Observation

SCHEMA_VERSION = "1"
COMPONENTS = ("dns", "proxy", "replay")

_TYPE = {Action.BLOCK: "denied", Action.LOG: "info", Action.ALLOW: "allowed"}
_OUTCOME = {Action.BLOCK: "failure", Action.LOG: "success", Action.ALLOW: "success"}
_PROTOCOL = {Kind.DNS: "dns", Kind.SNI: "tls", Kind.HTTP: "http"}


def new_event_id() -> str:
    """A sortable, unique id (48-bit ms time + 80 random bits, like a ULID in hex).

    The proxy puts it on its block page, so a user can quote it to the help desk.
    """
    ms = int(time.time() * 1000)
    return f"{ms:012x}{os.urandom(10).hex()}"


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
) -> dict[str, Any]:
    """One event for one decision. ``response`` says what the adapter answered
    (``NXDOMAIN``, ``451``, ``reset``, ``forwarded``...)."""
    if isinstance(timestamp, dt.datetime):
        when = timestamp.astimezone(dt.UTC)
    else:
        when = dt.datetime.fromtimestamp(time.time() if timestamp is None else timestamp, dt.UTC)
    action = decision.action
    ev: dict[str, Any] = {
        "@timestamp": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "ecs": {"version": "8.11.0"},
        "event": {
            "id": event_id or new_event_id(),
            "kind": "event",
            "category": ["network"],
            "type": [_TYPE[action]],
            "action": action.value,
            "outcome": _OUTCOME[action],
            "reason": decision.reason,
            "module": "egress_filter",
            "dataset": f"egress_filter.{component}",
        },
        "observer": {"product": "egress-filter", "type": component},
        "egress": {
            "schema": SCHEMA_VERSION,
            "component": component,
            "kind": observation.kind.value,
            "value": observation.value,
            "action": action.value,
            "would": decision.would.value,
            "apps": list(decision.apps),
            "phase": decision.phase.value,
            "rule": decision.rule,
        },
    }
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
    kind = observation.kind
    if kind is Kind.DNS:
        ev["dns"] = {"question": {"name": observation.value}}
        if qtype:
            ev["dns"]["question"]["type"] = qtype
        if response:
            ev["dns"]["response_code"] = response
    elif kind is Kind.SNI:
        ev["tls"] = {"client": {"server_name": observation.value}}
        dest.setdefault("domain", observation.value)
    elif kind is Kind.HTTP:
        ev["url"] = {"full": observation.value}
        if observation.host:
            ev["url"]["domain"] = observation.host
            dest.setdefault("domain", observation.host)
    elif kind is Kind.IP:
        dest.setdefault("ip", observation.value)
    if kind is not Kind.IP:
        ev["network"] = {"protocol": _PROTOCOL[kind]}
    if dest:
        ev["destination"] = dest
    if response:
        ev["egress"]["response"] = response
    if qtype:
        ev["egress"]["qtype"] = qtype
    if extra:
        ev["egress"].update(extra)
    return ev
