"""The proxy's access log (``--log-all``): allowed requests and connections are
written too, through the one event path, with the ECS fields a SIEM expects
(``http.request.method``, ``http.response.status_code``,
``user_agent.original``, ``observer.hostname``).  Real curl through a real
``egress-filter proxy``; ``loopback_dns.py`` sends every dial to the local
origins (port 80 to the plain one, 443 to the TLS one)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import Origin, PlainOrigin, curl_status, free_port, start_routed
from .helpers import FULL, write_policy

pytestmark = pytest.mark.e2e

AGENT = 'access-log-test/1.0 "quoted" <x>'


@dataclass(frozen=True)
class Case:
    url: str
    flags: tuple[str, ...]  # proxy flags besides the policy and --at
    curl: tuple[str, ...] = ()
    status: int | None = None  # what curl saw: CONNECT status when it failed, else the response
    # dotted ECS field -> value, of the one event; None: no event at all
    event: dict[str, Any] | None = field(default=None)
    absent: tuple[str, ...] = ()  # dotted fields that must not be there


def get(ev: dict[str, Any], dotted: str) -> Any:
    node: Any = ev
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return KeyError
        node = node[key]
    return node


HOST = socket.gethostname()
CASES = [
    pytest.param(Case("http://allowed.example/hello", ("--log-all",), status=200, event={
        "event.action": "allow", "egress.kind": "http", "egress.response": "forwarded",
        "url.full": "http://allowed.example/hello", "http.request.method": "GET",
        "http.response.status_code": 200, "user_agent.original": AGENT, "observer.hostname": HOST,
        "observer.type": "proxy", "destination.domain": "allowed.example",
    }), id="allowed-http-get"),
    pytest.param(Case("http://allowed.example/form", ("--log-all",), curl=("-d", "a=1"), status=200, event={
        "event.action": "allow", "http.request.method": "POST", "http.response.status_code": 200,
    }), id="allowed-http-post"),
    pytest.param(Case("https://allowed.example/tls", ("--log-all",), status=200, event={
        "event.action": "allow", "egress.kind": "sni", "egress.response": "passthrough",
        "tls.client.server_name": "allowed.example", "observer.hostname": HOST,
    }, absent=("http", "user_agent", "url")), id="allowed-tls-passthrough-connection"),
    pytest.param(Case("http://www.tiktok.com/video", ("--log-all",), status=451, event={
        "event.action": "block", "egress.response": "451", "http.request.method": "GET",
        "http.response.status_code": 451, "user_agent.original": AGENT, "observer.hostname": HOST,
    }), id="blocked-http-get"),
    pytest.param(Case("https://www.tiktok.com/", ("--log-all",), status=451, event={
        "event.action": "block", "egress.response": "451", "http.request.method": "CONNECT",
        "http.response.status_code": 451, "user_agent.original": AGENT,
    }), id="blocked-connect"),
    pytest.param(Case("http://www.tiktok.com/video", (), status=451, event={
        "event.action": "block", "http.request.method": "GET", "http.response.status_code": 451,
        "observer.hostname": HOST,
    }), id="blocked-without-log-all-has-the-fields"),
    pytest.param(Case("http://allowed.example/hello", (), status=200, event=None),
                 id="allowed-without-log-all-not-logged"),
    pytest.param(Case("http://allowed.example:{closed}/gone", ("--log-all",), status=502, event={
        "event.action": "allow", "egress.response": "error", "http.request.method": "GET",
    }), id="allowed-origin-down-logged-as-error"),
]


@pytest.mark.parametrize("case", CASES)
def test_access_log_fields(run_proxy: Any, origin: Origin, plain_origin: PlainOrigin, tmp_path: Path,
                           case: Case) -> None:
    proxy = start_routed(run_proxy, origin, plain_origin, "--policy", str(write_policy(tmp_path)),
                         "--at", FULL, *case.flags)
    status, stderr = curl_status(proxy, origin.pki.ca_cert, case.url.format(closed=free_port()),
                                 "-A", AGENT, *case.curl)
    assert status == case.status, stderr
    if case.event is None:
        assert proxy.events() == []
        return
    [ev] = proxy.events(1)
    got = {k: get(ev, k) for k in case.event}
    assert got == case.event
    for name in case.absent:
        assert name not in ev
