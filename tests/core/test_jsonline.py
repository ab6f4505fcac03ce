"""runtime.jsonline: the one encoder of event lines, with the standard library as its oracle;
and policies.events.utc_iso, the hand-written ``@timestamp``, against datetime."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.events import utc_iso
from runtime.jsonline import encode

CASES = [
    pytest.param({"a": 1, "b": [True, None, 1.5], "c": {"d": "e"}}, id="plain"),
    pytest.param({"name": "ünïcödé.example", "q": "漢字"}, id="non-ascii-raw-utf8"),
    pytest.param({"name": "bad\ud800name"}, id="lone-surrogate-escaped"),
    pytest.param({"n": 1 << 70}, id="int-over-64-bits"),
    pytest.param({1: "non-str key"}, id="non-str-key"),
    pytest.param({"when": dt.datetime(2020, 9, 20, tzinfo=dt.UTC)}, id="datetime-as-str"),
    pytest.param({"set": {1}}, id="unknown-type-as-str"),
    pytest.param({"s": "<script>\"'\n"}, id="escapes"),
]


@pytest.mark.parametrize("event", CASES)
def test_same_json_as_the_standard_library(event: dict[str, Any]) -> None:
    line = encode(event)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == json.loads(json.dumps(event, default=str))


def test_circular_event_raises_what_the_standard_library_raises() -> None:
    ev: dict[str, Any] = {}
    ev["self"] = ev
    with pytest.raises(ValueError, match="Circular reference"):
        encode(ev)


@given(st.floats(min_value=0, max_value=253402300799.0, allow_nan=False))
def test_utc_iso_matches_datetime(t: float) -> None:
    expect = dt.datetime.fromtimestamp(t, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert utc_iso(t) == expect
