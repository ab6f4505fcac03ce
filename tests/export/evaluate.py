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


def _most_specific(table: dict[str, str], name: str) -> str | None:
    labels = name.split(".")
    for i in range(len(labels)):
        hit = table.get(".".join(labels[i:]))
        if hit is not None:
            return hit
    return None


_LOCAL_ZONE = re.compile(r'^\s*local-zone: "([^"]+)\." (\S+)')
_LOCAL_DATA = re.compile(r'^\s*local-data: "([^"]+)\. (A|AAAA) ')


def unbound_reader(text: str) -> tuple[dict[str, str], set[str]]:
    """Unbound's local zones (zone -> type) and the names with local data."""
    zones: dict[str, str] = {}
    data: set[str] = set()
    for line in text.splitlines():
        m = _LOCAL_ZONE.match(line)
        if m:
            assert m.group(1) not in zones, f"duplicate local-zone {m.group(1)}"
            zones[m.group(1)] = m.group(2)
        m = _LOCAL_DATA.match(line)
        if m:
            data.add(m.group(1))
    return zones, data


def unbound_blocks(read: tuple[dict[str, str], set[str]], name: str) -> bool:
    """The most specific local zone decides (unbound.conf(5)): always_nxdomain
    blocks; transparent answers its local data (the null address) for that
    name only; always_transparent resolves."""
    zones, data = read
    kind = _most_specific(zones, name)
    if kind == "always_nxdomain":
        return True
    return kind == "transparent" and name in data


def dnsmasq_reader(text: str) -> tuple[dict[str, str], set[str]]:
    """dnsmasq's domains (domain -> 'nxdomain' or 'forward') and host-records."""
    domains: dict[str, str] = {}
    records: set[str] = set()
    for line in text.splitlines():
        rule = line.split("  #", 1)[0]
        if rule.startswith("address=/"):
            domains[rule.split("/")[1]] = "nxdomain"
        elif rule.startswith("server=/") and rule.endswith("/#"):
            domains[rule.split("/")[1]] = "forward"
        elif rule.startswith("host-record="):
            records.add(rule.split("=", 1)[1].split(",")[0])
    return domains, records


def dnsmasq_blocks(read: tuple[dict[str, str], set[str]], name: str) -> bool:
    """A host-record answers its name first (as /etc/hosts does); otherwise the
    most specific --address/--server domain decides (dnsmasq(8))."""
    domains, records = read
    return name in records or _most_specific(domains, name) == "nxdomain"


def squid_blocks(text: str, name: str, http: bool = False) -> bool:
    """Squid's first matching rule (squid.conf: ssl_bump terminate for an SNI,
    http_access deny for a host); '.name' is the name and below, 'name' exact."""
    acls: dict[str, list[tuple[str, str]]] = {}
    rules: list[list[str]] = []
    for line in text.splitlines():
        parts = line.split()
        if parts[:1] == ["acl"]:
            acls.setdefault(parts[1], []).extend((parts[2], v) for v in parts[3:] if v not in ("-n", "-i"))
        elif parts[:2] == (["http_access", "deny"] if http else ["ssl_bump", "terminate"]):
            rules.append(parts[2:])

    def member(acl: str) -> bool:
        for kind, value in acls[acl]:
            if kind in ("method", "at_step"):
                # The model: plain HTTP is no CONNECT; TLS is a CONNECT to an
                # address, so step-1 rules (on the CONNECT's host) never match.
                return False
            if kind.endswith("regex"):
                if re.search(value, name, re.IGNORECASE):
                    return True
            elif value.startswith(".") and (name == value[1:] or name.endswith(value)):
                return True
            elif name == value:
                return True
        return False

    return any(all(not member(a[1:]) if a.startswith("!") else member(a) for a in rule) for rule in rules)


_SURICATA_DNS = re.compile(r'^(drop|alert|pass) dns .*?dns\.query; (dotprefix; )?content:"([^"]+)"; '
                           r'(startswith; )?endswith;')


def suricata_dns_blocks(text: str, name: str) -> bool:
    """Suricata's action order (pass, then drop, then alert) over the dns.query rules."""
    actions = set()
    for line in text.splitlines():
        m = _SURICATA_DNS.match(line)
        if not m:
            continue
        content = m.group(3)
        hit = ("." + name).endswith(content) if m.group(2) else name == content
        if hit:
            actions.add(m.group(1))
    return "pass" not in actions and "drop" in actions
