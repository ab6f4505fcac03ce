"""Client names (issue 14): a hosts file or a dnsmasq leases file names the asking clients.

The parser's table of lines, then a real resolver process: its events carry
the name in ``source.domain``, the opt-in metric counts per name (on the
UDP fast path too), a client without a name stays unnamed, and a rewritten
file (hosts → leases) is picked up while the resolver runs.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from dns_blocker.client_names import RECHECK, ClientNames, parse

from .authority import Authority
from .conftest import TEST_DAY, ResolverProcess

Start = Callable[..., ResolverProcess]

# (id, file line, address -> name it gives, lines skipped)
LINES = [
    pytest.param("192.168.1.23 laptop-anna", {"192.168.1.23": "laptop-anna"}, 0, id="hosts"),
    pytest.param("192.168.1.23 Laptop-Anna anna.lan  # her laptop", {"192.168.1.23": "laptop-anna"}, 0,
                 id="hosts-alias-comment-case"),
    pytest.param("fd00::23 phone-bob", {"fd00::23": "phone-bob"}, 0, id="hosts-ipv6"),
    pytest.param("1767225600 aa:bb:cc:dd:ee:ff 192.168.1.40 tv-living 01:aa:bb:cc:dd:ee:ff",
                 {"192.168.1.40": "tv-living"}, 0, id="dnsmasq-lease"),
    pytest.param("1767225600 aa:bb:cc:dd:ee:ff 192.168.1.41 * *", {}, 1, id="dnsmasq-lease-without-name"),
    pytest.param("192.168.1.50 <script>alert(1)</script>", {}, 1, id="markup-is-not-a-name"),
    pytest.param("192.168.1.51 " + "a" * 64, {}, 1, id="name-too-long"),
    pytest.param("not-an-address laptop", {}, 1, id="no-address"),
    pytest.param("# only a comment", {}, 0, id="comment"),
    pytest.param("::ffff:192.168.1.60 mapped-pc", {"192.168.1.60": "mapped-pc"}, 0, id="ipv4-mapped"),
]


@pytest.mark.parametrize(("line", "names", "skipped"), LINES)
def test_parse(line: str, names: dict[str, str], skipped: int) -> None:
    assert parse(line + "\n") == (names, skipped)


def client_metric(r: ResolverProcess, client: str) -> float:
    assert r.metrics_url
    text = httpx.get(r.metrics_url, timeout=5).text
    m = re.search(rf'^egress_dns_client_queries_total{{client="{re.escape(client)}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def test_events_and_metrics_name_the_client(resolver: Start, authority: Authority,
                                            write_policy: Callable[..., Path], tmp_path: Path) -> None:
    names = tmp_path / "hosts"
    names.write_text("127.0.0.1 laptop-anna\n")
    policy = write_policy(settings=f"settings:\n  dns:\n    client_names: '{names}'\n"
                                   "    client_name_metrics: true\n")
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--metrics", "127.0.0.1:0")
    for _ in range(3):  # the second and third come from the UDP fast path (the hot table)
        r.ask("www.tiktok.test")
    r.ask("www.tiktok.test", source="127.0.0.5")
    events = r.events(expect=4, timeout=20)  # generous: a loaded CI machine writes late
    assert [e["source"].get("domain") for e in events] == ["laptop-anna"] * 3 + [None]
    assert events[3]["source"]["ip"] == "127.0.0.5"
    assert client_metric(r, "laptop-anna") == 3
    assert client_metric(r, "unknown") == 1

    # The leases file replaces the hosts file: the new name shows once the file is looked at again.
    names.write_text("1767225600 aa:bb:cc:dd:ee:ff 127.0.0.1 desk-pc *\n")
    deadline = time.monotonic() + 20
    seen: str | None = None
    while time.monotonic() < deadline and seen != "desk-pc":
        before = len(r.events())
        r.ask(f"n{int(time.monotonic() * 1000)}.tiktok.test")
        seen = r.events(expect=before + 1, timeout=10)[-1]["source"].get("domain")
        time.sleep(0.2)
    assert seen == "desk-pc"


def test_without_the_opt_in_there_is_no_client_label(resolver: Start, authority: Authority,
                                                     write_policy: Callable[..., Path],
                                                     tmp_path: Path) -> None:
    names = tmp_path / "hosts"
    names.write_text("127.0.0.1 laptop-anna\n")
    policy = write_policy(settings=f"settings:\n  dns:\n    client_names: '{names}'\n")
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address,
                 "--metrics", "127.0.0.1:0")
    r.ask("www.tiktok.test")
    assert r.events(expect=1)[0]["source"]["domain"] == "laptop-anna"
    assert r.metrics_url
    assert "egress_dns_client_queries_total{" not in httpx.get(r.metrics_url, timeout=5).text


def test_a_missing_file_is_logged_not_fatal(resolver: Start, authority: Authority,
                                            write_policy: Callable[..., Path], tmp_path: Path) -> None:
    policy = write_policy(settings=f"settings:\n  dns:\n    client_names: '{tmp_path / 'none'}'\n")
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address)
    r.ask("www.tiktok.test")
    assert "source" in r.events(expect=1)[0] and "domain" not in r.events()[0]["source"]
    assert "client names:" in r.stderr() and "cannot open" in r.stderr()


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


RECHECK_CASES = [
    # (steps: (seconds after the first read, new file text or None, the name 127.0.0.1 gets))
    pytest.param([(0.0, None, "laptop-anna"), (RECHECK - 0.01, "127.0.0.1 desk-pc\n", "laptop-anna"),
                  (RECHECK, None, "desk-pc")], id="new-name-after-the-recheck-interval"),
    pytest.param([(1.0, "127.0.0.1 desk-pc\n", "laptop-anna"), (RECHECK + 1.0, None, "desk-pc"),
                  (RECHECK + 2.0, "127.0.0.1 printer-xl\n", "desk-pc"),
                  (2 * RECHECK + 1.0, None, "printer-xl")], id="each-interval-looks-once"),
    pytest.param([(RECHECK, "", None)], id="emptied-file-forgets-the-name"),
]


@pytest.mark.parametrize("steps", RECHECK_CASES)
def test_names_file_is_looked_at_again_on_the_clock(
        tmp_path: Path, steps: list[tuple[float, str | None, str | None]]) -> None:
    """The hosts/leases file is read again once RECHECK seconds have passed on the injected clock."""
    path = tmp_path / "hosts"
    path.write_text("127.0.0.1 laptop-anna\n")
    clock = _Clock()
    names = ClientNames(str(path), clock=clock)
    start = clock.now
    for at, text, want in steps:
        if text is not None:
            path.write_text(text)
        clock.now = start + at
        assert names.get("127.0.0.1") == want, f"at +{at}s"
