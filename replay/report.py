"""What every replay report shares: the formats, a verdict as a row or an
event, and the run's summary.

Flow: ``cli`` picks the format (``--format``, or the extension of ``--output``:
``format_for``) and hands the verdict stream to one writer: ``report_text``
(the terminal table, CSV), ``report_json`` (JSON lines in the shared event
schema, a JSON document) or ``report_html`` (a self-contained page rendered
from the ``report.html`` template).  Every writer streams; ``Summary`` is
filled on the way through and ``summary_dict`` turns it into plain values.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from policies import Decision, Phase, Policy, PolicyView, build_event
from policies.addresses import join_hostport
from policies.events import utc_iso

from .model import Finding, Sighting
from .summary import AppCount, Summary

HTML_ROWS = 2_000
MAX_CLIENT_ROWS = 500  # (client, app) rows a report lists
FORMATS = ("table", "csv", "json", "jsonl", "html")
EXTENSIONS = {".txt": "table", ".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
              ".html": "html", ".htm": "html", ".db": "sqlite", ".sqlite": "sqlite", ".sqlite3": "sqlite"}


def format_for(output: str | None, explicit: str | None) -> tuple[str, str | None]:
    """(format, warning): ``--format`` if given, else the one ``--output``'s extension names,
    else the table; a warning when an explicit format disagrees with the extension."""
    ext = ""
    if output:
        dot = output.rfind(".")
        ext = output[dot:].lower() if dot > output.rfind("/") else ""
    implied = EXTENSIONS.get(ext)
    if explicit is None:
        return implied or "table", None
    if implied is not None and implied != explicit:
        return explicit, f"--format {explicit} written to {output}, whose extension says {implied}"
    return explicit, None


def plural(n: int, word: str) -> str:
    """``1 observation``, ``2 observations``."""
    return f"{n} {word}" if n == 1 else f"{n} {word}s"



iso = utc_iso


def endpoint(ip: str | None, port: int | None) -> str:
    if not ip:
        return "-"
    return join_hostport(ip, port) if port is not None else ip


def row(v: Finding) -> dict[str, Any]:
    s, d = v.sighting, v.decision
    out: dict[str, Any] = {
        "time": iso(s.time),
        "client": s.client,
        "client_port": s.client_port,
        "server": s.server,
        "server_port": s.server_port,
        "kind": s.kind.value,
        "name": s.value,
        "via": s.via,
        "action": d.action.value,
        "would": d.would.value,
        "apps": list(d.apps),
        "phase": d.phase.value,
        "rule": d.rule,
        "reason": d.reason,
        "file": s.file,
        "packet": s.packet,
    }
    if s.qtype:
        out["qtype"] = s.qtype
    if s.ech:
        out["ech"] = True
    if s.cname_of:
        out["cname_of"] = s.cname_of
    if s.tunnel:
        out["tunnel"] = s.tunnel
    return out


def event_id(s: Sighting) -> str:
    """Like ``new_event_id`` (48-bit ms time + 80 bits) but derived from the
    input, so replaying the same capture twice gives the same ids and a
    SIEM can de-duplicate."""
    digest = hashlib.blake2b(f"{s.file}\0{s.packet}\0{s.kind.value}\0{s.value}".encode(), digest_size=10)
    return f"{int(s.time * 1000) & 0xFFFFFFFFFFFF:012x}{digest.hexdigest()}"


def event(v: Finding) -> dict[str, Any]:
    return _event(v.decision, v.sighting, event_id(v.sighting))


def _event(decision: Decision, s: Sighting, eid: str) -> dict[str, Any]:
    extra: dict[str, Any] = {"via": s.via, "source_file": s.file, "packet": s.packet}
    if s.ech:
        extra["ech"] = True
    if s.cname_of:
        extra["cname_of"] = s.cname_of
    if s.tunnel:
        extra["tunnel"] = s.tunnel
    return build_event(
        decision,
        s.observation(),
        "replay",
        event_id=eid,
        timestamp=s.time,
        client_port=s.client_port,
        server_ip=s.server,
        server_port=s.server_port,
        qtype=s.qtype,
        extra=extra,
    )


def phase_seen(c: AppCount) -> str | None:
    """The app's phase at the times its observations were seen: one phase, or a range
    (``none–full``) when a schedule moved within the input."""
    if not c.phases:
        return None
    ranked = sorted(c.phases, key=lambda p: Phase(p).rank)
    return ranked[0] if len(ranked) == 1 else f"{ranked[0]}–{ranked[-1]}"


def schedule_note(summary: Summary, policy: Policy, by_date: bool) -> str | None:
    """When every observation predates every schedule of the policy, say so: each was judged
    on its own day, before any phase began, so nothing could be blocked."""
    if not by_date or summary.last is None:
        return None
    starts = [e.start for fw in policy.frameworks.values() for es in fw.schedules.values() for e in es]
    if not starts:
        return None
    first = min(starts)
    last_day = dt.datetime.fromtimestamp(summary.last, dt.UTC).date()
    if last_day >= first:
        return None
    return (
        f"every observation ({iso(summary.first or summary.last)[:10]} to {iso(summary.last)[:10]}) "
        f"predates the policy's first schedule ({first.isoformat()}); judge them as of another day "
        "with --at DATE, or in a phase with --phase"
    )


def summary_dict(summary: Summary, policy: Policy, view: PolicyView) -> dict[str, Any]:
    apps = []
    for app_id, c in sorted(summary.apps.items(), key=lambda kv: (-kv[1].blocked, -kv[1].logged, kv[0])):
        app = policy.apps.get(app_id)
        apps.append(
            {
                "app": app_id,
                "name": app.name if app else app_id,
                "phase": phase_seen(c)
                or (view.phases[app_id].phase.value if app_id in view.phases else None),
                "observations": c.observations,
                "blocked": c.blocked,
                "logged": c.logged,
                "first": iso(c.first) if c.first else None,
                "last": iso(c.last) if c.last else None,
            }
        )
    return {
        "observations": summary.total,
        "actions": {a.value: n for a, n in summary.actions.items()},
        "kinds": summary.kinds,
        "ech": summary.ech,
        "first": iso(summary.first) if summary.first else None,
        "last": iso(summary.last) if summary.last else None,
        "apps": apps,
        "clients": [
            {"client": client, "app": app, "observations": n, "blocked": blocked}
            for (client, app), (n, blocked) in sorted(
                summary.clients.items(), key=lambda kv: (kv[0][1], -kv[1][0], kv[0][0])
            )[:MAX_CLIENT_ROWS]
        ],
    }


