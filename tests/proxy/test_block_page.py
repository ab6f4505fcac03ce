"""The block-page addon alone (proxy_addons/block_page.py): it fills in the empty
451 the deciding addon left, from the verdict in ``flow.metadata``, and touches
nothing else."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from policies import Action, Decision, Observation, Phase
from proxy_addons.block_page import DEFAULT_BLOCKED_BY, BlockPage
from proxy_addons.verdict import KEY, new_verdict, placeholder_451

from .helpers import run

BLOCK = Decision(Action.BLOCK, apps=("tiktok",), app_names=("TikTok <script>",), phase=Phase.FULL,
                 rule="domain:tiktok.com", reason="TikTok is in its full phase")


def blocked_flow(accept: str | None) -> http.HTTPFlow:
    f = tflow.tflow()
    f.request = http.Request.make("GET", "https://www.tiktok.com/", b"", {"accept": accept} if accept else {})
    v = new_verdict(BLOCK, Observation.http("https://www.tiktok.com/", "www.tiktok.com", "10.0.0.1"),
                    response="451")
    assert v.event_id is not None
    f.response = placeholder_451(v.event_id)
    f.metadata[KEY] = v
    return f


PAGE_CASES = [
    pytest.param("text/html,*/*;q=0.8", "text/html", id="browser-html"),
    pytest.param("application/json", "application/json", id="api-json"),
    pytest.param(None, "text/html", id="no-accept"),
]


@pytest.mark.parametrize("accept,content_type", PAGE_CASES)
def test_page_filled_in(accept: str | None, content_type: str) -> None:
    page = BlockPage()
    with taddons.context(page) as tctx:  # type: ignore[no-untyped-call]
        f = blocked_flow(accept)
        event_id = f.metadata[KEY].event_id
        run(tctx, page, "request", f)
        resp = f.response
        assert resp is not None and resp.status_code == 451 and resp.reason == "Unavailable For Legal Reasons"
        assert resp.headers["link"] == f'<{DEFAULT_BLOCKED_BY}>; rel="blocked-by"'
        assert resp.headers["content-type"].startswith(content_type)
        assert resp.headers["X-Egress-Filter-Event"] == event_id
        text = resp.get_text() or ""
        if content_type == "application/json":
            body = json.loads(text)
            assert body["event_id"] == event_id
            assert body["apps"] == [{"id": "tiktok", "name": "TikTok <script>"}]
        else:
            assert "TikTok &lt;script&gt;" in text and "<script>" not in text and event_id in text


def other_answer(f: http.HTTPFlow) -> None:
    f.response = http.Response.make(451, b"mine", {"X-Egress-Filter-Event": "someone-else"})


def no_verdict(f: http.HTTPFlow) -> None:
    del f.metadata[KEY]


def allowed_answer(f: http.HTTPFlow) -> None:
    f.response = http.Response.make(200, b"ok")


LEFT_ALONE = [
    pytest.param(other_answer, b"mine", id="another-addons-answer"),
    pytest.param(no_verdict, b"", id="no-verdict"),
    pytest.param(allowed_answer, b"ok", id="not-a-451"),
]


@pytest.mark.parametrize("change,body", LEFT_ALONE)
def test_anything_else_is_left_alone(change: Any, body: bytes) -> None:
    page = BlockPage()
    with taddons.context(page) as tctx:  # type: ignore[no-untyped-call]
        f = blocked_flow("text/html")
        change(f)
        run(tctx, page, "request", f)
        assert f.response is not None and f.response.content == body
