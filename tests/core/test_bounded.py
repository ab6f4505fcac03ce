"""The bounded memo (policies/bounded.py): never past its limit, every emptying counted."""

from __future__ import annotations

import pytest

from policies.bounded import BoundedMemo

# (limit, keys put in order) → (entries left, resets, dropped)
CASES = [
    pytest.param(3, ["a", "b", "c"], ["a", "b", "c"], 0, 0, id="up-to-the-limit"),
    pytest.param(3, ["a", "b", "c", "d"], ["d"], 1, 3, id="full-empties-then-stores"),
    pytest.param(3, ["a", "b", "c", "a"], ["a", "b", "c"], 0, 0, id="overwrite-when-full-keeps-all"),
    pytest.param(2, ["a", "b", "c", "d", "e"], ["e"], 2, 4, id="two-resets"),
    pytest.param(1, ["a", "b", "c"], ["c"], 2, 2, id="limit-one"),
]


@pytest.mark.parametrize("limit,keys,left,resets,dropped", CASES)
def test_put(limit: int, keys: list[str], left: list[str], resets: int, dropped: int) -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(limit)
    for i, key in enumerate(keys):
        assert memo.put(key, i) == i
        assert len(memo) <= limit
    assert sorted(memo) == left
    assert (memo.resets, memo.dropped) == (resets, dropped)
    assert memo[keys[-1]] == len(keys) - 1


@pytest.mark.parametrize("limit", [pytest.param(0, id="zero"), pytest.param(-1, id="negative")])
def test_a_memo_holds_something(limit: int) -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        BoundedMemo(limit)
