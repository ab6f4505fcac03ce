"""The type each settings key takes, and the one check of a value against a type.

    a settings dataclass default (``DnsSettings().timeout`` = 2.0)
        ── setting_kind ──▶ (float, "a number")
    a plain value (a YAML scalar, a ``--config`` file value)
        ── check_value(kind, value) ──▶ the value (an int widened to float, a datetime
                                        read as its date), or TypeError

Rules: a key's type is its default's (a tuple default takes a list of strings,
``None`` or a string default takes a string); ``true``/``false`` is never a
number and a number is never ``true``/``false``.

Pure.  The policy loader (``settings.dns``/``settings.proxy``, errors as
``file:line: field: expected ...``) and the resolver's ``--config`` reader
(dns_blocker/config.py, errors as ``path: key: expected ...``) both use it,
so one key accepts the same values from either place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

T = TypeVar("T")


def setting_kind(default: object) -> tuple[type[Any], str]:
    """The type a settings key takes, read off its default, and how an error names it."""
    if isinstance(default, tuple):
        return tuple, "a list of strings"
    if isinstance(default, bool):
        return bool, "true or false"
    if isinstance(default, int):
        return int, "an integer"
    if isinstance(default, float):
        return float, "a number"
    return str, "a string"


def check_value(kind: type[T], value: object) -> T:
    """``value`` as a ``kind``, or TypeError (see the module's rules)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if kind is dt.date and isinstance(value, dt.datetime):
        value = value.date()
    if not isinstance(value, kind) or (kind in (int, float) and isinstance(value, bool)):
        raise TypeError(f"expected {kind.__name__}, got {type(value).__name__}")
    return value
