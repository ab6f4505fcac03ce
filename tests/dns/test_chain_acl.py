"""The ACL link alone: which client addresses may ask, and the bound on its memo."""

from __future__ import annotations

import pytest

from dns_blocker.chain.acl import SEEN_LIMIT, Acl

NETS = ("127.0.0.0/8", "10.0.0.0/8", "::1/128", "fd00::/8")


@pytest.mark.parametrize(("client", "want"), [
    pytest.param("127.0.0.1", True, id="loopback"),
    pytest.param("10.200.3.4", True, id="private"),
    pytest.param("192.0.2.1", False, id="outsider"),
    pytest.param("::1", True, id="v6-loopback"),
    pytest.param("fd12::1%eth0", True, id="v6-scoped"),
    pytest.param("2001:db8::1", False, id="v6-outsider"),
    pytest.param("::ffff:10.1.2.3", True, id="v4-mapped"),
    pytest.param("not-an-address", False, id="garbage"),
])
def test_allows(client: str, want: bool) -> None:
    acl = Acl(NETS)
    assert acl.allows(client) is want
    assert acl.allows(client) is want  # the memoised answer is the same
    assert acl.seen[client] is want


@pytest.mark.parametrize("extra", [pytest.param(1, id="one-over"), pytest.param(500, id="many-over")])
def test_memo_is_bounded(extra: int) -> None:
    acl = Acl(NETS)
    for i in range(SEEN_LIMIT + extra):
        acl.allows(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}")
    assert len(acl.seen) <= SEEN_LIMIT
    assert acl.allows("192.0.2.1") is False
