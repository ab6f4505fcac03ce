"""The proxy tests' runner: a proxy counts as started only once it listens itself.

Under xdist another test could take the port ``free_port`` gave the proxy (a PAC server did,
once) and answer curl with its own 404 in the proxy's place.  The runner must see that the
listener is not the proxy's and start it again on another port."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from . import conftest
from .conftest import _listeners, _owns


@pytest.mark.parametrize("taken", [pytest.param(1, id="first-port-taken"), pytest.param(2, id="two-taken")])
def test_a_port_held_by_another_listener_is_not_the_proxy(run_proxy: Any, monkeypatch: pytest.MonkeyPatch,
                                                          taken: int) -> None:
    squatters = []
    for _ in range(taken):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen()
        squatters.append(s)
    ports = [s.getsockname()[1] for s in squatters]
    real = conftest.free_port
    given = iter(ports)
    monkeypatch.setattr(conftest, "free_port", lambda: next(given, None) or real())
    try:
        proxy = run_proxy()
    finally:
        for s in squatters:
            s.close()
    assert proxy.port not in ports  # the old runner took the squatter's listener for the proxy
    assert _owns(proxy.process.pid, _listeners(proxy.port))
