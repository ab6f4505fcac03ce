"""``egress-filter replay``: judge captures and logs, print verdicts, gate CI.

Flow: argparse → policy view (``--at``/``--phase``) → ``engine.Replay``
(streaming verdicts) → one ``report`` writer → exit code.

Exit codes, one meaning each (``EXIT_*`` below, the table in README.md):
0 done; 1 the policy has errors; 2 usage error; 3 ``--fail-on`` matched (a
verdict at or above that action); 4 an input was unreadable or damaged (its
verdicts before the damage are still reported; records skipped inside an
intact input only warn); 5 replay could not finish (the output could not be
written, or an internal error), said in one line.  3 wins over 4.  Nothing
that an input holds (damage, bombs, running out of memory on it) ends in a
traceback or in 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from typing import IO, TYPE_CHECKING, Any

from runtime.args import add_legal_args, add_policy_args, load_or_exit

from .model import DEFAULT_LIMITS, Finding, Limits

if TYPE_CHECKING:
    from policies import Policy, PolicyView

    from .engine import Replay
    from .summary import Summary

EXIT_USAGE = 2
EXIT_FAIL_ON = 3
EXIT_DAMAGED = 4
EXIT_FAILED = 5
SIZE_SUFFIXES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def size(text: str) -> int:
    """A byte count for ``--max-line``/``--max-record``: ``65536``, ``64K``, ``1M``, ``1G``."""
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in SIZE_SUFFIXES else ""
    try:
        value = int(t[: len(t) - len(unit)]) * SIZE_SUFFIXES[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 64K, 1M)") from None
    if value < 64:
        raise argparse.ArgumentTypeError(f"too small: {text!r} (at least 64 bytes)")
    return value


def jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of processes: {text!r}") from None
    if not 1 <= value <= 256:
        raise argparse.ArgumentTypeError(f"{text!r}: between 1 and 256 processes")
    return value


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay",
        help="judge pcap/pcapng captures, .mitm flow files, Zeek and Suricata logs",
        description="Judge captures and sensor logs with the policy, as the DNS filter and the proxy would. "
        "Exit codes: 0 done, 1 policy error, 2 usage error, 3 --fail-on matched, "
        "4 an input was unreadable or damaged, 5 replay could not finish (output not written, "
        "internal error).",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="pcap, pcapng, mitmproxy flow file, Zeek dns/ssl/http log (TSV or JSON), "
        "Suricata EVE JSON; compressed with gzip, bzip2, xz or zstd is fine; a directory (read "
        "recursively) or a shell-style glob ('logs/**/*.gz') names many",
    )
    add_policy_args(p)
    add_legal_args(p, group=False)
    p.add_argument("--group", metavar="G",
                   help="judge every client as a member of this client group (default: each client's own)")
    p.add_argument(
        "--format",
        choices=("table", "csv", "json", "jsonl", "html", "sqlite"),
        default=None,
        help="table, csv, json, jsonl (the shared event schema), a self-contained html report, or "
        "sqlite (the dashboard's event store; needs --output) "
        "(default: the one --output's extension names, else table)",
    )
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")
    p.add_argument(
        "--fail-on", choices=("block", "log"), help="exit 3 if any verdict is 'block' (or 'log' or stricter)"
    )
    p.add_argument(
        "--only",
        choices=("block", "log"),
        help="list only these verdicts: 'block', or 'log' for only the logged ones "
        "(the summary still counts all)",
    )
    p.add_argument(
        "--dns-port",
        type=int,
        action="append",
        default=[],
        metavar="PORT",
        help="also read DNS on this UDP/TCP port in captures (53 always; repeatable)",
    )
    p.add_argument(
        "--max-line",
        type=size,
        default=DEFAULT_LIMITS.max_line,
        metavar="BYTES",
        help="skip (with a warning) a log line longer than this, newline included (default 1M)",
    )
    p.add_argument(
        "--max-record",
        type=size,
        default=DEFAULT_LIMITS.max_record,
        metavar="BYTES",
        help="skip (with a warning) a pcap record, pcapng block or mitmproxy flow larger than this "
        "(default 16M)",
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=jobs,
        default=None,
        metavar="N",
        help="read inputs in N processes (default: the number of cores); the output is the same "
        "for any N, in input order",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress on a terminal")
    p.add_argument(
        "--progress", action="store_true", help="per-file progress on stderr even when it is not a terminal"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from policies import Action, Phase

    from .engine import Replay, expand
    from .report import format_for
    from .summary import Summary

    args.format, clash = format_for(args.output, args.format)
    if clash:
        print(f"egress-filter replay: warning: {clash}", file=sys.stderr)
    policy = load_or_exit(args.policy)
    if args.group is not None and args.group not in policy.clients:
        known = ", ".join(sorted(policy.clients))
        print(f"egress-filter replay: unknown group '{args.group}' (groups: {known})", file=sys.stderr)
        return EXIT_USAGE
    view = policy.view(args.at, Phase(args.phase) if args.phase else None, None, args.legal_status)
    from . import report_json

    # Without --at/--phase each observation is judged on the day it was seen.
    rep = Replay(
        expand(args.inputs),
        view,
        progress=not args.no_progress,
        force_progress=args.progress,
        dns_ports=frozenset({53, *args.dns_port}),
        by_date=args.at is None and args.phase is None,
        group=args.group,
        limits=Limits(max_line=args.max_line, max_record=args.max_record),
        jobs=args.jobs or cores(),
    )
    summary = Summary()
    threshold = Action(args.fail_on).severity if args.fail_on else None
    hit = False

    def verdicts() -> Iterator[Finding]:
        nonlocal hit
        only = Action(args.only) if args.only else None
        for v in rep:
            if threshold is not None and v.decision.action.severity >= threshold:
                hit = True
            if only is None or v.decision.action is only:
                yield v
            else:
                summary.add(v)

    def lines() -> Iterator[str]:
        """jsonl: each line written where its finding was judged (a worker, with --jobs),
        and counted there."""
        nonlocal hit
        only = Action(args.only) if args.only else None
        for r in rep.lines(summary, report_json.line):
            if threshold is not None and not hit and r.severity() >= threshold:
                hit = True
            if only is None:
                yield r.text
                continue
            for action, text in r.each():
                if action is only:
                    yield text

    if args.format == "sqlite" and not args.output:
        print("egress-filter replay: --format sqlite needs --output FILE", file=sys.stderr)
        return EXIT_USAGE
    try:
        out: IO[str] = open(args.output, "w", encoding="utf-8") if args.output else sys.stdout
    except OSError as exc:
        print(f"egress-filter replay: cannot write {args.output}: {exc.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.format == "jsonl":
            report_json.write_lines(lines(), out)
            _note(rep, policy, summary)
        else:
            _write(args, rep, view, policy, summary, verdicts, out)
        out.flush()  # inside the try: a full disk shows here, as exit 5
    except BrokenPipeError:
        raise  # the reader went away (`| head`): main's quiet exit 0
    except OSError as exc:
        where = args.output or "stdout"
        print(f"egress-filter replay: cannot write {where}: {exc.strerror}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # one line and its own exit code, not a traceback that reads as 1
        print(f"egress-filter replay: internal error ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if out is not sys.stdout:
            try:
                out.close()
            except OSError:
                pass  # already reported by the flush above
    if args.format != "table" or out is not sys.stdout:
        for d in rep.damage:
            print(f"egress-filter replay: warning: {d}", file=sys.stderr)
    if hit:
        return EXIT_FAIL_ON
    if any(d.stopped for d in rep.damage):
        return EXIT_DAMAGED
    return 0


def _write(
    args: argparse.Namespace,
    rep: Replay,
    view: PolicyView,
    policy: Policy,
    summary: Summary,
    verdicts: Callable[[], Iterator[Finding]],
    out: IO[str],
) -> None:
    """The report in ``args.format``, verdicts streamed from ``rep`` as they are judged."""
    from . import report, report_html, report_json, report_text

    def info() -> dict[str, Any]:
        return report.summary_dict(summary, policy, rep.last_view or view)

    def note() -> str | None:
        return report.schedule_note(summary, policy, rep.by_date)

    if args.format == "table":
        report_text.write_table(verdicts(), out, summary)
        report_text.write_summary_table(info(), rep.damage, out, note())
    elif args.format == "csv":
        report_text.write_csv(verdicts(), out, summary)
    elif args.format == "sqlite":  # the dashboard's store schema (store/replay_sqlite.py)
        from store.replay_sqlite import write_sqlite

        def events() -> Iterator[dict[str, Any]]:
            for v in verdicts():
                summary.add(v)
                yield report.event(v)

        write_sqlite(events(), args.output)
    elif args.format == "json":
        report_json.write_json(verdicts(), out, summary)
        report_json.finish_json(
            {
                "at": None if rep.by_date else view.at.isoformat(),
                "dates": sorted(d.isoformat() for d in rep.dates),
                "inputs": [{"path": p, "format": f} for p, f in rep.inputs],
                "summary": info(),
                "note": note(),
                "warnings": [
                    {"file": d.file, d.unit: d.packet, "message": d.message, "stopped": d.stopped}
                    for d in rep.damage
                ],
            },
            out,
        )
    else:
        rows: list[Any] = []
        for _ in report_html.collect_rows(verdicts(), summary, rows):
            pass
        days = sorted(d.isoformat() for d in rep.dates)
        at = (
            f"the day of each observation ({days[0]} to {days[-1]})"
            if rep.by_date and days
            else view.at.isoformat()
        )
        meta = {"at": at, "inputs": rep.inputs, "note": note()}
        report_html.write_html(info(), summary, rows, rep.damage, meta, out)
    if args.format not in ("table", "html", "json"):
        _note(rep, policy, summary)


def _note(rep: Replay, policy: Policy, summary: Summary) -> None:
    """The schedule note on stderr, for the formats that have no place for it."""
    from . import report

    n = report.schedule_note(summary, policy, rep.by_date)
    if n:
        print(f"egress-filter replay: note: {n}", file=sys.stderr)
