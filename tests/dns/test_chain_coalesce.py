"""The coalescing link alone: who leads, who waits, who is shed, and who is answered."""

from __future__ import annotations

import pytest

from dns_blocker.chain.coalesce import Coalescer, Join


@pytest.mark.parametrize(("limit", "asks", "want", "settled"), [
    pytest.param(4, [b"a", b"a", b"a"], [Join.LEAD, Join.WAIT, Join.WAIT], {b"a": [0, 1, 2]},
                 id="one-question"),
    pytest.param(4, [b"a", b"b", b"a"], [Join.LEAD, Join.LEAD, Join.WAIT], {b"a": [0, 2], b"b": [1]},
                 id="two-questions"),
    pytest.param(1, [b"a", b"b", b"a"], [Join.LEAD, Join.SHED, Join.WAIT], {b"a": [0, 2]},
                 id="full-sheds-new"),
    pytest.param(0, [b"a"], [Join.SHED], {}, id="no-room"),
])
def test_join_and_settle(limit: int, asks: list[bytes], want: list[Join],
                         settled: dict[bytes, list[int]]) -> None:
    c: Coalescer[int] = Coalescer(limit)
    got = [c.join(key, i) for i, key in enumerate(asks)]
    assert got == want
    assert len(c) == len(settled)
    for key, askers in settled.items():
        assert c.settle(key, askers[0]) == askers
    assert len(c) == 0
    assert c.join(b"a", 99) is (Join.LEAD if limit else Join.SHED)  # settled questions lead again


def test_settle_of_a_key_not_waiting_answers_the_first_only() -> None:
    c: Coalescer[str] = Coalescer()
    assert c.settle(b"gone", "first") == ["first"]
