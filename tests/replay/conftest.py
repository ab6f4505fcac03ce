from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import pytest

from policies import Policy, PolicyView, load_policy
from replay import Finding, Replay

DATA = Path(__file__).parent / "data"
POLICY = DATA / "policy.yaml"
DOWNLOADS_DAY = dt.date(2020, 11, 10)  # TikTok 'downloads', WeChat 'full'


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(POLICY)


@pytest.fixture(scope="session")
def view(policy: Policy) -> PolicyView:
    return policy.view(DOWNLOADS_DAY)


def replay_all(
    view: PolicyView, *paths: Path, dns_ports: frozenset[int] = frozenset({53})
) -> tuple[list[Finding], Replay]:
    rep = Replay([str(p) for p in paths], view, progress=False, dns_ports=dns_ports)
    return list(rep), rep


def need(tool: str) -> str:
    """A tool the tests drive; missing means failing, never skipping (CI installs it)."""
    path = shutil.which(tool)
    if path is None:
        pytest.fail(f"{tool} is not installed; run .ci/install-tools")
    return path
