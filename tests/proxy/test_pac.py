"""The proxy auto-config file (proxy_addons/pac.py), served by a real
``egress-filter proxy``, fetched with a real HTTP client, and evaluated as
JavaScript by headless Chromium: once by calling ``FindProxyForURL`` for a
table of URLs (with the standard PAC helper functions defined), once by
Chromium's own PAC engine (``--proxy-pac-url``) routing real page loads."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import REPO, Origin, PlainOrigin, Proxy, ProxyRunner, free_port
from .helpers import FULL, write_policy

pytestmark = pytest.mark.e2e

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DIRECT = ("--pac-direct", "corp.example", "--pac-direct", "100.64.0.0/10", "--pac-direct", "2001:db8:aa::/48")

# The PAC helpers of the Netscape specification, as Mozilla's ascii_pac_utils.js defines them
# (isInNet on IP literals only: the script never resolves names).
PAC_HELPERS = """
function convert_addr(ipchars) {
  var bytes = ipchars.split('.');
  return ((bytes[0] & 0xff) << 24) | ((bytes[1] & 0xff) << 16) | ((bytes[2] & 0xff) << 8) | (bytes[3] & 0xff);
}
function isInNet(ipaddr, pattern, maskstr) {
  var test = /^(\\d{1,4})\\.(\\d{1,4})\\.(\\d{1,4})\\.(\\d{1,4})$/.exec(ipaddr);
  if (test == null) throw new Error('isInNet on a name: ' + ipaddr);
  return (convert_addr(ipaddr) & convert_addr(maskstr)) == (convert_addr(pattern) & convert_addr(maskstr));
}
function isPlainHostName(host) { return host.search('\\\\.') == -1; }
function dnsDomainIs(host, domain) {
  return host.length >= domain.length && host.substring(host.length - domain.length) == domain;
}
function dnsResolve(host) { throw new Error('the PAC file must not resolve ' + host); }
"""


@pytest.fixture(scope="module")
def pac_proxy(tmp_path_factory: pytest.TempPathFactory, origin: Origin) -> Iterator[tuple[Proxy, int]]:
    """One proxy serving its PAC file, shared by the cases (none changes it)."""
    directory = tmp_path_factory.mktemp("pac")
    runner = ProxyRunner(directory, origin)
    port = free_port()
    try:
        yield runner.start("--policy", str(write_policy(directory)), "--at", FULL,
                           "--pac-listen", f"127.0.0.1:{port}", *DIRECT), port
    finally:
        runner.stop_all()


FETCH_CASES = [
    pytest.param("/proxy.pac", 200, id="proxy-pac"),
    pytest.param("/wpad.dat", 200, id="wpad-dat"),
    pytest.param("/wpad.dat?v=2", 200, id="query-ignored"),
    pytest.param("/other", 404, id="other-path-404"),
]


@pytest.mark.parametrize("path,status", FETCH_CASES)
def test_pac_is_served(pac_proxy: tuple[Proxy, int], path: str, status: int) -> None:
    proxy, port = pac_proxy
    r = httpx.get(f"http://127.0.0.1:{port}{path}", timeout=10)
    assert r.status_code == status
    if status == 200:
        assert r.headers["content-type"] == "application/x-ns-proxy-autoconfig"
        assert f'"PROXY 127.0.0.1:{proxy.port}"' in r.text and "function FindProxyForURL" in r.text


ADVERTISED_CASES = [
    # proxy flags, Host header the client sends, the PROXY the file must name
    pytest.param(("--pac-proxy", "proxy.corp.example:3128"), None, "proxy.corp.example:3128",
                 id="pac-proxy-flag"),
    pytest.param(("--pac-proxy", "[2001:db8::8]:3128"), None, "[2001:db8::8]:3128", id="pac-proxy-v6"),
    # listening on every address: the name the client reached the PAC server by
    pytest.param(("--set", "listen_host=0.0.0.0"), "proxy.lan:9999", "proxy.lan:{port}", id="wildcard-host"),
    pytest.param(("--set", "listen_host=0.0.0.0"), 'evil"host', "127.0.0.1:{port}", id="wildcard-bad-host"),
]


@pytest.mark.parametrize("flags,host,advertised", ADVERTISED_CASES)
def test_pac_advertises_the_configured_proxy(run_proxy: Any, tmp_path: Path, flags: tuple[str, ...],
                                             host: str | None, advertised: str) -> None:
    port = free_port()
    proxy = run_proxy("--policy", str(write_policy(tmp_path)), "--pac-listen", str(port), *flags)  # loopback
    r = httpx.get(f"http://127.0.0.1:{port}/proxy.pac", timeout=10, headers={"host": host} if host else {})
    assert r.status_code == 200 and f'"PROXY {advertised.format(port=proxy.port)}"' in r.text


BAD_CASES = [
    pytest.param(("--pac-direct", "not a domain!"), "egress_pac_direct", id="bad-direct"),
    pytest.param(("--pac-direct", "x\";alert(1);//"), "egress_pac_direct", id="script-injection"),
    pytest.param(("--pac-listen", "127.0.0.1:http"), "egress_pac_listen", id="bad-listen"),
    pytest.param(("--pac-listen", "9", "--pac-proxy", "a b:1"), "egress_pac_proxy", id="bad-proxy"),
]


@pytest.mark.parametrize("flags,option", BAD_CASES)
def test_bad_pac_options_exit_1(tmp_path: Path, flags: tuple[str, ...], option: str) -> None:
    base = ("--pac-listen", f"127.0.0.1:{free_port()}") if "--pac-listen" not in flags else ()
    out = subprocess.run(
        [sys.executable, "-m", "egress_filter.cli", "proxy", "--listen", f"127.0.0.1:{free_port()}",
         "--confdir", str(tmp_path / "conf"), "--policy", str(write_policy(tmp_path)), *base, *flags],
        capture_output=True, text=True, timeout=60, cwd=REPO, stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 1 and option in out.stderr, out.stderr[-2000:]


def chromium(tmp_path: Path, *args: str) -> Any:
    if not (Path(CHROMIUM).exists() and Path(DRIVER).exists()):
        pytest.fail("chromium and chromium-driver are required (.ci/install-tools installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", f"--user-data-dir={tmp_path / 'chromium'}", *args):
        opts.add_argument(arg)
    drv = webdriver.Chrome(service=Service(DRIVER), options=opts)
    drv.set_page_load_timeout(30)
    return drv


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    drv = chromium(tmp_path_factory.mktemp("pac-browser"))
    try:
        yield drv
    finally:
        drv.quit()


P = "PROXY"
FIND_CASES = [
    pytest.param("http://intranet/", "intranet", "DIRECT", id="single-label"),
    pytest.param("http://localhost:3000/", "localhost", "DIRECT", id="localhost"),
    pytest.param("http://127.0.0.1/", "127.0.0.1", "DIRECT", id="loopback"),
    pytest.param("http://10.1.2.3/", "10.1.2.3", "DIRECT", id="rfc1918-10"),
    pytest.param("http://172.16.5.4/", "172.16.5.4", "DIRECT", id="rfc1918-172"),
    pytest.param("http://172.32.0.1/", "172.32.0.1", P, id="outside-172-16-12"),
    pytest.param("http://192.168.1.1/", "192.168.1.1", "DIRECT", id="rfc1918-192"),
    pytest.param("http://169.254.169.254/latest", "169.254.169.254", "DIRECT", id="link-local"),
    pytest.param("http://100.64.7.1/", "100.64.7.1", "DIRECT", id="configured-cidr"),
    pytest.param("http://100.128.0.1/", "100.128.0.1", P, id="outside-configured-cidr"),
    pytest.param("http://8.8.8.8/", "8.8.8.8", P, id="public-ip"),
    pytest.param("http://[::1]/", "::1", "DIRECT", id="v6-loopback"),
    pytest.param("http://[fe80::1]/", "fe80::1", "DIRECT", id="v6-link-local"),
    pytest.param("http://[fd00:1::5]/", "fd00:1::5", "DIRECT", id="v6-unique-local"),
    pytest.param("http://[2001:db8:aa::5]/", "2001:db8:aa::5", "DIRECT", id="v6-configured"),
    pytest.param("http://[2001:db8:ab::5]/", "2001:db8:ab::5", P, id="v6-outside-configured"),
    pytest.param("http://[2606:4700::1111]/", "[2606:4700::1111]", P, id="v6-public-bracketed"),
    pytest.param("https://wiki.corp.example/", "wiki.corp.example", "DIRECT", id="configured-domain-sub"),
    pytest.param("https://corp.example/", "corp.example", "DIRECT", id="configured-domain-apex"),
    pytest.param("https://WIKI.Corp.Example./", "WIKI.Corp.Example.", "DIRECT", id="configured-case-dot"),
    pytest.param("https://notcorp.example/", "notcorp.example", P, id="suffix-not-a-subdomain"),
    pytest.param("https://www.tiktok.com/", "www.tiktok.com", P, id="public-name"),
    pytest.param("https://10.1.2.3.nip.io/", "10.1.2.3.nip.io", P, id="ip-looking-name"),
]


@pytest.mark.parametrize("url,host,expected", FIND_CASES)
def test_find_proxy_for_url_in_chromium(pac_proxy: tuple[Proxy, int], browser: Any, url: str, host: str,
                                        expected: str) -> None:
    proxy, port = pac_proxy
    script = httpx.get(f"http://127.0.0.1:{port}/proxy.pac", timeout=10).text
    browser.get("about:blank")
    got = browser.execute_script(
        PAC_HELPERS + script + "\nreturn FindProxyForURL(arguments[0], arguments[1]);", url, host)
    assert got == (f"PROXY 127.0.0.1:{proxy.port}" if expected == P else expected)


LOAD_CASES = [
    # path on the page server, host in the URL, what the page shows
    pytest.param("intranet", "origin intranet/pac-case", id="single-label-direct"),
    pytest.param("wiki.corp.example", "origin wiki.corp.example/pac-case", id="configured-domain-direct"),
    pytest.param("www.tiktok.com", "451 Unavailable For Legal Reasons", id="public-name-through-the-proxy"),
]


@pytest.mark.parametrize("host,shown", LOAD_CASES)
def test_chromium_routes_by_the_pac_file(pac_proxy: tuple[Proxy, int], plain_origin: PlainOrigin,
                                         tmp_path: Path, host: str, shown: str) -> None:
    """Chromium's own PAC engine: DIRECT names reach the page server (Chromium maps
    them to 127.0.0.1), the rest go through the proxy, which blocks www.tiktok.com."""
    from selenium.webdriver.common.by import By

    proxy, port = pac_proxy
    drv = chromium(tmp_path, f"--proxy-pac-url=http://127.0.0.1:{port}/proxy.pac",
                   "--host-resolver-rules=MAP intranet 127.0.0.1, MAP *.corp.example 127.0.0.1")
    try:
        drv.get(f"http://{host}:{plain_origin.port}/pac-case")
        text = drv.find_element(By.TAG_NAME, "body").text
    finally:
        drv.quit()
    assert shown in text
    page = f"http://{host}:{plain_origin.port}/pac-case"
    blocked = {e["url"]["full"] for e in proxy.events() if e["egress"]["action"] == "block"}
    assert (page in blocked) is ("451" in shown)  # the proxy saw it only when the PAC said so
