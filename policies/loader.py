"""YAML (+ list files) → a compiled, immutable ``Policy``: the loader's entry points.

    path ─▶ files.open_regular / read_capped ─▶ UTF-8 text
         ─▶ yaml_walk.compose (libyaml) ─▶ node tree (every node keeps its line)
         ─▶ compiler.compile_policy, with a yaml_walk.Walker that records every
            problem as ``file:line: field: message``; the format's keys and the
            plain sections are validate.py's, list files list_files.py's
         ─▶ no issue: the Policy, with its digest over the text and list files
            any issue: PolicyError carrying all of them (and every file read)

Only a policy with no problems is compiled into indexes.  The names the rest
of the code uses (``PolicyError``, ``list_problems``, ``policy_warnings``, ...)
stay importable from here; the format's key tables are validate.py's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from .compiler import compile_policy
from .files import Unreadable, open_regular, read_capped
from .list_files import MAX_LIST_LINE, Caps, list_problems
from .model import DEFAULT_MAX_FILE_SIZE
from .policy import Policy
from .validate import blocks_anything, policy_warnings
from .yaml_walk import MAX_DEPTH, PolicyError, PolicyIssue, TooDeep, Walker, compose

__all__ = [
    "BUNDLED",
    "MAX_DEPTH",
    "MAX_LIST_LINE",
    "SCHEMA",
    "PolicyError",
    "PolicyIssue",
    "blocks_anything",
    "list_problems",
    "load_policy",
    "load_policy_text",
    "policy_digest",
    "policy_summary",
    "policy_warnings",
]

BUNDLED = Path(__file__).with_name("bundled.yaml")
SCHEMA = Path(__file__).with_name("schema.json")  # JSON Schema of this format, for editors


def load_policy(path: str | os.PathLike[str] | None = None, *, max_file_size: int | None = None,
                max_line: int = MAX_LIST_LINE, max_depth: int = MAX_DEPTH) -> Policy:
    """Load, validate and compile a policy file (the bundled one by default).

    ``max_file_size`` caps the YAML and every list file (default 1 GiB; a
    policy's ``settings.max_file_size`` replaces it for its own list files);
    ``max_line`` caps a list file's lines, ``max_depth`` the YAML's nesting."""
    p = Path(path) if path is not None else BUNDLED
    cap = DEFAULT_MAX_FILE_SIZE if max_file_size is None else max_file_size
    try:
        with open_regular(p, cap) as fh:
            data = read_capped(fh, cap)
        if len(data) > cap:
            raise Unreadable(f"grew past the limit of {cap} bytes while read", too_big=True)
        text = data.decode("utf-8")
    except Unreadable as exc:
        message = f"cannot read: {exc.os_error}" if exc.os_error else str(exc)
        raise PolicyError([PolicyIssue(str(p), 0, "(file)", message)], (str(p),)) from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise PolicyError([PolicyIssue(str(p), line, "(file)",
                                       f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} "
                                       f"at offset {exc.start})")]) from exc
    return load_policy_text(text, str(p), base=p.parent, max_file_size=cap, max_line=max_line,
                            max_depth=max_depth)


def load_policy_text(text: str, file: str = "<policy>", base: Path | None = None, *,
                     max_file_size: int = DEFAULT_MAX_FILE_SIZE, max_line: int = MAX_LIST_LINE,
                     max_depth: int = MAX_DEPTH) -> Policy:
    try:
        root = compose(text, max_depth)
    except TooDeep as exc:
        raise PolicyError([PolicyIssue(file, exc.mark.line + 1, exc.field, str(exc))]) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        msg = " ".join(filter(None, [exc.context, exc.problem]))
        raise PolicyError([PolicyIssue(file, line, "(yaml)", f"syntax error: {msg}")]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([PolicyIssue(file, 0, "(yaml)", f"syntax error: {exc}")]) from exc
    w = Walker(file)
    if root is None:
        raise PolicyError([PolicyIssue(file, 1, "(file)", "the policy is empty")])
    policy = compile_policy(w, root, base or Path.cwd(), Caps(max_file_size, max_line))
    if w.issues or policy is None:
        issues = sorted(w.issues, key=lambda i: (i.file != file, i.file, i.line))  # stable: keeps field order
        raise PolicyError(issues or [PolicyIssue(file, 1, "(file)", "invalid policy")], tuple(w.files))
    try:
        pending = {s.cache for s in policy.subscriptions if not os.path.exists(s.cache)}  # not fetched yet
        digest = policy_digest(text, [f for f in policy.files[1:] if f not in pending], max_file_size)
    except Unreadable as exc:
        raise PolicyError([PolicyIssue(file, 0, "(file)", f"a list file changed while loading: {exc}")],
                          tuple(w.files)) from exc
    return replace(policy, digest=digest)


def policy_digest(text: str, list_files: Iterable[str], max_size: int = DEFAULT_MAX_FILE_SIZE) -> str:
    """sha256 over the policy text and each list file's bytes, each preceded by
    its length (8 bytes, big-endian), so no two sets of files share a digest.
    An auditor recomputes it from the same files: ``egress-filter check`` prints it."""
    h = hashlib.sha256()
    data = text.encode("utf-8")
    h.update(len(data).to_bytes(8, "big"))
    h.update(data)
    for name in list_files:
        with open_regular(Path(name), max_size) as fh:  # as the load itself opened it
            h.update(os.fstat(fh.fileno()).st_size.to_bytes(8, "big"))
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return f"sha256:{h.hexdigest()}"


def policy_summary(policy: Policy, at: dt.date | None = None) -> dict[str, Any]:
    """Counts for ``egress-filter check``."""
    return {
        "source": policy.source,
        "mode": policy.mode.value,
        "apps": list(policy.apps),
        "rules": {k: v for k, v in sorted(policy.counts.items()) if k != "apps"},
        "exempt_clients": [str(n) for n in policy.exempt],
        "warnings": policy_warnings(policy, at),
        "name": policy.name,
        "digest": policy.digest,
        "frameworks": list(policy.frameworks),
        "groups": {g: {"networks": [str(n) for n in c.networks], "frameworks": list(c.frameworks),
                       "mode": c.mode.value if c.mode else None,
                       "legal_status": c.legal_status.value if c.legal_status else None}
                   for g, c in policy.clients.items()},
        "legal_status": policy.legal_status.value,
    }
