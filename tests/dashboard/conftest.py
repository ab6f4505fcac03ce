"""Fixtures for the store and dashboard tests: the DNS tests' real resolver and authority, reused."""

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.dns.conftest import TEST_DAY, ResolverProcess, authority, resolver, write_policy  # noqa: F401

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


@pytest.fixture
def live(tmp_path: Path, resolver: Callable[..., ResolverProcess], authority: Any,  # noqa: F811
         write_policy: Callable[..., Path], dashboard: Callable[..., DashboardProcess]  # noqa: F811
         ) -> tuple[ResolverProcess, DashboardProcess, Path]:
    """A resolver writing into a store, and a dashboard reading it, on one policy."""
    db = tmp_path / "events.db"
    policy = write_policy()
    r = resolver("--policy", str(policy), "--at", TEST_DAY, "--upstream", authority.address, "--db", str(db))
    d = dashboard("--db", str(db), "--policy", str(policy))
    return r, d, policy
