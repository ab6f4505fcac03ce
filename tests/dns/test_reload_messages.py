"""A reload says what it changed; a failed one says it kept the last good policy (issue 14).

A real ``egress-filter dns`` process, its policy edited on disk, then SIGHUP:
its stderr gets one line naming the apps and rules before -> after and every
app whose phase moved (with its client group when the policy has groups),
and its event log gets the same as a ``policy-reload`` event.  A broken
edit gets ``policy reload failed, keeping the last good policy`` and a
``policy-reload-failed`` event, and the old verdicts keep being served.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_holder import wait_for

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess, policy_text, rcode

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]

EXTRA_APP = """\
  - id: extra
    name: Extra
    owner: Extra Co
    legal_basis: {order: "EO 13943", citation: "85 FR 48641"}
    schedule:
      - {from: 2020-09-20, phase: full, source: eo13943}
    domains: [extra.test, extra2.test]
"""

# Version 2 with a client group of its own: the lab follows rule-b, everyone else order-a.
GROUPED = """\
version: 2
timezone: UTC
frameworks:
  order-a:
    title: Order A
    kind: executive_order
    schedule:
      tiktok: [{{from: 2020-09-20, phase: full, source: "Order A"}}]
      wechat: [{{from: 2020-09-20, phase: downloads, source: "Order A"}}]
  rule-b:
    title: Rule B
    kind: company_rule
    schedule:
      wechat: [{{from: {lab_from}, phase: full, source: "memo"}}]
clients:
  default: {{frameworks: [order-a]}}
  lab: {{networks: [127.0.0.9/32], frameworks: [order-a, rule-b]}}
apps:
  - {{id: tiktok, name: TikTok, owner: ByteDance, domains: [tiktok.test]}}
  - {{id: wechat, name: WeChat, owner: Tencent, domains: [wechat.test]}}
"""


def v1(**kw: Any) -> str:
    return policy_text(**kw)


# (id, the policy first, the policy after the edit, the line's text after "from PATH: ", the reload detail)
CASES = [
    pytest.param(v1(), v1(wechat_full="2020-12-01"),
                 "apps 2 -> 2, rules 4 -> 4; phases moved: WeChat downloads -> full",
                 {"apps": {"before": 2, "after": 2}, "rules": {"before": 4, "after": 4}, "added": [],
                  "removed": [], "moved": [{"group": "default", "app": "wechat", "before": "downloads",
                                            "after": "full"}]}, id="phase-moved"),
    pytest.param(v1(), v1().replace("domains: [wechat.test]", "domains: [wechat.test, weixin.test, wx.test]"),
                 "apps 2 -> 2, rules 4 -> 6; no phase moved",
                 {"apps": {"before": 2, "after": 2}, "rules": {"before": 4, "after": 6}, "added": [],
                  "removed": [], "moved": []}, id="rules-added"),
    pytest.param(v1(), v1() + EXTRA_APP, "apps 2 -> 3, rules 4 -> 6, added extra; no phase moved",
                 {"apps": {"before": 2, "after": 3}, "rules": {"before": 4, "after": 6}, "added": ["extra"],
                  "removed": [], "moved": []}, id="app-added"),
    pytest.param(GROUPED.format(lab_from="2021-06-01"), GROUPED.format(lab_from="2020-12-01"),
                 "apps 2 -> 2, rules 2 -> 2; phases moved: group lab: WeChat downloads -> full",
                 {"apps": {"before": 2, "after": 2}, "rules": {"before": 2, "after": 2}, "added": [],
                  "removed": [], "moved": [{"group": "lab", "app": "wechat", "before": "downloads",
                                            "after": "full"}]}, id="group-phase-moved"),
]


def write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)  # atomic: a reader never sees half a file


def reload_events(r: ResolverProcess) -> list[dict[str, Any]]:
    return [e for e in r.events() if str(e["event"]["action"]).startswith("policy-reload")]


@pytest.mark.parametrize(("first", "then", "line", "detail"), CASES)
def test_a_reload_says_what_changed(first: str, then: str, line: str, detail: dict[str, Any], tmp_path: Path,
                                    resolver: Start, authority: Authority) -> None:
    policy = tmp_path / "policy.yaml"
    write(policy, first)
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--reload-interval", "3600")
    write(policy, then)
    r.signal(signal.SIGHUP)
    want = f"egress-filter dns: policy reloaded from {policy}: {line}"
    assert wait_for(lambda: want in r.stderr().splitlines()), r.stderr()
    assert wait_for(lambda: len(reload_events(r)) == 1)
    (ev,) = reload_events(r)
    assert (ev["event"]["action"], ev["event"]["outcome"], ev["message"]) == (
        "policy-reload", "success", f"policy reloaded from {policy}: {line}")
    assert ev["egress"]["reload"] == detail and ev["egress"]["component"] == "dns"
    assert ev["egress"]["policy"]["source"] == str(policy)


def test_a_failed_reload_keeps_the_last_good_policy_and_says_so(tmp_path: Path, resolver: Start,
                                                                  authority: Authority) -> None:
    policy = tmp_path / "policy.yaml"
    write(policy, v1())
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--reload-interval", "3600")
    assert rcode(r.ask("www.tiktok.test")) == "NXDOMAIN"
    write(policy, "version: 1\napps: [oops\n")
    r.signal(signal.SIGHUP)
    assert wait_for(lambda: "policy reload failed, keeping the last good policy" in r.stderr()), r.stderr()
    assert f"keeping the last good policy ({policy}, digest " in r.stderr()
    assert wait_for(lambda: len(reload_events(r)) == 1)
    (ev,) = reload_events(r)
    assert (ev["event"]["action"], ev["event"]["outcome"]) == ("policy-reload-failed", "failure")
    assert ev["message"].startswith(f"policy reload failed, keeping the last good policy ({policy})")
    assert ev["egress"]["reload"]["problems"] and str(policy) in ev["egress"]["reload"]["problems"][0]
    assert rcode(r.ask("www.tiktok.test")) == "NXDOMAIN", "the last good policy still decides"
    assert "policy reloaded" not in r.stderr()
