"""Proxy identity: with mitmproxy's ``proxyauth`` set, the authenticated user is
``user.name`` in every event, and a client group's ``users:`` selects that
group for the user wherever it connects from.

The loader's checks of ``users:`` (file:line errors) and the schema are tested
on policy text; the rest with real curl ``--proxy-user`` through a real
``egress-filter proxy`` that checks an htpasswd file (bcrypt, or ``openssl passwd -apr1``).
``loopback_dns.py`` sends every dial to the local origins."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from policies import SCHEMA, PolicyError
from policies.loader import load_policy_text

from .conftest import Origin, PlainOrigin, curl_status, require, start_routed

DAY = "2021-01-01"

# Framework ``ban`` has TikTok in full.  ``default`` binds no framework (allowed);
# ``strict`` binds it for user anna; ``lab`` monitors it for user labby and for 127.0.0.9.
POLICY = """\
version: 2
timezone: UTC
frameworks:
  ban:
    title: The ban
    kind: executive_order
    schedule:
      tiktok:
        - {{from: 2020-01-01, phase: full, source: "1 FR 1"}}
clients:
  default: {{frameworks: []}}
  strict: {{users: [anna], frameworks: [ban]}}
  lab: {{networks: [127.0.0.9/32], users: [{lab_users}], frameworks: [ban], mode: monitor}}
apps:
  - id: tiktok
    name: TikTok
    owner: ByteDance
    domains: [tiktok.com]
"""
USERS = {"anna": "s3cret", "bob": "hunter2", "labby": "pa$$ word"}


def policy_text(lab_users: str = "labby") -> str:
    return POLICY.format(lab_users=lab_users)


# --- the loader and the schema ----------------------------------------------------------

LOAD_ERRORS = [
    pytest.param("labby, anna",
                 "ident.yaml:13: clients.lab.users[1]: user 'anna' is already in group 'strict'",
                 id="user-in-two-groups"),
    pytest.param("'lab:by'", "ident.yaml:13: clients.lab.users[0]: 'lab:by' is not a proxy user name",
                 id="colon-in-name"),
    pytest.param("'two words'", "ident.yaml:13: clients.lab.users[0]: 'two words' is not a proxy user name",
                 id="space-in-name"),
    pytest.param("{name: x}", "ident.yaml:13: clients.lab.users[0]:", id="not-a-string"),
]


@pytest.mark.parametrize("lab_users,message", LOAD_ERRORS)
def test_users_are_checked_at_load(lab_users: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(policy_text(lab_users), "ident.yaml")
    assert message in str(info.value), str(info.value)


def test_default_group_takes_no_users() -> None:
    text = policy_text().replace("default: {frameworks: []}", "default: {frameworks: [], users: [zed]}")
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "ident.yaml")
    assert "ident.yaml:11: clients.default.users: the default group" in str(info.value)


SCHEMA_CASES = [
    pytest.param("labby", True, id="plain-name"),
    pytest.param("'anna@corp.example'", True, id="email-like"),
    pytest.param("'lab:by'", False, id="colon"),
    pytest.param("labby, labby", False, id="duplicate"),
    pytest.param("''", False, id="empty"),
]


@pytest.mark.parametrize("lab_users,valid", SCHEMA_CASES)
def test_schema_checks_users(lab_users: str, valid: bool) -> None:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text(encoding="utf-8")))
    doc = json.loads(json.dumps(yaml.safe_load(policy_text(lab_users)), default=str))  # dates as text
    errors = list(validator.iter_errors(doc))
    assert (errors == []) is valid, [e.message for e in errors]


GROUP_CASES = [
    # client address, user, group
    pytest.param("10.0.0.1", None, "default", id="no-user-default"),
    pytest.param("10.0.0.1", "anna", "strict", id="user-selects-strict"),
    pytest.param("127.0.0.9", None, "lab", id="network-selects-lab"),
    pytest.param("127.0.0.9", "anna", "strict", id="user-wins-over-network"),
    pytest.param("127.0.0.9", "bob", "lab", id="unlisted-user-keeps-network"),
    pytest.param(None, "labby", "lab", id="user-without-address"),
]


@pytest.mark.parametrize("client,user,group", GROUP_CASES)
def test_group_for_user(client: str | None, user: str | None, group: str) -> None:
    import datetime as dt

    from policies import PolicyView

    policy = load_policy_text(policy_text(), "ident.yaml")
    assert policy.group_for(client, user) == group
    view = PolicyView(policy, dt.date.fromisoformat(DAY), None, None)
    assert view.decide_name("www.tiktok.com", client=client, user=user).group == group


# --- end to end -------------------------------------------------------------------------


def _hash(password: str) -> str:
    """An htpasswd entry the installed mitmproxy reads: mitmproxy 12 reads only bcrypt (and
    SHA-1), with the bcrypt package it installs; mitmproxy 11 reads Apache's apr1 through passlib,
    and has no bcrypt backend."""
    try:
        import bcrypt
    except ImportError:
        return subprocess.run([require("openssl"), "passwd", "-apr1", password], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


@pytest.fixture
def htpasswd(tmp_path: Path) -> Path:
    lines = [f"{user}:{_hash(password)}\n" for user, password in USERS.items()]
    path = tmp_path / "users.htpasswd"
    path.write_text("".join(lines), encoding="utf-8")
    return path


@dataclass(frozen=True)
class Case:
    url: str
    credentials: str | None  # user:password for --proxy-user
    status: int  # what curl saw: the CONNECT's status when it failed, else the response
    event: tuple[str, str, str] | None  # (user.name, egress.group, event.action) of the one event


CURL_CASES = [
    pytest.param(Case("http://www.tiktok.com/a", "anna:s3cret", 451, ("anna", "strict", "block")),
                 id="group-user-blocked"),
    pytest.param(Case("http://www.tiktok.com/a", "bob:hunter2", 200, ("bob", "default", "allow")),
                 id="other-user-default-allowed"),
    pytest.param(Case("http://www.tiktok.com/a", "labby:pa$$ word", 200, ("labby", "lab", "log")),
                 id="lab-user-monitored"),
    pytest.param(Case("http://allowed.example/a", "anna:s3cret", 200, ("anna", "strict", "allow")),
                 id="group-user-allowed-host"),
    pytest.param(Case("https://www.tiktok.com/", "anna:s3cret", 451, ("anna", "strict", "block")),
                 id="group-user-connect-blocked"),
    pytest.param(Case("https://allowed.example/", "bob:hunter2", 200, ("bob", "default", "allow")),
                 id="user-on-passthrough-connection"),
    pytest.param(Case("http://www.tiktok.com/a", "anna:wrong", 407, None), id="wrong-password-407"),
    pytest.param(Case("http://www.tiktok.com/a", "mallory:s3cret", 407, None), id="unknown-user-407"),
    pytest.param(Case("http://www.tiktok.com/a", None, 407, None), id="no-credentials-407"),
    pytest.param(Case("https://www.tiktok.com/", "anna:wrong", 407, None), id="wrong-password-connect-407"),
]


@pytest.mark.parametrize("case", CURL_CASES)
def test_proxy_user_in_events_and_groups(run_proxy: Any, origin: Origin, plain_origin: PlainOrigin,
                                         tmp_path: Path, htpasswd: Path, case: Case) -> None:
    policy = tmp_path / "ident.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    proxy = start_routed(run_proxy, origin, plain_origin, "--policy", str(policy), "--at", DAY, "--log-all",
                         "--set", f"proxyauth=@{htpasswd}")
    auth = ("--proxy-user", case.credentials) if case.credentials else ()
    status, stderr = curl_status(proxy, origin.pki.ca_cert, case.url, *auth)
    assert status == case.status, stderr
    if case.event is None:
        assert proxy.events() == []
        return
    [ev] = proxy.events(1)
    assert (ev["user"]["name"], ev["egress"]["group"], ev["event"]["action"]) == case.event
    assert "s3cret" not in json.dumps(ev) and "hunter2" not in json.dumps(ev)  # never the password
