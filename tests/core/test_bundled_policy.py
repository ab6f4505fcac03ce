"""The bundled policy (policies/bundled.yaml and its list files): it loads, the ten apps
of the orders follow the orders' schedules in the default group, the later apps (the
ByteDance apps of the No TikTok on Government Devices Act, the Texas list's apps) are
scheduled only by their own frameworks, it decides the obvious cases, it never blocks a
shared cloud or CDN, and every entry in it cites a declared source.  The legal record
itself (dates, statuses, citations) is pinned in test_legal_record.py."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from policies import BUNDLED, Action, Kind, Phase, Policy, PolicyView, load_policy

D = dt.date
ORDER_APPS = ("tiktok", "wechat", "wechat_pay", "alipay", "camscanner", "qq_wallet", "shareit",
              "tencent_qq", "vmate", "wps_office")
LATER_APPS = ("capcut", "lemon8", "rednote", "deepseek", "webull", "moomoo", "tiger_brokers", "temu",
              "shein")
APPS = ORDER_APPS + LATER_APPS
EO13971_APPS = ("wechat_pay", "alipay", "camscanner", "qq_wallet", "shareit", "tencent_qq",
                "vmate", "wps_office")
EO13971_START = D(2021, 2, 19)
TIKTOK_DOWNLOADS = D(2020, 9, 27)  # announced for 2020-09-20, postponed on 2020-09-19
DAY = dt.timedelta(days=1)
ALL_ON = D(2021, 3, 1)  # every app in `full`


@pytest.fixture(scope="module")
def bundled() -> Policy:
    return load_policy()


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    data = yaml.safe_load(BUNDLED.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def view(policy: Policy, at: dt.date | None = None, phase: Phase | None = None) -> PolicyView:
    return policy.view(at=at, phase=phase)


# --- loading and schedules -------------------------------------------------------------------

def test_bundled_policy_loads_with_its_apps(bundled: Policy) -> None:
    assert bundled.source == str(BUNDLED)
    assert not any(f.implicit for f in bundled.frameworks.values())  # version 2: no implicit framework
    assert tuple(bundled.apps) == APPS
    assert bundled.mode.value == "enforce"
    assert bundled.exempt == ()
    # the list files are part of the policy (reload watches them)
    assert {Path(f).name for f in bundled.files} >= {
        "bundled.yaml", "bytedance.txt", "douyin.txt"}


# The default group, as ordered: the orders' dates, as the project always enforced them.
SCHEDULE_CASES = [
    ("tiktok", D(2020, 9, 20), Phase.NONE, None, None),
    ("tiktok", D(2020, 9, 26), Phase.NONE, None, None),
    ("tiktok", TIKTOK_DOWNLOADS, Phase.DOWNLOADS, TIKTOK_DOWNLOADS, "85 FR 60061"),
    ("tiktok", D(2020, 11, 11), Phase.DOWNLOADS, TIKTOK_DOWNLOADS, "85 FR 60061"),
    ("tiktok", D(2020, 11, 12), Phase.FULL, D(2020, 11, 12), "85 FR 60061"),
    ("wechat", D(2020, 9, 19), Phase.NONE, None, None),
    ("wechat", D(2020, 9, 20), Phase.FULL, D(2020, 9, 20), "3:20-cv-05910"),
    ("wechat", D(2022, 1, 1), Phase.FULL, D(2020, 9, 20), "never published in the FR"),
] + [
    (app, day, phase, since, cite)
    for app in EO13971_APPS
    for day, phase, since, cite in (
        (D(2020, 11, 13), Phase.NONE, None, None),
        (EO13971_START - DAY, Phase.NONE, None, None),
        (EO13971_START, Phase.FULL, EO13971_START, "86 FR 1249"),
    )
]


@pytest.mark.parametrize(("app", "day", "phase", "since", "cite"), SCHEDULE_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in SCHEDULE_CASES])
def test_schedules_follow_the_orders(bundled: Policy, app: str, day: dt.date, phase: Phase,
                                     since: dt.date | None, cite: str | None) -> None:
    got = bundled.phases(day)[app]
    assert (got.phase, got.since) == (phase, since)
    if cite is None:
        assert got.source == "before the schedule starts"
    else:
        assert cite in got.source
        assert got.frameworks == (ORDER_OF[app],)


@pytest.mark.parametrize("app", LATER_APPS, ids=str)
def test_no_order_schedules_the_later_apps(bundled: Policy, app: str) -> None:
    for day in (ALL_ON, D(2026, 12, 2)):
        got = bundled.phases(day)[app]
        assert (got.phase, got.frameworks, got.legal) == (Phase.NONE, (), ())
        assert got.source == "no framework of this group schedules the app"


def test_eo13971_starts_45_days_after_the_order(bundled: Policy) -> None:
    fw = bundled.frameworks["eo-13971"]
    assert fw.status[0].start == D(2021, 1, 5)
    assert set(fw.schedules) == set(EO13971_APPS)
    for app in EO13971_APPS:
        [entry] = fw.schedules[app]
        assert fw.status[0].start + dt.timedelta(days=45) == entry.start == EO13971_START
        assert "45 days" in entry.source and "86 FR 1249" in entry.source


ORDER_OF = {"tiktok": "eo-13942", "wechat": "eo-13943", **{a: "eo-13971" for a in EO13971_APPS}}
LEGAL_CASES = [
    ("tiktok", "13942", "85 FR 48637", D(2020, 8, 6)),
    ("wechat", "13943", "85 FR 48641", D(2020, 8, 6)),
] + [(app, "13971", "86 FR 1249", D(2021, 1, 5)) for app in EO13971_APPS]


@pytest.mark.parametrize(("app", "order", "citation", "signed"), LEGAL_CASES,
                         ids=[c[0] for c in LEGAL_CASES])
def test_each_app_of_the_orders_has_its_order(bundled: Policy, app: str, order: str, citation: str,
                                              signed: dt.date) -> None:
    fw = bundled.frameworks[ORDER_OF[app]]
    assert order in fw.title and fw.label == f"EO {order}"
    assert citation in fw.citations[0] and signed.isoformat() in fw.citations[0]
    assert fw.status[0].start == signed
    # the later history: revoked by EO 14034; the schedule still follows the order
    assert fw.status[-1].status.value == "revoked"
    assert any(e.status.value == "revoked" and "86 FR 31423" in e.source for e in fw.status)
    assert bundled.apps[app].legal_basis is None  # version 2: the record is the framework's


def test_groups(bundled: Policy) -> None:
    orders = ("eo-13942", "eo-13943", "eo-13971")
    assert {g: c.frameworks for g, c in bundled.clients.items()} == {
        "default": orders,
        "government-devices": ("ntgda", *orders),
        "federal-contractors": ("far-52.204-27", *orders),
        "texas-state": ("texas-prohibited-technologies", *orders),
    }
    assert all(c.networks == () and c.mode is None and c.legal_status is None
               for c in bundled.clients.values())
    assert bundled.legal_status.value == "as_ordered"


# --- names -----------------------------------------------------------------------------------

NAME_CASES = [
    # (id, name, kind, day, action, apps)
    ("tiktok-full", "www.tiktok.com", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    ("tiktok-downloads-logged", "www.tiktok.com", Kind.DNS, D(2020, 10, 1), Action.LOG, ("tiktok",)),
    ("tiktok-before", "www.tiktok.com", Kind.DNS, D(2020, 9, 1), Action.ALLOW, ("tiktok",)),
    ("tiktok-sni", "api16-normal-c-useast1a.tiktokv.com", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("tiktok-cdn-glob", "v16-webapp-prime.tiktokcdn-sg.com", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("tiktok-ibyteimg-glob", "p16-tiktok-va.ibyteimg.com", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("tiktok-akamai-alias", "v16-tiktokcdn-com.akamaized.net", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("tiktok-cname-alias", "tiktokv.com.edgesuite.net", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    ("bytedance-list", "www.toutiao.com", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    # CapCut's names are CapCut's, and TikTok's too through lists/bytedance.txt (EO 13942 names
    # ByteDance): the default group still blocks them on TikTok's date, and names both apps.
    ("capcut-com", "www.capcut.com", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok", "capcut")),
    ("capcut-cn", "www.capcut.cn", Kind.SNI, D(2020, 11, 13), Action.BLOCK, ("tiktok", "capcut")),
    ("capcut-api", "passport16-normal-sg.capcutapi.com", Kind.DNS, D(2026, 12, 2), Action.ALLOW, ("capcut",)),
    ("lemon8-default", "www.lemon8-app.com", Kind.DNS, D(2026, 12, 2), Action.ALLOW, ("lemon8",)),
    ("rednote-default", "www.xiaohongshu.com", Kind.DNS, D(2026, 12, 2), Action.ALLOW, ("rednote",)),
    ("temu-default", "www.temu.com", Kind.SNI, D(2026, 12, 2), Action.ALLOW, ("temu",)),
    ("douyin-list", "www.iesdouyin.com", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    ("tiktok-appsflyer-host", "roovza.launches.appsflyersdk.com", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("wechat", "weixin.qq.com", Kind.DNS, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("wechat-sni", "long.weixin.qq.com", Kind.SNI, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("wechat-before", "weixin.qq.com", Kind.DNS, D(2020, 9, 19), Action.ALLOW, ("wechat",)),
    ("wx-qq-com", "wx.qq.com", Kind.DNS, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("wechat-com", "sgshort.wechat.com", Kind.DNS, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    # qq.com is Tencent QQ's, from 2021-02-19; WeChat's names under it are more specific
    ("qq-not-yet", "mail.qq.com", Kind.DNS, D(2020, 9, 21), Action.ALLOW, ("tencent_qq",)),
    ("qq-full", "im.qq.com", Kind.DNS, EO13971_START, Action.BLOCK, ("tencent_qq",)),
    ("qq-wallet-under-qq", "qpay.qq.com", Kind.DNS, EO13971_START, Action.BLOCK, ("qq_wallet",)),
    ("tenpay-shared", "www.tenpay.com", Kind.DNS, EO13971_START, Action.BLOCK, ("wechat_pay", "qq_wallet")),
    ("wechat-pay-under-weixin", "pay.weixin.qq.com", Kind.DNS, D(2020, 9, 21), Action.BLOCK,
     ("wechat", "wechat_pay")),
    # WeChat Pay's own names are WeChat's too: the WeChat order covered payments through WeChat
    ("wechat-pay", "wechatpay.cn", Kind.DNS, D(2020, 9, 20), Action.BLOCK, ("wechat", "wechat_pay")),
    ("wechat-pay-before", "wechatpay.cn", Kind.DNS, D(2020, 9, 19), Action.ALLOW, ("wechat", "wechat_pay")),
    ("wechat-pay-hk", "www.wechatpay.com.hk", Kind.DNS, EO13971_START, Action.BLOCK, ("wechat_pay",)),
    ("wechat-pay-hk-before", "www.wechatpay.com.hk", Kind.DNS, EO13971_START - DAY, Action.ALLOW,
     ("wechat_pay",)),
    ("alipay", "mobilegw.alipay.com", Kind.SNI, EO13971_START, Action.BLOCK, ("alipay",)),
    ("alipay-tld", "render.alipay", Kind.DNS, EO13971_START, Action.BLOCK, ("alipay",)),
    ("camscanner", "www.camscanner.com", Kind.DNS, EO13971_START, Action.BLOCK, ("camscanner",)),
    ("shareit", "api2.wshareit.com", Kind.DNS, EO13971_START, Action.BLOCK, ("shareit",)),
    ("vmate", "campaign.vmate.com", Kind.DNS, EO13971_START, Action.BLOCK, ("vmate",)),
    ("wps", "www.wps.com", Kind.SNI, EO13971_START, Action.BLOCK, ("wps_office",)),
    # broadened from traffic-classification projects (nDPI, OpenAppID) and TikTok's own docs
    ("tiktok-open-api", "open.tiktokapis.com", Kind.SNI, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    ("tiktok-byteicdn", "v16m.byteicdn.com", Kind.DNS, D(2020, 11, 13), Action.BLOCK, ("tiktok",)),
    ("tiktok-footprint-alias", "x.tiktokcdn-us.com.c.footprint.net", Kind.DNS, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("tiktok-akamai-host", "p16-va-default.akamaized.net", Kind.SNI, D(2020, 11, 13), Action.BLOCK,
     ("tiktok",)),
    ("wechat-media-on-qpic", "mmbiz.qpic.cn", Kind.SNI, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("wechat-media-on-qq", "szwbwxsns.video.qq.com", Kind.DNS, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("qpic-other-host-waits-for-qq", "puui.qpic.cn", Kind.DNS, D(2020, 9, 21), Action.ALLOW, ("tencent_qq",)),
    ("wechat-we-chat", "we.chat", Kind.DNS, D(2020, 9, 21), Action.BLOCK, ("wechat",)),
    ("qq-wallet-payqqp", "www.payqqp.com", Kind.DNS, EO13971_START, Action.BLOCK, ("qq_wallet",)),
    ("qq-wallet-pay-qq-com", "pay.qq.com", Kind.DNS, EO13971_START, Action.BLOCK, ("qq_wallet",)),
    ("qq-short-links", "x.qqurl.com", Kind.DNS, EO13971_START, Action.BLOCK, ("tencent_qq",)),
    ("qq-games-opt-in", "www.qqgames.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("shareit-dalyfeds", "api.dalyfeds.com", Kind.DNS, EO13971_START, Action.BLOCK, ("shareit",)),
    ("wps-community", "wps-community.org", Kind.DNS, EO13971_START, Action.BLOCK, ("wps_office",)),
    ("unrelated-example", "example.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("unrelated-google", "www.google.com", Kind.SNI, ALL_ON, Action.ALLOW, ()),
    ("label-boundary-prefix", "nottiktok.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("label-boundary-suffix", "tiktok.com.evil.net", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("label-boundary-sni", "www.nottiktok.com", Kind.SNI, ALL_ON, Action.ALLOW, ()),
    # opt-in groups are off by default
    ("ads-group-off", "api-access.pangolin-sdk-toutiao.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("parent-group-off-tencent", "www.tencent.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("parent-group-off-ant", "www.antgroup.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("parent-group-off-camcard", "www.camcard.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("parent-group-off-kingsoft", "www.kingsoft.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
    ("parent-group-off-ucweb", "www.ucweb.com", Kind.DNS, ALL_ON, Action.ALLOW, ()),
]


@pytest.mark.parametrize(("name", "kind", "day", "action", "apps"), [c[1:] for c in NAME_CASES],
                         ids=[c[0] for c in NAME_CASES])
def test_names(bundled: Policy, name: str, kind: Kind, day: dt.date, action: Action,
               apps: tuple[str, ...]) -> None:
    d = view(bundled, day).decide_name(name, kind)
    assert d.action is action, d.reason
    assert set(d.apps) == set(apps)


# Shared clouds and CDNs: never blocked, whatever the date or phase.
SHARED = [
    "something.myqcloud.com", "cos.ap-guangzhou.myqcloud.com", "x.qcloud.com", "x.tencent-cloud.net",
    "x.tencentcloudapi.com", "x.cdn.dnsv1.com",
    "x.volces.com", "console.volcengine.com", "www.volcengine.com", "x.volccdn.com", "x.byteplus.com",
    "x.bytepluses.com", "www.volcanicengine.com", "x.vcloudapi.com",
    "x.ksyun.com", "x.ks-cdn.com", "x.ksyuncdn.com", "x.kcdnvip.com",
    "x.akamaiedge.net", "x.edgesuite.net", "x.edgekey.net", "x.akamaized.net", "d1.cloudfront.net",
    "global.fastly.net", "x.map.fastly.net", "app.appsflyersdk.com", "x.alicdn.com", "x.aliyuncs.com",
    "x.c.footprint.net", "x.app.link", "x.tlivecdn.com", "x.tlivepush.com", "httpdns.volcengineapi.com",
    "x.bytefcdn-oversea.com", "x.bytetcdn.com", "x.ttdns2.com", "x.byteigtm.com", "x.worldfcdn.com",
    "x.wsdvs.com", "x.fengkongcloud.com", "x.faceulv.com", "x.ttdns3.com", "x.ttdns4.com", "x.akadns.net",
    "x.bytedance.akadns.net",
]
SHARED_VIEWS = [(None, Phase.FULL), (ALL_ON, None), (D(2020, 11, 13), None)]


@pytest.mark.parametrize("name", SHARED, ids=SHARED)
@pytest.mark.parametrize("kind", [Kind.DNS, Kind.SNI], ids=["dns", "sni"])
def test_shared_clouds_are_never_blocked(bundled: Policy, name: str, kind: Kind) -> None:
    for day, phase in SHARED_VIEWS:
        for candidate in (name, name.split(".", 1)[1]):
            d = view(bundled, day, phase).decide_name(candidate, kind)
            assert d.action is Action.ALLOW and d.rule is None, (candidate, day, phase, d.reason)


# --- app stores ------------------------------------------------------------------------------

def _apple(n: int) -> str:
    return f"https://apps.apple.com/us/app/some-app/id{n}"


def _play(pkg: str) -> str:
    return f"https://play.google.com/store/apps/details?id={pkg}&hl=en"


def _fdfe(pkg: str) -> str:
    return f"https://android.clients.google.com/fdfe/delivery?doc={pkg}&ot=1&vc=100"


FIRST_DAY = {"tiktok": TIKTOK_DOWNLOADS, "wechat": D(2020, 9, 20),
             **{a: EO13971_START for a in EO13971_APPS}}
STORE_URLS = [
    ("tiktok", _apple(835599320)), ("tiktok", _play("com.zhiliaoapp.musically")),
    ("tiktok", _fdfe("com.zhiliaoapp.musically.go")),
    ("wechat", _apple(414478124)), ("wechat", _play("com.tencent.mm")),
    # WeChat Pay ships inside WeChat: its listing is WeChat's, blocked on WeChat's date
    ("wechat_pay", "https://itunes.apple.com/lookup?id=414478124"),
    ("alipay", _apple(333206289)), ("alipay", _play("com.eg.android.AlipayGphone")),
    ("camscanner", _apple(388627783)), ("camscanner", _play("com.intsig.camscanner")),
    ("qq_wallet", _play("com.tencent.mobileqq")),
    ("shareit", _apple(725215120)), ("shareit", _fdfe("com.lenovo.anyshare.gps")),
    ("tencent_qq", _apple(444934666)), ("tencent_qq", _play("com.tencent.mobileqq")),
    ("vmate", _play("com.uc.vmate")), ("vmate", _play("com.uc.vmlite")),
    ("wps_office", _apple(1491101673)), ("wps_office", _play("cn.wps.moffice_eng")),
]


@pytest.mark.parametrize(("app", "url"), STORE_URLS, ids=[f"{a}-{u.split('/')[2]}" for a, u in STORE_URLS])
def test_store_listing_blocked_from_its_phase(bundled: Policy, app: str, url: str) -> None:
    first = D(2020, 9, 20) if app == "wechat_pay" else FIRST_DAY[app]
    before = view(bundled, first - DAY).decide_http(url)
    assert before.action is Action.ALLOW, before.reason
    d = view(bundled, first).decide_http(url)
    assert d.action is Action.BLOCK, d.reason
    assert app in d.apps
    assert d.rule is not None and d.rule.startswith("store:")


OTHER_STORE_URLS = [
    # (id, url, day): another app's listing while banned apps are enforced
    ("alipay-while-tiktok-on", _apple(333206289), D(2020, 10, 1)),
    ("qq-while-wechat-on", _play("com.tencent.mobileqq"), D(2020, 9, 21)),
    ("unrelated-apple", _apple(284882215), ALL_ON),
    ("unrelated-play", _play("com.whatsapp"), ALL_ON),
    ("unrelated-fdfe", _fdfe("org.mozilla.firefox"), ALL_ON),
    ("douyin-not-tiktok-store", _play("com.ss.android.ugc.aweme"), ALL_ON),
    ("store-front-page", "https://apps.apple.com/us/charts/iphone", ALL_ON),
]


@pytest.mark.parametrize(("url", "day"), [c[1:] for c in OTHER_STORE_URLS],
                         ids=[c[0] for c in OTHER_STORE_URLS])
def test_other_store_pages_are_allowed(bundled: Policy, url: str, day: dt.date) -> None:
    d = view(bundled, day).decide_http(url)
    assert d.action is Action.ALLOW, d.reason


def test_store_hosts_are_never_blocked_by_name(bundled: Policy) -> None:
    for host in ("apps.apple.com", "itunes.apple.com", "play.google.com", "android.clients.google.com"):
        d = view(bundled, ALL_ON).decide_name(host, Kind.SNI)
        assert d.action is Action.ALLOW and d.inspect, host


def test_tiktok_downloads_phase_blocks_the_store_but_logs_the_app(bundled: Policy) -> None:
    v = view(bundled, D(2020, 10, 1))
    assert v.decide_http(_apple(835599320)).action is Action.BLOCK
    assert v.decide_http("https://www.tiktok.com/foryou").action is Action.LOG


# --- the apps' own download endpoints --------------------------------------------------------

DOWNLOADS = [
    ("wechat", "https://dldir1.qq.com/weixin/Windows/WeChatSetup.exe"),
    ("wechat", "https://dldir1.qq.com/weixin/android/wxweb/updateConfig.xml"),
    ("wechat", "https://webcdn.m.qq.com/spcmgr/download/WeChat3.7.6.44.exe"),
    ("wechat", "https://mac.weixin.qq.com/"),
    ("tencent_qq", "https://dldir1.qq.com/qqfile/qq/QQNT/Mac/QQ_6.9.17.dmg"),
    ("tencent_qq", "https://down.qq.com/qqweb/QQ_1/android_apk/Android_9.0.0_64.apk"),
    ("tencent_qq", "https://downv6.qq.com/qqweb/QQ_1/android_apk/Android_9.0.0_64.apk"),
    ("tencent_qq", "https://im.qq.com/rainbow/ntQQDownload/"),
    ("alipay", "https://t.alipayobjects.com/L1/71/100/and/alipay_wap_main.apk"),
    ("shareit", "http://gshare.cdn.shareitgames.com/sapk/x.apk"),
    ("wps_office", "https://wdl1.pcfg.cache.wpscdn.com/wpsdl/wpsoffice/download/11.2.0.11513/WPSOffice.exe"),
    ("wps_office", "https://package.mac.wpscdn.cn/mac_wps_pkg/6.2.0/WPS_Office_6.2.0(8000)_arm64.dmg"),
    ("wps_office", "https://official-package.wpscdn.cn/wps/download/WPS_Setup_16120.exe"),
]


@pytest.mark.parametrize(("app", "url"), DOWNLOADS, ids=[f"{a}-{u.split('/')[2]}-{i}"
                                                          for i, (a, u) in enumerate(DOWNLOADS)])
def test_download_endpoint_blocked_from_its_phase(bundled: Policy, app: str, url: str) -> None:
    first = FIRST_DAY[app]
    assert view(bundled, first - DAY).decide_http(url).action is Action.ALLOW
    d = view(bundled, first).decide_http(url)
    assert d.action is Action.BLOCK, d.reason
    assert app in d.apps


SHARED_DOWNLOAD_HOSTS = [
    # (id, url, day, action): a shared download host blocks only the app's own paths
    ("dldir1-qq-path-while-wechat-on", "https://dldir1.qq.com/qqfile/qq/QQ9.1.6.exe", D(2020, 9, 21),
     Action.ALLOW),
    ("dldir1-wechat-path", "https://dldir1.qq.com/weixin/mac/mac-release.xml", D(2020, 9, 21), Action.BLOCK),
    ("webcdn-other-app", "https://webcdn.m.qq.com/spcmgr/download/QQMusic.exe", D(2020, 9, 21), Action.ALLOW),
]


@pytest.mark.parametrize(("url", "day", "action"), [c[1:] for c in SHARED_DOWNLOAD_HOSTS],
                         ids=[c[0] for c in SHARED_DOWNLOAD_HOSTS])
def test_shared_download_hosts_judge_by_path(bundled: Policy, url: str, day: dt.date,
                                             action: Action) -> None:
    assert view(bundled, day).decide_http(url).action is action


def test_shared_download_host_sni_asks_for_inspection(bundled: Policy) -> None:
    d = view(bundled, D(2020, 9, 21)).decide_name("dldir1.qq.com", Kind.SNI)
    assert d.action is Action.ALLOW and d.inspect


# --- provenance ------------------------------------------------------------------------------

def _entries(raw: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for app in raw["apps"]:
        for key in ("domains", "hosts", "sni", "downloads", "lists"):
            for i, entry in enumerate(app.get(key) or []):
                yield f"{app['id']}.{key}[{i}]", entry
        for store, ids in (app.get("store") or {}).items():
            for i, entry in enumerate(ids):
                yield f"{app['id']}.store.{store}[{i}]", entry


_CITED = re.compile(r"\[([a-z0-9][^\]\s]*)\]")  # a sources: key cited in a legal source, e.g. [eo14034]


def _legal_sources(raw: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for fid, fw in raw["frameworks"].items():
        for app, entries in fw.get("schedule", {}).items():
            for i, e in enumerate(entries):
                yield f"{fid}.schedule.{app}[{i}]", e["source"]
        for i, e in enumerate(fw.get("status", [])):
            yield f"{fid}.status[{i}]", e["source"]


def test_every_entry_cites_a_declared_source(raw: dict[str, Any]) -> None:
    declared = raw["sources"]
    entries = list(_entries(raw))
    assert len(entries) > 200
    for where, entry in entries:
        assert isinstance(entry, dict), f"{where}: {entry!r} has no source"
        src = entry.get("source")
        keys = src if isinstance(src, list) else [src]
        assert keys and all(isinstance(k, str) and k for k in keys), f"{where}: no source"
        unknown = [k for k in keys if k not in declared]
        assert not unknown, f"{where}: source keys {unknown} are not declared under sources:"
    used = {k for _, e in entries for k in (e["source"] if isinstance(e["source"], list) else [e["source"]])}
    # legal sources, notes and other sources cite keys as [key]
    cited = set(_CITED.findall(json.dumps([raw["frameworks"], declared], default=str)))
    assert set(declared) - used - cited == set(), "declared but unused source keys"


def test_every_legal_entry_cites_a_declared_source(raw: dict[str, Any]) -> None:
    entries = list(_legal_sources(raw))
    assert len(entries) > 40
    for where, source in entries:
        keys = _CITED.findall(source)
        assert keys, f"{where}: {source!r} names no [key] of sources:"
        assert set(keys) <= set(raw["sources"]), f"{where}: {keys}"


REPO_NAMED = ("chinaapps", "dragonapps", "mobileagent", "lzwjava", "webullpy", "ndpi", "odp")
REPO_KEYS = ("v2fly:", "adguard:", "bm7:", "blp:", "brew:", "winget:", "disconnect:", "repcz:", "hagezi:")
LEGAL_KEYS = ("eo1", "commerce:", "court:", "ntgda", "omb:", "far:", "tx:")


def test_every_citation_names_repository_and_commit_or_url(raw: dict[str, Any]) -> None:
    for key, citation in raw["sources"].items():
        assert isinstance(citation, str)
        if key.startswith(REPO_KEYS) or key in REPO_NAMED:
            assert citation.startswith("github.com/") and " @ " in citation, key
        elif key in ("trendmicro", "tiktokdev:api-v2", "gist:cr4zyfl1x"):
            assert citation.startswith("https://"), key
        elif key.startswith("idx:"):
            assert "hit" in citation, key
        else:
            assert key.startswith(LEGAL_KEYS), key
            # a Federal Register cite, a docket, a public law or the document's address
            assert re.search(r" FR |\d:\d\d-cv-\d+|Pub\. L\.|https?://", citation), key


def test_no_low_confidence_entries(raw: dict[str, Any]) -> None:
    for where, entry in _entries(raw):
        if "confidence" in entry:
            assert entry["confidence"] in ("high", "medium"), where


def test_apps_carry_no_schedule_in_version_2(raw: dict[str, Any]) -> None:
    assert raw["version"] == 2
    for app in raw["apps"]:
        assert "schedule" not in app and "legal_basis" not in app, app["id"]


def test_no_source_cites_the_wechat_identification_as_published(raw: dict[str, Any]) -> None:
    """85 FR 60062 is a page of the TikTok identification; the WeChat one was never published."""
    for where, source in _legal_sources(raw):
        assert "60062" not in source, where
    for fw in raw["frameworks"].values():
        assert not any("60062" in c for c in fw.get("citations", []))
    assert "60062" not in raw["sources"]["commerce:wechat"]


def test_opt_in_groups_are_off(raw: dict[str, Any]) -> None:
    assert {g: v["enabled"] for g, v in raw["groups"].items()} == {
        "parent_company": False, "ads_tracking": False}


@pytest.mark.parametrize("name", ["bytedance.txt", "bytedance-ads.txt", "douyin.txt", "tencent.txt",
                                  "tencent-ads.txt"], ids=str)
def test_list_file_headers_cite_their_source(name: str) -> None:
    text = (BUNDLED.parent / "lists" / name).read_text(encoding="utf-8")
    header = [ln for ln in text.splitlines() if ln.startswith("#")]
    assert any(ln.startswith("# Source: github.com/v2fly/domain-list-community") and " last changed in " in ln
               for ln in header), name


# --- the CLI ---------------------------------------------------------------------------------

def test_cli_check_accepts_the_bundled_policy() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "egress_filter.cli", "check", str(BUNDLED)],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"apps ({len(APPS)})" in proc.stdout
    assert "group texas-state: texas-prohibited-technologies, eo-13942, eo-13943, eo-13971 (no networks)" \
        in proc.stdout
    for app in APPS:
        assert app in proc.stdout


# --- the opt-in groups, switched on ----------------------------------------------------------

@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Policy:
    """The bundled policy with both opt-in groups on (their list files are only read then)."""
    target = tmp_path_factory.mktemp("strict")
    shutil.copytree(BUNDLED.parent / "lists", target / "lists")
    text = BUNDLED.read_text(encoding="utf-8")
    assert text.count("    enabled: false\n") == 2
    (target / "bundled.yaml").write_text(text.replace("    enabled: false\n", "    enabled: true\n"),
                                         encoding="utf-8")
    return load_policy(target / "bundled.yaml")


STRICT_CASES = [
    ("tencent-list", "www.tencent.com", ("tencent_qq",)),
    ("tencent-ads-list", "mi.gdt.qq.com", ("tencent_qq",)),
    ("bytedance-ads-list", "api-access.pangolin-sdk-toutiao.com", ("tiktok",)),
    ("ant-group", "www.antgroup.com", ("alipay",)),
    ("camcard", "www.camcard.com", ("camscanner",)),
    ("kingsoft", "www.kingsoft.com", ("wps_office",)),
    ("ucweb", "www.ucweb.com", ("vmate",)),
    ("tencent-myapp", "sj.myapp.com", ("tencent_qq",)),
    ("wechat-tracing", "btrace.qq.com", ("wechat",)),
]


@pytest.mark.parametrize(("name", "apps"), [c[1:] for c in STRICT_CASES], ids=[c[0] for c in STRICT_CASES])
def test_opt_in_groups_block_when_enabled(strict: Policy, name: str, apps: tuple[str, ...]) -> None:
    d = strict.view(at=ALL_ON).decide_name(name)
    assert d.action is Action.BLOCK, d.reason
    assert set(apps) <= set(d.apps)


@pytest.mark.parametrize("name", SHARED, ids=SHARED)
def test_opt_in_groups_still_spare_shared_clouds(strict: Policy, name: str) -> None:
    d = strict.view(phase=Phase.FULL).decide_name(name, Kind.SNI)
    assert d.action is Action.ALLOW and d.rule is None, d.reason
