"""List-file formats: one name per line, streamed into the name index.

    open file ─▶ capped_lines (universal newlines; a line or file past its cap
                 stops with a problem at that line)
              ─▶ list_names (the fast path: a bare lower-case name matches one
                 regex; the rest go to parse_list_line)
              ─▶ names for the index; bad lines as (line, text, message) problems
              ─▶ list_issues: the first MAX_LIST_ISSUES as PolicyIssues, then a count

Accepted lines: ``name``, hosts-file lines (``0.0.0.0 name [alias ...]``, a
sink or any IP first), adblock ``||name^``, ``#`` and ``!`` comments, upper
case and IDNs.  A name that covers an app-store host is refused: store traffic
is judged per app, by URL.  Streamed, so a 1,000,000-line file is never held
whole as text and as a list of lines (tens of MB of peak RSS).
"""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .addresses import is_ip
from .matching import STORE_HOSTS, glob_to_regex, normalize_name, suffixes
from .yaml_walk import PolicyIssue

LIST_NAME = re.compile(r"^(?:[a-z0-9_-]{1,63}\.)*[a-z0-9_-]{1,63}$")
MAX_LIST_ISSUES = 20
MAX_LIST_LINE = 4096  # characters: a name is at most 253; hosts-file lines with aliases stay far below
# A store host, or a domain above one, would block the store for every app;
# store traffic is judged per app, by URL (see matching.recognize_store_url).
STORE_COVER = frozenset(s for h in STORE_HOSTS for s in suffixes(h) if "." in s)
HOSTS_SINKS = frozenset({"0.0.0.0", "127.0.0.1", "::", "::1", "255.255.255.255"})
HOSTS_SKIP = frozenset({"localhost", "localhost.localdomain", "local", "broadcasthost",
                         "ip6-localhost", "ip6-loopback", "0.0.0.0"})


@dataclass(frozen=True, slots=True)
class Caps:
    """How much of a list file is read: bytes per file, characters per line."""

    file_size: int
    line: int


def read_names(raw: BinaryIO, caps: Caps, store_cover: frozenset[str],
               add: Callable[[Iterator[str]], int]) -> tuple[int, list[tuple[int, str, str]]]:
    """Stream a list file's names into ``add`` (which returns how many it took);
    returns that count and the bad lines as (line, text, message), in line order."""
    problems: list[tuple[int, str, str]] = []  # (line, the line, message)
    # Universal newlines split on \n, \r\n and \r alone, as editors count lines.
    with io.TextIOWrapper(raw, encoding="utf-8", errors="replace") as fh:
        n = add(list_names(capped_lines(fh, caps, problems), store_cover, problems))
    problems.sort(key=lambda p: p[0])  # a cap's problem is found while streaming, after earlier lines'
    return n, problems


def list_issues(where: str, field: str, problems: list[tuple[int, str, str]]) -> list[PolicyIssue]:
    """The first ``MAX_LIST_ISSUES`` problems of one file as issues, then how many more."""
    out = [PolicyIssue(where, line, field, message) for line, _text, message in problems[:MAX_LIST_ISSUES]]
    if len(problems) > MAX_LIST_ISSUES:
        more = len(problems) - MAX_LIST_ISSUES
        out.append(PolicyIssue(where, problems[-1][0], field, f"{more} more bad lines like these"))
    return out


def list_problems(data: bytes, exact: bool) -> tuple[int, list[tuple[int, str]]]:
    """(names, [(line, message)]) of a list file's bytes, checked as the loader checks a list file
    (the subscription downloader validates a download with it before swapping it in)."""
    n, problems = read_names(io.BytesIO(data), Caps(len(data) + 1, MAX_LIST_LINE),
                             STORE_HOSTS if exact else STORE_COVER, lambda names: sum(1 for _ in names))
    return n, [(line, message) for line, _text, message in problems]


def capped_lines(fh: io.TextIOWrapper, caps: Caps, problems: list[tuple[int, str, str]]) -> Iterator[str]:
    """A list file's lines without their line ends, each at most ``caps.line``
    characters and all together at most ``caps.file_size``: a file that breaks
    a cap (a line with no end, a file still growing) stops with a problem at
    that line, so memory stays bounded whatever the file holds."""
    read = fh.readline
    limit = caps.line + 1  # room for the line end
    total = 0
    for lineno in itertools.count(1):
        line = read(limit)
        if not line:
            return
        total += len(line)
        body = line[:-1] if line.endswith("\n") else line
        if len(body) > caps.line:
            problems.append((lineno, "", f"line is longer than {caps.line} characters"))
            return
        if total > caps.file_size:
            problems.append((lineno, "", f"the file grew past the limit of {caps.file_size} bytes "
                                         "(settings.max_file_size)"))
            return
        yield body


def list_names(lines: Iterable[str], store_cover: frozenset[str], problems: list[tuple[int, str, str]]
                ) -> Iterator[str]:
    """The names of a list file's lines; bad lines go to ``problems``.

    Nearly every line of a real list is already a bare, lower-case name: one
    regex match accepts it, and only the other lines take the slow path."""
    match = LIST_NAME.match
    for lineno, raw in enumerate(lines, 1):
        if match(raw) is not None and len(raw) <= 253:
            names: Iterable[str | None] = (raw,)
        else:
            names = parse_list_line(raw)
        for name in names:
            if name is None:
                line = raw.strip()
                shown = line if len(line) <= 60 else line[:57] + "..."
                problems.append((lineno, line, f"{shown!r} is not a domain name"))
            elif name in store_cover:
                problems.append((lineno, name, store_cover_message(name)))
            else:
                yield name


def parse_list_line(raw: str) -> list[str | None]:
    """The slow path of ``list_names``: comments, hosts-file and adblock
    lines, upper case, IDNs.  ``None`` marks a bad name."""
    line = raw.strip()
    if not line or line[0] == "#" or line[0] == "!":
        return []
    if "#" in line:
        line = line.split("#", 1)[0].strip()
        if not line:
            return []
    match = LIST_NAME.match
    if " " in line or "\t" in line:
        parts = line.split()
        if parts[0] in HOSTS_SINKS or is_ip(parts[0]):
            out: list[str | None] = []
            for part in parts[1:]:
                if part.lower() not in HOSTS_SKIP:
                    name = normalize_name(part)
                    out.append(name if match(name) and len(name) <= 253 else None)
            return out
        return [None]
    if line.startswith("||") and line.endswith("^"):
        line = line[2:-1]
    name = normalize_name(line)
    return [name if match(name) and len(name) <= 253 else None]


def glob_covers_store(pattern: str) -> bool:
    rx = re.compile(glob_to_regex(pattern))
    return any(rx.fullmatch(h) for h in STORE_HOSTS) if "*" in pattern else pattern in STORE_HOSTS


def store_cover_message(name: str, raw: str | None = None) -> str:
    if "*" in name:
        rx = re.compile(glob_to_regex(name))
        covered = [h for h in STORE_HOSTS if rx.fullmatch(h)]
    else:
        covered = [h for h in STORE_HOSTS if h == name or h.endswith("." + name)]
    hosts = ", ".join(sorted(covered))
    return (f"'{raw or name}' would block the app-store host {hosts} for every app; "
            "list the app's store ids under store: instead (store pages are judged per app, by URL)")
