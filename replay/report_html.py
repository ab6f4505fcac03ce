"""Verdicts → a self-contained HTML report: the summary, a chart of blocked and
logged traffic per app over time (inline SVG), per-app and per-client tables,
and a sortable, filterable table of the blocked and logged observations.

Flow: ``collect_rows`` folds the verdict stream into ``Summary`` and keeps at
most ``HTML_ROWS`` rows; ``write_html`` fills the ``report.html`` template
(package data, read with importlib.resources) with escaped cells.  The chart's
bars are calendar bins (seconds up to months and years, chosen so at most
``MAX_BARS`` bars show) and its ticks fall on calendar boundaries.
"""

from __future__ import annotations

import datetime as dt
import html
import math
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from string import Template
from typing import IO, Any

from policies import Action

from .model import Damage, Finding
from .report import HTML_ROWS, endpoint, iso, plural
from .summary import Summary

MAX_BARS = 60
MAX_TICKS = 7
COLORS = ("#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
DAY = 86_400


def collect_rows(verdicts: Iterable[Finding], summary: Summary, keep: list[Finding]) -> Iterable[Finding]:
    for v in verdicts:
        summary.add(v)
        if v.decision.action is not Action.ALLOW and len(keep) < HTML_ROWS:
            keep.append(v)
        yield v


class Unit:
    """A calendar bin: ``index(t)`` numbers the bin holding time ``t``; ``start(i)`` is its start."""

    def __init__(self, label: str, approx: float, index: Callable[[float], int],
                 start: Callable[[int], float], fmt: str) -> None:
        self.label, self.approx, self.index, self.start, self.fmt = label, approx, index, start, fmt


def _fixed(seconds: int, label: str, fmt: str, shift: int = 0) -> Unit:
    return Unit(label, seconds, lambda t: math.floor((t + shift) / seconds),
                lambda i: float(i * seconds - shift), fmt)


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def _month_start(i: int) -> float:
    return dt.datetime(i // 12, i % 12 + 1, 1, tzinfo=dt.UTC).timestamp()


UNITS = (
    _fixed(1, "1 second", "%H:%M:%S"),
    _fixed(5, "5 seconds", "%H:%M:%S"),
    _fixed(15, "15 seconds", "%H:%M:%S"),
    _fixed(60, "1 minute", "%H:%M"),
    _fixed(300, "5 minutes", "%H:%M"),
    _fixed(900, "15 minutes", "%H:%M"),
    _fixed(3600, "1 hour", "%m-%d %H:00"),
    _fixed(6 * 3600, "6 hours", "%m-%d %H:00"),
    _fixed(DAY, "1 day", "%Y-%m-%d"),
    _fixed(7 * DAY, "1 week", "%Y-%m-%d", shift=3 * DAY),  # weeks start on Monday (1970-01-01 was a Thursday)
    Unit("1 month", 30.4 * DAY, lambda t: _utc(t).year * 12 + _utc(t).month - 1, _month_start, "%Y-%m"),
    Unit("3 months", 91.3 * DAY, lambda t: (_utc(t).year * 12 + _utc(t).month - 1) // 3,
         lambda i: _month_start(i * 3), "%Y-%m"),
    Unit("1 year", 365.25 * DAY, lambda t: _utc(t).year,
         lambda i: dt.datetime(i, 1, 1, tzinfo=dt.UTC).timestamp(), "%Y"),
    Unit("10 years", 3652.5 * DAY, lambda t: _utc(t).year // 10,
         lambda i: dt.datetime(i * 10, 1, 1, tzinfo=dt.UTC).timestamp(), "%Y"),
)


def pick_unit(t0: float, t1: float, at_least: float, most: int) -> Unit:
    """The finest unit at least ``at_least`` seconds long that cuts [t0, t1] into at most ``most`` bins."""
    for unit in UNITS:
        if unit.approx >= at_least and unit.index(t1) - unit.index(t0) + 1 <= most:
            return unit
    return UNITS[-1]


def chart_svg(summary: Summary, width: int = 1000, height: int = 260) -> str:
    """Stacked bars per calendar bin: each app's blocked (solid) and logged (hatched) verdicts."""
    if not summary.series:
        return '<p class="empty">No blocked or logged traffic.</p>'
    w = summary.width
    t_lo = min(b for b, _, _ in summary.series) * w
    t_hi = max(b for b, _, _ in summary.series) * w
    unit = pick_unit(t_lo, t_hi, w, MAX_BARS)
    first, last = unit.index(t_lo), unit.index(t_hi)
    bars: dict[int, dict[tuple[str, Action], int]] = {}
    for (b, app, action), n in summary.series.items():
        cell = bars.setdefault(unit.index(b * w), {})
        cell[(app, action)] = cell.get((app, action), 0) + n
    apps = sorted({app for _, app, _ in summary.series})
    color = {app: COLORS[i % len(COLORS)] for i, app in enumerate(apps)}
    peak = max(sum(s.values()) for s in bars.values())
    left, bottom, top = 50, 40, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    t0, t1 = unit.start(first), unit.start(last + 1)

    def x_of(t: float) -> float:
        return left + plot_w * (t - t0) / (t1 - t0)

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
        x, x_end = x_of(unit.start(slot)), x_of(unit.start(slot + 1))
        bw = max(1.0, x_end - x - 2)
        y = float(top + plot_h)
        for app in apps:
            for action in (Action.BLOCK, Action.LOG):
                n = counts.get((app, action), 0)
                if not n:
                    continue
                h = plot_h * n / peak
                y -= h
                when = _utc(unit.start(slot)).strftime(unit.fmt)
                label = html.escape(f"{app} {action.value}: {n} in the {unit.label} from {when}")
                parts.append(
                    f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                    f'fill="{color[app]}"><title>{label}</title></rect>'
                )
                if action is Action.LOG:
                    parts.append(
                        f'<rect x="{x + 1:.1f}" y="{y:.1f}" width="{bw:.1f}" height="{h:.1f}" '
                        'fill="url(#hatch)"/>'
                    )
    tick = pick_unit(t0, t1, unit.approx, MAX_TICKS)
    for i in range(tick.index(t0), tick.index(t1) + 1):
        t = tick.start(i)
        if not t0 <= t <= t1:
            continue
        x = x_of(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{top + plot_h}" x2="{x:.1f}" y2="{top + plot_h + 4}" stroke="#444"/>'
            f'<text class="tick" x="{x:.1f}" y="{height - 22}" font-size="11" text-anchor="middle">'
            f"{_utc(t).strftime(tick.fmt)}</text>"
        )
    parts.append(
        f'<line x1="{left}" y1="{top + plot_h / 2:.1f}" x2="{left + plot_w}" y2="{top + plot_h / 2:.1f}" '
        f'stroke="#ddd"/><text x="{left - 6}" y="{top + plot_h / 2 + 4:.1f}" text-anchor="end" '
        f'font-size="11">{peak / 2:g}</text>'
    )
    parts.append(
        f'<text id="bar-unit" x="{left + plot_w}" y="{top + 10}" font-size="11" text-anchor="end" '
        f'fill="#666">1 bar = {unit.label} (UTC)</text>'
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


def template() -> Template:
    return Template(resources.files("replay").joinpath("report.html").read_text(encoding="utf-8"))


def write_html(
    info: dict[str, Any],
    summary: Summary,
    rows: Sequence[Finding],
    damage: Sequence[Damage],
    meta: dict[str, Any],
    out: IO[str],
) -> None:
    e = html.escape
    acts = info["actions"]
    inputs = ", ".join(f"<code>{e(p)}</code> ({e(f)})" for p, f in meta["inputs"]) or "none"
    head = (
        f"<p>Policy read at <b>{e(str(meta['at']))}</b>; inputs: {inputs}.<br>"
        f"{plural(info['observations'], 'observation')} from {e(str(info['first']))} to "
        f'{e(str(info["last"]))}: <span class="block">{acts["block"]} block</span>, '
        f'<span class="log">{acts["log"]} log</span>, {acts["allow"]} allow.</p>'
    )
    if meta.get("note"):
        head += f'\n<p class="note">Note: {e(meta["note"])}</p>'
    apps = "\n".join(
        f"<tr><td>{e(a['app'])}</td><td>{e(a['name'])}</td><td>{e(str(a['phase']))}</td>"
        f'<td class="num">{a["observations"]}</td><td class="num">{a["blocked"]}</td>'
        f'<td class="num">{a["logged"]}</td><td>{e(str(a["first"]))}</td><td>{e(str(a["last"]))}</td></tr>'
        for a in info["apps"]
    )
    clients = "\n".join(
        f'<tr><td>{e(c["client"])}</td><td>{e(c["app"])}</td><td class="num">{c["observations"]}</td>'
        f'<td class="num">{c["blocked"]}</td></tr>'
        for c in info["clients"]
    )
    lines = []
    for v in rows:
        s, d = v.sighting, v.decision
        name = s.value + (" [ECH]" if s.ech else "")
        lines.append(
            f"<tr><td>{e(iso(s.time))}</td><td>{e(endpoint(s.client, s.client_port))}</td>"
            f"<td>{e(endpoint(s.server, s.server_port))}</td><td>{e(s.kind.value)}</td>"
            f"<td>{e(s.qtype or '')}</td><td>{e(name)}</td>"
            f'<td class="{d.action.value}">{d.action.value}</td><td>{e(", ".join(d.apps))}</td>'
            f"<td>{e(d.phase.value)}</td><td><code>{e(d.rule or '-')}</code></td><td>{e(d.reason)}</td>"
            f"<td>{e(s.file)}#{s.packet}</td></tr>"
        )
    total = acts["block"] + acts["log"]
    more = f" (first {len(rows)} of {total})" if total > len(rows) else ""
    out.write(
        template().substitute(
            summary=head,
            warnings="\n".join(f'<p class="warn">warning: {e(str(d))}</p>' for d in damage),
            chart=chart_svg(summary),
            apps=apps,
            clients=clients,
            rows_title=f"Blocked and logged observations{more}",
            rows="\n".join(lines),
        )
    )
