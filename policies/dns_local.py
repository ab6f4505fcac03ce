"""``settings.dns.local``, ``settings.dns.forward`` and ``settings.dns.local_domains``, checked at load.

    local:          ["nas.lan 192.168.1.10", "192.168.1.11 printer.lan", "files.lan CNAME nas.lan",
                     "5.1.168.192.in-addr.arpa PTR router.lan"]
    forward:        {corp.example: [10.0.0.53, "tls://10.0.0.54#dns.corp.example"], lan: 192.168.1.1}
    local_domains:  [lan, home.arpa, internal, localdomain, <private reverse zones>]   (the default)
        │
        └─ the loader hands each YAML node here ─▶ LocalRecord / Forward tuples in DnsSettings
                                                   ─▶ dns_blocker/local.py answers and routes

Pure (no I/O, no dnslib): the loader passes its walker, so every mistake is
``file:line: settings.dns.local[3]: message``.  A local record line is
``NAME ADDRESS`` (A or AAAA by the address's family), ``ADDRESS NAME`` (a
hosts-file line) or ``NAME TYPE VALUE`` with TYPE one of A, AAAA, CNAME, PTR.
A name with a CNAME has no other record (RFC 1034 section 3.6.2).  Forward
upstreams take the forms of ``policies.upstreams``.  ``local_domains``
replaces the default list (``[]``: none); names under them (and single-label
names, unless ``block_single_label: false``) that no local record or forward
covers are answered NXDOMAIN by the resolver and never leave it.
"""

from __future__ import annotations

import ipaddress

import yaml

from .addresses import AddressError
from .matching import is_valid_name, normalize_name
from .model import Forward, LocalRecord, RType
from .upstreams import parse_upstream
from .yaml_walk import Walker

KEYS = ("local", "forward", "local_domains")  # settings.dns keys read here, not by the generic reader

def read(w: Walker, key: str, node: yaml.Node, field: str) -> tuple[object, ...] | None:
    """The value of one of ``KEYS``, or None when it had errors (already reported)."""
    if key == "local":
        return local_records(w, node, field)
    if key == "forward":
        return forwards(w, node, field)
    return local_domains(w, node, field)


def domain_name(w: Walker, raw: str, node: yaml.Node, field: str) -> str | None:
    """``raw`` normalised, or None after reporting it (a wildcard is not a name);
    the loader checks its own domain lists with this too."""
    name = normalize_name(raw)
    if not is_valid_name(name) or "*" in name:
        w.err(node, field, f"'{raw}' is not a valid domain name")
        return None
    return name


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def local_records(w: Walker, node: yaml.Node, field: str) -> tuple[LocalRecord, ...] | None:
    out: list[LocalRecord] = []
    kinds: dict[str, set[RType]] = {}
    ok = True
    for f, item in w.seq(node, field):
        line = w.text(item, f)
        if line is None:
            ok = False
            continue
        record = _record(w, line, item, f)
        if record is None:
            ok = False
            continue
        have = kinds.setdefault(record.name, set())
        if record in out:
            w.err(item, f, f"'{line}' is listed twice")
            ok = False
            continue
        if (record.rtype is RType.CNAME and have) or RType.CNAME in have:
            w.err(item, f, f"'{record.name}' has a CNAME, so it can have no other record (RFC 1034 3.6.2)")
            ok = False
            continue
        have.add(record.rtype)
        out.append(record)
    return tuple(out) if ok else None


def _record(w: Walker, line: str, node: yaml.Node, field: str) -> LocalRecord | None:
    parts = line.split()
    if len(parts) == 2:
        first, second = parts
        addr = _address(second)
        name_text = first
        if addr is None and _address(first) is not None:  # a hosts-file line: ADDRESS NAME
            addr, name_text = _address(first), second
        if addr is None:
            w.err(node, field, f"'{line}': expected 'NAME ADDRESS', 'ADDRESS NAME' or 'NAME TYPE VALUE'")
            return None
        name = domain_name(w, name_text, node, field)
        if name is None:
            return None
        return LocalRecord(name, RType.A if addr.version == 4 else RType.AAAA, addr.compressed)
    if len(parts) != 3:
        w.err(node, field, f"'{line}': expected 'NAME ADDRESS', 'ADDRESS NAME' or 'NAME TYPE VALUE'")
        return None
    name_text, type_text, value = parts
    try:
        rtype = RType(type_text.upper())
    except ValueError:
        w.err(node, field, f"'{type_text}' is not a local record type (A, AAAA, CNAME, PTR)")
        return None
    name = domain_name(w, name_text, node, field)
    if name is None:
        return None
    if rtype in (RType.A, RType.AAAA):
        addr = _address(value)
        if addr is None or addr.version != (4 if rtype is RType.A else 6):
            w.err(node, field, f"'{value}' is not an IPv{4 if rtype is RType.A else 6} address")
            return None
        return LocalRecord(name, rtype, addr.compressed)
    target = domain_name(w, value, node, field)
    if target is None:
        return None
    if rtype is RType.CNAME and target == name:
        w.err(node, field, f"'{name}' is a CNAME to itself")
        return None
    return LocalRecord(name, rtype, target)


def forwards(w: Walker, node: yaml.Node, field: str) -> tuple[Forward, ...] | None:
    if not isinstance(node, yaml.MappingNode):
        w.err(node, field, "expected a mapping of domain → upstreams")
        return None
    out: dict[str, Forward] = {}
    ok = True
    for knode, vnode in node.value:
        raw = knode.value if isinstance(knode, yaml.ScalarNode) else None
        if not raw or not isinstance(raw, str):
            w.err(knode, field, "keys must be domain names")
            ok = False
            continue
        f = f"{field}.{raw}"
        domain = domain_name(w, raw, knode, f)
        if domain is None:
            ok = False
            continue
        if domain in out:
            w.err(knode, f, "duplicate domain")
            ok = False
            continue
        items = [(f, vnode)] if isinstance(vnode, yaml.ScalarNode) else w.seq(vnode, f)
        ups: list[str] = []
        for g, item in items:
            text = w.text(item, g)
            if text is None:
                ok = False
                continue
            try:
                parse_upstream(text)
            except AddressError as exc:
                w.err(item, g, str(exc))
                ok = False
                continue
            ups.append(text.strip())
        if not items:
            w.err(vnode, f, "at least one upstream is needed")
            ok = False
        out[domain] = Forward(domain, tuple(ups))
    return tuple(out.values()) if ok else None


def local_domains(w: Walker, node: yaml.Node, field: str) -> tuple[str, ...] | None:
    out: list[str] = []
    ok = True
    for f, item in w.seq(node, field):
        text = w.text(item, f)
        name = domain_name(w, text, item, f) if text is not None else None
        if name is None:
            ok = False
        elif name not in out:
            out.append(name)
    return tuple(out) if ok else None
