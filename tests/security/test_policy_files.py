"""Hostile policy and list files (issue 8): a FIFO, /dev/zero behind a
symlink, a socket, a directory, an oversized (sparse) file, an over-long
line.  Each is refused with an exact ``file:line: field: message``, in well
under a second; the holder keeps the last good policy, a later good reload
takes effect, and no thread is left stuck.  Before the fix a FIFO blocked the
reload in open() while holding the holder's lock, for good."""

from __future__ import annotations

import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import PolicyError, load_policy, load_policy_text
from runtime.holder import PolicyHolder
from tests.core.conftest import MINIMAL_APP
from tests.core.test_holder import Clock, blocked, files, holder, policy_text, wait_for, write

__all__ = ["files", "holder"]  # the fixtures, shared with tests/core/test_holder.py
GiB = 1 << 30
REPO = Path(__file__).resolve().parents[2]
LIST_LINE = policy_text("a.example").splitlines().index("    lists: [names.txt]") + 1
FIELD = "apps[demo].lists[0]"


def make_fifo(p: Path) -> None:
    os.mkfifo(p)


def make_dev_zero(p: Path) -> None:
    p.symlink_to("/dev/zero")


def make_socket(p: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(p))
    s.close()  # the socket file stays


def make_directory(p: Path) -> None:
    p.mkdir()


def make_sparse(p: Path) -> None:
    with open(p, "wb") as fh:
        fh.truncate(GiB + 1)  # sparse: 1 GiB + 1 byte of holes, no disk used


def make_long_line(p: Path) -> None:
    p.write_text("ok-1.example\nok-2.example\n" + "x" * 5000 + ".example\nok-4.example\n")


def refused(what: str) -> str:
    return f"{{policy}}:{LIST_LINE}: {FIELD}: list file 'names.txt' {what}"


CASES = [
    pytest.param(make_fifo, refused("is a FIFO, not a regular file"), id="fifo"),
    pytest.param(make_dev_zero, refused("is a character device, not a regular file"), id="dev-zero-symlink"),
    pytest.param(make_socket, refused("is a socket, not a regular file"), id="socket"),
    pytest.param(make_directory, refused("is a directory, not a regular file"), id="directory"),
    pytest.param(make_sparse, refused(f"is {GiB + 1} bytes, over the limit of {GiB} "
                                      "(settings.max_file_size)"),
                 id="oversized-sparse"),
    pytest.param(make_long_line, f"{{names}}:3: {FIELD}: line is longer than 4096 characters",
                 id="long-line"),
]


def bounded(call: Callable[[], object], timeout: float = 5.0) -> object:
    """Run ``call`` on a thread; fail (not hang) if it does not return in
    time; its result, or its exception raised here."""
    out: list[object] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            failed.append(exc)

    th = threading.Thread(target=run, daemon=True)
    th.start()
    th.join(timeout)
    assert not th.is_alive(), f"{call} still blocked after {timeout} s"
    if failed:
        raise failed[0]
    return out[0]


def replace_with(names: Path, make: Callable[[Path], None]) -> None:
    names.unlink()
    make(names)


def restore(names: Path, text: str) -> None:
    if names.is_dir() and not names.is_symlink():
        names.rmdir()
    else:
        names.unlink()
    write(names, text)


@pytest.mark.parametrize(("make", "message"), CASES)
def test_hostile_list_file_is_refused_and_the_last_good_policy_kept(
        holder: PolicyHolder, files: tuple[Path, Path], make: Callable[[Path], None], message: str) -> None:
    policy, names = files
    threads = threading.active_count()
    replace_with(names, make)
    start = time.monotonic()
    assert bounded(holder.reload) is False
    assert time.monotonic() - start < 2.0
    assert str(holder.last_error) == message.format(policy=policy, names=names)
    assert blocked(holder, "listed-a.example")  # the last good policy is in force
    restore(names, "listed-b.example\n")
    assert bounded(holder.reload) is True
    assert blocked(holder, "listed-b.example") and not blocked(holder, "listed-a.example")
    assert threading.active_count() <= threads


@pytest.mark.parametrize(("make", "message"), CASES)
def test_load_policy_refuses_it(files: tuple[Path, Path], make: Callable[[Path], None], message: str) -> None:
    policy, names = files
    replace_with(names, make)
    with pytest.raises(PolicyError) as info:
        bounded(lambda: load_policy(policy))
    assert [str(i) for i in info.value.issues] == [message.format(policy=policy, names=names)]


POLICY_FILE_CASES = [
    pytest.param(make_fifo, "is a FIFO, not a regular file", id="fifo"),
    pytest.param(make_dev_zero, "is a character device, not a regular file", id="dev-zero-symlink"),
    pytest.param(make_directory, "is a directory, not a regular file", id="directory"),
    pytest.param(make_sparse, f"is {GiB + 1} bytes, over the limit of {GiB}",
                 id="oversized-sparse"),
]


@pytest.mark.parametrize(("make", "message"), POLICY_FILE_CASES)
def test_hostile_policy_file_is_refused(holder: PolicyHolder, files: tuple[Path, Path],
                                        make: Callable[[Path], None], message: str) -> None:
    policy, _names = files
    replace_with(policy, make)
    assert bounded(holder.reload) is False
    assert str(holder.last_error) == f"{policy}:0: (file): {message}"
    assert blocked(holder, "x.a.example")
    restore(policy, policy_text("b.example"))
    assert bounded(holder.reload) is True
    assert blocked(holder, "x.b.example")


def test_lowered_size_cap_from_the_policy(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("".join(f"n{i}.example\n" for i in range(200)))  # 2,490 bytes
    size = names.stat().st_size
    text = policy_text("a.example").replace("version: 1\n", "version: 1\nsettings: {max_file_size: 1000}\n")
    policy = tmp_path / "policy.yaml"
    policy.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(policy)
    line = text.splitlines().index("    lists: [names.txt]") + 1
    assert str(info.value) == (f"{policy}:{line}: {FIELD}: list file 'names.txt' is {size} bytes, "
                               "over the limit of 1000 (settings.max_file_size)")
    policy.write_text(text.replace("1000", "3000"))
    loaded = load_policy(policy)
    assert loaded.counts["domains"] == 201 and loaded.settings.max_file_size == 3000


def test_the_loader_parameter_lowers_the_cap(files: tuple[Path, Path]) -> None:
    policy = files[0]
    with pytest.raises(PolicyError) as info:
        load_policy(policy, max_file_size=50)
    assert str(info.value) == f"{policy}:0: (file): is {policy.stat().st_size} bytes, over the limit of 50"


def test_watcher_survives_a_fifo_and_sighups(holder: PolicyHolder, files: tuple[Path, Path]) -> None:
    """The red team's sequence: a FIFO list file, SIGHUPs, then the good file
    back; enforcement follows, and no SIGHUP leaves a thread behind."""
    names = files[1]
    previous = signal.getsignal(signal.SIGHUP)
    threads = threading.active_count()
    holder.install_sighup()
    holder.start(interval=0.05)
    try:
        replace_with(names, make_fifo)
        assert wait_for(lambda: holder.last_error is not None, timeout=5)
        for _ in range(10):
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(0.02)
        assert wait_for(lambda: threading.active_count() <= threads + 1, timeout=5)  # + the watcher
        restore(names, "listed-c.example\n")
        assert wait_for(lambda: blocked(holder, "listed-c.example"), timeout=5)
        assert holder.last_error is None
    finally:
        holder.stop()
        signal.signal(signal.SIGHUP, previous)
    assert threading.active_count() <= threads


# --- deeply nested YAML: a file:line error, not a RecursionError traceback ----

DEEP = 950
APP = "apps:\n" + MINIMAL_APP
DEEP_CASES = [
    # (the document, the line the 65th collection starts on, its top-level key)
    pytest.param("version: 1\nx-deep: " + "[" * DEEP + "]" * DEEP + "\n" + APP, 2, "x-deep", id="flow-lists"),
    pytest.param("version: 1\nx-deep: " + "{a: " * DEEP + "1" + "}" * DEEP + "\n" + APP, 2, "x-deep",
                 id="flow-mappings"),
    pytest.param("version: 1\nx-deep:\n" + "".join("  " * i + "a:\n" for i in range(1, DEEP)) + "  " * DEEP
                 + "b: 1\n" + APP, 66, "x-deep", id="block-mappings"),
    pytest.param("version: 1\nx-deep:\n  " + "- " * DEEP + "x\n" + APP, 3, "x-deep", id="block-lists"),
    pytest.param("version: 1\n" + APP + "    notes: " + "[" * DEEP + "]" * DEEP + "\n", 9, "apps",
                 id="inside-an-app"),
]


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egress_filter.cli", "check", str(path)],
                          capture_output=True, text=True, timeout=60, cwd=REPO)


@pytest.mark.parametrize(("text", "line", "field"), DEEP_CASES)
def test_deep_nesting_is_a_positioned_error(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    proc = check(path)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"{path}:{line}: {field}: nesting deeper than 64 levels",
        "egress-filter: 1 problem in the policy; nothing was changed",
    ]


@pytest.mark.parametrize(("depth", "ok"), [(64, True), (65, False)], ids=["64-levels", "65-levels"])
def test_nesting_limit_boundary(depth: int, ok: bool) -> None:
    # The root mapping is the first level; x-deep's lists are the others.
    text = "version: 1\nx-deep: " + "[" * (depth - 1) + "]" * (depth - 1) + "\n" + APP
    if ok:
        assert load_policy_text(text).apps.keys() == {"demo"}
    else:
        with pytest.raises(PolicyError) as info:
            load_policy_text(text)
        assert str(info.value) == "<policy>:2: x-deep: nesting deeper than 64 levels"


# --- gutted policies: warned about, and a reload that unblocks everything refused ----

TODAY_FULL = MINIMAL_APP  # full since 2020-01-01
FUTURE = MINIMAL_APP.replace("2020-01-01", "2999-01-01")
DL = MINIMAL_APP.replace("phase: full", "phase: downloads")


def doc(app: str | None, rules: str = "    domains: [a.example]\n", top: str = "") -> str:
    return "version: 1\n" + top + ("apps: []\n" if app is None else "apps:\n" + app + rules)


NOTHING = ("the policy blocks nothing on {day} in enforce mode "
           "(no app is in a phase that blocks one of its rules)")
NO_APPS = "the policy has no apps, so it blocks nothing"
GUTTED_CASES = [
    # (the new file, holder allow_empty, reload accepted, warning)
    pytest.param(doc(None), False, False, NO_APPS, id="no-apps"),
    pytest.param(doc(TODAY_FULL, rules=""), False, False, NOTHING, id="app-without-rules"),
    pytest.param(doc(FUTURE), False, False, NOTHING, id="schedule-not-started"),
    pytest.param(doc(TODAY_FULL.replace("    schedule:", "    phase: none\n    schedule:")), False, False,
                 NOTHING, id="phase-none-override"),
    pytest.param(doc(DL), False, False, NOTHING, id="downloads-phase-traffic-rules-only"),
    pytest.param(doc(DL, rules="    downloads: [{host: dl.a.example}]\n"), False, True, None,
                 id="downloads-phase-download-rule"),
    pytest.param(doc(TODAY_FULL, top="mode: monitor\n"), False, True, None,
                 id="monitor-mode-logs-not-allows"),
    pytest.param(doc(None, top="settings: {allow_empty: true}\n"), False, True, NO_APPS,
                 id="policy-flag-allow-empty"),
    pytest.param(doc(FUTURE), True, True, NOTHING, id="holder-allow-empty"),
    pytest.param(doc(TODAY_FULL, rules="    domains: [b.example]\n"), False, True, None, id="still-blocks"),
]


@pytest.mark.parametrize(("text", "allow_empty", "accepted", "warning"), GUTTED_CASES)
def test_gutted_reload(tmp_path: Path, caplog: pytest.LogCaptureFixture, text: str, allow_empty: bool,
                       accepted: bool, warning: str | None) -> None:
    path = tmp_path / "policy.yaml"
    write(path, doc(TODAY_FULL))
    h = PolicyHolder(path, at=dt.date(2021, 1, 1), allow_empty=allow_empty)
    assert blocked(h, "x.a.example")
    write(path, text)
    caplog.clear()
    assert h.reload() is accepted
    if accepted:
        assert h.last_error is None
    else:
        assert str(h.last_error) == (
            f"{path}:0: (policy): the new policy blocks nothing on 2021-01-01, where the one in force "
            "blocks; refused (start with --allow-empty, or set settings.allow_empty: true, to accept it)")
        assert blocked(h, "x.a.example")  # the last good policy is kept
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    expect = [f"{path}: warning: {warning.format(day='2021-01-01')}"] if warning and accepted else []
    assert warnings == expect


CHECK_CASES = [
    pytest.param(doc(None), [NO_APPS], id="no-apps"),
    pytest.param(doc(TODAY_FULL, rules=""), [NOTHING], id="app-without-rules"),
    pytest.param(doc(FUTURE), [NOTHING], id="schedule-not-started"),
    pytest.param(doc(TODAY_FULL, rules="", top="mode: monitor\n"), [], id="monitor-mode"),
    pytest.param(doc(TODAY_FULL), [], id="blocks"),
]


@pytest.mark.parametrize(("text", "warnings"), CHECK_CASES)
def test_check_warns_about_gutted_policies(tmp_path: Path, text: str, warnings: list[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    proc = check(path)
    day = dt.datetime.now(dt.UTC).date().isoformat()
    assert proc.returncode == 0 and proc.stdout.startswith(f"{path}: OK\n")
    assert proc.stderr.splitlines() == [f"{path}: warning: {w.format(day=day)}" for w in warnings]


def test_midnight_phase_change_still_happens_with_a_fifo_list_file(tmp_path: Path) -> None:
    """The red team saw phase changes stop once a FIFO held the watcher."""
    names, policy = tmp_path / "names.txt", tmp_path / "policy.yaml"
    write(names, "listed-a.example\n")
    write(policy, "version: 1\napps:\n" + MINIMAL_APP.replace("2020-01-01", "2021-01-02")
          + "    lists: [names.txt]\n")
    clock = Clock(dt.datetime(2021, 1, 1, 23, 59, 59, tzinfo=dt.UTC))
    h = PolicyHolder(policy, clock=clock, allow_empty=True)
    h.start(interval=0.02)
    try:
        replace_with(names, make_fifo)
        write(policy, policy.read_text())  # a change: the watcher reloads, and fails on the FIFO
        assert wait_for(lambda: h.last_error is not None, timeout=5)
        assert not blocked(h, "listed-a.example")  # phase none until midnight
        clock.now = dt.datetime(2021, 1, 2, 0, 0, 1, tzinfo=dt.UTC)
        assert wait_for(lambda: blocked(h, "listed-a.example"), timeout=5)  # the last good policy, in full
    finally:
        h.stop()
