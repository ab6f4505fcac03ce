"""PolicyHolder: hot reload on file change and SIGHUP, last good policy kept
on a bad file, atomic swaps, and phase-change notices driven by a clock."""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from policies import Action, Phase, PolicyError
from runtime.holder import PolicyHolder
from tests.core.conftest import MINIMAL_APP, POLICY_FILE


def policy_text(domain: str) -> str:
    return "version: 1\napps:\n" + MINIMAL_APP + f"    domains: [{domain}]\n    lists: [names.txt]\n"


def write(path: Path, text: str) -> None:
    """Write and move the mtime on, so that a change is visible whatever the
    file system's timestamp granularity."""
    old = path.stat().st_mtime_ns if path.exists() else 0
    path.write_text(text, encoding="utf-8")
    new = max(old + 10_000_000, time.time_ns())
    os.utime(path, ns=(new, new))


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    policy, names = tmp_path / "policy.yaml", tmp_path / "names.txt"
    write(names, "listed-a.example\n")
    write(policy, policy_text("a.example"))
    return policy, names


@pytest.fixture
def holder(files: tuple[Path, Path]) -> Iterator[PolicyHolder]:
    h = PolicyHolder(files[0], at=dt.date(2021, 1, 1))
    try:
        yield h
    finally:
        h.stop()


def blocked(h: PolicyHolder, name: str) -> bool:
    return h.view.decide_name(name).action is Action.BLOCK


def test_reload_when_the_policy_file_changes(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    heard: list[str] = []
    holder.subscribe(heard.append)
    holder.start(interval=0.05)
    assert blocked(holder, "x.a.example") and not blocked(holder, "x.b.example")
    write(files[0], policy_text("b.example"))
    assert wait_for(lambda: blocked(holder, "x.b.example"))
    assert not blocked(holder, "x.a.example")
    assert "reload" in heard and holder.reloads == 1


def test_reload_when_a_list_file_changes(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    holder.start(interval=0.05)
    assert not blocked(holder, "listed-b.example")
    write(files[1], "listed-a.example\nlisted-b.example\n")
    assert wait_for(lambda: blocked(holder, "listed-b.example"))


def test_reload_on_sighup(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    previous = signal.getsignal(signal.SIGHUP)
    try:
        holder.install_sighup()  # no watcher thread: only the signal can reload
        write(files[0], policy_text("c.example"))
        sender = threading.Thread(target=os.kill, args=(os.getpid(), signal.SIGHUP))
        sender.start()
        sender.join()
        assert wait_for(lambda: blocked(holder, "c.example"))
        assert holder.reloads == 1
    finally:
        signal.signal(signal.SIGHUP, previous)


BAD_EDITS = [
    pytest.param("version: 1\napps: [\n", "policy.yaml:3: (yaml): syntax error", id="yaml-syntax"),
    pytest.param(
        policy_text("a.example") + "    colour: red\n", "apps[demo].colour: unknown key", id="unknown-key"
    ),
    pytest.param(
        policy_text("a.example").replace("names.txt", "gone.txt"),
        "list file 'gone.txt' cannot be read",
        id="missing-list",
    ),
]


@pytest.mark.parametrize(("text", "message"), BAD_EDITS)
def test_bad_file_keeps_the_last_good_policy(
    holder: PolicyHolder, files: tuple[Path, Path], text: str, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[str] = []
    holder.subscribe(heard.append)
    good = holder.view
    write(files[0], text)
    with caplog.at_level(logging.ERROR, logger="egress_filter.policy"):
        assert holder.reload() is False
    assert holder.view is good and blocked(holder, "a.example")
    assert isinstance(holder.last_error, PolicyError) and message in str(holder.last_error)
    assert any(
        "keeping the last good policy" in r.getMessage() and message in r.getMessage() for r in caplog.records
    )
    assert heard == []
    assert not holder.changed_on_disk()  # the bad file is not retried every tick
    write(files[0], policy_text("d.example"))
    assert holder.changed_on_disk()
    assert holder.reload() is True
    assert holder.last_error is None and blocked(holder, "d.example") and heard == ["reload"]


def test_first_load_of_a_bad_file_raises(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\n")
    with pytest.raises(PolicyError):
        PolicyHolder(bad)


def test_swaps_are_atomic_for_readers(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    """A reader that takes one view sees one policy: never half of each."""
    stop = threading.Event()
    seen: set[tuple[bool, bool]] = set()
    failures: list[BaseException] = []

    def read() -> None:
        try:
            while not stop.is_set():
                view = holder.view
                seen.add((view.decide_name("x.a.example").blocked, view.decide_name("x.b.example").blocked))
        except BaseException as exc:  # surfaced below
            failures.append(exc)

    readers = [threading.Thread(target=read) for _ in range(3)]
    for r in readers:
        r.start()
    try:
        for i in range(30):
            write(files[0], policy_text("b.example" if i % 2 == 0 else "a.example"))
            assert holder.reload()
    finally:
        stop.set()
        for r in readers:
            r.join(10)
    assert failures == []
    assert seen <= {(True, False), (False, True)} and len(seen) == 2


class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def test_phase_change_when_the_clock_crosses_a_schedule_date() -> None:
    clock = Clock(dt.datetime(2020, 11, 11, 23, 59, 50, tzinfo=dt.UTC))
    h = PolicyHolder(POLICY_FILE, clock=clock)
    heard: list[str] = []
    h.subscribe(heard.append)
    assert h.view.at == dt.date(2020, 11, 11)
    assert h.view.phases["tiktok"].phase is Phase.DOWNLOADS
    assert h.view.decide_name("www.tiktok.com").action is Action.LOG
    assert h.refresh() is False and heard == []  # same day
    clock.now = dt.datetime(2020, 11, 12, 0, 0, 1, tzinfo=dt.UTC)
    assert h.refresh() is True
    assert heard == ["phase"]
    assert h.view.decide_name("www.tiktok.com").action is Action.BLOCK
    clock.now = dt.datetime(2020, 11, 13, 0, 0, 1, tzinfo=dt.UTC)
    assert h.refresh() is False  # a new day, but no app changed phase
    assert h.view.at == dt.date(2020, 11, 13) and heard == ["phase"]


def test_watcher_notifies_phase_change() -> None:
    clock = Clock(dt.datetime(2020, 9, 19, 23, 59, tzinfo=dt.UTC))
    h = PolicyHolder(POLICY_FILE, clock=clock)
    heard: list[str] = []
    h.subscribe(heard.append)
    h.start(interval=0.02)
    try:
        assert h.view.decide_name("weixin.qq.com").action is Action.ALLOW
        clock.now = dt.datetime(2020, 9, 20, 0, 1, tzinfo=dt.UTC)
        assert wait_for(lambda: heard == ["phase"])
        assert h.view.decide_name("weixin.qq.com").action is Action.BLOCK
    finally:
        h.stop()


def test_fixed_date_ignores_the_clock() -> None:
    clock = Clock(dt.datetime(2020, 9, 1, tzinfo=dt.UTC))
    h = PolicyHolder(POLICY_FILE, at=dt.date(2020, 11, 13), clock=clock)
    clock.now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    assert h.refresh() is False and h.view.at == dt.date(2020, 11, 13)


def test_overrides_swap_the_view_and_notify() -> None:
    h = PolicyHolder(POLICY_FILE, at=dt.date(2020, 9, 1))
    heard: list[str] = []
    h.subscribe(heard.append)
    assert h.view.decide_name("www.tiktok.com").action is Action.ALLOW
    h.set_overrides(phase=Phase.FULL)
    assert h.view.decide_name("www.tiktok.com").action is Action.BLOCK and heard == ["reload"]


def test_a_failing_listener_does_not_stop_the_others(
    holder: PolicyHolder, caplog: pytest.LogCaptureFixture
) -> None:
    heard: list[str] = []

    def broken(reason: str) -> None:
        raise RuntimeError("listener bug")

    holder.subscribe(broken)
    holder.subscribe(heard.append)
    with caplog.at_level(logging.ERROR, logger="egress_filter.policy"):
        assert holder.reload()
    assert heard == ["reload"]
    assert any("policy listener failed" in r.getMessage() for r in caplog.records)


def test_creating_a_missing_list_file_reloads(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    """A policy that failed for a missing list file loads as soon as the file appears."""
    holder.start(interval=0.05)
    write(files[0], policy_text("e.example").replace("names.txt", "later.txt"))
    assert wait_for(lambda: holder.last_error is not None)
    assert "list file 'later.txt' cannot be read" in str(holder.last_error)
    assert blocked(holder, "a.example")  # still the last good policy
    write(files[0].with_name("later.txt"), "late.example\n")
    assert wait_for(lambda: blocked(holder, "late.example"))
    assert holder.last_error is None and blocked(holder, "e.example")


def test_one_reload_at_a_time(holder: PolicyHolder, files: tuple[Path, Path],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten reloads asked for while one is loading (a burst of SIGHUPs) load
    the files twice: the one running, and once more for all that came meanwhile.
    The first load is held until every request is in, so no timing decides it."""
    import runtime.holder as holder_module

    write(files[1], "n199999.listed.example\n")
    started, release = threading.Event(), threading.Event()
    real = holder_module.load_policy

    def held(*args: Any, **kwargs: Any) -> Any:
        if not started.is_set():
            started.set()
            assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(holder_module, "load_policy", held)
    first = threading.Thread(target=holder.reload)
    first.start()
    assert started.wait(30)
    threads = [threading.Thread(target=holder.reload) for _ in range(9)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)  # each returns at once: the running reload will run again for it
    release.set()
    first.join(30)
    assert not first.is_alive() and not any(th.is_alive() for th in threads)
    assert holder.reloads == 2
    assert blocked(holder, "n199999.listed.example")
