"""The dashboard's "Monitor for N minutes" switch: ``POST /api/pause`` on a real dashboard
process, forwarded to a real resolver's control socket; and the switch clicked in Chromium."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from tests.core.test_holder import wait_for
from tests.dns.conftest import REPO, TEST_DAY, ResolverProcess, addresses, rcode

from .helpers import DashboardProcess
from .test_browser import browser, shot  # noqa: F401

TOKEN = "correct-horse-battery-staple-42"
BLOCKED = "www.tiktok.test"
Setup = tuple[ResolverProcess, DashboardProcess, Path]


@pytest.fixture
def switch(tmp_path: Path, resolver: Callable[..., ResolverProcess], authority: Any,
           write_policy: Callable[..., Path],
           dashboard: Callable[..., DashboardProcess]) -> Callable[..., Setup]:
    """A resolver storing events and serving a control socket; a dashboard on both."""
    def start(*, token: bool = True, settings: str = "") -> Setup:
        db, sock = tmp_path / "events.db", tmp_path / "run" / "control.sock"
        policy = write_policy(settings=settings)
        r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                     "--db", str(db), "--control", str(sock))
        tok = tmp_path / "token"
        tok.write_text(TOKEN + "\n")
        extra = ("--auth-token-file", str(tok)) if token else ()
        d = dashboard("--db", str(db), "--policy", str(policy), "--control", str(sock), *extra)
        return r, d, sock
    return start


def post(d: DashboardProcess, body: bytes | None, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(d.url + "api/pause", content=body, headers=headers, timeout=15)


def get(d: DashboardProcess, path: str) -> Any:
    """A read, with the token (ignored by a dashboard that has none)."""
    resp = d.get(path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert resp.status_code == 200, resp.text
    return resp.json()


def status(sock: Path) -> dict[str, Any]:
    out = subprocess.run([sys.executable, "-m", "egress_filter.cli", "pause", "--status", "--json",
                          "--control", str(sock)], cwd=REPO, capture_output=True, text=True, timeout=30)
    doc = json.loads(out.stdout)
    assert isinstance(doc, dict)
    return doc


JSON = {"Content-Type": "application/json"}
BEARER = {**JSON, "Authorization": f"Bearer {TOKEN}"}
BASIC = {**JSON, "Authorization": "Basic " + base64.b64encode(f"me:{TOKEN}".encode()).decode()}


@pytest.mark.parametrize("token, headers, body, code, error", [
    pytest.param(False, BEARER, b'{"minutes": 5}', 403, "without authentication", id="no-token-configured"),
    pytest.param(True, JSON, b'{"minutes": 5}', 401, "Bearer", id="no-header"),
    pytest.param(True, {**JSON, "Authorization": "Bearer wrong-wrong-wrong-wrong"}, b'{"minutes": 5}', 401,
                 "Bearer", id="wrong-token"),
    pytest.param(True, BASIC, b'{"minutes": 5}', 401, "Bearer", id="basic-is-not-enough-csrf"),
    pytest.param(True, {**BEARER, "Origin": "https://evil.example"}, b'{"minutes": 5}', 403, "cross-origin",
                 id="cross-origin"),
    pytest.param(True, {**BEARER, "Content-Type": "application/x-www-form-urlencoded"}, b"minutes=5", 415,
                 "application/json", id="form-post-csrf"),
    pytest.param(True, BEARER, b'{"minutes": 5, "pad": "' + b"x" * 2000 + b'"}', 413, "limited",
                 id="oversize-body"),
    pytest.param(True, BEARER, b"{not json", 400, "not JSON", id="garbage-body"),
    pytest.param(True, BEARER, b'{"minutes": 0}', 400, "minutes", id="zero-minutes"),
    pytest.param(True, BEARER, b'{"minutes": 5000}', 400, "minutes", id="over-24h"),
    pytest.param(True, BEARER, b'{"minutes": "5"}', 400, "minutes", id="minutes-as-text"),
])
def test_pause_api_refuses(switch: Callable[..., Setup], token: bool, headers: dict[str, str], body: bytes,
                           code: int, error: str) -> None:
    r, d, sock = switch(token=token)
    resp = post(d, body, headers)
    assert resp.status_code == code and error in resp.json()["error"], resp.text
    assert status(sock)["paused"] is False, "nothing was paused"
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    assert get(d, "/api/openapi.json")["paths"]["/api/pause"]["post"], "the dashboard still serves"


def test_pause_api_with_token_pauses_and_is_logged(switch: Callable[..., Setup]) -> None:
    r, d, _ = switch()
    resp = post(d, b'{"minutes": 5}', {**BEARER, "Origin": d.url.rstrip("/")})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["paused"] is True
    assert "by dashboard token holder at 127.0.0.1 via uid 0 (root)" in doc["reason"]
    assert get(d, "/api/pause")["paused"] is True
    answer = r.ask(BLOCKED)
    assert rcode(answer) == "NOERROR" and addresses(answer) == ["192.0.2.66"]
    # The pause is an event in the store, with who and when, and the paused query says why it was let through.
    assert wait_for(lambda: any(e["event"]["action"] == "enforcement-paused"
                                for e in get(d, "/api/events")["events"]), 5)
    events = get(d, "/api/events")["events"]
    [ev] = [e for e in events if e["event"]["action"] == "enforcement-paused"]
    assert ev["egress"]["pause"]["via"] == "dashboard token holder at 127.0.0.1"
    assert ev["user"] == {"id": str(os.geteuid()), "name": "root"} and ev["egress"]["pause"]["until"]
    assert "dashboard token holder" in d.stderr()
    resp = post(d, b'{"resume": true}', BEARER)
    assert resp.status_code == 200 and resp.json()["paused"] is False
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    assert wait_for(lambda: any(e["event"]["action"] == "enforcement-resumed"
                                for e in get(d, "/api/events")["events"]), 5)


def test_pause_api_when_the_policy_forbids(switch: Callable[..., Setup]) -> None:
    r, d, _ = switch(settings="settings:\n  allow_pause: false\n")
    resp = post(d, b'{"minutes": 5}', BEARER)
    assert resp.status_code == 409 and "allow_pause: false" in resp.json()["error"]
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    assert wait_for(lambda: any(e["event"]["action"] == "pause-refused"
                                for e in get(d, "/api/events")["events"]), 5)


@pytest.mark.e2e
@pytest.mark.parametrize("minutes", [pytest.param("2", id="two-minutes")])
def test_switch_in_chromium(switch: Callable[..., Setup], browser: WebDriver,  # noqa: F811
                            tmp_path: Path, minutes: str) -> None:
    r, d, sock = switch()
    # Reads take the token as Basic (what a person types in the browser's prompt).
    page = d.url.replace("http://", f"http://me:{TOKEN}@")
    browser.get(page)
    assert browser.find_element(By.ID, "pause-status").get_attribute("data-paused") == "0"
    box = browser.find_element(By.ID, "pause-minutes")
    box.clear()
    box.send_keys(minutes)
    assert browser.find_element(By.ID, "pause-go").text == f"Monitor for {minutes} minutes"
    browser.find_element(By.ID, "pause-token").send_keys(TOKEN)
    browser.find_element(By.ID, "pause-go").click()
    st = browser.find_element(By.ID, "pause-status")
    assert wait_for(lambda: st.get_attribute("data-paused") == "1", 10), \
        browser.find_element(By.ID, "pause-message").text
    assert "Monitoring only: enforcement paused until" in st.text
    shot(browser, tmp_path, "overview-paused")
    assert status(sock)["paused"] is True and 100 < status(sock)["seconds_left"] <= 120
    assert rcode(r.ask(BLOCKED)) == "NOERROR"
    browser.get(page)  # the page, drawn again, says so too
    assert "Monitoring only" in browser.find_element(By.ID, "pause-status").text
    browser.find_element(By.ID, "pause-token").send_keys(TOKEN)
    browser.find_element(By.ID, "pause-resume").click()
    st = browser.find_element(By.ID, "pause-status")
    assert wait_for(lambda: st.get_attribute("data-paused") == "0", 10)
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    shot(browser, tmp_path, "overview-resumed")
