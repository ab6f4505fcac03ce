"""A version-1 policy's text → the equivalent version-2 text (``check --upgrade``).

Version 1 keeps a ``schedule:`` on each app; version 2 keeps schedules under
``frameworks:``.  The upgrade moves every app's schedule into one framework,
``policy`` (the same implicit framework the loader builds for version 1), and
binds the ``default`` client group to it, so both forms decide alike.  YAML
comments and anchors do not survive the round trip; everything else does.
"""

from __future__ import annotations

from typing import Any

import yaml

from .legal_loader import IMPLICIT


def upgrade_text(text: str) -> str:
    """The version-2 form of a version-1 policy; a version-2 policy comes back as it is."""
    doc = yaml.safe_load(text)
    if not isinstance(doc, dict) or doc.get("version", 1) != 1:
        return text
    cites: list[str] = []
    schedule: dict[str, Any] = {}
    apps = doc.get("apps") or []
    for app in apps:
        if not isinstance(app, dict):
            continue
        entries = app.pop("schedule", None)
        if entries is not None and "id" in app:
            schedule[str(app["id"])] = entries
        basis = app.get("legal_basis")
        if isinstance(basis, dict) and basis.get("order"):
            cite = f"{basis['order']} ({basis.get('citation', '')})"
            if cite not in cites:
                cites.append(cite)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        out[key] = 2 if key == "version" else value
        if key == "version":
            out["legal_status"] = "as_ordered"
    out.setdefault("version", 2)
    framework = {"title": doc.get("name") or "the policy's schedules", "kind": "company_rule",
                 "short": "policy schedule", "citations": cites, "schedule": schedule}
    # Frameworks and groups before the apps, where a reader looks for them.
    ordered: dict[str, Any] = {}
    for key, value in out.items():
        if key == "apps":
            ordered["frameworks"] = {IMPLICIT: framework}
            ordered["clients"] = {"default": {"frameworks": [IMPLICIT]}}
        ordered[key] = value
    text_out: str = yaml.safe_dump(ordered, sort_keys=False, allow_unicode=True, width=110)
    return "# Upgraded to version 2 by egress-filter check --upgrade\n" + text_out
