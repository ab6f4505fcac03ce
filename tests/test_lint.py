"""The code stays ruff-clean and mypy --strict clean (the guide's promise),
checked by the same pinned tools that `make lint` runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.lint  # apart from the unit suite: `pytest -m lint` (`make test` runs it)


@pytest.mark.parametrize("command", [
    pytest.param([sys.executable, "-m", "ruff", "check", "."], id="ruff"),
    pytest.param([sys.executable, "-m", "mypy"], id="mypy-strict"),
])
def test_lint_is_clean(command: list[str], tmp_path: Path) -> None:
    env_cmd = [*command, "--cache-dir", str(tmp_path / "cache")] if "mypy" in command[-1] else command
    done = subprocess.run(env_cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
