"""Replay's report papercuts (issue 14): the format from --output's extension, the
per-app phase as seen, the note for a capture older than every schedule,
--only log, CSV, singular counts, a table that fits the terminal, calendar
chart units, and the HTML report in a real headless Chromium."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import pty
import select
import shutil
from pathlib import Path

import dpkt
import pytest

from egress_filter.cli import main
from policies import Action, Decision, Kind, Phase
from replay import Finding, Sighting, Summary
from replay.report_html import pick_unit
from replay.report_text import write_table

from . import craft as c
from .conftest import POLICY

SCHEDULE_CHANGE = dt.datetime(2020, 11, 12, tzinfo=dt.UTC).timestamp()  # TikTok: downloads → full
OLD = dt.datetime(2017, 3, 1, tzinfo=dt.UTC).timestamp()  # before every schedule of the test policy


def _pcap(path: Path, queries: list[tuple[str, float]]) -> Path:
    with path.open("wb") as f:
        w = dpkt.pcap.Writer(f)
        for i, (name, t) in enumerate(queries):
            frame = c.link([c.udp(c.dns_query(name, qid=100 + i))], c.LINK_ETHERNET)[0]
            w.writepkt(frame, ts=t)
    return path


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["replay", "--policy", str(POLICY), *argv])
    out, err = capsys.readouterr()
    return code, out, err


FORMAT_CASES = [
    # (output name, --format or None, what the file starts with, warning expected)
    pytest.param("r.html", None, "<!doctype html>", False, id="html-by-extension"),
    pytest.param("r.json", None, '{"verdicts"', False, id="json-by-extension"),
    pytest.param("r.jsonl", None, '{"@timestamp"', False, id="jsonl-by-extension"),
    pytest.param("r.csv", None, "time,client", False, id="csv-by-extension"),
    pytest.param("r.out", None, "TIME ", False, id="unknown-extension-table"),
    pytest.param("r.html", "jsonl", '{"@timestamp"', True, id="explicit-disagrees-warns"),
    pytest.param("r.json", "json", '{"verdicts"', False, id="explicit-agrees"),
]


@pytest.mark.parametrize("name,fmt,start,warns", FORMAT_CASES)
def test_output_extension_picks_the_format(
    name: str, fmt: str | None, start: str, warns: bool, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = _pcap(tmp_path / "q.pcap", [("www.tiktok.com", c.T0)])
    out = tmp_path / name
    code, _, err = _run(capsys, str(cap), "-o", str(out), *(["--format", fmt] if fmt else []))
    assert code == 0
    assert out.read_text(encoding="utf-8").startswith(start)
    assert ("whose extension says" in err) is warns


PHASE_CASES = [
    pytest.param([("www.tiktok.com", SCHEDULE_CHANGE - 1), ("www.tiktok.com", SCHEDULE_CHANGE + 1)],
                 "downloads–full", id="range-across-a-change"),
    pytest.param([("www.tiktok.com", c.T0)], "downloads", id="one-phase"),
    pytest.param([("www.tiktok.com", OLD)], "none", id="before-the-schedule"),
]


@pytest.mark.parametrize("queries,phase", PHASE_CASES)
def test_per_app_phase_is_the_phase_when_seen(
    queries: list[tuple[str, float]], phase: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = _run(capsys, str(_pcap(tmp_path / "q.pcap", queries)), "--format", "json")
    assert code == 0
    apps = {a["app"]: a for a in json.loads(out)["summary"]["apps"]}
    assert apps["tiktok"]["phase"] == phase


NOTE_CASES = [
    pytest.param([("www.tiktok.com", OLD)], [], True, id="old-capture-noted"),
    pytest.param([("www.tiktok.com", c.T0)], [], False, id="in-schedule-silent"),
    pytest.param([("www.tiktok.com", OLD)], ["--at", "2020-11-10"], False, id="fixed-date-silent"),
]


@pytest.mark.parametrize("queries,extra,noted", NOTE_CASES)
def test_capture_before_every_schedule_is_noted(
    queries: list[tuple[str, float]], extra: list[str], noted: bool, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    cap = str(_pcap(tmp_path / "q.pcap", queries))
    code, out, _ = _run(capsys, cap, *extra)
    assert code == 0
    assert ("predates the policy's first schedule (2020-09-20)" in out) is noted
    assert ("--at DATE" in out and "--phase" in out) is noted
    code, out, _ = _run(capsys, cap, "--format", "json", *extra)
    assert (json.loads(out)["note"] is not None) is noted


ONLY_CASES = [
    pytest.param("log", ["log"], id="only-log"),
    pytest.param("block", ["block"], id="only-block"),
]


@pytest.mark.parametrize("only,actions", ONLY_CASES)
def test_only_lists_that_action(
    only: str, actions: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # On 2020-11-10 TikTok is in 'downloads' (its names are logged) and WeChat in 'full' (blocked).
    cap = _pcap(tmp_path / "q.pcap", [("www.tiktok.com", c.T0), ("www.wechat.com", c.T0 + 1),
                                      ("www.example.org", c.T0 + 2)])
    code, out, _ = _run(capsys, str(cap), "--format", "json", "--only", only)
    doc = json.loads(out)
    assert code == 0
    assert sorted({v["action"] for v in doc["verdicts"]}) == actions and doc["verdicts"]
    assert doc["summary"]["observations"] == 3


COUNT_CASES = [
    pytest.param(1, "1 observation: ", id="singular"),
    pytest.param(2, "2 observations: ", id="plural"),
]


@pytest.mark.parametrize("n,text", COUNT_CASES)
def test_observation_count_wording(
    n: int, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cap = _pcap(tmp_path / "q.pcap", [("www.tiktok.com", c.T0 + i) for i in range(n)])
    code, out, _ = _run(capsys, str(cap))
    assert code == 0 and text in out


def test_csv_rows_and_formula_cells(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cap = _pcap(tmp_path / "q.pcap", [("www.tiktok.com", c.T0), ("=cmd.example", c.T0 + 1)])
    code, out, _ = _run(capsys, str(cap), "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0
    assert [(r["name"], r["qtype"], r["action"], r["apps"]) for r in rows] == [
        ("www.tiktok.com", "A", "log", "tiktok"),
        ("'=cmd.example", "A", "allow", ""),
    ]


LONG = "http://www.tiktok.com/" + "p" * 200


@pytest.mark.parametrize("columns", [120, 200, 400], ids=lambda n: f"{n}-columns")
def test_table_fits_the_terminal(columns: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", str(columns))
    v = Finding(Sighting(c.T0, Kind.HTTP, LONG, "10.0.0.5", "198.51.100.7", 40000, 80),
                Decision(Action.BLOCK, ("tiktok",), Phase.FULL, "domain:tiktok.com", "r"))
    main_fd, tty_fd = pty.openpty()
    try:
        with os.fdopen(tty_fd, "w", closefd=False) as tty:
            write_table([v], tty, Summary())
            tty.flush()
            got = b""
            for _ in range(50):  # bounded: the two lines arrive in a few reads at most
                ready, _, _ = select.select([main_fd], [], [], 0.2)
                if not ready:
                    break
                got += os.read(main_fd, 65536)
            text = got.decode()
    finally:
        os.close(main_fd)
        os.close(tty_fd)
    line = text.replace("\r\n", "\n").splitlines()[1]
    cut = len(LONG) + 130 > columns
    assert ("…" in line) is cut
    assert len(line) <= max(columns, 130 + 30 + 24) if cut else LONG in line
    piped = io.StringIO()
    write_table([v], piped, Summary())
    assert LONG in piped.getvalue()  # not a terminal: never cut


DAY = 86_400
UNIT_CASES = [
    pytest.param(0, 50, 1, "1 second", id="seconds"),
    pytest.param(0, 3 * 3600, 1, "5 minutes", id="hours"),
    pytest.param(0, 40 * DAY, 1, "1 day", id="weeks"),
    pytest.param(0, 200 * DAY, 1, "1 week", id="months"),
    pytest.param(0, 3 * 365 * DAY, 1, "1 month", id="years"),
    pytest.param(0, 3 * 3600, 4096, "6 hours", id="bucket-at-least-the-series-width"),
]


@pytest.mark.parametrize("span_start,span_end,at_least,label", UNIT_CASES)
def test_chart_bins_are_calendar_units(
    span_start: float, span_end: float, at_least: float, label: str
) -> None:
    t0 = dt.datetime(2017, 3, 1, tzinfo=dt.UTC).timestamp()
    assert pick_unit(t0 + span_start, t0 + span_end, at_least, 60).label == label


CHROME_CASES = [
    pytest.param(
        [("www.tiktok.com", OLD + i * 40 * DAY) for i in range(30)]
        + [("www.wechat.com", OLD + i * 70 * DAY) for i in range(20)],
        "1 bar = 1 month",
        id="years",
    ),
    pytest.param(
        [("www.tiktok.com", c.T0 + i * 60) for i in range(30)]
        + [("www.wechat.com", c.T0 + i * 90) for i in range(20)],
        "1 bar = 1 minute",
        id="half-an-hour",
    ),
]


@pytest.mark.parametrize("queries,unit", CHROME_CASES)
def test_html_report_in_headless_chromium(
    queries: list[tuple[str, float]], unit: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.fail("chromium and chromium-driver are required (.ci/install-tools installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    queries = [*queries, ("x" * 60 + ".tiktok.com", c.T0)]
    cap = _pcap(tmp_path / "q.pcap", queries)
    page = tmp_path / "report.html"
    code, _, _ = _run(capsys, str(cap), "--phase", "full", "-o", str(page))
    assert code == 0
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium") or ""
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver") or ""))
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.as_uri())
        driver.save_screenshot(str(tmp_path / "report.png"))
        assert (tmp_path / "report.png").stat().st_size > 1000
        body = driver.find_element(By.TAG_NAME, "body").text
        assert unit in driver.find_element(By.ID, "bar-unit").text
        assert "Per client" in body and "reason" in body
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 1400
        total = len(queries)
        shown = driver.find_element(By.ID, "shown")
        assert shown.text == f"{total} of {total} shown"
        driver.find_element(By.ID, "filter").send_keys("wechat")
        assert shown.text == f"20 of {total} shown"
        driver.find_element(By.ID, "filter").clear()
        driver.execute_script("document.getElementById('filter').dispatchEvent(new Event('input'))")
        name_header = driver.find_elements(By.CSS_SELECTOR, "#observations th")[5]
        name_header.click()
        names = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#observations tbody td:nth-child(6)")]
        assert names == sorted(names, key=str.lower) and len(names) == total
        assert "x" * 60 + ".tiktok.com" in names  # the whole name, wrapped, not cut
        ticks = [t.text for t in driver.find_elements(By.CSS_SELECTOR, "text.tick")]
        assert 2 <= len(ticks) <= 8
        clients = driver.find_elements(By.CSS_SELECTOR, "#clients tbody tr")
        assert {r.text.split()[1] for r in clients} == {"tiktok", "wechat"}
    finally:
        driver.quit()
