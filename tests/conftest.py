"""Marks, in one place, the tests that `make test` runs on both ends of the matrix.

`.ci/test-matrix` runs the whole suite on the oldest supported combination
(Python 3.11, mitmproxy 11) and, on the newest Python the machine has, only
the tests marked ``matrix``: those whose outcome can change with the
interpreter or with mitmproxy's and the event loop's versions.  Those are
the proxy (mitmproxy's API moved between 11 and 12), the client groups and
`run` (they start the proxy), the pure core (dataclass, enum and typing
behaviour), the CLI and its exit codes, reading mitmproxy's flow files, and
the DNS server's own end-to-end table (asyncio and uvloop).  Tests whose
subject is a peer engine (Unbound, BIND, PowerDNS, dnsmasq, Squid, tshark
cross-checks), the replay decoders and the attack tables run once: their
result does not depend on which Python drives them, and running them twice
took `make test` past half an hour.  `MATRIX=full make test` runs everything
on both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

# Paths (directories or files) relative to tests/.
MATRIX = (
    "core",
    "proxy",
    "groups",
    "security/test_proxy_host_header.py",
    "security/test_proxy_connection_flood.py",
    "security/test_proxy_socks_destination.py",
    "dns/test_e2e.py",
    "dns/test_cache_clock.py",  # the resolver in-process on the running Python's asyncio
    "dns/test_batched.py",
    "dns/test_mmsg.py",
    "dns/test_encrypted.py",  # ssl: Python 3.13 verifies certificates more strictly
    "replay/test_cli.py",
    "test_run.py",
    "test_layers.py",
    "test_one_verdict.py",  # starts the proxy
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    roots = tuple(HERE / p for p in MATRIX)
    for item in items:
        path = Path(str(item.path))
        if any(path == r or r in path.parents for r in roots):
            item.add_marker(pytest.mark.matrix)
