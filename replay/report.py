"""Verdicts → text: a terminal table, JSON, JSON lines (the shared event
schema) and a self-contained HTML report with an inline SVG chart.

Every writer consumes the verdict iterator once and writes as it goes
(``table``, ``jsonl``, ``json``), so output size, not memory, grows with the
input; the HTML report keeps only the summary and at most ``HTML_ROWS``
blocked/logged rows.  ``Summary`` is filled on the way through.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import html
import json
import re
from collections.abc import Iterable, Sequence
from json.encoder import encode_basestring_ascii
from typing import IO, Any

from policies import Action, Decision, Policy, PolicyView, build_event
from policies.events import utc_iso

from .engine import Summary
from .model import Damage, Sighting, Verdict

HTML_ROWS = 2_000
FORMATS = ("table", "json", "jsonl", "html")


iso = utc_iso


def endpoint(ip: str | None, port: int | None) -> str:
    if not ip:
        return "-"
    host = f"[{ip}]" if ":" in ip else ip
    return f"{host}:{port}" if port is not None else ip


def row(v: Verdict) -> dict[str, Any]:
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


def event(v: Verdict) -> dict[str, Any]:
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


def summary_dict(summary: Summary, policy: Policy, view: PolicyView) -> dict[str, Any]:
    apps = []
    for app_id, c in sorted(summary.apps.items(), key=lambda kv: (-kv[1].blocked, -kv[1].logged, kv[0])):
        app = policy.apps.get(app_id)
        apps.append(
            {
                "app": app_id,
                "name": app.name if app else app_id,
                "phase": view.phases[app_id].phase.value if app_id in view.phases else None,
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
    }


def _name(v: Verdict, width: int = 60) -> str:
    text = v.sighting.value + (" [ECH]" if v.sighting.ech else "")
    return text if len(text) <= width else text[: width - 1] + "…"


def write_table(verdicts: Iterable[Verdict], out: IO[str], summary: Summary) -> None:
    out.write(
        f"{'TIME':<24} {'CLIENT':<22} {'SERVER':<22} {'KIND':<4} {'ACTION':<6} {'GROUP':<12} {'APPS':<12} "
        f"{'PHASE':<9} {'NAME / URL':<60} RULE\n"
    )
    for v in verdicts:
        summary.add(v)
        s, d = v.sighting, v.decision
        out.write(
            f"{iso(s.time):<24} {endpoint(s.client, s.client_port):<22} "
            f"{endpoint(s.server, s.server_port):<22} {s.kind.value:<4} {d.action.value:<6} {d.group:<12} "
            f"{','.join(d.apps) or '-':<12} {d.phase.value:<9} {_name(v):<60} {d.rule or '-'}\n"
        )


def write_summary_table(info: dict[str, Any], damage: Sequence[Damage], out: IO[str]) -> None:
    acts = info["actions"]
    out.write(
        f"\n{info['observations']} observations: {acts['block']} block, {acts['log']} log, "
        f"{acts['allow']} allow"
    )
    if info["ech"]:
        out.write(f"; {info['ech']} ClientHello(s) with ECH (outer SNI judged)")
    out.write("\n")
    if info["apps"]:
        out.write(
            f"\n{'APP':<14} {'NAME':<16} {'PHASE':<9} {'OBSERVATIONS':>12} {'BLOCKED':>8} {'LOGGED':>8}\n"
        )
        for a in info["apps"]:
            out.write(
                f"{a['app']:<14} {a['name'][:16]:<16} {a['phase'] or '-':<9} {a['observations']:>12} "
                f"{a['blocked']:>8} {a['logged']:>8}\n"
            )
    for d in damage:
        out.write(f"warning: {d}\n")


_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
# A placeholder for per-sighting field N; NUL never occurs in a policy's
# reasons, rules or app ids, and a shape whose JSON has one is not templated.
_SLOT = "\x00ef{}\x00"
_SLOT_JSON = re.compile(r'"\\u0000ef(\d+)\\u0000"')
_EPOCH_HEAD = '{"@timestamp":"1970-01-01T00:00:00.000Z"'
_SHAPES_LIMIT = 4096


class EventLines:
    """Verdicts → JSON lines: the bytes of ``json`` encoding ``event(v)``
    compactly, at a fraction of the cost.

    ``build_event`` stays the one definition of the schema.  For each shape of
    event (the decision object, the kind, which optional fields the sighting
    has) ``event`` runs once on a sighting whose per-sighting fields are
    placeholders; its JSON becomes a format string with a gap per
    placeholder, and every later event of that shape only encodes its own
    values into the gaps.
    """

    def __init__(self) -> None:
        # shape → (decision kept alive so its id() is not reused, format string or None: encode plainly)
        self._shapes: dict[tuple[Any, ...], tuple[Decision, str | None]] = {}

    def line(self, v: Verdict) -> str:
        s, d = v.sighting, v.decision
        key = (
            id(d),
            s.kind,
            not s.client,
            s.client_port is None,
            not s.server,
            s.server_port is None,
            not s.host,
            not s.qtype,
            s.ech,
            not s.cname_of,
            not s.tunnel,
        )
        entry = self._shapes.get(key)
        if entry is None or entry[0] is not d:
            entry = (d, self._format(d, s))
            if len(self._shapes) >= _SHAPES_LIMIT:
                self._shapes.clear()
            self._shapes[key] = entry
        fmt = entry[1]
        if fmt is None:
            return _encode(_event(d, s, event_id(s))) + "\n"
        esc = encode_basestring_ascii
        return fmt.format(
            utc_iso(s.time),
            esc(event_id(s)),
            esc(s.value),
            esc(s.client) if s.client else "",
            s.client_port,
            esc(s.server) if s.server else "",
            s.server_port,
            esc(s.host) if s.host else "",
            esc(s.qtype) if s.qtype else "",
            esc(s.via),
            esc(s.file),
            s.packet,
            esc(s.cname_of) if s.cname_of else "",
            esc(s.tunnel) if s.tunnel else "",
        )

    @staticmethod
    def _format(d: Decision, s: Sighting) -> str | None:
        def slot(n: int, present: object) -> Any:
            return _SLOT.format(n) if present is not None and present != "" else present

        blank = Sighting(
            time=0.0,
            kind=s.kind,
            value=_SLOT.format(2),
            client=slot(3, s.client),
            client_port=slot(4, s.client_port),
            server=slot(5, s.server),
            server_port=slot(6, s.server_port),
            host=slot(7, s.host),
            qtype=slot(8, s.qtype),
            via=_SLOT.format(9),
            file=_SLOT.format(10),
            packet=slot(11, s.packet),
            ech=s.ech,
            cname_of=slot(12, s.cname_of),
            tunnel=slot(13, s.tunnel),
        )
        text = _encode(_event(d, blank, _SLOT.format(1)))
        if not text.startswith(_EPOCH_HEAD):
            return None
        parts = _SLOT_JSON.split(text[len(_EPOCH_HEAD) :])
        literals = parts[::2]
        if any("\\u0000" in lit for lit in literals):
            return None
        fmt = ['{{"@timestamp":"{0}"']
        for i, lit in enumerate(literals):
            fmt.append(lit.replace("{", "{{").replace("}", "}}"))
            if 2 * i + 1 < len(parts):
                # the quotes go with the placeholder: strings are encoded with theirs, numbers bare
                fmt.append(f"{{{parts[2 * i + 1]}}}")
        fmt.append("\n")
        return "".join(fmt)


WRITE_BATCH = 512


def write_jsonl(verdicts: Iterable[Verdict], out: IO[str], summary: Summary) -> None:
    """One event per line, written in batches; what is built is written even
    when a reader fails part-way."""
    line = EventLines().line
    batch: list[str] = []
    try:
        for v in verdicts:
            summary.add(v)
            batch.append(line(v))
            if len(batch) >= WRITE_BATCH:
                out.write("".join(batch))
                batch.clear()
    finally:
        out.write("".join(batch))


def write_json(verdicts: Iterable[Verdict], out: IO[str], summary: Summary) -> None:
    """Opens the document, streams the verdict array; ``finish_json`` closes it."""
    out.write('{"verdicts": [')
    sep = "\n  "
    for v in verdicts:
        summary.add(v)
        out.write(sep + json.dumps(row(v)))
        sep = ",\n  "
    out.write("\n]")


def finish_json(meta: dict[str, Any], out: IO[str]) -> None:
    for key, value in meta.items():
        out.write(f",\n{json.dumps(key)}: {json.dumps(value, indent=2)}")
    out.write("\n}\n")


# --- HTML -------------------------------------------------------------------

COLORS = (
    "#d62728",
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)


def collect_rows(verdicts: Iterable[Verdict], summary: Summary, keep: list[Verdict]) -> Iterable[Verdict]:
    for v in verdicts:
        summary.add(v)
        if v.decision.action is not Action.ALLOW and len(keep) < HTML_ROWS:
            keep.append(v)
        yield v


def chart_svg(summary: Summary, width: int = 900, height: int = 260) -> str:
    """Stacked bars per time bucket: each app's blocked (solid) and logged (hatched) verdicts."""
    if not summary.series:
        return '<p class="empty">No blocked or logged traffic.</p>'
    buckets = sorted({b for b, _, _ in summary.series})
    lo, hi = buckets[0], buckets[-1]
    step = max(1, (hi - lo + 1 + 59) // 60)  # at most 60 bars
    bars: dict[int, dict[tuple[str, Action], int]] = {}
    for (b, app, action), n in summary.series.items():
        cell = bars.setdefault((b - lo) // step, {})
        cell[(app, action)] = cell.get((app, action), 0) + n
    apps = sorted({app for _, app, _ in summary.series})
    color = {app: COLORS[i % len(COLORS)] for i, app in enumerate(apps)}
    nslots = (hi - lo) // step + 1
    peak = max(sum(s.values()) for s in bars.values())
    left, bottom, top = 50, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    bw = plot_w / nslots
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" '
        'aria-label="blocked and logged traffic per app over time">',
        '<defs><pattern id="hatch" width="4" height="4" patternUnits="userSpaceOnUse" '
        'patternTransform="rotate(45)"><rect width="2" height="4" fill="white" fill-opacity="0.6"/>'
        "</pattern></defs>",
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#444"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="11">{peak}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for slot, counts in sorted(bars.items()):
        y = float(top + plot_h)
        x = left + slot * bw
        for app in apps:
            for action in (Action.BLOCK, Action.LOG):
                n = counts.get((app, action), 0)
                if not n:
                    continue
                h = plot_h * n / peak
                y -= h
                start = iso((lo + slot * step) * summary.width)
                label = html.escape(f"{app} {action.value}: {n} from {start}")
                parts.append(
                    f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bw - 2):.1f}" height="{h:.1f}" '
                    f'fill="{color[app]}"><title>{label}</title></rect>'
                )
                if action is Action.LOG:
                    parts.append(
                        f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{max(1.0, bw - 2):.1f}" '
                        f'height="{h:.1f}" fill="url(#hatch)"/>'
                    )
    t0, t1 = lo * summary.width, (nslots * step + lo) * summary.width
    for i in range(5):  # five time ticks; the first and last carry the date
        frac = i / 4
        when = dt.datetime.fromtimestamp(t0 + (t1 - t0) * frac, dt.UTC)
        label = when.strftime("%Y-%m-%d %H:%M:%S" if i in (0, 4) else "%H:%M:%S")
        x = left + plot_w * frac
        anchor = "start" if i == 0 else "end" if i == 4 else "middle"
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#444"/>'
            f'<text x="{x:.1f}" y="{height - 22}" font-size="11" text-anchor="{anchor}">{label}</text>'
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h / 2:.1f}" x2="{left + plot_w}" y2="{top + plot_h / 2:.1f}" '
        f'stroke="#ddd"/><text x="{left - 6}" y="{top + plot_h / 2 + 4:.1f}" text-anchor="end" '
        f'font-size="11">{peak / 2:g}</text>'
    )
    bucket = step * summary.width
    parts.append(
        f'<text x="{left + plot_w}" y="{top + 10}" font-size="11" text-anchor="end" fill="#666">'
        f"one bar = {bucket:g} s</text>"
    )
    lx = left
    for app in apps:
        parts.append(
            f'<rect x="{lx}" y="{height - 12}" width="10" height="10" fill="{color[app]}"/>'
            f'<text x="{lx + 14}" y="{height - 3}" font-size="11">{html.escape(app)}</text>'
        )
        lx += 24 + 7 * len(app)
    parts.append(
        f'<text x="{width - 10}" y="{height - 3}" font-size="11" text-anchor="end">'
        "solid: blocked · hatched: logged</text></svg>"
    )
    return "".join(parts)


def write_html(
    info: dict[str, Any],
    summary: Summary,
    rows: Sequence[Verdict],
    damage: Sequence[Damage],
    meta: dict[str, Any],
    out: IO[str],
) -> None:
    e = html.escape
    acts = info["actions"]
    out.write(
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        "<title>egress-filter replay report</title><style>"
        "body{font:14px system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
        "text-align:left;font-size:13px}th{background:#f3f3f3}.block{color:#b00;font-weight:600}"
        ".log{color:#a60}.warn{color:#b00}.num{text-align:right}code{font-size:12px}"
        "</style></head><body>\n"
    )
    out.write("<h1>egress-filter replay report</h1>\n")
    out.write(
        f"<p>Policy read at <b>{e(str(meta['at']))}</b>; inputs: "
        f"{', '.join('<code>' + e(p) + '</code> (' + e(f) + ')' for p, f in meta['inputs']) or 'none'}.<br>"
        f"{info['observations']} observations from {e(str(info['first']))} to {e(str(info['last']))}: "
        f'<span class="block">{acts["block"]} block</span>, '
        f'<span class="log">{acts["log"]} log</span>, {acts["allow"]} allow.</p>\n'
    )
    for dmg in damage:
        out.write(f'<p class="warn">warning: {e(str(dmg))}</p>\n')
    out.write("<h2>Blocked and logged traffic per app over time</h2>\n")
    out.write(chart_svg(summary) + "\n")
    out.write(
        "<h2>Per app</h2>\n<table><tr><th>app</th><th>name</th><th>phase</th><th>observations</th>"
        "<th>blocked</th><th>logged</th><th>first</th><th>last</th></tr>\n"
    )
    for a in info["apps"]:
        out.write(
            f"<tr><td>{e(a['app'])}</td><td>{e(a['name'])}</td><td>{e(str(a['phase']))}</td>"
            f'<td class="num">{a["observations"]}</td><td class="num">{a["blocked"]}</td>'
            f'<td class="num">{a["logged"]}</td><td>{e(str(a["first"]))}</td>'
            f"<td>{e(str(a['last']))}</td></tr>\n"
        )
    out.write("</table>\n")
    shown = len(rows)
    total = acts["block"] + acts["log"]
    more = f" (first {shown} of {total})" if total > shown else ""
    out.write(
        f"<h2>Blocked and logged observations{more}</h2>\n<table><tr><th>time</th><th>client</th>"
        "<th>server</th><th>kind</th><th>name / URL</th><th>action</th><th>apps</th><th>phase</th>"
        "<th>rule</th><th>where</th></tr>\n"
    )
    for v in rows:
        s, d = v.sighting, v.decision
        out.write(
            f"<tr><td>{e(iso(s.time))}</td><td>{e(endpoint(s.client, s.client_port))}</td>"
            f"<td>{e(endpoint(s.server, s.server_port))}</td><td>{e(s.kind.value)}</td>"
            f'<td>{e(_name(v, 200))}</td><td class="{d.action.value}">{d.action.value}</td>'
            f"<td>{e(', '.join(d.apps))}</td><td>{e(d.phase.value)}</td>"
            f"<td><code>{e(d.rule or '-')}</code></td>"
            f"<td>{e(s.file)}#{s.packet}</td></tr>\n"
        )
    out.write("</table>\n</body></html>\n")
