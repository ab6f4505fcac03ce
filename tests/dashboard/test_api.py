"""The dashboard's JSON API over a real store filled by the real DNS resolver (``dns --db``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import httpx
import pytest

from egress_filter.cli import main
from tests.dns.conftest import TEST_DAY, ResolverProcess

from .helpers import DashboardProcess

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("name, app, action", [
    pytest.param("www.tiktok.test", "tiktok", "block", id="tiktok-blocked"),
    pytest.param("wechat.test", "wechat", "log", id="wechat-downloads-logged"),
])
def test_query_appears_in_api_within_2s(live: tuple[ResolverProcess, DashboardProcess, Path], name: str,
                                        app: str, action: str) -> None:
    r, d, _ = live
    r.ask(name)
    events = d.poll_events({"q": name, "app": app}, timeout=2.0)
    assert [e["egress"]["value"] for e in events] == [name]
    assert events[0]["egress"]["action"] == action
    assert events[0]["observer"]["type"] == "dns"


@pytest.mark.parametrize("params, expect", [
    pytest.param({"app": "tiktok"}, {"www.tiktok.test"}, id="app"),
    pytest.param({"action": "block"}, {"www.tiktok.test"}, id="action"),
    pytest.param({"client": "127.0.0.1"}, {"www.tiktok.test", "wechat.test"}, id="client"),
    pytest.param({"kind": "dns", "group": "default"}, {"www.tiktok.test", "wechat.test"}, id="kind-group"),
    pytest.param({"until": "1"}, set(), id="until-1970"),
])
def test_event_filters(live: tuple[ResolverProcess, DashboardProcess, Path], params: dict[str, str],
                       expect: set[str]) -> None:
    r, d, _ = live
    r.ask("www.tiktok.test")
    r.ask("wechat.test")
    assert len(d.poll_events({}, expect=2, timeout=5.0)) == 2
    got = {e["egress"]["value"] for e in d.get("/api/events", params=params).json()["events"]}
    assert got == expect


def test_summary_exports_and_headers(live: tuple[ResolverProcess, DashboardProcess, Path]) -> None:
    r, d, _ = live
    r.ask("www.tiktok.test")
    assert d.poll_events({"app": "tiktok"}, timeout=5.0)
    s = d.get("/api/summary", params={"range": "hour"}).json()
    assert {x["app"]: sum(x["block"]) for x in s["series"]} == {"tiktok": 1}
    assert s["top"]["names"] == [{"value": "www.tiktok.test", "count": 1}]
    csv_text = d.get("/api/events", params={"format": "csv", "app": "tiktok"}).text
    assert csv_text.splitlines()[1].split(",")[4] == "www.tiktok.test"
    lines = d.get("/api/events", params={"format": "jsonl"}).text.splitlines()
    assert [json.loads(x)["egress"]["value"] for x in lines] == ["www.tiktok.test"]
    for path in ("/", "/events", "/explain", "/timeline", "/api/summary"):
        resp = d.get(path)
        assert resp.status_code == 200
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert "unsafe-inline" not in resp.headers["content-security-policy"]
    assert httpx.post(d.url + "api/events", timeout=5).status_code == 405


@pytest.mark.parametrize("path, status", [
    pytest.param("/api/events?limit=abc", 400, id="bad-limit"),
    pytest.param("/api/events?since=yesterday", 400, id="bad-time"),
    pytest.param("/api/summary?range=year", 400, id="bad-range"),
    pytest.param("/api/explain", 400, id="explain-no-target"),
    pytest.param("/api/explain?target=x.test&group=nope", 400, id="explain-bad-group"),
    pytest.param("/api/nothing", 404, id="unknown"),
    pytest.param("/static/../db.py", 404, id="static-traversal"),
])
def test_bad_requests_answer_not_crash(live: tuple[ResolverProcess, DashboardProcess, Path], path: str,
                                       status: int) -> None:
    _, d, _ = live
    assert d.get(path).status_code == status
    assert d.get("/api/openapi.json").status_code == 200  # still serving


@pytest.mark.parametrize("target", [
    pytest.param("www.tiktok.test", id="blocked-name"),
    pytest.param("https://dl.wechat.test/app.apk", id="download-url"),
    pytest.param("example.org", id="allowed"),
])
def test_explain_is_the_clis_answer(live: tuple[ResolverProcess, DashboardProcess, Path],
                                    capsys: pytest.CaptureFixture[str], target: str) -> None:
    _, d, policy = live
    assert main(["explain", target, "--policy", str(policy), "--at", TEST_DAY, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    api = d.get("/api/explain", params={"target": target, "at": TEST_DAY}).json()
    assert api == cli


def test_openapi_lists_every_endpoint(live: tuple[ResolverProcess, DashboardProcess, Path]) -> None:
    _, d, _ = live
    doc = d.get("/api/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in doc["paths"]:
        assert d.get(path, params={"target": "x.test"}).status_code == 200, path
    names = {p["name"] for p in doc["paths"]["/api/events"]["get"]["parameters"]}
    assert {"app", "action", "client", "group", "kind", "q", "since", "until", "limit", "cursor"} <= names


TOKEN = "correct-horse-battery-staple-42"


@pytest.mark.parametrize("header, status", [
    pytest.param(None, 401, id="none"),
    pytest.param(f"Bearer {TOKEN}", 200, id="bearer"),
    pytest.param("Bearer wrong-token-wrong-token", 401, id="wrong"),
    pytest.param("Basic " + __import__("base64").b64encode(f"me:{TOKEN}".encode()).decode(), 200, id="basic"),
    pytest.param("Basic !!!", 401, id="bad-basic"),
])
def test_token(tmp_path: Path, dashboard: Callable[..., DashboardProcess], header: str | None,
               status: int) -> None:
    tok = tmp_path / "token"
    tok.write_text(TOKEN + "\n")
    d = dashboard("--db", str(tmp_path / "t.db"), "--auth-token-file", str(tok))
    assert d.get("/api/summary", headers={"Authorization": header} if header else {}).status_code == status


@pytest.mark.parametrize("listen", [pytest.param("0.0.0.0:0", id="any-v4"),
                                    pytest.param("[::]:0", id="any-v6")])
def test_off_loopback_needs_a_token(tmp_path: Path, capsys: pytest.CaptureFixture[str], listen: str) -> None:
    start = time.monotonic()
    assert main(["dashboard", "--listen", listen, "--db", str(tmp_path / "x.db")]) == 2
    assert "--auth-token-file" in capsys.readouterr().err
    assert time.monotonic() - start < 30


def test_dns_query_with_script_name_is_stored_as_text(live: tuple[ResolverProcess, DashboardProcess, Path]
                                                      ) -> None:
    r, d, _ = live
    q = dns.message.make_query('x<script>alert("1")</script>.tiktok.test', "A")
    dns.query.udp(q, r.host, port=r.port, timeout=4)
    events = d.poll_events({"q": "<script>"}, timeout=5.0)
    assert events and "<script>" in events[0]["egress"]["value"]
    page = d.get("/events", params={"q": "<script>"}).text
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert" in page
