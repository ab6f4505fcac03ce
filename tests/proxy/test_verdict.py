"""What the proxy's addons pass each other (proxy_addons/verdict.py): the names a
request goes by, and a verdict's summary, which mitmproxy must be able to save."""

from __future__ import annotations

import pytest
from mitmproxy.io import tnetstring

from policies import ALLOW, Action, Decision, Observation, Phase
from proxy_addons.verdict import Verdict, authority_names, distinct, new_verdict, strictest

# --- the names a Host header, :authority or target carries -----------------------------

AUTHORITY_CASES = [
    ("name", "www.tiktok.com", ["www.tiktok.com"]),
    ("name-port", "www.tiktok.com:8080", ["www.tiktok.com"]),
    ("case-dot-port-kept-for-the-policy", "WWW.TikTok.com.:443", ["WWW.TikTok.com."]),
    ("two-ports-first-colon", "www.tiktok.com:80:80", ["www.tiktok.com"]),
    ("joined-repeated-headers", "allowed.example, www.tiktok.com", ["allowed.example", "www.tiktok.com"]),
    ("userinfo", "allowed.example@www.tiktok.com", ["allowed.example", "www.tiktok.com"]),
    ("ipv4-port", "192.0.2.7:80", ["192.0.2.7"]),
    ("ipv6-bracketed-port", "[2001:db8::1]:443", ["2001:db8::1"]),
    ("ipv6-bare", "2001:db8::1", ["2001:db8::1"]),
    ("whitespace", "  www.tiktok.com \t", ["www.tiktok.com"]),
    ("empty", "", []),
    ("port-only", ":80", []),
]


@pytest.mark.parametrize("value,names", [c[1:] for c in AUTHORITY_CASES], ids=[c[0] for c in AUTHORITY_CASES])
def test_authority_names(value: str, names: list[str]) -> None:
    assert authority_names(value) == names


DISTINCT_CASES = [
    pytest.param(["a.example", "A.Example.", "a.example:443"], ["a.example"], id="one-name-three-spellings"),
    pytest.param(["a.example", "b.example, a.example"], ["a.example", "b.example"], id="order-kept"),
    pytest.param(["[2001:db8::1]:443", "2001:db8::1"], ["2001:db8::1"], id="ipv6-forms"),
]


@pytest.mark.parametrize("values,names", DISTINCT_CASES)
def test_distinct(values: list[str], names: list[str]) -> None:
    assert distinct(values) == names


BLOCK = Decision(Action.BLOCK, apps=("tiktok",), phase=Phase.FULL, rule="domain:tiktok.com")
LOG = Decision(Action.LOG, apps=("tiktok",), phase=Phase.DOWNLOADS, rule="domain:tiktok.com")

STRICTEST_CASES = [
    pytest.param([ALLOW, LOG, BLOCK], 2, id="block-wins"),
    pytest.param([LOG, ALLOW], 0, id="log-over-allow"),
    pytest.param([BLOCK, BLOCK], 0, id="tie-first-the-target"),
]


@pytest.mark.parametrize("decisions,winner", STRICTEST_CASES)
def test_strictest(decisions: list[Decision], winner: int) -> None:
    verdicts = [Verdict(d, Observation.sni(f"n{i}.example", None)) for i, d in enumerate(decisions)]
    assert strictest(verdicts) is verdicts[winner]


EVENT_ID_CASES = [
    pytest.param(ALLOW, False, id="allow-no-event"),
    pytest.param(LOG, True, id="log-has-its-event-id"),
    pytest.param(BLOCK, True, id="block-has-its-event-id"),
]


@pytest.mark.parametrize("decision,has_id", EVENT_ID_CASES)
def test_a_logged_verdict_gets_its_event_id_when_made(decision: Decision, has_id: bool) -> None:
    v = new_verdict(decision, Observation.sni("www.tiktok.com", "10.0.0.1"))
    assert (v.event_id is not None) is has_id and v.logged is has_id
    later = Verdict(ALLOW, v.observation).with_decision(decision)
    assert (later.event_id is not None) is has_id


def test_summary_is_what_mitmproxy_can_save() -> None:
    v = new_verdict(BLOCK, Observation.sni("www.tiktok.com", "10.0.0.1"), response="closed")
    summary = v.summary()
    assert tnetstring.loads(tnetstring.dumps(summary)) == summary
    assert summary == {"action": "block", "rule": "domain:tiktok.com", "apps": ["tiktok"], "phase": "full",
                       "value": "www.tiktok.com", "response": "closed", "event_id": v.event_id}
    with pytest.raises(ValueError, match="unserializable"):
        tnetstring.dumps({"v": v})  # why the live verdict never stays in flow.metadata
