"""Replay and tshark must read the same names from the same captures.

tshark is required (CI installs it); a missing tshark fails these tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicyView

from .cases import CASES, Case
from .conftest import need, replay_all
from .tshark import replay_names, tshark_names

# Cases whose files are damaged on purpose: tshark and replay both stop, but
# where exactly a dissector gives up on a junk packet is not a shared contract.
CLEAN = [c for c in CASES if not c.damage]


@pytest.mark.parametrize("case", CLEAN, ids=[c.id for c in CLEAN])
def test_names_match_tshark(case: Case, view: PolicyView, tmp_path: Path) -> None:
    tshark = need("tshark")
    path = case.build(tmp_path)
    verdicts, _ = replay_all(view, path)
    ours = replay_names(verdicts)
    theirs = tshark_names(tshark, path)
    for names in theirs.values():
        assert not names & case.beyond_tshark
    assert {f: names - case.beyond_tshark for f, names in ours.items()} == theirs
    assert case.beyond_tshark <= set().union(*ours.values())
    assert any(ours.values()) or case.id == "tls-without-sni"
