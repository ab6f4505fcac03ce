"""Every third-party package the shipped code imports is declared in pyproject.toml's
``dependencies`` (not only installed because something else pulls it in)."""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PACKAGES = PROJECT["tool"]["setuptools"]["packages"]


def _declared() -> set[str]:
    names = set()
    for spec in PROJECT["project"]["dependencies"]:
        m = re.match(r"[A-Za-z0-9_.-]+", spec)
        assert m, spec
        names.add(m.group(0).lower().replace("_", "-"))
    return names


def _imports(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m not in PACKAGES}


@pytest.mark.parametrize("package", PACKAGES, ids=PACKAGES)
def test_every_import_is_declared(package: str) -> None:
    owners = md.packages_distributions()
    declared = _declared()
    missing = {}
    for module in sorted(_imports(package)):
        dists = {d.lower().replace("_", "-") for d in owners.get(module, [module])}
        if not dists & declared:
            missing[module] = sorted(dists)
    assert not missing, f"{package} imports undeclared packages: {missing}"
