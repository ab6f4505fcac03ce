"""The opt-in list groups (``parent_company``, ``ads_tracking``) are named when they decided (issue 14).

A real resolver process whose policy switches both groups on (the policy
of tests/core/test_explain_summary.py), a loopback
upstream, real questions with EDNS0: the EDE EXTRA-TEXT of a block that a
group's rule decided names the group, a block the app's own rule decided
does not (even where a group claims the name too), and a disabled group's
name is forwarded.  The event carries ``egress.list_group`` and ``explain``
says the same for the same name.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from egress_filter.cli import main
from tests.core.test_explain_summary import GROUPS_POLICY

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess, ede, rcode

pytestmark = pytest.mark.e2e

Start = Callable[..., ResolverProcess]

OWN = "egress-filter: blocked app Chat (chat), phase full"
PARENT, ADS = f"{OWN}, opt-in group parent_company", f"{OWN}, opt-in group ads_tracking"

# (name, EXTRA-TEXT or None when forwarded, egress.list_group)
CASES = [
    pytest.param("www.parent.example", PARENT, "parent_company", id="parent-company"),
    pytest.param("ads.parent.example", ADS, "ads_tracking", id="ads-tracking"),
    pytest.param("img.chat.example", OWN, None, id="own-rule"),
    pytest.param("x.both.example", OWN, None, id="own-rule-beats-group"),
    pytest.param("www.off.example", None, None, id="disabled-group-forwarded"),
]


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    p = tmp_path / "groups.yaml"
    p.write_text(GROUPS_POLICY, encoding="utf-8")
    return p


@pytest.mark.parametrize(("name", "text", "group"), CASES)
def test_the_group_that_decided_is_in_the_ede_and_the_event(
        name: str, text: str | None, group: str | None, policy: Path, resolver: Start, authority: Authority,
        capsys: pytest.CaptureFixture[str]) -> None:
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    m = r.ask(name, "A", edns=0)
    if text is None:
        assert ede(m) == [] and authority.count(name) == 1
        return
    assert rcode(m) == "NXDOMAIN" and authority.count(name) == 0
    assert ede(m) == [(15, text)]
    (event,) = r.events(expect=1)
    assert event["egress"].get("list_group") == group
    assert (f"through the opt-in group {group}" in event["event"]["reason"]) is (group is not None)
    assert main(["explain", name, "--policy", str(policy), "--at", TEST_DAY, "--json"]) == 0
    explained = json.loads(capsys.readouterr().out)
    assert (explained["list_group"], explained["reason"]) == (group, event["event"]["reason"])


def test_one_template_per_group(policy: Path, resolver: Start, authority: Authority) -> None:
    """Blocks of one app and phase share a ready answer only when the same group decided them."""
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    asked = [("a.chat.example", OWN), ("a.parent.example", PARENT), ("b.chat.example", OWN),
             ("b.parent.example", PARENT), ("ads.parent.example", ADS)]
    for name, text in asked:
        for tcp in (False, True):
            assert ede(r.ask(name, "A", edns=0, tcp=tcp)) == [(15, text)], (name, tcp)
