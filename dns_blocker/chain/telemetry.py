"""The telemetry link: what every answer counts in the metrics and writes to the event log."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from policies import Decision

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
