"""``egress-filter policy copy DIR``: the bundled policy and its list files, to edit.

The copy is what ``--policy DIR/bundled.yaml`` then loads: the YAML, every
file under ``lists/`` (also those only the opt-in groups name) and the JSON
Schema for editors.  Nothing is overwritten unless ``--force``; with it, only
the files the bundle ships are replaced, nothing else in DIR is touched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

PROG = "egress-filter policy"
POLICY = "bundled.yaml"


def register(sub: Any) -> None:
    p = sub.add_parser("policy", help="copy the bundled policy and its lists to edit them",
                       description="Work with the bundled policy file.")
    what = p.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    c = what.add_parser("copy", help="copy the bundled policy, its lists and schema to DIR",
                        description="Copy bundled.yaml, lists/*.txt and schema.json to DIR, "
                                    "then edit DIR/bundled.yaml and run it with --policy.")
    c.add_argument("dir", metavar="DIR", help="where to copy (created if missing)")
    c.add_argument("--force", action="store_true", help="replace files of an earlier copy")
    c.set_defaults(func=cmd_copy)


def bundle_files() -> list[tuple[Path, str]]:
    """(source file, path relative to DIR) for every file of the bundle."""
    root = Path(str(resources.files("policies")))
    files = [(root / POLICY, POLICY), (root / "schema.json", "schema.json")]
    files += [(f, f"lists/{f.name}") for f in sorted((root / "lists").glob("*.txt"))]
    return files


def cmd_copy(args: argparse.Namespace) -> int:
    target = Path(args.dir)
    files = bundle_files()
    taken = [rel for _, rel in files if (target / rel).exists()]
    if taken and not args.force:
        print(f"{PROG}: {target} already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; "
              f"nothing was copied (--force replaces them)", file=sys.stderr)
        return 1
    try:
        (target / "lists").mkdir(parents=True, exist_ok=True)
        for source, rel in files:
            shutil.copyfile(source, target / rel)
    except OSError as exc:
        print(f"{PROG}: cannot copy to {target}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{PROG}: copied {POLICY}, schema.json and {len(files) - 2} list files to {target}")
    print(f"  edit {target / POLICY}, then: egress-filter check {target / POLICY}")
    return 0
