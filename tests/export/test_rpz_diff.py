"""``dns_blocker.rpz.difference``: the IXFR difference of two zone versions,
computed a hash bucket at a time, equals the plain set difference, in each
version's order, whatever the number of passes."""

from __future__ import annotations

import pytest

from dns_blocker import rpz
from policies import load_policy_text

from . import cases


def version(text: str) -> rpz.ZoneVersion:
    return rpz.build_version(load_policy_text(text, "diff.yaml"), cases.FULL_DAY, None, "default", None)


EDITS = [  # (edit of the policy text, records removed?, records added?)
    pytest.param(lambda t: t.replace("domains: [chat.test]", "domains: [chat.test, fresh.test]"), False, True,
                 id="added"),
    pytest.param(lambda t: t.replace(", cdn.video.test]", "]"), True, False, id="removed"),
    pytest.param(lambda t: t.replace("domains: [ok.video.test]", "domains: [ok2.video.test]"), True, True,
                 id="replaced"),
    pytest.param(lambda t: t, False, False, id="unchanged"),
]


@pytest.mark.parametrize("bucket", [pytest.param(1_000_000, id="one-pass"), pytest.param(7, id="passes")])
@pytest.mark.parametrize(("edit", "some_removed", "some_added"), EDITS)
def test_difference_is_the_set_difference(monkeypatch: pytest.MonkeyPatch, edit: object, some_removed: bool,
                                          some_added: bool, bucket: int) -> None:
    monkeypatch.setattr(rpz, "DIFF_BUCKET", bucket)
    edited = edit(cases.POLICY)  # type: ignore[operator]
    assert (edited != cases.POLICY) == (some_removed or some_added)
    old, new = version(cases.POLICY), version(edited)
    removed, added = rpz.difference(old, new)
    before, after = list(old.records()), list(new.records())
    assert removed == tuple(r for r in before if r not in set(after))
    assert added == tuple(r for r in after if r not in set(before))
    assert (bool(removed), bool(added)) == (some_removed, some_added)
