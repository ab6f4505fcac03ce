"""Every table of cases names its cases: each ``@pytest.mark.parametrize`` (and each
parametrized fixture) under tests/ passes ``ids=``, or lists ``pytest.param(..., id=...)``
values, directly or through a module-level name, so a failure reads as the case's name
rather than as ``test_x[a-b-c7]``.  Read from the source with ``ast``; nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
pytestmark = pytest.mark.lint  # apart from the unit suite: `pytest -m lint` (`make test` runs it)


def _is_param_with_id(node: ast.AST, makers: frozenset[str] = frozenset()) -> bool:
    """``pytest.param(..., id=...)``, or a call of a module-level helper that returns one."""
    if not isinstance(node, ast.Call):
        return False
    if isinstance(node.func, ast.Name):
        return node.func.id in makers
    return (isinstance(node.func, ast.Attribute) and node.func.attr == "param"
            and any(k.arg == "id" for k in node.keywords))


def _makers(tree: ast.Module) -> frozenset[str]:
    """Module-level functions that return ``pytest.param(..., id=...)`` (a table's ``case`` helper)."""
    return frozenset(
        f.name for f in tree.body if isinstance(f, ast.FunctionDef)
        and any(isinstance(n, ast.Return) and n.value is not None and _is_param_with_id(n.value)
                for n in ast.walk(f)))


def _named(values: ast.AST, assigned: dict[str, ast.AST], makers: frozenset[str], depth: int = 0) -> bool:
    """``values`` is a literal list/tuple of pytest.param(id=...), a comprehension building them,
    a concatenation or star-expansion of such, or a module-level name bound to one."""
    if depth > 8:
        return False
    if isinstance(values, ast.Name):
        bound = assigned.get(values.id)
        return bound is not None and _named(bound, assigned, makers, depth + 1)
    if isinstance(values, ast.Attribute) and isinstance(values.value, ast.Name):
        # ``cases.DAYS``: a table in a sibling module of the package (``from . import cases``).
        sibling = assigned.get(f"{values.value.id}.{values.attr}")
        return sibling is not None and _named(sibling, assigned, makers, depth + 1)
    if isinstance(values, (ast.List, ast.Tuple)):
        return bool(values.elts) and all(
            _named(e.value, assigned, makers, depth + 1) if isinstance(e, ast.Starred)
            else _is_param_with_id(e, makers) for e in values.elts)
    if isinstance(values, (ast.ListComp, ast.GeneratorExp)):
        return _is_param_with_id(values.elt, makers)
    if isinstance(values, ast.BinOp) and isinstance(values.op, ast.Add):
        return (_named(values.left, assigned, makers, depth + 1)
                and _named(values.right, assigned, makers, depth + 1))
    return False


def _unnamed(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    assigned: dict[str, ast.AST] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    assigned[target.id] = stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            assigned[stmt.target.id] = stmt.value
    makers = _makers(tree)
    for stmt in tree.body:  # tables of sibling modules imported as modules (from . import cases)
        if isinstance(stmt, ast.ImportFrom) and stmt.module is None and stmt.level == 1:
            for alias in stmt.names:
                sibling = path.parent / f"{alias.name}.py"
                if sibling.is_file():
                    for other in ast.parse(sibling.read_text(encoding="utf-8")).body:
                        if isinstance(other, ast.Assign) and isinstance(other.targets[0], ast.Name):
                            assigned[f"{alias.asname or alias.name}.{other.targets[0].id}"] = other.value
    where = path.relative_to(TESTS.parent) if path.is_relative_to(TESTS.parent) else path
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        if node.func.attr == "parametrize":  # pytest.mark.parametrize and metafunc.parametrize
            values = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "argvalues"), None)
        elif node.func.attr == "fixture":
            values = next((k.value for k in node.keywords if k.arg == "params"), None)
            if values is None:
                continue
        else:
            continue
        if any(k.arg == "ids" for k in node.keywords):
            continue
        if values is not None and _named(values, assigned, makers):
            continue
        out.append(f"{where}:{node.lineno}")
    return out


MODULES = sorted(p for p in TESTS.rglob("*.py") if "parametrize" in p.read_text(encoding="utf-8")
                 or "params=" in p.read_text(encoding="utf-8"))


@pytest.mark.parametrize("module", MODULES, ids=[str(p.relative_to(TESTS)) for p in MODULES])
def test_every_case_has_an_id(module: Path) -> None:
    assert _unnamed(module) == []


CHECKER_CASES = [
    pytest.param("@pytest.mark.parametrize('x', [1, 2])\ndef test_a(x): pass\n", False, id="bare-values"),
    pytest.param("@pytest.mark.parametrize('x', [1, 2], ids=['one', 'two'])\ndef test_a(x): pass\n", True,
                 id="ids-keyword"),
    pytest.param("@pytest.mark.parametrize('x', [pytest.param(1, id='one')])\ndef test_a(x): pass\n", True,
                 id="param-with-id"),
    pytest.param("@pytest.mark.parametrize('x', [pytest.param(1)])\ndef test_a(x): pass\n", False,
                 id="param-without-id"),
    pytest.param("C = [pytest.param(1, id='one')]\n@pytest.mark.parametrize('x', C)\ndef test_a(x): pass\n",
                 True, id="module-level-table"),
    pytest.param("C = [1]\n@pytest.mark.parametrize('x', C)\ndef test_a(x): pass\n", False,
                 id="module-level-bare-table"),
    pytest.param("C = [pytest.param(1, id='a')]\nD = [*C, pytest.param(2, id='b')]\n"
                 "@pytest.mark.parametrize('x', D + C)\ndef test_a(x): pass\n", True, id="star-and-plus"),
    pytest.param("def case(id, *v):\n    return pytest.param(*v, id=id)\n"
                 "@pytest.mark.parametrize('x', [case('one', 1)])\ndef test_a(x): pass\n", True,
                 id="case-helper"),
    pytest.param("def case(*v):\n    return v\n"
                 "@pytest.mark.parametrize('x', [case(1)])\ndef test_a(x): pass\n", False, id="tuple-helper"),
    pytest.param("@pytest.fixture(params=[1, 2])\ndef f(request): pass\n", False, id="fixture-bare-params"),
    pytest.param("@pytest.fixture(params=[1, 2], ids=['a', 'b'])\ndef f(request): pass\n", True,
                 id="fixture-with-ids"),
]


@pytest.mark.parametrize(("source", "named"), CHECKER_CASES)
def test_the_checker_itself(tmp_path: Path, source: str, named: bool) -> None:
    path = tmp_path / "test_probe.py"
    path.write_text(source, encoding="utf-8")
    assert (_unnamed(path) == []) is named
