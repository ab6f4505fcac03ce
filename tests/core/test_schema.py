"""policies/schema.json: a valid draft 2020-12 schema that accepts the bundled
and the test policies, rejects unknown keys and wrong types; the loader
takes its key tables from it (policies/schema_keys.py), so an unknown key is
refused at its line with exactly the schema's keys listed."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from policies import (
    BUNDLED,
    SCHEMA,
    DnsSettings,
    EventQueueSettings,
    PolicyError,
    ProxySettings,
    legal_loader,
    load_policy_text,
    validate,
)
from policies.builtins import Builtins
from tests.core.conftest import POLICY_FILE


def as_json(value: Any) -> Any:
    """What an editor's JSON view of the YAML holds: dates are strings."""
    if isinstance(value, dict):
        return {str(k): as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def errors(validator: jsonschema.Draft202012Validator, doc: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_schema_ships_as_package_data() -> None:
    shipped = resources.files("policies").joinpath("schema.json")
    assert shipped.is_file()
    assert json.loads(shipped.read_text(encoding="utf-8"))["$schema"] == (
        "https://json-schema.org/draft/2020-12/schema"
    )


@pytest.mark.parametrize("path", [BUNDLED, POLICY_FILE], ids=["bundled", "test-policy"])
def test_schema_accepts(validator: jsonschema.Draft202012Validator, path: Path) -> None:
    doc = as_json(yaml.safe_load(path.read_text(encoding="utf-8")))
    assert errors(validator, doc) == []


def _policy() -> dict[str, Any]:
    doc = as_json(yaml.safe_load(POLICY_FILE.read_text(encoding="utf-8")))
    assert isinstance(doc, dict)
    return doc


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split("/")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


REJECT_CASES = [
    pytest.param("colour", "red", "", id="unknown-top-key"),
    pytest.param("apps/0/colour", "red", "apps/0", id="unknown-app-key"),
    pytest.param("apps/0/legal_basis/judge", "x", "apps/0/legal_basis", id="unknown-legal-key"),
    pytest.param("apps/0/schedule/0/until", "2021-01-01", "apps/0/schedule/0", id="unknown-schedule-key"),
    pytest.param("apps/0/domains/1/sorce", "x", "apps/0/domains/1", id="unknown-entry-key"),
    pytest.param("apps/0/downloads/0/url", "x", "apps/0/downloads/0", id="unknown-download-key"),
    pytest.param("apps/0/store/amazon", ["x"], "apps/0/store", id="unknown-store"),
    pytest.param("settings/dns/port", 53, "settings/dns", id="unknown-dns-setting"),
    pytest.param("groups/experimental/on", True, "groups/experimental", id="unknown-group-key"),
    pytest.param("version", 3, "version", id="wrong-version"),
    pytest.param("mode", "block", "mode", id="wrong-mode"),
    pytest.param("apps/0/domains", "tiktok.com", "apps/0/domains", id="domains-not-a-list"),
    pytest.param("apps/0/schedule/0/phase", "total", "apps/0/schedule/0/phase", id="wrong-phase"),
    pytest.param("apps/0/schedule/0/from", "20 Sep 2020", "apps/0/schedule/0/from", id="date-format"),
    pytest.param("apps/0/id", "TikTok", "apps/0/id", id="app-id-pattern"),
    pytest.param("apps/0/store/google_play/0", "musically", "apps/0/store/google_play/0", id="play-package"),
    pytest.param("apps/0/downloads/1/path", "tiktok/", "apps/0/downloads/1/path", id="download-path"),
    pytest.param("settings/dns/block_response", "drop", "settings/dns/block_response", id="setting-choice"),
    pytest.param("settings/proxy/block_doh", "yes", "settings/proxy/block_doh", id="setting-type"),
    pytest.param("settings/max_file_size", 0, "settings/max_file_size", id="max-file-size"),
    pytest.param("settings/allow_empty", "yes", "settings/allow_empty", id="allow-empty-type"),
    pytest.param("settings/event_queue/max_bytes", "1M", "settings/event_queue/max_bytes", id="queue-bytes"),
    pytest.param("apps/0/lists/0/as", "urls", "apps/0/lists/0", id="list-as"),
    pytest.param("builtins/quic", True, "builtins", id="unknown-builtin"),
    pytest.param("builtins/ech", "block", "builtins/ech", id="builtin-ech-choice"),
]


@pytest.mark.parametrize(("path", "value", "where"), REJECT_CASES)
def test_schema_rejects(
    validator: jsonschema.Draft202012Validator, path: str, value: Any, where: str
) -> None:
    doc = _policy()
    _set(doc, path, value)
    found = errors(validator, doc)
    assert found, f"schema accepted {path}={value!r}"
    assert any(e.startswith(f"{where}:") or e.startswith(f"{where}/") for e in found), found


def _props(schema: dict[str, Any], *path: str) -> set[str]:
    node: Any = schema
    for key in path:
        node = node[key]
    if "oneOf" in node:
        node = next(alt for alt in node["oneOf"] if alt.get("type") == "object")
    return set(node["properties"])


# The sections that map onto a dataclass take its fields; the schema must list exactly those.
DATACLASS_TABLES = [
    pytest.param(("$defs", "dns_settings"), DnsSettings, id="dns-settings"),
    pytest.param(("$defs", "event_queue_settings"), EventQueueSettings, id="event-queue-settings"),
    pytest.param(("$defs", "proxy_settings"), ProxySettings, id="proxy-settings"),
    pytest.param(("properties", "builtins"), Builtins, id="builtins"),
]


@pytest.mark.parametrize(("path", "cls"), DATACLASS_TABLES)
def test_schema_lists_exactly_the_dataclass_fields(path: tuple[str, ...], cls: type) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert _props(schema, *path) == {f.name for f in dataclasses.fields(cls)}


V1_APP = "  - id: a\n    name: A\n    owner: O\n    legal_basis: {order: X, citation: Y}\n    schedule:\n"
V2_APP = "  - id: a\n    name: A\n    owner: O\n"
# The loader's key tables come from the schema (policies/schema_keys.py): a key the schema
# lacks is refused at its line, and the message lists exactly the schema's keys there.
# (policy text with an unknown key "zz", its line, its field, the schema path of that mapping)
UNKNOWN_KEY_CASES = [
    pytest.param("version: 1\nzz: 1\napps: []\n", 2, "zz", (), id="top"),
    pytest.param("version: 1\napps:\n" + V1_APP + "      - {from: 2020-01-01, phase: full, source: s}\n"
                 "    zz: 1\n", 9, "apps[a].zz", ("$defs", "app"), id="app"),
    pytest.param("version: 2\napps:\n" + V2_APP + "    domains: [{name: a.example, zz: 1}]\n", 6,
                 "apps[a].domains[0].zz", ("$defs", "name_entry"), id="name-entry"),
    pytest.param("version: 2\napps:\n" + V2_APP + "    networks: [{cidr: 10.0.0.0/8, zz: 1}]\n", 6,
                 "apps[a].networks[0].zz", ("$defs", "cidr_entry"), id="cidr-entry"),
    pytest.param("version: 2\napps:\n" + V2_APP + "    downloads: [{host: a.example, zz: 1}]\n", 6,
                 "apps[a].downloads[0].zz", ("$defs", "download"), id="download"),
    pytest.param("version: 2\napps:\n" + V2_APP + "    lists: [{path: a.txt, zz: 1}]\n", 6,
                 "apps[a].lists[0].zz", ("$defs", "list"), id="list"),
    pytest.param("version: 2\napps:\n" + V2_APP + "    store: {apple: [{id: 1, zz: 1}]}\n", 6,
                 "apps[a].store.apple[0].zz",
                 ("$defs", "app", "properties", "store", "properties", "apple", "items"), id="store-entry"),
    pytest.param("version: 1\napps:\n  - id: a\n    name: A\n    owner: O\n"
                 "    legal_basis: {order: X, citation: Y, zz: 1}\n    schedule: []\n", 6,
                 "apps[a].legal_basis.zz", ("$defs", "app", "properties", "legal_basis"), id="legal-basis"),
    pytest.param("version: 1\napps:\n" + V1_APP
                 + "      - {from: 2020-01-01, phase: full, source: s, zz: 1}\n", 8,
                 "apps[a].schedule[0].zz", ("$defs", "schedule", "items"), id="schedule"),
    pytest.param("version: 2\nframeworks:\n  f: {title: F, kind: statute, zz: 1}\napps: []\n", 3,
                 "frameworks.f.zz", ("$defs", "framework"), id="framework"),
    pytest.param("version: 2\nframeworks:\n  f:\n    title: F\n    kind: statute\n"
                 "    status: [{from: 2020-01-01, status: stayed, source: s, zz: 1}]\napps: []\n", 6,
                 "frameworks.f.status[0].zz", ("$defs", "framework", "properties", "status", "items"),
                 id="framework-status"),
    pytest.param("version: 2\nclients:\n  g: {zz: 1}\napps: []\n", 3, "clients.g.zz",
                 ("$defs", "client_group"), id="client-group"),
    pytest.param("version: 1\nallow: {zz: 1}\napps: []\n", 2, "allow.zz", ("properties", "allow"),
                 id="allow"),
    pytest.param("version: 1\ngroups:\n  g: {enabled: true, zz: 1}\napps: []\n", 3, "groups.g.zz",
                 ("properties", "groups", "additionalProperties"), id="group"),
    pytest.param("version: 1\nsettings: {zz: 1}\napps: []\n", 2, "settings.zz", ("properties", "settings"),
                 id="settings"),
    pytest.param("version: 1\nbuiltins: {zz: 1}\napps: []\n", 2, "builtins.zz", ("properties", "builtins"),
                 id="builtins"),
]


@pytest.mark.parametrize(("text", "line", "field", "path"), UNKNOWN_KEY_CASES)
def test_a_key_the_schema_lacks_is_refused_with_its_line(text: str, line: int, field: str,
                                                         path: tuple[str, ...]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    allowed = ", ".join(sorted(_props(schema, *path)))
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "p.yaml")
    want = f"p.yaml:{line}: {field}: unknown key 'zz' (allowed: {allowed})"
    assert want in [str(i) for i in info.value.issues]


# Required keys, and the version rule (schema's allOf), as the loader enforces them.
REQUIRED_CASES = [
    pytest.param(("$defs", "app"), validate.APP_KEYS, {"id", "name", "owner", "legal_basis", "schedule"},
                 id="app-v1-needs-legal-basis-and-schedule"),
    pytest.param(("$defs", "app"), validate.APP_KEYS_V2, {"id", "name", "owner"}, id="app-v2"),
    pytest.param((), validate.TOP_KEYS, {"version", "apps"}, id="top"),
    pytest.param(("$defs", "framework"), legal_loader.FRAMEWORK_KEYS, {"title", "kind"}, id="framework"),
]


@pytest.mark.parametrize(("path", "keys", "required"), REQUIRED_CASES)
def test_required_keys_follow_the_schema(path: tuple[str, ...], keys: dict[str, bool],
                                         required: set[str]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert set(keys) <= _props(schema, *path)
    assert {k for k, must in keys.items() if must} == required


def test_the_version_rule_comes_from_the_schema() -> None:
    assert "schedule" not in validate.APP_KEYS_V2
    assert validate.V2_ONLY == ("frameworks", "clients", "legal_status")


def test_schema_accepts_extension_keys_and_merges(validator: jsonschema.Draft202012Validator) -> None:
    from tests.core.test_loader_errors import MERGE_POLICY

    assert errors(validator, as_json(yaml.safe_load(MERGE_POLICY))) == []
