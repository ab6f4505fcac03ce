"""The package layers, read off every module's imports with ``ast``.

Data flows one way: ``policies`` (pure) ← ``runtime`` (holder, event writer,
shared flags) ← the adapters (``dns_blocker``, ``proxy_addons``, ``replay``)
← ``egress_filter`` (the composition root).  Every import statement counts,
at module level or inside a function, and so does ``importlib.import_module``
or ``__import__`` with a literal name, so no cycle can hide behind either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ADAPTERS = ("dns_blocker", "proxy_addons", "replay")
PACKAGES = ("policies", "runtime", "store", *ADAPTERS, "egress_filter")

# What each package may import of the project's own packages (besides itself).
ALLOWED = {
    "policies": set(),
    "runtime": {"policies"},
    # the event store: a sink beside the event log (sharing its JSON-line encoder), and the
    # dashboard's reader
    "store": {"runtime"},
    "dns_blocker": {"policies", "runtime", "store"},
    "proxy_addons": {"policies", "runtime", "store"},
    "replay": {"policies", "runtime", "store"},
    "egress_filter": {"policies", "runtime", "store", *ADAPTERS},
}

# The pure core: no proxy, no DNS library, nothing that talks to the network or
# starts threads and processes (file reading is the loader's job and stays).
POLICIES_FORBIDDEN = ("mitmproxy", "dnslib", "dpkt", "socket", "asyncio", "selectors", "ssl", "http",
                      "urllib.request", "subprocess", "threading", "multiprocessing", "prometheus_client",
                      "uvloop")


def imported(path: Path) -> list[tuple[int, str]]:
    """Every module name ``path`` imports, absolute, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    names: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            names.append((node.lineno, module))
            # `from . import x` and `from pkg import sub`: the names may be modules too
            names += [(node.lineno, f"{module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Call):
            func = node.func
            dynamic = (isinstance(func, ast.Attribute) and func.attr == "import_module") or (
                isinstance(func, ast.Name) and func.id in ("__import__", "import_module"))
            if dynamic and node.args and isinstance(node.args[0], ast.Constant):
                names.append((node.lineno, str(node.args[0].value)))
    return names


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def top(name: str) -> str:
    return name.split(".", 1)[0]


def test_every_package_is_checked() -> None:
    found = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"tests", "bench"}
    assert found == set(PACKAGES)


@pytest.mark.parametrize("package", [pytest.param(p, id=p) for p in PACKAGES])
def test_package_imports_only_the_layers_below(package: str) -> None:
    bad = []
    for path in modules(package):
        for line, name in imported(path):
            other = top(name)
            if other in PACKAGES and other != package and other not in ALLOWED[package]:
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {name}")
    assert bad == []


@pytest.mark.parametrize("package", [pytest.param(p, id=p) for p in ADAPTERS])
def test_adapters_use_no_dynamic_imports(package: str) -> None:
    """``importlib`` is how a cycle hides; an adapter has no need for it."""
    bad = []
    for path in modules(package):
        found = imported(path)
        # `from importlib import resources` (package data) records "importlib" too, on its line.
        data_lines = {line for line, name in found if name == "importlib.resources"}
        bad += [f"{path.relative_to(REPO)}:{line}: {name}" for line, name in found
                if top(name) == "importlib" and name != "importlib.resources"
                and not (name == "importlib" and line in data_lines)]
    assert bad == []


def test_policies_is_pure() -> None:
    bad = [f"{path.relative_to(REPO)}:{line}: imports {name}" for path in modules("policies")
           for line, name in imported(path)
           if any(name == f or name.startswith(f + ".") for f in POLICIES_FORBIDDEN)]
    assert bad == []


CHECKER_CASES = [
    pytest.param("proxy_addons/x.py", "from egress_filter.cli import main\n", "egress_filter.cli",
                 id="absolute"),
    pytest.param("proxy_addons/x.py", "def f():\n    import dns_blocker.wire\n", "dns_blocker.wire",
                 id="function-local"),
    pytest.param("egress_filter/x.py", "from . import run\n", "egress_filter.run", id="relative-module"),
    pytest.param("proxy_addons/x.py", "import importlib\nimportlib.import_module('replay.cli')\n",
                 "replay.cli", id="importlib"),
    pytest.param("replay/sub/x.py", "from ..cli import run\n", "replay.cli", id="two-levels-up"),
]


@pytest.mark.parametrize("where,source,name", CHECKER_CASES)
def test_the_checker_sees_every_kind_of_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str,
                                                source: str, name: str) -> None:
    path = tmp_path / where
    path.parent.mkdir(parents=True)
    path.write_text(source, encoding="utf-8")
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    assert name in [n for _, n in imported(path)]
