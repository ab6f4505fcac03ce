"""A repeated event's shape: its JSON line cut around the fields that change.

A resolver answering the same blocked question again and again emits events that differ
only in their time, id, client address, client port and client name.  ``Shape.of`` takes
one event built by ``build_event`` with ``Slot`` tokens where those go, encodes it once,
and keeps the text between the tokens; ``render`` puts the values back.  The line it
renders is byte for byte the line ``encode`` writes for the same event built in full
(``tests/core/test_shape.py`` holds the two equal), at a fraction of the cost, so the
server can hand its sink a shape and five values (the store's writer process renders them,
issue 12) instead of building the event on the answer path.

The tokens are random per process, so a name in a query cannot forge one; a shape whose
text holds a token anywhere but in its slots is refused (``of`` returns None) and the
caller builds the event in full.  Pure: no I/O.
"""

from __future__ import annotations

import re
import secrets
from enum import IntEnum
from typing import Any, NamedTuple, Protocol

import orjson

from policies.events import new_event_id, utc_iso

from .jsonline import encode


class Slot(IntEnum):
    """A field that changes from one repeat of an event to the next."""

    TIME = 0  # @timestamp
    ID = 1  # event.id
    IP = 2  # source.ip
    PORT = 3  # source.port
    NAME = 4  # source.domain (the client's name from a hosts or leases file)


_TOKEN = secrets.token_hex(12)
TOKENS = tuple(f"egress{_TOKEN}{slot.name.lower()}" for slot in Slot)  # where each slot's value goes
_CUT = re.compile(f'"egress{_TOKEN}({"|".join(slot.name.lower() for slot in Slot)})"')
_SLOT = {slot.name.lower(): int(slot) for slot in Slot}  # plain ints: marshal takes no enums


class Shape(NamedTuple):
    """``pieces[0] + value(slots[0]) + pieces[1] + ... + pieces[-1]`` is the line (no newline)."""

    pieces: tuple[str, ...]
    slots: tuple[int, ...]

    @classmethod
    def of(cls, event: dict[str, Any]) -> Shape | None:
        """The shape of ``event``, whose changing fields hold ``TOKENS`` (each as a JSON
        string, the port's too); None when its text holds a token anywhere else."""
        text = encode(event)[:-1].decode()
        parts = _CUT.split(text)  # text, slot name, text, slot name, ..., text
        slots = tuple(_SLOT[name] for name in parts[1::2])
        if text.count(_TOKEN) != len(slots) or len(set(slots)) != len(slots):
            return None  # a token outside a slot of its own: forged by the event's content
        return cls(tuple(parts[0::2]), slots)

    def render(self, stamp: str, event_id: str, ip: str, port: int, name: str | None) -> str:
        """The line for one repeat, without its newline: ``stamp`` from ``utc_iso``,
        ``event_id`` from ``event_id_at``, ``name`` only where the shape has a ``NAME`` slot."""
        values = (f'"{stamp}"', f'"{event_id}"', _string(ip), str(int(port)),
                  _string(name or ""))
        pieces = self.pieces
        out = [pieces[0]]
        for i, slot in enumerate(self.slots):
            out.append(values[slot])
            out.append(pieces[i + 1])
        return "".join(out)


class ShapedSink(Protocol):
    """What takes one repeat: the shape, epoch seconds, client address, port and name, and the
    event id where the caller already gave the event one (else the sink makes it)."""

    def __call__(self, shape: Shape, ts: float, ip: str, port: int, name: str | None,
                 event_id: str | None = None, /) -> None: ...


class ShapedDoor(Protocol):
    """The same, as a server's answer path calls it: the sink makes the event id."""

    def __call__(self, shape: Shape, ts: float, ip: str, port: int, name: str | None, /) -> None: ...


def _string(value: str) -> str:
    """A JSON string: addresses and names are plain ASCII but for an odd interface name or a
    hostile leases file, which are escaped as ``encode`` escapes them."""
    if value.isascii() and '"' not in value and "\\" not in value and value.isprintable():
        return f'"{value}"'
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # a lone surrogate: what ``encode`` falls back to
        return encode({"v": value})[5:-2].decode()


def stamp_at(ts: float) -> str:
    """The ``@timestamp`` of an event at epoch seconds ``ts``, as ``build_event`` writes it
    (``utc_iso``, here for the store, as ``event_id_at`` is)."""
    return utc_iso(ts)


def line_at(shape: Shape, ts: float, event_id: str, ip: str, port: int, name: str | None) -> str:
    """``render`` at epoch seconds ``ts``."""
    return shape.render(utc_iso(ts), event_id, ip, port, name)


def event_id_at(ts: float) -> str:
    """``new_event_id`` for an event at ``ts`` (here for the store, which reaches the core
    only through ``runtime``)."""
    return new_event_id(ts)
