"""policies/schema.json: a valid draft 2020-12 schema that accepts the bundled
and the test policies, rejects unknown keys and wrong types, and lists
exactly the keys the loader accepts."""

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

from policies import BUNDLED, SCHEMA, DnsSettings, EventQueueSettings, ProxySettings, legal_loader, validate
from policies.builtins import BUILTIN_KEYS
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


KEY_TABLES = [
    pytest.param((), validate.TOP_KEYS, id="top"),
    # Version 1 also requires legal_basis and schedule (the schema's allOf says so).
    pytest.param(("$defs", "app"), {k: k in ("id", "name", "owner") for k in validate.APP_KEYS}, id="app"),
    pytest.param(("$defs", "name_entry"), validate.ENTRY_KEYS, id="entry"),
    pytest.param(("$defs", "cidr_entry"), validate.CIDR_ENTRY_KEYS, id="cidr-entry"),
    pytest.param(("$defs", "download"), validate.DOWNLOAD_KEYS, id="download"),
    pytest.param(("$defs", "list"), validate.LIST_KEYS, id="list"),
    pytest.param(("$defs", "app", "properties", "legal_basis"), validate.LEGAL_KEYS, id="legal-basis"),
    pytest.param(("$defs", "schedule", "items"), validate.SCHEDULE_KEYS, id="schedule"),
    pytest.param(("$defs", "framework"), legal_loader.FRAMEWORK_KEYS, id="framework"),
    pytest.param(("$defs", "framework", "properties", "status", "items"), legal_loader.STATUS_KEYS,
                 id="framework-status"),
    pytest.param(("$defs", "client_group"), legal_loader.CLIENT_KEYS, id="client-group"),
    pytest.param(("properties", "allow"), validate.ALLOW_KEYS, id="allow"),
    pytest.param(("properties", "groups", "additionalProperties"), validate.GROUP_KEYS, id="group"),
    pytest.param(
        ("$defs", "app", "properties", "store", "properties", "apple", "items"),
        validate.STORE_ENTRY_KEYS,
        id="store-entry",
    ),
    pytest.param(
        ("$defs", "dns_settings"), {f.name: False for f in dataclasses.fields(DnsSettings)}, id="dns-settings"
    ),
    pytest.param(("properties", "settings"), validate.SETTINGS_KEYS, id="settings"),
    pytest.param(("properties", "builtins"), BUILTIN_KEYS, id="builtins"),
    pytest.param(
        ("$defs", "event_queue_settings"), {f.name: False for f in dataclasses.fields(EventQueueSettings)},
        id="event-queue-settings",
    ),
    pytest.param(
        ("$defs", "proxy_settings"),
        {f.name: False for f in dataclasses.fields(ProxySettings)},
        id="proxy-settings",
    ),
]


@pytest.mark.parametrize(("path", "keys"), KEY_TABLES)
def test_schema_lists_exactly_the_loaders_keys(path: tuple[str, ...], keys: dict[str, bool]) -> None:
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    assert _props(schema, *path) == set(keys)
    node: Any = schema
    for key in path:
        node = node[key]
    if "oneOf" in node:
        node = next(alt for alt in node["oneOf"] if alt.get("type") == "object")
    assert set(node.get("required", [])) == {k for k, required in keys.items() if required}


def test_schema_accepts_extension_keys_and_merges(validator: jsonschema.Draft202012Validator) -> None:
    from tests.core.test_loader_errors import MERGE_POLICY

    assert errors(validator, as_json(yaml.safe_load(MERGE_POLICY))) == []
