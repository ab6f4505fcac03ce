"""store/: the real DNS resolver writes blocked queries into a real SQLite file; restarts keep
them; retention prunes; a full queue drops and counts."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from policies import Action, Decision, Observation, Phase
from policies.events import build_event
from store import Retention, Store, open_reader
from store import query as q
from tests.dns.conftest import TEST_DAY, ResolverProcess


def wait_rows(db: Path, where: str, args: tuple[Any, ...], expect: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        conn = open_reader(str(db))
        try:
            n = conn.execute(f"SELECT count(*) FROM events WHERE {where}", args).fetchone()[0]
        finally:
            conn.close()
        if n >= expect:
            return int(n)
        time.sleep(0.05)
    return int(n)


def event(name: str, action: Action = Action.BLOCK, client: str = "127.0.0.1", app: str = "tiktok",
          at: float | None = None) -> dict[str, Any]:
    d = Decision(action, apps=(app,), phase=Phase.FULL, rule=f"app:{app}", reason="test")
    return build_event(d, Observation.dns(name, client), "dns", timestamp=at)


@pytest.mark.e2e
@pytest.mark.parametrize("name, action", [
    pytest.param("www.tiktok.test", "block", id="blocked-name"),
    pytest.param("tiktokcdn.test", "block", id="blocked-apex"),
])
def test_resolver_writes_store_and_restart_keeps(tmp_path: Path, resolver: Callable[..., ResolverProcess],
                                                 authority: Any, write_policy: Callable[..., Path],
                                                 name: str, action: str) -> None:
    db = tmp_path / "events.db"
    policy = write_policy()
    args = ("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address, "--db", str(db))
    r = resolver(*args)
    r.ask(name)
    assert wait_rows(db, "egress_value = ? AND event_action = ?", (name, action), 1) == 1
    r.stop()
    r2 = resolver(*args)  # a restart: what was stored is still there, and new events join it
    r2.ask(name)
    assert wait_rows(db, "egress_value = ?", (name,), 2) == 2
    conn = open_reader(str(db))
    page = q.events(conn, q.Filters(app="tiktok"))
    conn.close()
    assert [e["egress"]["value"] for e in page["events"]] == [name, name]
    assert page["events"][0]["source"]["ip"] == "127.0.0.1"


@pytest.mark.parametrize("retention, old_days, expect_left", [
    pytest.param(Retention(days=30, max_bytes=None), 40, 10, id="by-days"),
    pytest.param(Retention(days=None, max_bytes=None), 40, 20, id="keep-all"),
])
def test_retention_by_days(tmp_path: Path, retention: Retention, old_days: int, expect_left: int) -> None:
    s = Store(str(tmp_path / "r.db"), retention=retention, prune_interval=3600)
    now = time.time()
    for i in range(10):
        s.put(event(f"old{i}.tiktok.test", at=now - old_days * 86400))
        s.put(event(f"new{i}.tiktok.test", at=now - 60))
    assert s.flush()
    s.prune()
    s.close()
    conn = sqlite3.connect(tmp_path / "r.db")
    assert conn.execute("SELECT count(*) FROM events").fetchone()[0] == expect_left
    conn.close()


def used_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        pages = (conn.execute("PRAGMA page_count").fetchone()[0]
                 - conn.execute("PRAGMA freelist_count").fetchone()[0])
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize("share", [pytest.param(0.5, id="half"), pytest.param(0.8, id="four-fifths")])
def test_retention_by_size_prunes_oldest(tmp_path: Path, share: float) -> None:
    path = tmp_path / "s.db"
    s = Store(str(path), retention=Retention(days=None, max_bytes=None))
    for i in range(5000):
        s.put(event(f"n{i}.tiktok.test"))
    assert s.flush()
    s.close()
    limit = int(used_bytes(path) * share)
    s = Store(str(path), retention=Retention(days=None, max_bytes=limit), prune_interval=3600)
    for _ in range(20):  # incremental: each pass deletes a bounded share
        if not s.prune():
            break
    s.close()
    conn = sqlite3.connect(path)
    left = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    assert 0 < left < 5000
    assert used_bytes(path) <= limit
    assert not conn_has(path, "n0.tiktok.test")
    assert conn_has(path, "n4999.tiktok.test")


def conn_has(path: Path, name: str) -> bool:
    conn = sqlite3.connect(path)
    try:
        return bool(conn.execute("SELECT 1 FROM events WHERE egress_value = ?", (name,)).fetchone())
    finally:
        conn.close()


@pytest.mark.parametrize("max_queue, puts, shaped", [
    pytest.param(10, 1000, False, id="tiny-queue"),
    pytest.param(10, 1000, True, id="tiny-queue-shaped"),
])
def test_full_queue_drops_and_counts(tmp_path: Path, max_queue: int, puts: int, shaped: bool) -> None:
    from tests.core.test_shape import BLOCK, shape_of

    s = Store(str(tmp_path / "d.db"), max_queue=max_queue, flush_interval=60)
    shapes = [shape_of(BLOCK, f"d{i}.tiktok.test", "A", "NXDOMAIN", False) for i in range(7)]
    for i in range(puts):
        sh = shapes[i % 7]
        if shaped and sh is not None:
            s.put_shaped(sh, time.time(), "10.0.0.5", 5353, None)
        else:
            s.put(event(f"d{i}.tiktok.test"))
    assert s.flush()
    st = s.stats()
    s.close()
    assert st.put == puts
    assert st.dropped > 0
    assert st.written + st.dropped == puts
    conn = open_reader(str(tmp_path / "d.db"))
    assert q.summary(conn, "hour")["dropped"] == st.dropped
    conn.close()


@pytest.mark.parametrize("params, names", [
    pytest.param({"app": "wechat"}, ["b.wechat.test"], id="by-app"),
    pytest.param({"action": "log"}, ["c.tiktok.test"], id="by-action"),
    pytest.param({"client": "10.0.0.9"}, ["b.wechat.test"], id="by-client"),
    pytest.param({"q": "TIKTOK"}, ["c.tiktok.test", "a.tiktok.test"], id="free-text"),
    pytest.param({"q": "%"}, [], id="wildcard-is-literal"),
    pytest.param({"limit": "1"}, ["c.tiktok.test"], id="limit"),
])
def test_query_filters(tmp_path: Path, params: dict[str, str], names: list[str]) -> None:
    s = Store(str(tmp_path / "q.db"))
    s.put(event("a.tiktok.test"))
    s.put(event("b.wechat.test", app="wechat", client="10.0.0.9"))
    s.put(event("c.tiktok.test", action=Action.LOG))
    assert s.flush()
    s.close()
    conn = open_reader(str(tmp_path / "q.db"))
    page = q.events(conn, q.filters_from(params))
    conn.close()
    assert [e["egress"]["value"] for e in page["events"]] == names


def test_cursor_pages_through_everything(tmp_path: Path) -> None:
    s = Store(str(tmp_path / "c.db"))
    for i in range(25):
        s.put(event(f"p{i}.tiktok.test"))
    assert s.flush()
    s.close()
    conn = open_reader(str(tmp_path / "c.db"))
    seen: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        page = q.events(conn, q.filters_from({"limit": "10", **({"cursor": cursor} if cursor else {})}))
        seen += [e["egress"]["value"] for e in page["events"]]
        if page["next"] is None:
            break
        cursor = str(page["next"])
    conn.close()
    assert seen == [f"p{i}.tiktok.test" for i in reversed(range(25))]


@pytest.mark.parametrize("params, names", [
    pytest.param({"since": "{d10}", "until": "{d9}"}, ["late-old.tiktok.test", "old.tiktok.test"],
                 id="window"),
    pytest.param({"since": "{d10}", "until": "{d9}", "q": "late"}, ["late-old.tiktok.test"], id="window-q"),
    pytest.param({"since": "{d1}", "q": "new"}, ["new.tiktok.test"], id="since-q"),
])
def test_time_bounds_are_exact_with_appended_old_events(tmp_path: Path, params: dict[str, str],
                                                        names: list[str]) -> None:
    """A replay appends old events after new ones: the id bounds the queries use stay exact."""
    now = time.time()
    s = Store(str(tmp_path / "w.db"))
    s.put(event("old.tiktok.test", at=now - 9.5 * 86400))
    s.put(event("new.tiktok.test", at=now - 60))
    s.put(event("late-old.tiktok.test", at=now - 9.4 * 86400))
    assert s.flush()
    s.close()
    subst = {"{d10}": str(now - 10 * 86400), "{d9}": str(now - 9 * 86400), "{d1}": str(now - 86400)}
    conn = open_reader(str(tmp_path / "w.db"))
    page = q.events(conn, q.filters_from({k: subst.get(v, v) for k, v in params.items()}))
    conn.close()
    assert [e["egress"]["value"] for e in page["events"]] == names


@pytest.mark.e2e
@pytest.mark.parametrize("how, old_left", [
    pytest.param("flags", 0, id="db-days-flag-prunes"),
    pytest.param("settings", 5, id="settings-db-days-60-keeps"),
])
def test_resolver_retention_from_flags_and_settings(tmp_path: Path, resolver: Callable[..., ResolverProcess],
                                                    authority: Any, write_policy: Callable[..., Path],
                                                    how: str, old_left: int) -> None:
    db = tmp_path / "kept.db"
    s = Store(str(db), retention=Retention(days=None, max_bytes=None))
    for i in range(5):
        s.put(event(f"old{i}.tiktok.test", at=time.time() - 40 * 86400))
    assert s.flush()
    s.close()
    if how == "flags":
        policy = write_policy()
        extra: tuple[str, ...] = ("--db", str(db), "--db-days", "30")
    else:
        policy = write_policy(settings=f"settings:\n  dns:\n    db: {db}\n    db_days: 60\n")
        extra = ()
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address, *extra)
    r.ask("fresh.tiktok.test")
    assert wait_rows(db, "egress_value = ?", ("fresh.tiktok.test",), 1) == 1
    conn = open_reader(str(db))
    left = conn.execute("SELECT count(*) FROM events WHERE egress_value LIKE 'old%'").fetchone()[0]
    conn.close()
    assert left == old_left
