"""Whatever the input, the loader returns a Policy or raises PolicyError with
positioned issues: never another exception (hypothesis-generated policies)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policies import PolicyError, load_policy_text, validate

KEYS = sorted(
    set(validate.TOP_KEYS)
    | set(validate.APP_KEYS)
    | set(validate.ENTRY_KEYS)
    | set(validate.DOWNLOAD_KEYS)
    | set(validate.LIST_KEYS)
    | set(validate.LEGAL_KEYS)
    | set(validate.SCHEDULE_KEYS)
    | {"apple", "google_play", "dns", "proxy", "cidr", "enabled"}
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.dates(min_value=dt.date(1, 1, 1)),
    st.sampled_from(
        [
            "full",
            "downloads",
            "none",
            "monitor",
            "10.0.0.0/8",
            "*.a.com",
            "a.com",
            "2020-02-30",
            "com.example.app",
            "835599320",
            "lists/x.txt",
            "/path/",
        ]
    ),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(KEYS), inner, max_size=5)
    ),
    max_leaves=25,
)
APP = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["a", "b", "A"]),
        "name": SCALARS,
        "owner": SCALARS,
        "legal_basis": VALUES,
        "schedule": VALUES,
    },
    optional={
        k: VALUES for k in ("phase", "domains", "hosts", "sni", "downloads", "store", "networks", "lists")
    },
)
POLICY = st.fixed_dictionaries(
    {"version": st.one_of(st.just(1), SCALARS), "apps": st.one_of(st.lists(APP, max_size=3), VALUES)},
    optional={
        k: VALUES for k in ("mode", "timezone", "exempt_clients", "allow", "sources", "groups", "settings")
    },
)


def _load(text: str) -> None:
    """A PolicyError with positioned issues, the same each time; or a Policy that decides, the same
    each time."""
    try:
        policy = load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file.endswith("fuzz.yaml") or issue.file.endswith(".txt")
            assert issue.line >= 0 and issue.field and issue.message
        try:
            load_policy_text(text, "fuzz.yaml")
        except PolicyError as again:
            assert [str(i) for i in again.issues] == [str(i) for i in exc.issues]
        else:
            raise AssertionError("the same text loaded the second time") from exc
        return
    view = policy.view(dt.date(2021, 1, 1))
    d = view.decide_name("unrelated.example")
    assert d == load_policy_text(text, "fuzz.yaml").view(dt.date(2021, 1, 1)).decide_name("unrelated.example")


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(POLICY)
def test_structured_garbage_is_a_policy_error(doc: dict[str, Any]) -> None:
    _load(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("version: 1\napps:- {}[]#&*!|>'\"%@`,?x0."))))
def test_textual_garbage_is_a_policy_error(text: str) -> None:
    _load(text)
