"""The pause in the core: ``PolicyHolder.pause`` swaps in a view where every group
monitors and each downgraded reason says who paused and until when; its end
(resume, the deadline, a reload to ``allow_pause: false``) swaps enforcement back.
``settings.allow_pause`` is validated at load; durations parse or say why not."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Action, PolicyError
from runtime.control import parse_duration
from runtime.holder import MAX_PAUSE, Actor, Pause, PauseRefused, PolicyHolder
from tests.core.conftest import MINIMAL_APP
from tests.core.test_holder import wait_for, write

ME = Actor(1000, "anna")
NAME = "x.demo.example"


def text(settings: str = "") -> str:
    return "version: 1\n" + settings + "apps:\n" + MINIMAL_APP + "    domains: [demo.example]\n"


@pytest.fixture
def made(tmp_path: Path) -> Iterator[tuple[PolicyHolder, list[Pause], Path]]:
    path = tmp_path / "policy.yaml"
    write(path, text())
    h = PolicyHolder(path, at=dt.date(2021, 1, 1))
    told: list[Pause] = []
    h.subscribe_pause(told.append)
    try:
        yield h, told, path
    finally:
        h.stop()


def action(h: PolicyHolder) -> Action:
    return h.view.decide_name(NAME).action


@pytest.mark.parametrize("end, how", [
    pytest.param("expire", "expired", id="runs-out"),
    pytest.param("resume", "resumed", id="resumed"),
    pytest.param("replace", "replaced", id="replaced-by-a-new-pause"),
    pytest.param("reload", "policy", id="reload-to-allow-pause-false"),
])
def test_pause_and_its_end(made: tuple[PolicyHolder, list[Pause], Path], end: str, how: str) -> None:
    h, told, path = made
    notices: list[str] = []
    h.subscribe(notices.append)
    assert action(h) is Action.BLOCK
    p = h.pause(0.5 if end == "expire" else 600, Actor(1000, "anna", "dashboard token holder at 127.0.0.1"))
    d = h.view.decide_name(NAME)
    assert d.action is Action.LOG and d.enforced is Action.BLOCK
    assert d.reason.startswith(f"{p.reason}: would be blocked, logged instead; ")
    assert "by dashboard token holder at 127.0.0.1 via uid 1000 (anna)" in p.reason
    assert h.view.mode.value == "monitor" and h.paused is p and notices == ["pause"]
    if end == "expire":
        assert wait_for(lambda: action(h) is Action.BLOCK, 5)
    elif end == "resume":
        assert h.resume(ME) is not None
    elif end == "replace":
        h.pause(60, ME)
    else:
        write(path, text("settings:\n  allow_pause: false\n"))
        assert h.reload()
    assert wait_for(lambda: len(told) >= 2, 5)
    assert told[0] is p and told[1].ended == how
    assert told[1].ended_by == (ME if end in ("resume", "replace") else None)
    if end == "replace":
        assert action(h) is Action.LOG and h.paused is told[2]
    else:
        assert action(h) is Action.BLOCK and h.paused is None and h.view.mode.value == "enforce"


@pytest.mark.parametrize("seconds, settings, message", [
    pytest.param(60, "settings:\n  allow_pause: false\n", "settings.allow_pause: false", id="disabled"),
    pytest.param(0, "", "more than 0 s", id="zero"),
    pytest.param(-1, "", "more than 0 s", id="negative"),
    pytest.param(MAX_PAUSE + 1, "", "at most 24 h", id="over-the-maximum"),
])
def test_pause_refused(tmp_path: Path, seconds: float, settings: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text(settings))
    h = PolicyHolder(path, at=dt.date(2021, 1, 1))
    with pytest.raises(PauseRefused, match=message):
        h.pause(seconds, ME)
    assert h.paused is None and action(h) is Action.BLOCK
    assert h.resume(ME) is None, "nothing to resume"


@pytest.mark.parametrize("value, ok", [
    pytest.param("true", True, id="true"),
    pytest.param("false", False, id="false"),
    pytest.param("yes please", None, id="not-a-boolean"),
    pytest.param("[1]", None, id="a-list"),
])
def test_allow_pause_is_validated(tmp_path: Path, value: str, ok: bool | None) -> None:
    path = tmp_path / "policy.yaml"
    write(path, text(f"settings:\n  allow_pause: {value}\n"))
    if ok is None:
        with pytest.raises(PolicyError, match=r"settings\.allow_pause"):
            PolicyHolder(path)
    else:
        assert PolicyHolder(path).policy.settings.allow_pause is ok


@pytest.mark.parametrize("given, seconds", [
    pytest.param("90", 90, id="bare-seconds"),
    pytest.param("90s", 90, id="seconds"),
    pytest.param("5m", 300, id="minutes"),
    pytest.param("1h30m", 5400, id="hours-and-minutes"),
    pytest.param("1.5h", 5400, id="fraction"),
    pytest.param("24h", 86400, id="the-maximum"),
    pytest.param("1d", 86400, id="one-day"),
    pytest.param("0m", None, id="zero"),
    pytest.param("25h", None, id="over-the-maximum"),
    pytest.param("5 m", None, id="space"),
    pytest.param("", None, id="empty"),
    pytest.param("m", None, id="unit-alone"),
])
def test_parse_duration(given: str, seconds: float | None) -> None:
    if seconds is None:
        with pytest.raises(ValueError):
            parse_duration(given)
    else:
        assert parse_duration(given) == seconds
