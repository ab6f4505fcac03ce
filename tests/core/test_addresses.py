"""The one reader and writer of IP literals and ``host:port`` text (policies/addresses.py)."""

from __future__ import annotations

import pytest

from policies.addresses import AddressError, authority_host, is_ip, join_hostport, split_hostport

# (text, default_port, default_host, need_ip) → (host, port)
SPLIT_CASES = [
    pytest.param("1.2.3.4", 53, None, True, ("1.2.3.4", 53), id="ipv4-default-port"),
    pytest.param("1.2.3.4:5353", 53, None, True, ("1.2.3.4", 5353), id="ipv4-port"),
    pytest.param("  1.2.3.4:53 ", 53, None, True, ("1.2.3.4", 53), id="whitespace"),
    pytest.param("::1", 53, None, True, ("::1", 53), id="ipv6-bare-default-port"),
    pytest.param("[::1]", 53, None, True, ("::1", 53), id="ipv6-bracketed-default-port"),
    pytest.param("[2001:db8::1]:853", 53, None, True, ("2001:db8::1", 853), id="ipv6-bracketed-port"),
    pytest.param("0.0.0.0:0", 53, None, True, ("0.0.0.0", 0), id="port-zero"),
    pytest.param("1.2.3.4:65535", None, None, True, ("1.2.3.4", 65535), id="port-max"),
    pytest.param("localhost:8080", None, None, False, ("localhost", 8080), id="name-port"),
    pytest.param(":3128", None, "127.0.0.1", False, ("127.0.0.1", 3128), id="empty-host-default"),
    pytest.param("[]:3128", None, "127.0.0.1", False, ("127.0.0.1", 3128), id="empty-brackets-default"),
    pytest.param("[::1]:9153", None, None, True, ("::1", 9153), id="ipv6-port-required"),
]


@pytest.mark.parametrize("text,default_port,default_host,need_ip,want", SPLIT_CASES)
def test_split_hostport(text: str, default_port: int | None, default_host: str | None, need_ip: bool,
                        want: tuple[str, int]) -> None:
    assert split_hostport(text, default_port, default_host=default_host, need_ip=need_ip) == want


# (text, default_port, default_host, need_ip) → the error names the text and says why
BAD_SPLIT_CASES = [
    pytest.param("dns.google", 53, None, True, "is not an IP address", id="name-where-ip-needed"),
    pytest.param("1.2.3.4:dns", 53, None, True, "'dns' is not a port", id="port-name"),
    pytest.param("1.2.3.4:70000", 53, None, True, "'70000' is not a port", id="port-range"),
    pytest.param("1.2.3.4:-1", 53, None, True, "'-1' is not a port", id="port-negative"),
    pytest.param("host:", None, None, False, "'' is not a port", id="port-empty"),
    pytest.param("[::1", 53, None, True, "missing ']'", id="unclosed-bracket"),
    pytest.param("[::1]x", 53, None, True, "expected ':PORT' after ']'", id="junk-after-bracket"),
    pytest.param("8080", None, None, False, "expected HOST:PORT", id="port-required"),
    pytest.param("::1:8080", None, None, False, "[ADDRESS]:PORT", id="ipv6-port-needs-brackets"),
    pytest.param(":8080", None, None, False, "no host", id="host-required"),
    pytest.param("", 53, None, False, "no host", id="empty"),
]


@pytest.mark.parametrize("text,default_port,default_host,need_ip,why", BAD_SPLIT_CASES)
def test_split_hostport_rejects(text: str, default_port: int | None, default_host: str | None, need_ip: bool,
                                why: str) -> None:
    with pytest.raises(AddressError) as info:
        split_hostport(text, default_port, default_host=default_host, need_ip=need_ip)
    assert why in str(info.value)
    assert f"'{text.strip()}'" in str(info.value)


JOIN_CASES = [
    pytest.param("1.2.3.4", 53, "1.2.3.4:53", id="ipv4"),
    pytest.param("::1", 53, "[::1]:53", id="ipv6-bracketed"),
    pytest.param("dns.google", 853, "dns.google:853", id="name"),
]


@pytest.mark.parametrize("host,port,text", JOIN_CASES)
def test_join_hostport_round_trips(host: str, port: int, text: str) -> None:
    assert join_hostport(host, port) == text
    assert split_hostport(text) == (host, port)


IP_CASES = [
    pytest.param("192.0.2.7", True, id="ipv4"),
    pytest.param("2001:db8::1", True, id="ipv6"),
    pytest.param("fe80::1%eth0", True, id="ipv6-scope"),
    pytest.param("::ffff:192.0.2.7", True, id="ipv4-mapped"),
    pytest.param("[::1]", False, id="brackets-are-not-part"),
    pytest.param("www.tiktok.com", False, id="name"),
    pytest.param("1.2.3.4.5", False, id="five-octets"),
    pytest.param("tiktok.com1", False, id="name-ending-in-digit"),
    pytest.param("", False, id="empty"),
]


@pytest.mark.parametrize("text,want", IP_CASES)
def test_is_ip(text: str, want: bool) -> None:
    assert is_ip(text) is want


AUTHORITY_CASES = [
    pytest.param("www.tiktok.com", "www.tiktok.com", id="name"),
    pytest.param("www.tiktok.com:443", "www.tiktok.com", id="name-port"),
    pytest.param("www.tiktok.com:80:80", "www.tiktok.com", id="first-colon"),
    pytest.param("192.0.2.7:80", "192.0.2.7", id="ipv4-port"),
    pytest.param("[2001:db8::1]:443", "2001:db8::1", id="ipv6-bracketed"),
    pytest.param("2001:db8::1", "2001:db8::1", id="ipv6-bare"),
    pytest.param(":80", "", id="port-only"),
]


@pytest.mark.parametrize("value,host", AUTHORITY_CASES)
def test_authority_host(value: str, host: str) -> None:
    assert authority_host(value) == host
