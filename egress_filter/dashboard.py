"""``egress-filter dashboard``: the web UI and JSON API over an event store.

Requests come in on a bounded ``ThreadingHTTPServer`` (stdlib: no new
dependency to keep up; at most ``MAX_THREADS`` requests at once, the rest get
503; a socket timeout on every connection; GET, plus one write: ``POST
/api/pause``, the "Monitor for N minutes" switch).
Each API answer is built from ``store.query`` (bounded, paginated) and the
pure policy core (``egress_filter.cli.decide_target``, ``policies``); each
page is server-side HTML built on the same functions, with every value
escaped and charts drawn as SVG here, plus one small hand-written script
(``static/app.js``) for the live tail.  The Content-Security-Policy allows
no inline script or style.  A listener off loopback needs a token
(``--auth-token-file``); only its SHA-256 is kept, compared in constant time.

The one write action needs that token even on loopback (403 when none is
configured), sent as ``Authorization: Bearer`` (Basic, which a browser
re-sends on its own, is not enough, nor is a cookie: a cross-site form can
send neither a Bearer header nor ``Content-Type: application/json``), and a
matching ``Origin`` when one is sent.  It is forwarded to the server's control
socket (``runtime.control``) as "dashboard token holder at ADDRESS"; the
server logs the pause as an event, with that and its own uid.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime as dt
import hashlib
import hmac
import html
import io
import json
import sqlite3
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from policies import Kind, PolicyError
from policies.addresses import AddressError, split_hostport
from runtime import control as ctl
from runtime import notify
from runtime.args import is_loopback
from runtime.holder import MAX_PAUSE, PolicyHolder
from store import query as q
from store.db import open_reader

from .explain import explain_dict
from .legal_cli import timeline

PROG = "egress-filter dashboard"
MAX_THREADS = 32
SOCKET_TIMEOUT = 10.0
EXPORT_MAX = 100_000  # rows in one CSV/JSON-lines export
MAX_BODY = 1024  # bytes in a POST body
MAX_PAUSE_MINUTES = int(MAX_PAUSE // 60)
STATUS_TIMEOUT = 1.0  # seconds a page waits for the server's pause status
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
STATIC = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGES = (("/", "Overview"), ("/events", "Events"), ("/explain", "Explain"), ("/timeline", "Timeline"))
EVENT_PARAMS = ("app", "action", "client", "group", "kind", "q", "since", "until", "limit", "cursor", "after")
HERE = ' class="here"'
COLORS = ("#c0392b", "#2471a3", "#1e8449", "#b9770e", "#7d3c98", "#117a65", "#a04000", "#5d6d7e")


def esc(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


class Dashboard:
    """What every request reads: the store path, the policy holder, the token hash."""

    def __init__(self, db: str, holder: Any, token_hash: bytes | None, control: str | None = None):
        self.db = db
        self.holder = holder
        self.token_hash = token_hash
        self.control = control  # the server's control socket, or None (--control off)
        self._local = threading.local()
        open_reader(db).close()  # create the file (and schema) now: a bad path fails at start-up

    def conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is None:
            c = self._local.conn = open_reader(self.db)
        return c

    def bearer(self, header: str | None) -> bool:
        """The write actions' check: a token is configured and sent as Bearer."""
        scheme = (header or "").partition(" ")[0].lower()
        return self.token_hash is not None and scheme == "bearer" and self.authorised(header)

    def pause_status(self, timeout: float = ctl.CLIENT_TIMEOUT) -> dict[str, Any]:
        """The server's pause state, as its control socket says (never raises)."""
        if self.control is None:
            return {"ok": False, "error": "no control socket (--control off)"}
        try:
            return ctl.send(self.control, {"op": "status"}, timeout)
        except ctl.ControlError as exc:
            return {"ok": False, "error": str(exc)}

    def pause(self, doc: Any, client: str) -> tuple[int, dict[str, Any]]:
        """``{"minutes": N}`` or ``{"seconds": N}`` pauses, ``{"resume": true}`` resumes."""
        if self.control is None:
            return 503, {"error": "no control socket (--control off)"}
        if not isinstance(doc, dict):
            return 400, {"error": "the body is not a JSON object"}
        via = f"dashboard token holder at {client}"
        if doc.get("resume") is True:
            request: dict[str, Any] = {"op": "resume", "via": via}
        else:
            minutes, seconds = doc.get("minutes"), doc.get("seconds")
            amount = seconds if minutes is None else minutes * 60 if _number(minutes) else None
            if amount is None or not _number(amount) or not 0 < amount <= MAX_PAUSE:
                return 400, {"error": f"give minutes (1-{MAX_PAUSE_MINUTES}), seconds, or resume: true"}
            request = {"op": "pause", "seconds": amount, "via": via}
        try:
            reply = ctl.send(self.control, request)
        except ctl.ControlError as exc:
            print(f"{PROG}: {request['op']} asked by {via}: {exc}", file=sys.stderr, flush=True)
            return 503, {"error": str(exc)}
        said = "done" if reply.get("ok") else f"refused: {reply.get('error')}"
        print(f"{PROG}: {request['op']} asked by {via}: {said}", file=sys.stderr, flush=True)
        return (200 if reply.get("ok") else 409), reply

    def authorised(self, header: str | None) -> bool:
        if self.token_hash is None:
            return True
        if not header:
            return False
        scheme, _, cred = header.partition(" ")
        token = cred.strip()
        if scheme.lower() == "basic":
            try:
                token = base64.b64decode(token, validate=True).decode("utf-8").partition(":")[2]
            except (ValueError, UnicodeDecodeError):
                return False
        elif scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.encode("utf-8")).digest(), self.token_hash)

    # --- the API ---------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        h = self.holder
        err = h.last_error
        return {
            "file": str(h.path) if h.path else "bundled",
            "name": h.policy.name,
            "digest": h.policy.digest,
            "reloads": h.reloads,
            "last_error": str(err) if err else None,
            "at": h.view.at.isoformat(),
            "mode": h.view.mode.value,
        }

    def phases(self) -> dict[str, Any]:
        view = self.holder.view
        policy = view.policy

        upcoming = [e for e in timeline(policy) if e.day > view.at]
        groups = []
        for gid, g in view.groups.items():
            apps = []
            for a in g.phases.values():
                nxt = next((e for e in upcoming if a.app in e.apps), None)
                apps.append(
                    {
                        "app": a.app,
                        "name": policy.apps[a.app].name,
                        "phase": a.phase.value,
                        "since": a.since.isoformat() if a.since else None,
                        "source": a.source,
                        "frameworks": list(a.frameworks),
                        "legal": [s.as_dict() for s in a.legal],
                        "next": nxt.as_dict() if nxt else None,
                    }
                )
            groups.append(
                {"group": gid, "legal_status": policy.group_legal_status(gid, None).value, "apps": apps}
            )
        return {"at": view.at.isoformat(), "groups": groups}

    def explain(self, params: dict[str, str]) -> dict[str, Any]:

        target = params.get("target", "").strip()
        if not target:
            raise q.QueryError("target: give a name, URL or IP")
        kind = params.get("kind") or None
        if kind and kind not in {k.value for k in Kind}:
            raise q.QueryError(f"kind: '{kind}' is not one of {', '.join(k.value for k in Kind)}")
        group = params.get("group") or None
        policy = self.holder.policy
        if group and group not in policy.clients:
            raise q.QueryError(f"group: unknown group '{group}'")
        at = None
        if params.get("at"):
            try:
                at = dt.date.fromisoformat(params["at"])
            except ValueError as exc:
                raise q.QueryError(f"at: '{params['at']}' is not a date (YYYY-MM-DD)") from exc
        h = self.holder
        args = argparse.Namespace(
            target=target,
            kind=kind,
            client=params.get("client") or None,
            group=group,
            at=at or h.at,
            phase=h.phase.value if h.phase else None,
            mode=h.mode.value if h.mode else None,
            legal_status=h.legal_status,
        )
        return explain_dict(policy, args)

    def timeline(self) -> dict[str, Any]:

        return {"entries": [e.as_dict() for e in timeline(self.holder.policy)]}


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def openapi() -> dict[str, Any]:
    def param(name: str, desc: str, schema: str = "string") -> dict[str, Any]:
        return {
            "name": name,
            "in": "query",
            "required": False,
            "description": desc,
            "schema": {"type": schema},
        }

    ev_params = [
        param("app", "app id"),
        param("action", "block, log or allow"),
        param("client", "source IP"),
        param("group", "client group"),
        param("kind", "dns, sni, http or ip"),
        param("q", "substring of the name or URL (case-insensitive)"),
        param("since", "epoch seconds or ISO 8601 (UTC)"),
        param("until", "epoch seconds or ISO 8601"),
        param("limit", "rows per page, 1-1000 (default 100)", "integer"),
        param("cursor", "the 'next' of the previous page", "integer"),
        param("after", "only rows newer than this id (live tail)", "integer"),
        param("format", "json (default), csv or jsonl (export, at most 100000 rows)"),
    ]
    obj = {"type": "object"}

    def get(summary: str, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        return {
            "get": {
                "summary": summary,
                "parameters": params or [],
                "responses": {
                    "200": {"description": "OK", "content": {"application/json": {"schema": obj}}},
                    "400": {"description": "a bad parameter"},
                    "401": {"description": "a token is required"},
                },
            }
        }

    return {
        "openapi": "3.1.0",
        "info": {"title": "egress-filter dashboard API", "version": "1"},
        "components": {"securitySchemes": {"token": {"type": "http", "scheme": "bearer"}}},
        "paths": {
            "/api/events": get("Stored events, newest first, filtered and paginated", ev_params),
            "/api/summary": get(
                "Blocks and logs per app over time, top names, clients, apps",
                [param("range", "hour, day, week or 30d")],
            ),
            "/api/phases": get("The current phase of every app for each client group"),
            "/api/explain": get(
                "The decision for one name, URL or IP (as `egress-filter explain --json`)",
                [
                    param("target", "name, URL or IP"),
                    param("client", "client IP"),
                    param("group", "client group"),
                    param("at", "YYYY-MM-DD"),
                    param("kind", "dns, sni, http or ip"),
                ],
            ),
            "/api/timeline": get("The legal timeline of every framework"),
            "/api/status": get("Policy file, last reload, last error; store counters"),
            "/api/pause": {
                **get("Whether enforcement is paused (the server's control socket answers)"),
                "post": {
                    "summary": "Monitor instead of enforcing for a while, or resume (needs the token "
                    "as Bearer; 403 when the dashboard has no --auth-token-file)",
                    "security": [{"token": []}],
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {
                            "type": "object",
                            "properties": {
                                "minutes": {"type": "number", "minimum": 1, "maximum": MAX_PAUSE_MINUTES},
                                "seconds": {"type": "number", "maximum": MAX_PAUSE},
                                "resume": {"type": "boolean"},
                            },
                        }}},
                    },
                    "responses": {
                        "200": {"description": "paused (or resumed): the server's answer",
                                "content": {"application/json": {"schema": obj}}},
                        "400": {"description": "a bad body"},
                        "401": {"description": "the token, as Bearer, is required"},
                        "403": {"description": "no token is configured (no write actions without "
                                               "one), or a cross-origin request"},
                        "409": {"description": "the server refused (settings.allow_pause: false)"},
                        "503": {"description": "no server answers on the control socket"},
                    },
                },
            },
            "/api/openapi.json": get("This document"),
        },
    }


# --- pages --------------------------------------------------------------------------


def page(title: str, path: str, body: str) -> str:
    nav = "".join(f'<a href="{p}"{HERE if p == path else ""}>{esc(t)}</a>' for p, t in PAGES)
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<title>{esc(title)} · egress-filter</title><link rel="stylesheet" href="/static/style.css">'
        '<script src="/static/app.js" defer></script></head><body>'
        f"<header><strong>egress-filter</strong><nav>{nav}</nav></header><main><h1>{esc(title)}</h1>"
        f"{body}</main></body></html>"
    )


def chart_svg(summary: dict[str, Any], width: int = 900, height: int = 240) -> str:
    """Stacked bars: blocks (solid) and logs (light) per app and time bucket."""
    series = summary["series"]
    slots = max(1, (summary["end"] - summary["start"]) // 1000 // summary["bucket_seconds"])
    totals = [0] * slots
    for s in series:
        for i in range(slots):
            totals[i] += s["block"][i] + s["log"][i]
    top = max(totals) or 1
    bw = width / slots
    bars = []
    base = [0.0] * slots
    for n, s in enumerate(series):
        color = COLORS[n % len(COLORS)]
        for action, opacity in (("block", "1"), ("log", "0.45")):
            for i, v in enumerate(s[action]):
                if not v:
                    continue
                h = v / top * (height - 20)
                y = height - base[i] - h
                base[i] += h
                bars.append(
                    f'<rect x="{i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                    f'fill="{color}" fill-opacity="{opacity}"><title>{esc(s["app"])} {action}: {v}'
                    "</title></rect>"
                )
    legend = "".join(
        f'<span class="key"><i class="c{n % len(COLORS)}"></i>{esc(s["app"])}</span>'
        for n, s in enumerate(series)
    )
    return (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="blocks and logs per app">'
        f'<text x="2" y="12" class="axis">{top}</text>{"".join(bars)}</svg>'
        f'<p class="legend">{legend or "no blocks or logs in this range"}</p>'
    )


def table(head: list[str], rows: list[list[str]], cls: str = "") -> str:
    """``rows`` are already-escaped HTML cells."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (
        f'<div class="scroll"><table class="{cls}"><thead><tr>{th}</tr></thead>'
        f"<tbody>{trs}</tbody></table></div>"
    )


def overview_page(d: Dashboard, params: dict[str, str]) -> str:
    span = params.get("range", "day")
    s = q.summary(d.conn(), span)
    picker = " ".join(f'<a href="/?range={r}"{HERE if r == span else ""}>{r}</a>' for r in q.RANGES)
    totals = ", ".join(f"{esc(k)}: {v}" for k, v in sorted(s["totals"].items())) or "none"
    tops = "".join(
        f'<section class="card"><h2>Top blocked {label}</h2>'
        + table(
            [label, "blocks"],
            [
                [
                    f'<a href="/events?{esc(urlencode({param: t["value"]}))}">{esc(t["value"])}</a>',
                    str(t["count"]),
                ]
                for t in s["top"][key]
            ],
            "top",
        )
        + "</section>"
        for key, label, param in (
            ("apps", "apps", "app"),
            ("names", "names", "q"),
            ("clients", "clients", "client"),
        )
    )
    ph = d.phases()
    rows = []
    for g in ph["groups"]:
        for a in g["apps"]:
            legal = "; ".join(f"{x['id']}: {x['status']}" for x in a["legal"]) or "-"
            nxt = f"{a['next']['date']}: {a['next']['event']}" if a["next"] else "-"
            rows.append(
                [
                    esc(g["group"]),
                    esc(a["name"]),
                    f'<span class="phase {esc(a["phase"])}">{esc(a["phase"])}</span>',
                    esc(", ".join(a["frameworks"]) or "-"),
                    esc(legal),
                    esc(g["legal_status"]),
                    esc(nxt),
                ]
            )
    st = d.status()
    status = table(
        ["file", "name", "digest", "mode", "day", "reloads", "last error"],
        [
            [
                esc(st["file"]),
                esc(st["name"]),
                esc((st["digest"] or "")[:12]),
                esc(st["mode"]),
                esc(st["at"]),
                esc(st["reloads"]),
                esc(st["last_error"] or "none"),
            ]
        ],
    )
    return page(
        "Overview",
        "/",
        (
            pause_card(d)
            + f'<p class="picker">Range: {picker}</p>'
            '<section class="card wide"><h2>Blocks and logs per app</h2>'
            f"{chart_svg(s)}<p>Events in range: {totals}. Dropped (store fell behind): "
            f'<span id="dropped">{s["dropped"]}</span>.</p></section><div class="grid">{tops}</div>'
            '<section class="card wide"><h2>Current phase per client group</h2>'
            + table(
                ["group", "app", "phase", "frameworks", "legal status", "group status", "next change"], rows
            )
            + f'</section><section class="card wide"><h2>Policy status</h2>{status}</section>'
        ),
    )


def pause_text(st: dict[str, Any]) -> str:
    if not st.get("ok"):
        return f"Pause unavailable: {st.get('error')}"
    if st.get("paused"):
        return f"Monitoring only: {st.get('reason')}."
    if not st.get("allow_pause", True):
        return "Enforcing. The policy forbids pausing (settings.allow_pause: false)."
    return f"Enforcing (mode {st.get('mode')})."


def pause_card(d: Dashboard) -> str:
    """The "Monitor for N minutes" switch; app.js posts it with the token as Bearer."""
    st = d.pause_status(STATUS_TIMEOUT)
    writable = d.token_hash is not None
    off = "" if writable else " disabled"
    note = (
        "Blocks are logged instead of enforced for that long, then enforcement resumes on its own. "
        "The dashboard's token is needed; the pause is logged as an event with who and when."
        if writable
        else "Write actions need a token: start the dashboard with --auth-token-file."
    )
    return (
        '<section class="card wide" id="pause-card"><h2>Enforcement</h2>'
        f'<p id="pause-status" data-paused="{"1" if st.get("paused") else "0"}">{esc(pause_text(st))}</p>'
        f'<form id="pause-form" class="filters" data-writable="{"1" if writable else "0"}">'
        f'<label>Minutes<input type="number" id="pause-minutes" min="1" max="{MAX_PAUSE_MINUTES}" '
        f'value="15" required{off}></label>'
        f'<label>Token<input type="password" id="pause-token" autocomplete="off"{off}></label>'
        f'<button type="submit" id="pause-go"{off}>Monitor for 15 minutes</button>'
        f'<button type="button" id="pause-resume"{off}>Resume enforcement</button></form>'
        f'<p class="muted">{esc(note)}</p><p id="pause-message" role="status"></p></section>'
    )


def event_cells(ev: dict[str, Any]) -> list[str]:
    eg = ev.get("egress") or {}
    name = eg.get("value") or ""
    client = (ev.get("source") or {}).get("ip") or ""
    link = "/explain?" + urlencode({"target": name, "client": client, "kind": eg.get("kind") or ""})
    return [
        esc(ev.get("@timestamp")),
        esc(eg.get("component")),
        esc(eg.get("action")),
        esc(eg.get("kind")),
        f'<span class="name">{esc(name)}</span>',
        esc(", ".join(eg.get("apps") or [])),
        esc(client),
        esc(eg.get("group")),
        esc(eg.get("rule")),
        f'<a href="{esc(link)}">why?</a>',
    ]


EVENT_HEAD = ["time", "from", "action", "kind", "name", "apps", "client", "group", "rule", ""]


def events_page(d: Dashboard, params: dict[str, str]) -> str:
    f = q.filters_from(params)
    res = q.events(d.conn(), f)
    keep = {k: v for k, v in params.items() if k in EVENT_PARAMS and k not in ("cursor", "after") and v}

    def field(name: str, label: str, placeholder: str = "") -> str:
        return (
            f'<label>{esc(label)}<input name="{name}" value="{esc(params.get(name, ""))}" '
            f'placeholder="{esc(placeholder)}"></label>'
        )

    form = (
        '<form class="filters" method="get" action="/events">'
        + field("q", "name contains")
        + field("app", "app")
        + field("action", "action", "block")
        + field("client", "client")
        + field("group", "group")
        + field("kind", "kind", "dns")
        + field("since", "since", "2026-01-01T00:00")
        + field("until", "until")
        + '<button type="submit">Filter</button></form>'
    )
    export = urlencode(keep)
    links = (
        f'<p class="links"><a href="/api/events?{esc(export)}&amp;format=csv">CSV</a> · '
        f'<a href="/api/events?{esc(export)}&amp;format=jsonl">JSON lines</a> · '
        f'<label><input type="checkbox" id="tail" checked> live tail</label></p>'
    )
    more = ""
    if res["next"] is not None:
        more = f'<p><a href="/events?{esc(urlencode({**keep, "cursor": res["next"]}))}">older events</a></p>'
    tail_query = urlencode({k: v for k, v in keep.items() if k not in ("until", "limit")})
    body = (
        form + links + f'<div id="events" data-newest="{esc(res["newest"] or 0)}" '
        f'data-query="{esc(tail_query)}" data-live="{0 if f.cursor else 1}">'
        + table(EVENT_HEAD, [event_cells(ev) for ev in res["events"]], "events")
        + "</div>"
        + more
    )
    return page("Events", "/events", body)


def explain_page(d: Dashboard, params: dict[str, str]) -> str:
    def field(name: str, label: str) -> str:
        return f'<label>{esc(label)}<input name="{name}" value="{esc(params.get(name, ""))}"></label>'

    form = (
        '<form class="filters" method="get" action="/explain">'
        + field("target", "name or URL")
        + field("client", "client IP")
        + field("group", "group")
        + field("at", "date (YYYY-MM-DD)")
        + '<button type="submit">Explain</button></form>'
    )
    out = ""
    if params.get("target"):
        try:
            r = d.explain(params)
        except q.QueryError as exc:
            out = f'<p class="error">{esc(exc)}</p>'
        else:
            fws = "".join(
                f"<li>{esc(x['id'])}: {esc(x['status'])}"
                f"{' since ' + esc(x['since']) if x.get('since') else ''}</li>"
                for x in r["frameworks"]
            )
            out = (
                '<section class="card wide decision">'
                f'<h2><span id="verdict" class="action {esc(r["action"])}">'
                f"{esc(r['action'].upper())}</span> {esc(r['observation']['kind'])} "
                f'<span class="name">{esc(r["observation"]["value"])}</span></h2><dl>'
                f"<dt>apps</dt><dd>{esc(', '.join(r['apps']) or '-')}</dd>"
                f'<dt>phase</dt><dd>{esc(r["phase"])}</dd>'
                f'<dt>rule</dt><dd id="rule">{esc(r["rule"] or "-")}</dd>'
                f"<dt>at</dt><dd>{esc(r['at'])}</dd><dt>group</dt><dd>{esc(r['group'])} (legal status: "
                f"{esc(r['legal_status'])})</dd><dt>reason</dt><dd id=\"summary\">{esc(r['summary'])}</dd>"
                f"<dt>details</dt><dd>{esc(r['reason'])}</dd></dl>"
                f"<ul>{fws}</ul></section>"
            )
    return page("Explain", "/explain", form + out)


def timeline_page(d: Dashboard, params: dict[str, str]) -> str:
    entries = d.timeline()["entries"]
    policy = d.holder.policy
    today = d.holder.view.at
    if not entries:
        return page("Timeline", "/timeline", "<p>No dated entries in this policy.</p>")
    days = [dt.date.fromisoformat(e["date"]) for e in entries] + [today]
    first, last = min(days), max(days)
    span = max(1, (last - first).days)
    width, row_h, left = 900, 28, 160
    apps = sorted({a for e in entries for a in e["apps"]})
    marks = []
    for n, app in enumerate(apps):
        y = 20 + n * row_h
        label = policy.apps[app].name if app in policy.apps else app
        marks.append(
            f'<text x="0" y="{y + 14}" class="axis">{esc(label)}</text>'
            f'<line x1="{left}" y1="{y + 10}" x2="{width}" y2="{y + 10}" class="track"/>'
        )
        for e in entries:
            if app in e["apps"]:
                x = left + (dt.date.fromisoformat(e["date"]) - first).days / span * (width - left - 10)
                marks.append(
                    f'<circle cx="{x:.1f}" cy="{y + 10}" r="6" class="mark"><title>{esc(e["date"])} '
                    f"{esc(e['framework'])}: {esc(e['event'])}</title></circle>"
                )
    tx = left + (today - first).days / span * (width - left - 10)
    height = 40 + len(apps) * row_h
    svg = (
        f'<svg class="chart" viewBox="0 0 {width} {height}" role="img" aria-label="legal timeline">'
        f'{"".join(marks)}<line x1="{tx:.1f}" y1="0" x2="{tx:.1f}" y2="{height}" class="today"/>'
        f'<text x="{tx + 3:.1f}" y="{height - 4}" class="axis">today {esc(today)}</text></svg>'
    )
    rows = [
        [
            esc(e["date"]),
            esc(e["framework"]),
            esc(e["event"]),
            esc(", ".join(e["apps"]) or "all"),
            esc(e["source"]),
        ]
        for e in entries
    ]
    return page(
        "Timeline",
        "/timeline",
        f'<section class="card wide">{svg}</section>'
        + table(["date", "framework", "event", "apps", "source"], rows),
    )


# --- HTTP ---------------------------------------------------------------------------


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, addr: tuple[str, int], dash: Dashboard):
        self.dash = dash
        self.slots = threading.BoundedSemaphore(MAX_THREADS)
        self.address_family = _family(addr[0])
        super().__init__(addr, Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            try:  # every thread is busy: say so at once rather than queue without bound
                request.sendall(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


def _family(host: str) -> Any:
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


class Handler(BaseHTTPRequestHandler):
    server: Server
    timeout = SOCKET_TIMEOUT
    protocol_version = "HTTP/1.1"
    server_version = "egress-filter-dashboard"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are not events; keep stderr for problems

    def _send(self, code: int, body: bytes, ctype: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cache-Control", "no-store")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, code: int, doc: Any) -> None:
        self._send(
            code, json.dumps(doc, ensure_ascii=False).encode("utf-8"), "application/json; charset=utf-8"
        )

    def _refuse(self) -> None:
        self._send(405, b"read-only: the one write action is POST /api/pause\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = _refuse

    def do_POST(self) -> None:
        if urlsplit(self.path).path != "/api/pause":
            self._refuse()
            return
        dash = self.server.dash
        client = self.client_address[0]
        self.close_connection = True  # a body we may not read must not be taken for the next request
        if dash.token_hash is None:
            print(f"{PROG}: pause asked from {client} refused: no token configured", file=sys.stderr,
                  flush=True)
            self._json(403, {"error": "no write actions without authentication: start the dashboard "
                                      "with --auth-token-file"})
            return
        if not dash.bearer(self.headers.get("Authorization")):
            print(f"{PROG}: pause asked from {client} refused: no valid Bearer token", file=sys.stderr,
                  flush=True)
            self._json(401, {"error": "send the dashboard's token as Authorization: Bearer TOKEN"})
            return
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            self._json(403, {"error": "cross-origin write refused"})
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._json(415, {"error": "send the body as application/json"})
            return
        try:
            length = int(self.headers.get("Content-Length") or "")
        except ValueError:
            self._json(411, {"error": "a Content-Length is required"})
            return
        if not 0 <= length <= MAX_BODY:
            self._json(413, {"error": f"the body is limited to {MAX_BODY} bytes"})
            return
        try:
            doc = json.loads(self.rfile.read(length) or b"null")
        except (ValueError, UnicodeDecodeError):
            self._json(400, {"error": "the body is not JSON"})
            return
        code, reply = dash.pause(doc, client)
        self._json(code, reply)

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        dash = self.server.dash
        if not dash.authorised(self.headers.get("Authorization")):
            self._send(
                401,
                b"a token is required\n",
                "text/plain; charset=utf-8",
                {"WWW-Authenticate": 'Basic realm="egress-filter", charset="UTF-8"'},
            )
            return
        url = urlsplit(self.path)
        params = {k: v[0] for k, v in parse_qs(url.query, max_num_fields=32).items()}
        try:
            self._route(dash, url.path, params)
        except q.QueryError as exc:
            self._json(400, {"error": str(exc)})
        except (ValueError, sqlite3.Error) as exc:
            self._json(400, {"error": f"{type(exc).__name__}: {exc}"})

    def _route(self, dash: Dashboard, path: str, params: dict[str, str]) -> None:
        html_pages: dict[str, Callable[[Dashboard, dict[str, str]], str]] = {
            "/": overview_page,
            "/events": events_page,
            "/explain": explain_page,
            "/timeline": timeline_page,
        }
        if path in html_pages:
            self._send(200, html_pages[path](dash, params).encode("utf-8"), "text/html; charset=utf-8")
        elif path.startswith("/static/") and path[8:] in STATIC:
            data = resources.files("egress_filter").joinpath("static", path[8:]).read_bytes()
            self._send(200, data, STATIC[path[8:]])
        elif path == "/api/events":
            self._events(dash, params)
        elif path == "/api/summary":
            self._json(200, q.summary(dash.conn(), params.get("range", "day")))
        elif path == "/api/phases":
            self._json(200, dash.phases())
        elif path == "/api/explain":
            self._json(200, dash.explain(params))
        elif path == "/api/timeline":
            self._json(200, dash.timeline())
        elif path == "/api/status":
            self._json(
                200,
                {"policy": dash.status(), "store": {"dropped": q.summary(dash.conn(), "hour")["dropped"]}},
            )
        elif path == "/api/pause":
            self._json(200, dash.pause_status())
        elif path == "/api/openapi.json":
            self._json(200, openapi())
        else:
            self._json(404, {"error": "not found"})

    def _events(self, dash: Dashboard, params: dict[str, str]) -> None:
        fmt = params.get("format", "json")
        if fmt == "json":
            self._json(200, q.events(dash.conn(), q.filters_from(params)))
            return
        if fmt not in ("csv", "jsonl"):
            raise q.QueryError(f"format: '{fmt}' is not json, csv or jsonl")
        rows: list[dict[str, Any]] = []
        cursor: int | None = None
        base = {**params, "limit": "1000"}
        while len(rows) < EXPORT_MAX:  # bounded: at most EXPORT_MAX rows, page by page
            page_ = q.events(
                dash.conn(), q.filters_from({**base, **({"cursor": str(cursor)} if cursor else {})})
            )
            rows += page_["events"]
            cursor = page_["next"]
            if cursor is None:
                break
        for r in rows:
            r.pop("_id", None)
        if fmt == "jsonl":
            body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")
            self._send(
                200,
                body,
                "application/x-ndjson; charset=utf-8",
                {"Content-Disposition": 'attachment; filename="events.jsonl"'},
            )
            return
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(
            ["timestamp", "component", "action", "kind", "name", "apps", "client", "group", "rule", "reason"]
        )
        for r in rows:
            eg = r.get("egress") or {}
            cells = [
                r.get("@timestamp"),
                eg.get("component"),
                eg.get("action"),
                eg.get("kind"),
                eg.get("value"),
                ",".join(eg.get("apps") or []),
                (r.get("source") or {}).get("ip"),
                eg.get("group"),
                eg.get("rule"),
                (r.get("event") or {}).get("reason"),
            ]
            # A leading = + - @ would run as a formula in a spreadsheet: quote it as text.
            w.writerow(["'" + c if isinstance(c, str) and c[:1] in "=+-@" else c for c in cells])
        self._send(
            200,
            out.getvalue().encode("utf-8"),
            "text/csv; charset=utf-8",
            {"Content-Disposition": 'attachment; filename="events.csv"'},
        )


# --- the command --------------------------------------------------------------------


def read_token(path: str) -> bytes:
    token = Path(path).read_text(encoding="utf-8").strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the token must be at least 16 characters")
    return hashlib.sha256(token.encode("utf-8")).digest()


def serve(args: argparse.Namespace) -> int:
    """The subcommand, its flags parsed (``dashboard_cli``)."""

    try:
        host, port = split_hostport(args.listen)
    except AddressError as exc:
        print(f"{PROG}: --listen: {exc}", file=sys.stderr)
        return 2
    token_hash = None
    if args.auth_token_file:
        try:
            token_hash = read_token(args.auth_token_file)
        except (OSError, ValueError) as exc:
            print(f"{PROG}: --auth-token-file: {exc}", file=sys.stderr)
            return 2
    elif not is_loopback(host):
        print(f"{PROG}: {host} is not a loopback address: give --auth-token-file", file=sys.stderr)
        return 2
    try:
        holder = PolicyHolder(args.policy)
    except PolicyError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        return 1
    holder.start(2.0)
    holder.install_sighup()  # `run` forwards SIGHUP to every child: reload, never die of it
    where = f"with --db {args.db}"
    try:
        dash = Dashboard(args.db, holder, token_hash,
                         None if args.control == ctl.OFF else args.control or ctl.default_path())
        where = f"on {args.listen} (--listen)"
        server = Server((host, port), dash)
    except (OSError, sqlite3.Error) as exc:
        print(f"{PROG}: cannot start {where}: {exc}", file=sys.stderr)
        notify.status(f"cannot start {where}: {exc}")
        holder.stop()
        return 1
    shown = f"[{host}]" if ":" in host else host
    print(
        f"{PROG}: serving {args.db} on http://{shown}:{server.server_address[1]}/",
        file=sys.stderr,
        flush=True,
    )
    import signal

    def stop(*_: object) -> None:
        notify.stopping()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    notify.ready(f"serving on {shown}:{server.server_address[1]}")  # bound: connections queue until served
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
        holder.stop()
    return 0
