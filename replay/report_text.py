"""Verdicts → the terminal table (and its summary) or CSV, streamed.

The table fits the terminal: the fixed columns keep their width and the
NAME / URL column takes what is left (at least 30 characters); a name cut
to fit ends in "…", and the whole of it is in every other format (CSV, JSON,
JSONL, HTML).  Written to a file or a pipe, nothing is cut.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable, Sequence
from typing import IO, Any

from .model import Damage, Finding
from .report import endpoint, iso, plural
from .summary import Summary

# (header, width) of the columns before NAME / URL, and RULE after it.
COLUMNS = (("TIME", 24), ("CLIENT", 22), ("SERVER", 22), ("KIND", 4), ("QTYPE", 5), ("ACTION", 6),
           ("GROUP", 12), ("APPS", 12), ("PHASE", 9))
FIXED = sum(w + 1 for _, w in COLUMNS)
MIN_NAME, RULE_WIDTH = 30, 24


def name_width(out: IO[str]) -> int | None:
    """The NAME / URL column's width on a terminal; None (never cut) elsewhere."""
    if not out.isatty():
        return None
    return max(MIN_NAME, shutil.get_terminal_size().columns - FIXED - RULE_WIDTH - 1)


def shown_name(v: Finding, width: int | None) -> str:
    text = v.sighting.value + (" [ECH]" if v.sighting.ech else "")
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


def write_table(verdicts: Iterable[Finding], out: IO[str], summary: Summary) -> None:
    width = name_width(out)
    nw = width or 60
    out.write(" ".join(f"{h:<{w}}" for h, w in COLUMNS) + f" {'NAME / URL':<{nw}} RULE\n")
    # One format string for the whole row: a join over cells per row cost a tenth of replay's time.
    row = " ".join(f"{{:<{w}}}" for _, w in COLUMNS) + f" {{:<{nw}}} {{}}\n"
    fmt = row.format
    add = summary.add
    write = out.write
    for v in verdicts:
        add(v)
        s, d = v.sighting, v.decision
        write(fmt(iso(s.time), endpoint(s.client, s.client_port), endpoint(s.server, s.server_port),
                  s.kind.value, s.qtype or "-", d.action.value, d.group, ",".join(d.apps) or "-",
                  d.phase.value, shown_name(v, width), d.rule or "-"))


def write_summary_table(info: dict[str, Any], damage: Sequence[Damage], out: IO[str],
                        note: str | None = None) -> None:
    acts = info["actions"]
    out.write(
        f"\n{plural(info['observations'], 'observation')}: {acts['block']} block, {acts['log']} log, "
        f"{acts['allow']} allow"
    )
    if info["ech"]:
        out.write(f"; {info['ech']} ClientHello(s) with ECH (outer SNI judged)")
    out.write("\n")
    if note:
        out.write(f"note: {note}\n")
    if info["apps"]:
        out.write(
            f"\n{'APP':<14} {'NAME':<16} {'PHASE':<15} {'OBSERVATIONS':>12} {'BLOCKED':>8} {'LOGGED':>8}\n"
        )
        for a in info["apps"]:
            out.write(
                f"{a['app']:<14} {a['name'][:16]:<16} {a['phase'] or '-':<15} {a['observations']:>12} "
                f"{a['blocked']:>8} {a['logged']:>8}\n"
            )
    for d in damage:
        out.write(f"warning: {d}\n")


CSV_FIELDS = ("time", "client", "client_port", "server", "server_port", "kind", "qtype", "name", "via",
              "action", "would", "group", "apps", "phase", "rule", "reason", "file", "packet", "tunnel")


def _cell(text: str) -> str:
    """A text cell a spreadsheet shows as text: one starting with a formula character gets a
    leading apostrophe (OWASP's CSV-injection rule), since names come from the capture."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def write_csv(verdicts: Iterable[Finding], out: IO[str], summary: Summary) -> None:
    """One row per verdict (RFC 4180, a header first); apps joined with spaces."""
    w = csv.writer(out, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for v in verdicts:
        summary.add(v)
        s, d = v.sighting, v.decision
        w.writerow((iso(s.time), s.client or "", "" if s.client_port is None else s.client_port,
                    s.server or "", "" if s.server_port is None else s.server_port, s.kind.value,
                    s.qtype or "", _cell(s.value), _cell(s.via), d.action.value, d.would.value, d.group,
                    " ".join(d.apps), d.phase.value, _cell(d.rule or ""), _cell(d.reason), _cell(s.file),
                    s.packet, s.tunnel))
