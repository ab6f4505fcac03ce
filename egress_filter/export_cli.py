"""``export``: the policy as a file for the engines a company already runs.

Reads a policy, fixes the moment (``--at``/``--phase``), the client group and
the legal status, and streams ``policies.export.render`` to stdout or to
``--output`` (written to a temporary file and renamed, so a resolver reading
the file never sees half of it).  ``bind`` writes two files: the named.conf
part at ``--output`` and the zone beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from policies import Phase
from policies.export import FORMATS, render, zone_name
from runtime.args import add_legal_args, add_policy_args, group_of, load_or_exit


def _write(lines: Iterable[str], path: str | None) -> None:
    if path is None:
        out = sys.stdout
        for line in lines:
            out.write(line)
            out.write("\n")
        return
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(f"{line}\n" for line in lines)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)  # a full disk must not leave half an export beside the real one
        raise SystemExit(f"egress-filter: cannot write {path}: {exc.strerror or exc}") from exc


def cmd_export(args: argparse.Namespace) -> int:
    policy = load_or_exit(args.policy)
    group = group_of(policy, args)
    phase = Phase(args.phase) if args.phase else None

    def lines(fmt: str, zone_file: str | None = None) -> Iterable[str]:
        return render(policy, fmt, args.at, phase, group, args.legal_status, args.serial, zone_file)

    if args.format == "bind":
        if not args.output:
            raise SystemExit("egress-filter: --format bind writes two files (named.conf part and zone); "
                             "give --output FILE")
        zone = Path(args.output).resolve().parent / f"{zone_name(group)}.zone"
        _write(lines("rpz"), str(zone))
        _write(lines("bind", str(zone)), args.output)
        print(f"wrote {args.output} and {zone}", file=sys.stderr)
        return 0
    _write(lines(args.format), args.output)
    return 0


def register(sub: Any) -> None:
    p = sub.add_parser("export", help="write the policy for RPZ, Unbound, BIND, dnsmasq, hosts, adblock, "
                                      "Squid, Suricata or Zeek")
    p.add_argument("--format", required=True, choices=FORMATS)
    add_policy_args(p)
    add_legal_args(p)
    p.add_argument("--output", metavar="FILE", help="write here (atomically) instead of stdout")
    p.add_argument("--serial", type=int, metavar="N",
                   help="the RPZ zone's SOA serial (default: from the date, the digest and the phases)")
    p.set_defaults(func=cmd_export)
