"""What an engine answers, from an export's text, by the engine's documented rules.

These are small readers of the formats, written from the documentation (not
from ``policies.export``): RPZ (draft-vixie-dnsop-dns-rpz: an exact trigger
beats a wildcard, a longer name beats a shorter) and the adblock syntax
(AdGuard Home: ``||name^`` the name and below, ``|name^`` the name alone,
``@@`` exceptions beat blocks, ``$important`` beats exceptions).  The real
engines are run in test_engines.py; these let a property test try thousands
of policies.
"""

from __future__ import annotations

import re

_RPZ = re.compile(r"^(\S+) CNAME (\S+)(?: ;.*)?$")


def rpz_reader(text: str) -> dict[str, str]:
    """owner (relative, '*.x' for wildcards) -> rdata, from an rpz zone file."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _RPZ.match(line)
        if m:
            assert m.group(1) not in out, f"two policy records for {m.group(1)}"
            out[m.group(1)] = m.group(2)
    return out


def rpz_blocks(records: dict[str, str], name: str) -> bool:
    if name in records:
        return records[name] == "."
    labels = name.split(".")
    for i in range(1, len(labels)):
        rdata = records.get("*." + ".".join(labels[i:]))
        if rdata is not None:
            return rdata == "."
    return False


def adblock_blocks(text: str, name: str) -> bool:
    """AdGuard Home's precedence: important exception > important block > exception > block."""
    hits: set[tuple[bool, bool]] = set()  # (exception, important)
    for line in text.splitlines():
        rule = line.split("  !", 1)[0].strip()
        if not rule or rule.startswith("!"):
            continue
        exception = rule.startswith("@@")
        rule = rule.removeprefix("@@")
        important = rule.endswith("$important")
        rule = rule.removesuffix("$important")
        if rule.startswith("||"):
            target = rule[2:].rstrip("^")
            hit = name == target or name.endswith("." + target)
        else:
            hit = name == rule[1:].rstrip("^")
        if hit:
            hits.add((exception, important))
    for rank in ((True, True), (False, True), (True, False), (False, False)):
        if rank in hits:
            return not rank[0]
    return False


def hosts_blocks(text: str, name: str) -> bool:
    return any(line.split("#")[0].split() == ["0.0.0.0", name] for line in text.splitlines())
