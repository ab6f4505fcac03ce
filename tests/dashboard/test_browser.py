"""The dashboard in Debian's headless Chromium (selenium + chromedriver), over a store the real
DNS resolver fills.  Each test saves a screenshot of its page under its tmp_path/screenshots."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import dns.message
import dns.query
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from egress_filter.cli import main
from tests.dns.conftest import TEST_DAY, ResolverProcess

from .helpers import DashboardProcess

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("chromium and chromium-driver are required (.ci/install-tools installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", f"--user-data-dir={tmp_path / 'chromium'}"):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    try:
        yield drv
    finally:
        drv.quit()


def shot(drv: WebDriver, tmp_path: Path, name: str) -> None:
    out = tmp_path / "screenshots"
    out.mkdir(exist_ok=True)
    assert drv.save_screenshot(str(out / f"{name}.png"))
    assert (out / f"{name}.png").stat().st_size > 1000


def wait_for(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return False


def cells(drv: WebDriver) -> list[list[str]]:
    return [[td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in drv.find_elements(By.CSS_SELECTOR, "table.events tbody tr")]


@pytest.mark.parametrize("name", [pytest.param("www.tiktok.test", id="tiktok")])
def test_overview_shows_blocked_app(live: tuple[ResolverProcess, DashboardProcess, Path], browser: WebDriver,
                                    tmp_path: Path, name: str) -> None:
    r, d, _ = live
    r.ask(name)
    assert d.poll_events({"q": name}, timeout=5.0)
    browser.get(d.url + "?range=hour")
    rows = {tr.find_elements(By.TAG_NAME, "td")[0].text: tr.find_elements(By.TAG_NAME, "td")[1].text
            for tr in browser.find_elements(By.CSS_SELECTOR, "table.top tbody tr")}
    shot(browser, tmp_path, "overview")
    assert int(rows["tiktok"]) > 0
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart rect")
    assert "TikTok" in browser.find_element(By.TAG_NAME, "main").text


@pytest.mark.parametrize("app, shown, hidden", [
    pytest.param("tiktok", "www.tiktok.test", "wechat.test", id="tiktok"),
    pytest.param("wechat", "wechat.test", "www.tiktok.test", id="wechat"),
])
def test_events_filter_by_app(live: tuple[ResolverProcess, DashboardProcess, Path], browser: WebDriver,
                              tmp_path: Path, app: str, shown: str, hidden: str) -> None:
    r, d, _ = live
    r.ask("www.tiktok.test")
    r.ask("wechat.test")
    assert len(d.poll_events({}, expect=2, timeout=5.0)) == 2
    browser.get(d.url + "events")
    box = browser.find_element(By.NAME, "app")
    box.send_keys(app)
    box.submit()
    assert wait_for(lambda: f"app={app}" in browser.current_url)
    names = [c[4] for c in cells(browser)]
    shot(browser, tmp_path, f"events-{app}")
    assert names == [shown]
    assert hidden not in names


def test_live_tail_shows_new_query_without_reload(live: tuple[ResolverProcess, DashboardProcess, Path],
                                                  browser: WebDriver, tmp_path: Path) -> None:
    r, d, _ = live
    browser.get(d.url + "events")
    browser.execute_script("window.__sameDocument = true;")  # gone if the page reloads
    assert cells(browser) == []
    r.ask("live.tiktok.test")
    assert wait_for(lambda: any(c[4] == "live.tiktok.test" for c in cells(browser)), timeout=10)
    assert browser.execute_script("return window.__sameDocument === true;")
    shot(browser, tmp_path, "events-live-tail")


@pytest.mark.parametrize("target", [
    pytest.param("www.tiktok.test", id="blocked"),
    pytest.param("example.org", id="allowed"),
])
def test_explain_page_matches_cli(live: tuple[ResolverProcess, DashboardProcess, Path], browser: WebDriver,
                                  tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str) -> None:
    _, d, policy = live
    assert main(["explain", target, "--policy", str(policy), "--at", TEST_DAY, "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)
    browser.get(d.url + "explain")
    browser.find_element(By.NAME, "target").send_keys(target)
    browser.find_element(By.NAME, "at").send_keys(TEST_DAY)
    browser.find_element(By.CSS_SELECTOR, "form button").click()
    assert wait_for(lambda: bool(browser.find_elements(By.ID, "verdict")))
    shot(browser, tmp_path, f"explain-{target}")
    assert browser.find_element(By.ID, "verdict").text == cli["action"].upper()
    assert browser.find_element(By.ID, "rule").text == (cli["rule"] or "-")
    assert browser.find_element(By.ID, "summary").text == cli["summary"]


def test_script_name_is_text(live: tuple[ResolverProcess, DashboardProcess, Path], browser: WebDriver,
                             tmp_path: Path) -> None:
    r, d, _ = live
    evil = 'x<script>window.pwned=1</script>"q\'.tiktok.test'
    dns.query.udp(dns.message.make_query(evil, "A"), r.host, port=r.port, timeout=4)
    assert d.poll_events({"q": "<script>"}, timeout=5.0)
    for path in ("events?q=%3Cscript%3E", "?range=hour"):
        browser.get(d.url + path)
        assert "<script>window.pwned=1</script>" in browser.find_element(By.TAG_NAME, "main").text
        assert browser.execute_script("return window.pwned === undefined;")
    shot(browser, tmp_path, "events-script-name")


def test_timeline_page_draws(live: tuple[ResolverProcess, DashboardProcess, Path], browser: WebDriver,
                             tmp_path: Path) -> None:
    _, d, _ = live
    browser.get(d.url + "timeline")
    shot(browser, tmp_path, "timeline")
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart circle")) >= 3
    assert "TikTok" in browser.find_element(By.TAG_NAME, "svg").text
