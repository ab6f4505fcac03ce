"""The policy format's keys, read from its JSON Schema: one source for editors and the loader.

    schema.json (package data, read once at import with importlib.resources)
        ─▶ keys("$defs", "app") ─▶ {"id": True, "name": True, ..., "notes": False}
           (key → required), in the schema's order
        ─▶ Walker.mapping(node, field, those keys): an unknown key is reported as
           ``file:line: field: unknown key 'x' (allowed: ...)``, a missing
           required one as ``file:line: field: required key is missing``
    the schema's version rule (its top-level ``allOf``)
        ─▶ VERSION_2_ONLY, APP_REQUIRED_V1, APP_FORBIDDEN_V2

Adding a key to the format is one edit of schema.json (and the code that
reads the new key); the loader's key tables (validate.py, legal_loader.py,
builtins.py) are built here.  Settings sections that map onto a dataclass
(``settings.dns`` and the like) take the dataclass's fields; a test keeps the
schema in step with those.  Pure: no I/O beyond reading this package's data.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

SCHEMA: dict[str, Any] = json.loads(resources.files(__package__).joinpath("schema.json")
                                    .read_text(encoding="utf-8"))


def node(*path: str) -> dict[str, Any]:
    """The schema object at ``path``; for a ``oneOf`` (a string or a mapping), its mapping form."""
    found: Any = SCHEMA
    for key in path:
        found = found[key]
    if "oneOf" in found:
        found = next(alt for alt in found["oneOf"] if alt.get("type") == "object")
    return dict(found)


def keys(*path: str, required: tuple[str, ...] = (), without: tuple[str, ...] = ()) -> dict[str, bool]:
    """The keys the mapping at ``path`` allows, each with whether it is required
    (the schema's ``required``, plus ``required``); ``without`` leaves keys out."""
    n = node(*path)
    must = set(n.get("required", ())) | set(required)
    return {k: k in must for k in n["properties"] if k not in without}


# The version rule: if version is 1, apps need legal_basis and schedule and the
# version-2 sections are refused; else (version 2) an app has no schedule.
_RULE = SCHEMA["allOf"][0]
VERSION_2_ONLY: tuple[str, ...] = tuple(r["required"][0] for r in _RULE["then"]["not"]["anyOf"])
APP_REQUIRED_V1: tuple[str, ...] = tuple(_RULE["then"]["properties"]["apps"]["items"]["required"])
APP_FORBIDDEN_V2: tuple[str, ...] = tuple(_RULE["else"]["properties"]["apps"]["items"]["not"]["required"])
