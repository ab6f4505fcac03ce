"""Fixtures for the store and dashboard tests: the DNS tests' real resolver and authority, reused."""

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.dns.conftest import authority, resolver, write_policy  # noqa: F401  (fixtures)

from .helpers import DashboardProcess


@pytest.fixture
def dashboard(tmp_path: Path) -> Iterator[Callable[..., DashboardProcess]]:
    started: list[DashboardProcess] = []

    def start(*args: str) -> DashboardProcess:
        d = DashboardProcess(tmp_path, *args)
        started.append(d)
        return d

    try:
        yield start
    finally:
        for d in started:
            d.stop()
