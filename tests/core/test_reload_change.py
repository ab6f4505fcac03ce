"""What the holder says when the day moves an app's phase, and what it records of a reload.

The clock crossing a schedule date logs the apps that moved (``app phases
changed on DAY: TikTok downloads -> full``); ``holder.last_change`` keeps the
last reload's counts.  The reload line itself is tested through a real
resolver process in tests/dns/test_reload_messages.py.
"""

from __future__ import annotations

import datetime as dt
import logging

import pytest

from runtime.holder import PolicyHolder
from tests.core.conftest import POLICY_FILE
from tests.core.test_holder import Clock

# (id, the clock before, the clock after, the line logged, or None when nothing moved)
CASES = [
    pytest.param(dt.datetime(2020, 11, 11, 23, 59, tzinfo=dt.UTC),
                 dt.datetime(2020, 11, 12, 0, 1, tzinfo=dt.UTC),
                 "app phases changed on 2020-11-12: TikTok downloads -> full", id="tiktok-full"),
    pytest.param(dt.datetime(2020, 9, 19, 12, tzinfo=dt.UTC), dt.datetime(2020, 9, 20, 12, tzinfo=dt.UTC),
                 "app phases changed on 2020-09-20: TikTok none -> downloads; WeChat none -> full",
                 id="two-apps"),
    pytest.param(dt.datetime(2020, 11, 13, 12, tzinfo=dt.UTC), dt.datetime(2020, 11, 14, 12, tzinfo=dt.UTC),
                 None, id="nothing-moved"),
]


@pytest.mark.parametrize(("before", "after", "line"), CASES)
def test_a_new_day_names_the_apps_that_moved(before: dt.datetime, after: dt.datetime, line: str | None,
                                             caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock(before)
    h = PolicyHolder(POLICY_FILE, clock=clock)
    clock.now = after
    with caplog.at_level(logging.INFO, logger="egress_filter.policy"):
        assert h.refresh() is (line is not None)
    said = [r.getMessage() for r in caplog.records
            if r.name == "egress_filter.policy" and r.levelno == logging.INFO]
    assert said == ([line] if line else [])


def test_the_last_reload_is_kept() -> None:
    h = PolicyHolder(POLICY_FILE, at=dt.date(2020, 11, 13))
    assert h.last_change is None
    assert h.reload() is True
    change = h.last_change
    assert change is not None
    assert change.apps == (3, 3) and change.rules[0] == change.rules[1] > 0 and change.moved == ()
    assert change.describe() == f"apps 3 -> 3, rules {change.rules[0]} -> {change.rules[1]}; no phase moved"
