"""The README and docs/ stay true: every relative link reaches a file and, with an anchor, a
heading of that file; the key tables of docs/policy.md list exactly the schema's keys."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    body = FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", body, re.M)}


def _links() -> list[tuple[Path, str]]:
    out = []
    for doc in DOCS:
        body = FENCE.sub("", doc.read_text(encoding="utf-8"))
        targets = (m.group(1) for m in LINK.finditer(body))
        out += [(doc, t) for t in targets if not t.startswith(("http:", "https:", "mailto:"))]
    return out


LINKS = _links()


@pytest.mark.parametrize(("doc", "target"), LINKS, ids=[f"{d.relative_to(ROOT)}->{t}" for d, t in LINKS])
def test_relative_link_resolves(doc: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    path = (doc.parent / file_part).resolve() if file_part else doc
    assert path.exists(), f"{doc.relative_to(ROOT)}: {target}: no such file"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), f"{doc.relative_to(ROOT)}: {target}: no such heading"


def _table_keys(text: str, caption: str) -> set[str]:
    """The backticked names in the first column of the table right after ``caption``."""
    lines = text.split("\n")
    start = lines.index(caption)
    keys: set[str] = set()
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if keys:
                break
            continue
        first = line.split("|")[1]
        keys |= set(re.findall(r"`([^`]+)`", first))
    keys.discard("key")
    return {k for k in keys if not k.startswith("x-")}


SCHEMA = json.loads((ROOT / "policies" / "schema.json").read_text(encoding="utf-8"))
TABLES = [
    pytest.param("Top level:", SCHEMA["properties"], id="top-level"),
    pytest.param("Per app (`apps[]`):", SCHEMA["$defs"]["app"]["properties"], id="app"),
]


@pytest.mark.parametrize(("caption", "properties"), TABLES)
def test_key_table_matches_the_schema(caption: str, properties: dict[str, object]) -> None:
    text = (ROOT / "docs" / "policy.md").read_text(encoding="utf-8")
    assert _table_keys(text, caption) == set(properties)
