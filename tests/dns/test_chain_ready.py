"""The ready-answer link alone, against a fake transport and fake telemetry (the
next links): a kept answer is sent again, with the asker's ID, to any client of
the same group that was answered before, under the same view, until it stops
being exact, and counted each time; never to another group, under another view,
or after a flush; and its tables stay bounded."""

from __future__ import annotations

from typing import Any

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


class Fakes:
    """The view source, the clock, the transport's sendto and the telemetry, recording."""

    def __init__(self) -> None:
        self.view = view()
        self.now = 0.0
        self.sent: list[tuple[bytes, Any]] = []
        self.served: list[tuple[Tally, str, int]] = []
        self.arrived: list[str] = []

    def ready(self, counts_names: bool = False, limit: int = 1000, clients_limit: int = 1000) -> ReadyAnswers:
        return ReadyAnswers(self, lambda t, c, p: self.served.append((t, c, p)),
                            self.arrived.append if counts_names else None, limit, clients_limit,
                            lambda: self.now)

    def sendto(self, data: bytes, addr: Any) -> None:
        self.sent.append((data, addr))


def tally() -> Tally:
    q = parse_query(QUERY)
    assert q is not None
    return Tally(Served.CACHED, ALLOW, q, "NOERROR")


# (who kept it, who asks, same view?, now (kept until 10.0), flushed?, tally kept?) -> answered?
@pytest.mark.parametrize(("keeper", "asker", "same_view", "now", "flushed", "counted", "found"), [
    pytest.param(PLAIN, PLAIN, True, 9.0, False, True, True, id="same-client"),
    pytest.param(PLAIN, PLAIN, True, 9.0, False, False, True, id="same-client-silent"),
    pytest.param(PLAIN, OTHER_PLAIN, True, 9.0, False, True, False, id="unseen-client-of-group"),
    pytest.param(PLAIN, EXEMPT, True, 9.0, False, True, False, id="other-group"),
    pytest.param(PLAIN, PLAIN, False, 9.0, False, True, False, id="other-view"),
    pytest.param(PLAIN, PLAIN, True, 10.0, False, True, False, id="no-longer-exact"),
    pytest.param(PLAIN, PLAIN, True, 9.0, True, True, False, id="flushed"),
])
def test_answer(keeper: str, asker: str, same_view: bool, now: float, flushed: bool, counted: bool,
                found: bool) -> None:
    f = Fakes()
    ready = f.ready(counts_names=True)
    t = tally() if counted else None
    ready.keep(QUERY, ANSWER, 10.0, t, keeper, f.view)
    if flushed:
        ready.clear()
    if not same_view:
        f.view = view()
    f.now = now
    addr = (asker, 5353)
    assert ready.answer(b"\x99\x99" + QUERY[2:], addr, f.sendto) is found
    if found:
        assert f.sent == [(b"\x99\x99" + ANSWER[2:], addr)]
        assert f.served == ([(t, asker, 5353)] if counted else [])
        assert f.arrived == [asker]
    else:
        assert (f.sent, f.served, f.arrived) == ([], [], [])  # the chain (handle) takes it, and counts it


def test_a_client_of_the_group_that_was_answered_once_shares_the_table() -> None:
    f = Fakes()
    ready = f.ready()
    ready.keep(QUERY, ANSWER, 10.0, None, PLAIN, f.view)
    # the second client joins the group's table
    ready.keep(b"\0\0other", b"\0\0x", 10.0, None, OTHER_PLAIN, f.view)
    assert ready.answer(QUERY, (OTHER_PLAIN, 1), f.sendto)
    assert f.sent == [(ANSWER, (OTHER_PLAIN, 1))]
    assert len(ready.by_group) == 1


def test_a_new_view_empties_the_tables_when_it_keeps() -> None:
    f = Fakes()
    ready = f.ready()
    ready.keep(QUERY, ANSWER, 10.0, None, PLAIN, f.view)
    f.view = view()
    ready.keep(b"\0\0other", b"\0\0x", 10.0, None, PLAIN, f.view)
    assert len(ready) == 1
    assert not ready.answer(QUERY, (PLAIN, 1), f.sendto)


@pytest.mark.parametrize(("limit", "clients_limit", "keeps", "clients", "answers"), [
    pytest.param(64, 8, 200, 1, 64, id="answers-per-group-bounded"),
    pytest.param(1, 8, 5, 1, 1, id="limit-of-one"),
    pytest.param(1000, 4, 10, 10, 10, id="clients-bounded"),
])
def test_bounded(limit: int, clients_limit: int, keeps: int, clients: int, answers: int) -> None:
    f = Fakes()
    ready = f.ready(limit=limit, clients_limit=clients_limit)
    for i in range(keeps):
        ready.keep(b"\0\0" + i.to_bytes(4, "big"), b"\0\0a", 10.0, None, f"192.0.2.{i % clients + 1}", f.view)
    assert len(ready) == answers
    assert len(ready.by_client) <= clients_limit
    last = f"192.0.2.{(keeps - 1) % clients + 1}"
    assert ready.answer(b"\0\0" + (keeps - 1).to_bytes(4, "big"), (last, 1), f.sendto)
