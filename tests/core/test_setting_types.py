"""The one typed-settings check (policies/setting_types.py): the loader's and the resolver's."""

from __future__ import annotations

import datetime as dt

import pytest

from policies.setting_types import check_value, setting_kind

KIND_CASES = [
    pytest.param(("a",), tuple, "a list of strings", id="tuple"),
    pytest.param(True, bool, "true or false", id="bool"),
    pytest.param(53, int, "an integer", id="int"),
    pytest.param(2.0, float, "a number", id="float"),
    pytest.param("nxdomain", str, "a string", id="str"),
    pytest.param(None, str, "a string", id="none-takes-a-string"),
]


@pytest.mark.parametrize("default,kind,what", KIND_CASES)
def test_setting_kind(default: object, kind: type, what: str) -> None:
    assert setting_kind(default) == (kind, what)


GOOD_CASES = [
    pytest.param(bool, False, False, id="bool"),
    pytest.param(int, 5, 5, id="int"),
    pytest.param(float, 3, 3.0, id="int-widens-to-float"),
    pytest.param(float, 0.5, 0.5, id="float"),
    pytest.param(str, "x", "x", id="str"),
    pytest.param(dt.date, dt.datetime(2024, 1, 2, 3, 4), dt.date(2024, 1, 2), id="datetime-to-date"),
]


@pytest.mark.parametrize("kind,value,want", GOOD_CASES)
def test_check_value(kind: type, value: object, want: object) -> None:
    got = check_value(kind, value)
    assert got == want and type(got) is type(want)


BAD_CASES = [
    pytest.param(int, True, id="bool-is-not-int"),
    pytest.param(float, False, id="bool-is-not-float"),
    pytest.param(bool, 1, id="int-is-not-bool"),
    pytest.param(int, 1.5, id="float-is-not-int"),
    pytest.param(str, 5, id="int-is-not-str"),
    pytest.param(bool, "yes", id="yes-is-not-bool"),
]


@pytest.mark.parametrize("kind,value", BAD_CASES)
def test_check_value_rejects(kind: type, value: object) -> None:
    with pytest.raises(TypeError, match=f"expected {kind.__name__}"):
        check_value(kind, value)
