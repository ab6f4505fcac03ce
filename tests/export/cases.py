"""The export tests' policy and the one table of names every engine is held to.

The policy nests on purpose: a blocked domain with an allow-listed domain and
a phase-``none`` app's domain below it (holes), a blocked domain below that
hole, an exact host, a download host, and an app in ``downloads`` on one day
and ``full`` on another.  ``NAMES`` is the table: each name with the verdict
the core gives on each day (checked against the core first, then against the
exports and the engines).  Every name here is one every DNS format can express
exactly; what a format can only approximate is in ``APPROXIMATED``.
"""

from __future__ import annotations

import datetime as dt

import pytest

from policies import Policy, load_policy_text

B, N = True, False  # blocked, not blocked

FULL_DAY = dt.date(2020, 3, 1)  # chat and video in full
DOWNLOADS_DAY = dt.date(2020, 1, 15)  # chat in downloads, video in full

POLICY = """\
version: 2
name: export test
frameworks:
  eo:
    title: Order
    short: EO 1
    kind: executive_order
    citations: ["1 FR 1"]
    schedule:
      chat:
        - {from: 2020-01-01, phase: downloads, source: "1 FR 2"}
        - {from: 2020-02-01, phase: full, source: "1 FR 3"}
      video:
        - {from: 2020-01-01, phase: full, source: "1 FR 4"}
clients:
  default: {frameworks: [eo]}
  lab: {networks: [10.1.0.0/16], frameworks: [eo], mode: monitor}
allow:
  domains: [ok.video.test]
apps:
  - id: video
    name: Video
    owner: Video Co
    domains: [video.test, deep.old.video.test, cdn.video.test]
    hosts: [api.videohost.test, video.test, pad.video.test, h.sub.video.test]
    sni: ["*.videocdn.test"]
    networks: [192.0.2.128/25]
    store: {apple: [12345678]}
  - id: legacy
    name: Legacy
    owner: Legacy Co
    domains: [old.video.test, pad.video.test]
  - id: chat
    name: Chat
    owner: Chat Co
    domains: [chat.test]
    downloads: [{host: dl.chat.test}, {host: shared.test, path: /chat/}]
"""


# (name, blocked on FULL_DAY, blocked on DOWNLOADS_DAY)
NAMES = [
    ("video.test", B, B),
    ("www.video.test", B, B),
    ("a.b.video.test", B, B),
    ("cdn.video.test", B, B),
    ("x.cdn.video.test", B, B),
    ("ok.video.test", N, N),
    ("x.ok.video.test", N, N),
    ("old.video.test", N, N),
    ("x.old.video.test", N, N),
    ("pad.video.test", B, B),  # a host blocked, the domain exempt below a block
    ("x.pad.video.test", N, N),
    # An exact host two labels below a blocked domain: sub.video.test is an empty
    # non-terminal of the RPZ, where Unbound does not apply *.video.test.
    ("h.sub.video.test", B, B),
    ("x.h.sub.video.test", B, B),
    ("x.sub.video.test", B, B),
    ("deep.old.video.test", B, B),
    ("y.deep.old.video.test", B, B),
    ("api.videohost.test", B, B),
    ("sub.api.videohost.test", N, N),
    ("videohost.test", N, N),
    ("notvideo.test", N, N),
    ("chat.test", B, N),
    ("www.chat.test", B, N),
    ("dl.chat.test", B, B),
    ("shared.test", N, N),
    ("other.test", N, N),
]

DAYS = [pytest.param(FULL_DAY, 1, id="full-day"), pytest.param(DOWNLOADS_DAY, 2, id="downloads-day")]


def policy_text(builtins: str = "") -> str:
    """The policy's text; ``builtins`` is a ``builtins:`` mapping to add (e.g. ``{doh: false}``)."""
    return POLICY if not builtins else f"builtins: {builtins}\n{POLICY}"


def policy(builtins: str = "") -> Policy:
    return load_policy_text(policy_text(builtins), "export-test.yaml")


# The built-in rules' names, as the policy's builtins: switches them: (switches, [(name, blocked)]).
# Each is an exact name: the names below it are not the core's to block.
BUILTIN_CASES = [
    pytest.param("", [("dns.google", B), ("cloudflare-dns.com", B), ("use-application-dns.net", B),
                      ("mask.icloud.com", B), ("_dns.resolver.arpa", B), ("google", N)], id="all-on"),
    pytest.param("{doh: false, canary: false}", [("dns.google", N), ("use-application-dns.net", N),
                                                 ("mask.icloud.com", B)], id="doh-and-canary-off"),
    pytest.param("{private_relay: false, ddr: false}", [("mask.icloud.com", N), ("mask-h2.icloud.com", N),
                                                        ("dns.google", B)], id="relay-and-ddr-off"),
]


def expected(day: dt.date, column: int) -> list[tuple[str, bool]]:
    return [(row[0], bool(row[column])) for row in NAMES]
