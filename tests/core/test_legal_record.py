"""The bundled legal record, pinned as tables: the dates, statuses and citations of
each framework in policies/bundled.yaml, and the phases each bundled client group gets
from them on chosen days, as ordered and in force.

A change to the record (a new injunction, a corrected date or cite) must change a row
here, so that it is a reviewed decision and not an accident of editing the YAML.
"""

from __future__ import annotations

import datetime as dt

import pytest

from policies import Action, LegalStatus, Phase, Policy, load_policy
from policies.model import Status

D = dt.date
AS, IN = LegalStatus.AS_ORDERED, LegalStatus.IN_FORCE
NONE, DOWNLOADS, FULL = Phase.NONE, Phase.DOWNLOADS, Phase.FULL
TODAY = D(2026, 12, 2)
ORDER_APPS = ("tiktok", "wechat", "wechat_pay", "alipay", "camscanner", "qq_wallet", "shareit",
              "tencent_qq", "vmate", "wps_office")
EO13971_APPS = ORDER_APPS[2:]
BYTEDANCE_APPS = ("tiktok", "capcut", "lemon8")
TEXAS_2025 = ("lemon8", "rednote", "deepseek", "webull", "tiger_brokers", "moomoo")
TEXAS_2026 = ("temu", "shein")
TX = "texas-prohibited-technologies"
TEXAS_2023 = (*ORDER_APPS, "capcut")  # the original list (TikTok from the 2022-12-07 directive)
TEXAS_ALL = (*TEXAS_2023, *TEXAS_2025, *TEXAS_2026)


@pytest.fixture(scope="module")
def bundled() -> Policy:
    return load_policy()


# --- the frameworks' own record ----------------------------------------------------------------

SCHEDULE_RECORD = [
    # (framework, app, from, phase, strings the source must contain)
    pytest.param("eo-13942", "tiktok", D(2020, 9, 27), DOWNLOADS, ("85 FR 60061", "2020-21193", "item 1"),
                 id="eo13942-tiktok-downloads-2020-09-27"),
    pytest.param("eo-13942", "tiktok", D(2020, 11, 12), FULL, ("85 FR 60061", "items 2-5"),
                 id="eo13942-tiktok-full-2020-11-12"),
    pytest.param("eo-13943", "wechat", D(2020, 9, 20), FULL,
                 ("never published in the FR", "3:20-cv-05910-LB", "ECF 38 and 59"),
                 id="eo13943-wechat-2020-09-20"),
    *[pytest.param("eo-13971", app, D(2021, 2, 19), FULL,
                   ("86 FR 1249", "45 days", "none was ever identified"),
                   id=f"eo13971-{app}-nominal-2021-02-19") for app in EO13971_APPS],
    *[pytest.param("ntgda", app, D(2023, 3, 29), FULL, ("OMB M-23-13", "prohibit internet traffic"),
                   id=f"ntgda-{app}-2023-03-29") for app in BYTEDANCE_APPS],
    *[pytest.param("far-52.204-27", app, D(2023, 6, 2), FULL, ("88 FR 36430", "employees' own equipment"),
                   id=f"far-{app}-2023-06-02") for app in BYTEDANCE_APPS],
    pytest.param(TX, "tiktok", D(2022, 12, 7), FULL, ("directive of 2022-12-07",),
                 id="texas-tiktok-2022-12-07"),
    *[pytest.param(TX, app, D(2023, 1, 23), FULL, ("1/23/2023", "date not confirmed"),
                   id=f"texas-{app}-2023-01-23") for app in TEXAS_2023[1:]],
    *[pytest.param(TX, app, D(2025, 1, 31), FULL, ("2025-01-31", "RedNote, DeepSeek"),
                   id=f"texas-{app}-2025-01-31") for app in TEXAS_2025],
    *[pytest.param(TX, app, D(2026, 1, 26), FULL, ("2026-01-26", "names not confirmed"),
                   id=f"texas-{app}-2026-01-26") for app in TEXAS_2026],
]


@pytest.mark.parametrize(("fid", "app", "start", "phase", "cites"), SCHEDULE_RECORD)
def test_schedule_record(bundled: Policy, fid: str, app: str, start: dt.date, phase: Phase,
                         cites: tuple[str, ...]) -> None:
    [entry] = [e for e in bundled.frameworks[fid].schedules[app] if e.start == start]
    assert entry.phase is phase
    for cite in cites:
        assert cite in entry.source, (cite, entry.source)


def test_schedules_name_exactly_these_apps(bundled: Policy) -> None:
    """Each framework schedules exactly the apps its record covers, each with one entry."""
    got = {fid: sorted((app, len(entries)) for app, entries in fw.schedules.items())
           for fid, fw in bundled.frameworks.items()}
    assert got == {
        "eo-13942": [("tiktok", 2)],
        "eo-13943": [("wechat", 1)],
        "eo-13971": sorted((a, 1) for a in EO13971_APPS),
        "ntgda": sorted((a, 1) for a in BYTEDANCE_APPS),
        "far-52.204-27": sorted((a, 1) for a in BYTEDANCE_APPS),
        TX: sorted((a, 1) for a in TEXAS_ALL),
    }


STATUS_RECORD = [
    # (framework, from, status, phase scope, strings the source must contain)
    pytest.param("eo-13942", D(2020, 8, 6), Status.IN_FORCE, None, ("85 FR 48637",), id="eo13942-signed"),
    pytest.param("eo-13942", D(2020, 9, 27), Status.ENJOINED, DOWNLOADS,
                 ("TikTok Inc. v. Trump", "D.D.C. 1:20-cv-02658-CJN", "ECF 29", "30"),
                 id="eo13942-ddc-2020-09-27"),
    pytest.param("eo-13942", D(2020, 10, 2), Status.ENJOINED, DOWNLOADS,
                 ("Commerce notice", "FR cite not confirmed"), id="eo13942-commerce-notice-2020-10-02"),
    pytest.param("eo-13942", D(2020, 10, 30), Status.ENJOINED, None,
                 ("Marland v. Trump", "E.D. Pa. 2:20-cv-04597-WB", "ECF 35", "498 F. Supp. 3d 624"),
                 id="eo13942-marland-2020-10-30"),
    pytest.param("eo-13942", D(2020, 11, 12), Status.ENJOINED, None,
                 ("WILL NOT GO INTO EFFECT", "FR cite not confirmed"),
                 id="eo13942-commerce-notice-2020-11-12"),
    pytest.param("eo-13942", D(2020, 12, 7), Status.ENJOINED, None,
                 ("TikTok Inc. v. Trump", "ECF 43", "507 F. Supp. 3d 92"), id="eo13942-ddc-2020-12-07"),
    pytest.param("eo-13942", D(2021, 6, 9), Status.REVOKED, None, ("EO 14034", "86 FR 31423", "2021-12506"),
                 id="eo13942-revoked-2021-06-09"),
    pytest.param("eo-13943", D(2020, 8, 6), Status.IN_FORCE, None, ("85 FR 48641",), id="eo13943-signed"),
    pytest.param("eo-13943", D(2020, 9, 19), Status.ENJOINED, None,
                 ("U.S. WeChat Users Alliance v. Trump", "N.D. Cal. 3:20-cv-05910-LB", "ECF 59"),
                 id="eo13943-uswua-2020-09-19"),
    pytest.param("eo-13943", D(2020, 10, 23), Status.ENJOINED, None, ("3:20-cv-05910-LB", "denying", "stay"),
                 id="eo13943-stay-denied-2020-10-23"),
    pytest.param("eo-13943", D(2021, 6, 9), Status.REVOKED, None, ("EO 14034", "86 FR 31423"),
                 id="eo13943-revoked-2021-06-09"),
    pytest.param("eo-13971", D(2021, 1, 5), Status.IN_FORCE, None, ("86 FR 1249", "sec. 1(a)"),
                 id="eo13971-signed"),
    pytest.param("eo-13971", D(2021, 6, 9), Status.REVOKED, None, ("EO 14034", "86 FR 31423"),
                 id="eo13971-revoked-2021-06-09"),
    pytest.param("ntgda", D(2022, 12, 29), Status.IN_FORCE, None, ("Pub. L. 117-328, div. R",),
                 id="ntgda-enacted"),
    pytest.param("ntgda", D(2023, 2, 27), Status.IN_FORCE, None, ("OMB M-23-13",), id="ntgda-omb-m-23-13"),
    pytest.param("far-52.204-27", D(2023, 6, 2), Status.IN_FORCE, None, ("88 FR 36430", "2023-11756"),
                 id="far-interim-rule-2023-06-02"),
    pytest.param(TX, D(2022, 12, 7), Status.IN_FORCE, None, ("directive",), id="texas-directive-2022-12-07"),
    pytest.param(TX, D(2023, 6, 14), Status.IN_FORCE, None,
                 ("S.B. 1893", "ch. 620"), id="texas-ch620-2023-06-14"),
]


@pytest.mark.parametrize(("fid", "start", "status", "phase", "cites"), STATUS_RECORD)
def test_status_record(bundled: Policy, fid: str, start: dt.date, status: Status, phase: Phase | None,
                       cites: tuple[str, ...]) -> None:
    [entry] = [e for e in bundled.frameworks[fid].status if e.start == start]
    assert (entry.status, entry.phase, entry.apps) == (status, phase, None)
    for cite in cites:
        assert cite in entry.source, (cite, entry.source)


def test_status_histories_are_complete(bundled: Policy) -> None:
    """The table above is the whole history: no entry in the YAML escapes it."""
    pinned: dict[str, list[dt.date]] = {}
    for case in STATUS_RECORD:
        pinned.setdefault(case.values[0], []).append(case.values[1])  # type: ignore[arg-type]
    assert {fid: [e.start for e in fw.status] for fid, fw in bundled.frameworks.items()} == pinned


NOTE_RECORD = [
    # (framework, app or None for the framework's own note, strings the note must contain)
    pytest.param("eo-13942", "tiktok", ("Announced for 2020-09-20", "postponed by Commerce on 2020-09-19",
                                        "11:59 p.m."), id="tiktok-postponement"),
    pytest.param("eo-13943", None, ("withdrawn", "no Federal Register cite", "85 FR 60062"),
                 id="wechat-no-fr-cite"),
    pytest.param("eo-13971", None, ("No identification was ever issued",), id="eo13971-never-identified"),
    pytest.param("ntgda", None, ("not confirmed", "Bytedance Pte. Ltd.", "Heliophilia Pte. Ltd."),
                 id="ntgda-capcut-lemon8-ownership"),
    pytest.param("ntgda", "capcut", ("Bytedance Pte. Ltd.", "not confirmed"), id="ntgda-capcut"),
    pytest.param("ntgda", "lemon8", ("Heliophilia Pte. Ltd.", "not confirmed"), id="ntgda-lemon8"),
    pytest.param(TX, "tencent_qq", ("not named", "Tencent Holdings Ltd."), id="texas-qq-via-tencent"),
    pytest.param(TX, "temu", ("secondary reports only",), id="texas-2026-names"),
]

STATUS_NOTES = [
    # (framework, from, strings the status entry's note must contain)
    pytest.param("eo-13942", D(2021, 6, 9), ("rescinded the identification", "2021-06-21", "not confirmed"),
                 id="tiktok-rescission"),
    pytest.param("eo-13943", D(2021, 6, 9), ("rescinded the identification", "withdrawn before publication"),
                 id="wechat-rescission"),
    pytest.param("eo-13942", D(2020, 9, 27), ("item 1", "not confirmed", "490 F. Supp. 3d 73"),
                 id="ddc-scope"),
    pytest.param("eo-13943", D(2020, 9, 19), ("items 1-6", "488 F. Supp. 3d 912 is not confirmed"),
                 id="uswua-scope"),
    pytest.param("eo-13971", D(2021, 1, 5), ("never operative", "No bans have been issued"),
                 id="eo13971-never"),
    pytest.param("ntgda", D(2022, 12, 29), ("not confirmed",), id="ntgda-enactment-date"),

]


@pytest.mark.parametrize(("fid", "app", "words"), NOTE_RECORD)
def test_notes_say_what_is_not_confirmed(bundled: Policy, fid: str, app: str | None,
                                         words: tuple[str, ...]) -> None:
    """The loader keeps schedule notes out of the model, so they are read from the YAML."""
    import yaml

    from policies import BUNDLED

    fw = yaml.safe_load(BUNDLED.read_text(encoding="utf-8"))["frameworks"][fid]
    text = " ".join(e.get("note", "") for e in fw["schedule"][app]) if app else fw["note"]
    text = " ".join(text.split())
    for w in words:
        assert w in text, (w, text)
    if app is None:
        assert bundled.frameworks[fid].note is not None


@pytest.mark.parametrize(("fid", "start", "words"), STATUS_NOTES)
def test_status_notes(bundled: Policy, fid: str, start: dt.date, words: tuple[str, ...]) -> None:
    [entry] = [e for e in bundled.frameworks[fid].status if e.start == start]
    assert entry.note is not None
    note = " ".join(entry.note.split())
    for w in words:
        assert w in note, (w, note)


# --- the phases each group gets --------------------------------------------------------------

Phases = dict[str, tuple[Phase, tuple[str, ...]]]


def _all(apps: tuple[str, ...], phase: Phase, frameworks: tuple[str, ...]) -> Phases:
    return {a: (phase, frameworks) for a in apps}


ORDERS = {"tiktok": "eo-13942", "wechat": "eo-13943", **{a: "eo-13971" for a in EO13971_APPS}}
AS_ORDERED_TODAY: Phases = {a: (FULL, (f,)) for a, f in ORDERS.items()}
PHASE_TABLE = [
    # (group, legal status, day, {app: (phase, producing frameworks)}); apps not named are none
    pytest.param("default", AS, TODAY, AS_ORDERED_TODAY, id="default-as-ordered-today-all-ten-full"),
    pytest.param("default", IN, TODAY, {}, id="default-in-force-today-nothing"),
    pytest.param("default", AS, D(2020, 9, 19), {}, id="default-as-ordered-before-any"),
    pytest.param("default", AS, D(2020, 9, 26), {"wechat": (FULL, ("eo-13943",))},
                 id="default-as-ordered-before-tiktok"),
    pytest.param("default", AS, D(2020, 9, 27),
                 {"tiktok": (DOWNLOADS, ("eo-13942",)), "wechat": (FULL, ("eo-13943",))},
                 id="default-as-ordered-2020-09-27"),
    pytest.param("default", IN, D(2020, 9, 27), {}, id="default-in-force-2020-09-27-both-enjoined"),
    pytest.param("default", IN, D(2020, 11, 13), {}, id="default-in-force-2020-11-13-marland"),
    # EO 13971 was in force but never operative (no identification); in_force counts its nominal
    # phase until the revocation, as the record's status says in_force (see its note).
    pytest.param("default", IN, D(2021, 3, 1), _all(EO13971_APPS, FULL, ("eo-13971",)),
                 id="default-in-force-eo13971-nominal-window"),
    pytest.param("default", IN, D(2021, 6, 9), {}, id="default-in-force-revoked"),
    pytest.param("government-devices", IN, TODAY, _all(BYTEDANCE_APPS, FULL, ("ntgda",)),
                 id="government-devices-in-force-today"),
    pytest.param("government-devices", AS, TODAY,
                 {**AS_ORDERED_TODAY, "tiktok": (FULL, ("ntgda", "eo-13942")),
                  **_all(("capcut", "lemon8"), FULL, ("ntgda",))},
                 id="government-devices-as-ordered-today"),
    pytest.param("government-devices", IN, D(2023, 3, 28), {}, id="government-devices-before-omb-deadline"),
    pytest.param("government-devices", IN, D(2023, 3, 29), _all(BYTEDANCE_APPS, FULL, ("ntgda",)),
                 id="government-devices-omb-deadline"),
    pytest.param("federal-contractors", IN, D(2023, 6, 1), {}, id="federal-contractors-before-far"),
    pytest.param("federal-contractors", IN, D(2023, 6, 2), _all(BYTEDANCE_APPS, FULL, ("far-52.204-27",)),
                 id="federal-contractors-far-2023-06-02"),
    pytest.param("texas-state", IN, TODAY,
                 _all(TEXAS_ALL, FULL, (TX,)), id="texas-state-in-force-today"),
    pytest.param("texas-state", IN, D(2022, 12, 7), {"tiktok": (FULL, (TX,))}, id="texas-state-directive"),
    pytest.param("texas-state", IN, D(2025, 1, 30), _all(TEXAS_2023, FULL, (TX,)),
                 id="texas-state-before-2025-additions"),
    pytest.param("texas-state", IN, D(2026, 1, 25), _all((*TEXAS_2023, *TEXAS_2025), FULL, (TX,)),
                 id="texas-state-before-2026-additions"),
    pytest.param("texas-state", AS, TODAY,
                 {**_all(TEXAS_ALL, FULL, (TX,)), **{a: (FULL, (TX, f)) for a, f in ORDERS.items()}},
                 id="texas-state-as-ordered-today"),
]


@pytest.mark.parametrize(("group", "ls", "day", "want"), PHASE_TABLE)
def test_group_phases(bundled: Policy, group: str, ls: LegalStatus, day: dt.date,
                      want: Phases) -> None:
    got = bundled.phases(day, group=group, legal_status=ls)
    assert set(got) == set(bundled.apps)
    assert {a: (p.phase, p.frameworks) for a, p in got.items() if p.phase is not NONE} == want
    assert all(p.group == group for p in got.values())


STATE_TABLE = [
    # (group, day, app, framework, status on the day, its source contains): what every verdict reports
    pytest.param("default", D(2020, 9, 27), "tiktok", "eo-13942", Status.ENJOINED, "1:20-cv-02658-CJN",
                 id="tiktok-ddc"),
    pytest.param("default", D(2020, 10, 30), "tiktok", "eo-13942", Status.ENJOINED, "Marland v. Trump",
                 id="tiktok-marland"),
    pytest.param("default", D(2020, 12, 7), "tiktok", "eo-13942", Status.ENJOINED, "507 F. Supp. 3d 92",
                 id="tiktok-ddc-renewed"),
    pytest.param("default", D(2020, 9, 20), "wechat", "eo-13943", Status.ENJOINED, "3:20-cv-05910",
                 id="wechat-uswua"),
    pytest.param("default", D(2021, 6, 9), "wechat_pay", "eo-13971", Status.REVOKED, "86 FR 31423",
                 id="eo13971-revoked"),
    pytest.param("default", TODAY, "tiktok", "eo-13942", Status.REVOKED, "86 FR 31423", id="tiktok-today"),
    pytest.param("government-devices", TODAY, "capcut", "ntgda", Status.IN_FORCE, "OMB M-23-13",
                 id="capcut-ntgda-today"),
    pytest.param("federal-contractors", TODAY, "lemon8", "far-52.204-27", Status.IN_FORCE, "88 FR 36430",
                 id="lemon8-far-today"),
    pytest.param("texas-state", TODAY, "rednote", TX, Status.IN_FORCE, "ch. 620",
                 id="rednote-texas-today"),
]


@pytest.mark.parametrize(("group", "day", "app", "fid", "status", "cite"), STATE_TABLE)
def test_verdicts_report_each_frameworks_status(bundled: Policy, group: str, day: dt.date, app: str, fid: str,
                                                status: Status, cite: str) -> None:
    got = bundled.phases(day, group=group)[app]
    [state] = [s for s in got.legal if s.framework == fid]
    assert state.status is status and cite in state.source, state.describe()
    label, word = bundled.frameworks[fid].label, status.value.replace("_", " ")
    assert state.describe().startswith(f"{label}: {word} since ")


def test_marland_reads_as_the_issue_says(bundled: Policy) -> None:
    [state] = bundled.phases(D(2020, 11, 1))["tiktok"].legal
    assert state.describe().startswith(
        "EO 13942: enjoined since 2020-10-30, Marland v. Trump, E.D. Pa. 2:20-cv-04597")


DECISION_TABLE = [
    # (group, legal status, name, action): the same name, different groups, on 2026-12-02
    pytest.param("default", AS, "www.tiktok.com", Action.BLOCK, id="default-as-ordered-tiktok"),
    pytest.param("default", IN, "www.tiktok.com", Action.ALLOW, id="default-in-force-tiktok"),
    pytest.param("government-devices", IN, "www.tiktok.com", Action.BLOCK, id="government-in-force-tiktok"),
    pytest.param("government-devices", IN, "www.capcut.com", Action.BLOCK, id="government-in-force-capcut"),
    pytest.param("government-devices", IN, "weixin.qq.com", Action.ALLOW, id="government-in-force-wechat"),
    pytest.param("texas-state", IN, "weixin.qq.com", Action.BLOCK, id="texas-in-force-wechat"),
    pytest.param("texas-state", IN, "chat.deepseek.com", Action.BLOCK, id="texas-in-force-deepseek"),
    pytest.param("default", AS, "chat.deepseek.com", Action.ALLOW, id="default-deepseek"),
    pytest.param("texas-state", IN, "mail.qq.com", Action.BLOCK, id="texas-in-force-qq"),
]


@pytest.mark.parametrize(("group", "ls", "name", "action"), DECISION_TABLE)
def test_decisions_per_group(bundled: Policy, group: str, ls: LegalStatus, name: str, action: Action) -> None:
    d = bundled.view(TODAY, legal_status=ls).groups[group].decide_name(name)
    assert d.action is action, d.reason
    assert d.group == group
