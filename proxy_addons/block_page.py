"""The block page: what a blocked request is shown (RFC 7725's 451).

The deciding addon answers every blocked request and CONNECT with an empty
451 that carries the event id; this addon, after it in the chain, fills
that answer in from the verdict in ``flow.metadata``: HTML for browsers
(``block_page.html``), JSON for clients that ask for it, and the
``Link: <egress_blocked_by>; rel="blocked-by"`` header.  Everything shown
comes with the decision (app names, the order and its citation, the phase,
the rule), never from the policy, and all of it is escaped.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import string
from pathlib import Path
from typing import Any

from mitmproxy import ctx, http

from .verdict import Verdict, flow_verdict

DEFAULT_BLOCKED_BY = "urn:egress-filter:proxy"

_TEMPLATE = string.Template(Path(__file__).with_name("block_page.html").read_text(encoding="utf-8"))


class BlockPage:
    def load(self, loader: Any) -> None:
        loader.add_option("egress_blocked_by", str, DEFAULT_BLOCKED_BY,
                          "URI for the 451 page's Link: <...>; rel=\"blocked-by\" header (RFC 7725): "
                          "who implements the block, e.g. your network team's page.")

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._fill(flow)

    def request(self, flow: http.HTTPFlow) -> None:
        self._fill(flow)

    def _fill(self, flow: http.HTTPFlow) -> None:
        v = flow_verdict(flow)
        resp = flow.response
        if v is None or resp is None or v.event_id is None or resp.status_code != 451:
            return
        if resp.headers.get("X-Egress-Filter-Event") != v.event_id:
            return  # another addon answered it since: leave that answer alone
        flow.response = render(flow.request, v, ctx.options.egress_blocked_by)


def facts(v: Verdict) -> dict[str, Any]:
    """What the page says, as the JSON answer carries it."""
    d = v.decision
    record = d.legal[0] if d.legal else None
    return {
        "status": 451,
        "error": "Unavailable For Legal Reasons",
        "blocked": v.observation.value,
        "apps": [{"id": a, "name": n} for a, n in zip(d.apps, d.app_names, strict=False)],
        "order": record.title if record else None,
        "citation": record.citation if record else None,
        "frameworks": [s.as_dict() for s in d.legal],
        "group": d.group,
        "phase": d.phase.value,
        "rule": d.rule,
        "reason": d.reason,
        "event_id": v.event_id,
        "time": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def render(req: http.Request, v: Verdict, blocked_by: str) -> http.Response:
    """The 451 answer to ``req`` for a blocked verdict: JSON when asked for, else HTML."""
    d = v.decision
    event_id = v.event_id or ""
    page = facts(v)
    headers = {
        "Link": f'<{blocked_by}>; rel="blocked-by"',
        "Cache-Control": "no-store",
        "X-Egress-Filter-Event": event_id,
    }
    accept = req.headers.get("accept", "").lower()
    if "json" in accept and "text/html" not in accept:
        headers["Content-Type"] = "application/json"
        body = json.dumps(page, indent=2).encode()
    else:
        headers["Content-Type"] = "text/html; charset=utf-8"
        record = d.legal[0] if d.legal else None
        names = ", ".join(d.app_names) or "this service"
        order = record.title if record else "the network's egress policy"
        citation = f" ({record.citation})" if record and record.citation else ""
        body = _TEMPLATE.safe_substitute({
            "app": html.escape(names), "order": html.escape(order), "citation": html.escape(citation),
            "target": html.escape(v.observation.value), "phase": html.escape(d.phase.value),
            "rule": html.escape(d.rule or "-"), "event_id": html.escape(event_id),
            "time": page["time"], "reason": html.escape(d.reason),
            "blocked_by": html.escape(blocked_by, quote=True),
        }).encode()
    resp = http.Response.make(451, body, headers)
    resp.reason = "Unavailable For Legal Reasons"  # not in mitmproxy's table of reason phrases
    return resp
