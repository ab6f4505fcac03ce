"""The telemetry addon after the deciding addon (proxy_addons/telemetry.py): one
event per logged verdict, the metrics, and the verdict's plain summary left in
``flow.metadata`` so that mitmproxy can save the flow."""

from __future__ import annotations

import io
import json
import socket
from pathlib import Path

import httpx
import pytest
from mitmproxy import exceptions, http
from mitmproxy.io import FlowReader, FlowWriter
from mitmproxy.test import tflow

from proxy_addons.decisions import PolicyDecisions
from proxy_addons.telemetry import Telemetry
from proxy_addons.verdict import KEY

from .helpers import BEFORE, DOWNLOADS, FULL, TIKTOK_STORE_URL, addon_context, run

FLOW_CASES = [
    pytest.param(DOWNLOADS, TIKTOK_STORE_URL, ("block", "451"), id="block-recorded"),
    pytest.param(DOWNLOADS, "http://www.tiktok.com/", ("log", "forwarded"), id="log-recorded"),
    pytest.param(BEFORE, "https://example.org/", None, id="allow-not-recorded"),
]


@pytest.mark.parametrize("at,url,event", FLOW_CASES)
def test_flow_recorded_and_saveable(tmp_path: Path, at: str, url: str, event: tuple[str, str] | None) -> None:
    decisions = PolicyDecisions()
    telemetry = Telemetry(decisions)
    log = tmp_path / "events.jsonl"
    with addon_context(tmp_path, decisions, telemetry, egress_at=at, egress_log=str(log)) as tctx:
        f = tflow.tflow()
        f.request = http.Request.make("GET", url)
        for addon in (decisions, telemetry):
            run(tctx, addon, "request", f)
        telemetry.events.flush()
        events = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if event is None:
            assert events == [] and KEY not in f.metadata
            return
        assert [(e["egress"]["action"], e["egress"]["response"]) for e in events] == [event]
        assert f.metadata[KEY]["event_id"] == events[0]["event"]["id"]
        out = io.BytesIO()
        FlowWriter(out).add(f)  # mitmdump -w: metadata must be plain values
        out.seek(0)
        [saved] = list(FlowReader(out).stream())
        assert saved.metadata[KEY] == f.metadata[KEY]


def test_metrics_served_and_a_busy_port_refused(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    decisions = PolicyDecisions()
    telemetry = Telemetry(decisions)
    with addon_context(tmp_path, decisions, telemetry, egress_at=FULL, egress_log=str(tmp_path / "e.jsonl"),
                       egress_metrics=f"127.0.0.1:{port}") as tctx:
        f = tflow.tflow()
        f.request = http.Request.make("GET", "http://www.tiktok.com/")
        for addon in (decisions, telemetry):
            run(tctx, addon, "request", f)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert 'egress_proxy_decisions_total{action="block",kind="http"} 1.0' in text
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            with pytest.raises(exceptions.OptionsError, match="cannot listen"):
                tctx.configure(telemetry, egress_metrics=f"127.0.0.1:{busy.getsockname()[1]}")
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
