"""The verdict link alone, on a real policy: memoised verdicts per group and view,
the exempt client's own verdict, and the strictest verdict on a CNAME chain."""

from __future__ import annotations

import pytest

from dns_blocker.chain.verdict import Verdicts
from policies import Action, Kind, PolicyView, load_policy_text

POLICY = """\
version: 1
exempt_clients: [10.9.0.0/16]
apps:
  - id: blocked
    name: Blocked
    owner: Demo Ltd.
    legal_basis: {order: "test", citation: "test"}
    schedule:
      - {from: 2020-01-01, phase: full, source: s}
    domains: [blocked.example]
  - id: logged
    name: Logged
    owner: Demo Ltd.
    legal_basis: {order: "test", citation: "test"}
    schedule:
      - {from: 2020-01-01, phase: downloads, source: s}
    domains: [logged.example]
sources:
  s: "test"
"""
PLAIN, EXEMPT = "192.0.2.7", "10.9.2.3"


def view() -> PolicyView:
    return load_policy_text(POLICY).view()


@pytest.mark.parametrize(("name", "client", "want"), [
    pytest.param("www.blocked.example", PLAIN, Action.BLOCK, id="blocked"),
    pytest.param("logged.example", PLAIN, Action.LOG, id="logged"),
    pytest.param("free.example", PLAIN, Action.ALLOW, id="allowed"),
    pytest.param("www.blocked.example", EXEMPT, Action.LOG, id="exempt-downgraded"),
])
def test_decide_matches_the_core(name: str, client: str, want: Action) -> None:
    v = view()
    gv = v.group(client)
    verdicts = Verdicts()
    first = verdicts.decide(v, gv, name, client)
    again = verdicts.decide(v, gv, name, client)
    assert first.action is want
    assert again == first
    assert first == gv.decide_name(name, Kind.DNS, client)


def test_a_new_view_starts_a_new_memo() -> None:
    old, new = view(), load_policy_text(POLICY.replace("blocked.example]", "other.example]")).view()
    verdicts = Verdicts()
    assert verdicts.decide(old, old.group(PLAIN), "blocked.example", PLAIN).action is Action.BLOCK
    assert verdicts.decide(new, new.group(PLAIN), "blocked.example", PLAIN).action is Action.ALLOW


@pytest.mark.parametrize(("cnames", "want"), [
    pytest.param((), None, id="no-chain"),
    pytest.param(("a.example", "b.example"), None, id="all-allowed"),
    pytest.param(("logged.example", "x.example"), ("log", "logged.example"), id="logged-target"),
    pytest.param(("logged.example", "cdn.blocked.example", "z.example"), ("block", "cdn.blocked.example"),
                 id="block-beats-log"),
])
def test_judge_chain(cnames: tuple[str, ...], want: tuple[str, str] | None) -> None:
    v = view()
    got = Verdicts.judge_chain(v.group(PLAIN), cnames, PLAIN)
    if want is None:
        assert got is None
    else:
        assert got is not None
        assert (got.decision.action.value, got.target) == want
