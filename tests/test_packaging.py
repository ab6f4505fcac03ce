"""pyproject.toml's package data: every glob ships at least one file, so none is dead."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DATA = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"][
    "package-data"]


@pytest.mark.parametrize("package,pattern", [
    pytest.param(package, pattern, id=f"{package}/{pattern}")
    for package, patterns in PACKAGE_DATA.items() for pattern in patterns
])
def test_every_package_data_glob_matches_a_file(package: str, pattern: str) -> None:
    assert [p for p in (ROOT / package).glob(pattern) if p.is_file()], f"{package}/{pattern} matches nothing"


def test_the_table_is_read() -> None:
    assert "policies" in PACKAGE_DATA and "schema.json" in PACKAGE_DATA["policies"]
