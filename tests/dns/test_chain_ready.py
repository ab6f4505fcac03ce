"""The ready-answer link alone: a kept answer is found again by any client of the
same group, under the same view, until it stops being exact; never by another
group, under another view, or after a flush; and its tables stay bounded."""

from __future__ import annotations

import pytest

from dns_blocker.chain.ready import ReadyAnswers
from dns_blocker.chain.telemetry import Served, Tally
from dns_blocker.wire import parse_query
from policies import ALLOW, PolicyView, load_policy_text

from .test_chain_verdict import EXEMPT, PLAIN, POLICY

OTHER_PLAIN = "192.0.2.8"  # a second client of PLAIN's group
QUERY = b"\x12\x34" + bytes.fromhex("01000001000000000000") + b"\x03www\x07example\x00\x00\x01\x00\x01"
ANSWER = b"\x12\x34" + b"answer-bytes"


def view() -> PolicyView:
    return load_policy_text(POLICY).view()


def tally() -> Tally:
    q = parse_query(QUERY)
    assert q is not None
    return Tally(Served.CACHED, ALLOW, q, "NOERROR")


# (who kept it, who asks, same view?, seconds later (kept until 10.0), flushed?) -> found?
@pytest.mark.parametrize(("keeper", "asker", "same_view", "now", "flushed", "found"), [
    pytest.param(PLAIN, PLAIN, True, 9.0, False, True, id="same-client"),
    pytest.param(PLAIN, OTHER_PLAIN, True, 9.0, False, False, id="unseen-client-of-group"),
    pytest.param(PLAIN, EXEMPT, True, 9.0, False, False, id="other-group"),
    pytest.param(PLAIN, PLAIN, False, 9.0, False, False, id="other-view"),
    pytest.param(PLAIN, PLAIN, True, 10.0, False, False, id="no-longer-exact"),
    pytest.param(PLAIN, PLAIN, True, 9.0, True, False, id="flushed"),
])
def test_get(keeper: str, asker: str, same_view: bool, now: float, flushed: bool, found: bool) -> None:
    v = view()
    ready = ReadyAnswers()
    t = tally()
    ready.keep(QUERY, ANSWER, 10.0, t, keeper, v)
    if flushed:
        ready.clear()
    hot = ready.get(b"\x99\x99" + QUERY[2:], asker, v if same_view else view(), now)
    if found:
        assert hot is not None
        assert (hot.answer, hot.tally, hot.until) == (ANSWER[2:], t, 10.0)
    else:
        assert hot is None


def test_a_client_of_the_group_that_was_answered_once_shares_the_table() -> None:
    v = view()
    ready = ReadyAnswers()
    ready.keep(QUERY, ANSWER, 10.0, None, PLAIN, v)
    # the second client joins the group's table
    ready.keep(b"\0\0other", b"\0\0x", 10.0, None, OTHER_PLAIN, v)
    hot = ready.get(QUERY, OTHER_PLAIN, v, 0.0)
    assert hot is not None and hot.answer == ANSWER[2:]
    assert len(ready.by_group) == 1


def test_a_new_view_empties_the_tables_when_it_keeps() -> None:
    old, new = view(), view()
    ready = ReadyAnswers()
    ready.keep(QUERY, ANSWER, 10.0, None, PLAIN, old)
    ready.keep(b"\0\0other", b"\0\0x", 10.0, None, PLAIN, new)
    assert len(ready) == 1
    assert ready.get(QUERY, PLAIN, new, 0.0) is None


@pytest.mark.parametrize(("limit", "clients_limit", "keeps", "answers", "clients"), [
    pytest.param(64, 8, 200, 64, 1, id="answers-per-group-bounded"),
    pytest.param(1, 8, 5, 1, 1, id="limit-of-one"),
    pytest.param(1000, 4, 10, 10, 2, id="clients-bounded"),
])
def test_bounded(limit: int, clients_limit: int, keeps: int, answers: int, clients: int) -> None:
    v = view()
    ready = ReadyAnswers(limit, clients_limit)
    for i in range(keeps):
        client = f"192.0.2.{i % 10 + 1}" if clients > 1 else PLAIN
        ready.keep(b"\0\0" + i.to_bytes(4, "big"), b"\0\0a", 10.0, None, client, v)
    assert len(ready) == answers
    assert len(ready.by_client) <= clients_limit
    assert ready.get(b"\0\0" + (keeps - 1).to_bytes(4, "big"),
                     f"192.0.2.{(keeps - 1) % 10 + 1}" if clients > 1 else PLAIN, v, 0.0) is not None
