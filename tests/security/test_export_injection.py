"""A policy's free text cannot write lines into the configs it is exported to.

The policy's name, a framework's short label and a download path are free
text in YAML; each export copies them into comments and notes.  A newline in
any of them would start a line of the resolver's, proxy's or sensor's
config: an ``include:`` of any file, a ``local-zone`` blocking all of
``com``, a ``*.com CNAME .`` record.  Every line of every format must begin
as that format's comments or records do, and the payloads must appear only
escaped.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from policies import load_policy_text
from policies.export import FORMATS, export_text

POLICY = r'''version: 2
name: "evil\ninclude: /etc/passwd"
frameworks:
  eo:
    title: Order
    short: "EO\n*.com CNAME .\rsid:1;"
    kind: executive_order
    citations: ["1 FR 1"]
    schedule:
      chat:
        - {from: 2020-01-01, phase: full, source: "1 FR 2"}
clients:
  default: {frameworks: [eo]}
apps:
  - id: chat
    name: Chat
    owner: Chat Co
    domains: [chat.test]
    sni: ["*.chatcdn.test"]
    downloads: [{host: shared.test, path: "/a\nlocal-zone: \"com.\" always_nxdomain\t\"x"}]
'''

# How each format's lines may begin: its comment, or one of its record forms.
# Names may hold '_' (the built-in _dns.resolver.arpa); the built-in DoH addresses are tcp/udp
# rules in Suricata and Intel::ADDR in Zeek.
LINE = {
    "rpz": r"(;|\$TTL |\$ORIGIN |@ (SOA|NS) |(\*\.)?[a-z0-9_.-]+ CNAME (\.|rpz-passthru\.) ; )",
    "bind": r"(//|zone \"default\.rpz\.egress-filter\" \{ type primary; file \"[^\"\n]+\"; )",
    "unbound": r"(#|server:$|    (#|local-zone: \"[a-z0-9_.-]+\.\" [a-z_]+  #"
               r"|local-data: \"[a-z0-9_.-]+\. (A|AAAA) ))",
    "dnsmasq": r"(#|(address|server)=/[a-z0-9_.-]+/#?  #|host-record=[a-z0-9_.-]+,0\.0\.0\.0,::  #)",
    "hosts": r"(#|0\.0\.0\.0 [a-z0-9_.-]+  #)",
    "adblock": r"(!|(@@)?\|\|?[a-z0-9_.-]+\^(\$important)?  ! )",
    "squid": r"(#|acl egress_filter_\w+ [a-z:_]+ |http_access deny |ssl_bump (peek|terminate|splice) )",
    "suricata": r"(#|(drop|alert|pass) (dns|tls|http|ip|tcp|udp) any any -> )",
    "zeek-intel": r"(#|[a-z0-9_.-]+\tIntel::DOMAIN\t|[0-9a-f.:/]+\tIntel::(SUBNET|ADDR)\t)",
}


@pytest.mark.parametrize("fmt", FORMATS, ids=str)
def test_free_text_cannot_start_a_config_line(fmt: str) -> None:
    policy = load_policy_text(POLICY, "evil.yaml")
    text = export_text(policy, fmt, at=dt.date(2021, 1, 1))
    rx = re.compile(LINE[fmt])
    assert [ln for ln in text.splitlines() if not rx.match(ln)] == []
    lines = [ln.strip() for ln in text.splitlines()]
    for payload in ("include: /etc/passwd", "*.com CNAME .", 'local-zone: "com."', "sid:1;"):
        assert not [ln for ln in lines if ln.startswith(payload)]
    assert "sid:1;" not in text
    assert "\r" not in text and "\t\"x" not in text
    # the escaped payloads are still there to read
    escaped = {"bind": "", "suricata": "framework EO_x0a*.com_CNAME_._x0dsid:1_x3b, rule domain:chat.test"}
    assert escaped.get(fmt, "framework=EO\\x0a*.com_CNAME_.\\x0dsid:1\\x3b rule=domain:chat.test") in text
    if fmt == "rpz":
        assert "; policy: evil\\x0ainclude: /etc/passwd (evil.yaml)" in text
