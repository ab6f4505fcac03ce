"""Shared fixtures for the core tests: the test policy (tests/core/data/policy.yaml)
and a writer for throw-away policies in tmp_path."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import Policy, load_policy

DATA = Path(__file__).with_name("data")
POLICY_FILE = DATA / "policy.yaml"

# The test policy's calendar: TikTok downloads 2020-09-20, full 2020-11-12;
# WeChat full 2020-09-20; Later App full 2021-02-19.
BEFORE = dt.date(2020, 9, 1)
DOWNLOADS = dt.date(2020, 10, 1)
FULL = dt.date(2020, 11, 13)
LATER = dt.date(2021, 3, 1)

MINIMAL_APP = """\
  - id: demo
    name: Demo
    owner: Demo Ltd.
    legal_basis: {order: EO 1, citation: 1 FR 1}
    schedule:
      - {from: 2020-01-01, phase: full, source: test}
"""


@pytest.fixture(scope="session")
def policy() -> Policy:
    return load_policy(POLICY_FILE)


WritePolicy = Callable[..., Path]


@pytest.fixture
def write_policy(tmp_path: Path) -> WritePolicy:
    """Write a policy (dedented) and optional list files; return the policy path."""

    def write(text: str, files: dict[str, str | bytes] | None = None, name: str = "policy.yaml") -> Path:
        for fname, content in (files or {}).items():
            target = tmp_path / fname
            target.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                target.write_bytes(content)
            else:
                target.write_text(textwrap.dedent(content), encoding="utf-8")
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
