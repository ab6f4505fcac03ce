"""policies.yaml_walk.compose: libyaml's tree is the pure-Python composer's tree, and every
problem is reported in the pure-Python loader's words (the line and field included)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from policies import yaml_walk
from policies.yaml_walk import TooDeep, compose

BUNDLED = Path(__file__).resolve().parents[2] / "policies" / "bundled.yaml"


def shape(node: yaml.Node) -> object:
    """What the walker reads of a node: type, tag, line and value (style aside: libyaml says
    None where PyYAML says '' for a plain scalar, and nothing reads it)."""
    if isinstance(node, yaml.ScalarNode):
        return ("s", node.tag, node.start_mark.line, node.value)
    if isinstance(node, yaml.MappingNode):
        return ("m", node.tag, node.start_mark.line, [(shape(k), shape(v)) for k, v in node.value])
    return ("q", node.tag, node.start_mark.line, [shape(v) for v in node.value])


TEXTS = [
    pytest.param(BUNDLED.read_text(encoding="utf-8"), id="bundled-policy"),
    pytest.param("a: &x {b: [1, 2]}\nc: *x\nd: !!str 3\n", id="anchors-and-tags"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("text", TEXTS)
def test_libyaml_tree_is_the_python_tree(text: str) -> None:
    fast = compose(text)
    slow = yaml_walk._compose_python(text, yaml_walk.MAX_DEPTH)
    assert (fast is None) == (slow is None)
    if fast is not None and slow is not None:
        assert shape(fast) == shape(slow)


PROBLEMS = [
    pytest.param("apps:\n  x: " + "[" * 70 + "]" * 70 + "\n", TooDeep, 2, "apps",
                 id="too-deep-names-its-key"),
    pytest.param("a: [1, 2\n", yaml.MarkedYAMLError, 2, None, id="unclosed-flow"),
    pytest.param("a: 1\na: b: c\n", yaml.MarkedYAMLError, 2, None, id="bad-mapping"),
]


@pytest.mark.parametrize(("text", "error", "line", "field"), PROBLEMS)
def test_problems_read_as_the_python_loader_words_them(
    text: str, error: type[yaml.YAMLError], line: int, field: str | None
) -> None:
    with pytest.raises(error) as got:
        compose(text)
    with pytest.raises(error) as want:
        yaml_walk._compose_python(text, yaml_walk.MAX_DEPTH)
    assert str(got.value) == str(want.value)
    mark = got.value.mark if isinstance(got.value, TooDeep) else got.value.problem_mark  # type: ignore[attr-defined]
    assert mark is not None and mark.line + 1 == line
    if field is not None:
        assert isinstance(got.value, TooDeep) and got.value.field == field
