"""Frameworks, client groups and legal status: the phase semantics as tables.

One small version-2 policy, read on chosen days, for chosen clients, as
ordered and in force: the strictest phase wins, ``in_force`` drops an
enjoined phase, a scoped injunction drops only its phase, and the most
specific group network wins.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from policies import Action, LegalStatus, Observation, Phase, Policy, PolicyError, load_policy_text
from policies.model import Status

POLICY = """\
version: 2
name: legal test
frameworks:
  order-a:
    title: Order A
    short: Order A
    kind: executive_order
    citations: ["1 FR 1"]
    schedule:
      chat:
        - {from: 2020-01-01, phase: downloads, source: "1 FR 2 item 1"}
        - {from: 2020-02-01, phase: full, source: "1 FR 2 items 2-5"}
      video:
        - {from: 2020-01-01, phase: full, source: "1 FR 3"}
    status:
      - {from: 2020-01-15, status: enjoined, apps: [chat], phase: downloads, source: "Court 1, No. 1"}
      - {from: 2020-03-01, status: enjoined, apps: [chat], phase: full, source: "Court 2, No. 2"}
      - {from: 2020-06-01, status: revoked, source: "Order Z"}
  scoped:
    title: Scoped order
    kind: statute
    schedule:
      video:
        - {from: 2020-01-01, phase: full, source: "Act 1"}
    status:
      - {from: 2020-02-01, status: stayed, apps: [video], phase: full, source: "Court 3"}
  rule-b:
    title: Company rule B
    short: Rule B
    kind: company_rule
    schedule:
      chat:
        - {from: 2020-02-10, phase: downloads, source: "memo 7"}
clients:
  default: {frameworks: [order-a]}
  strict: {networks: [10.1.0.0/16, "2001:db8::/32"], frameworks: [order-a, rule-b], legal_status: in_force}
  lab: {networks: [10.1.2.0/24], frameworks: [rule-b], mode: monitor}
  stat: {networks: [10.2.0.0/16], frameworks: [scoped], legal_status: in-force}
exempt_clients: [10.9.0.0/16]
apps:
  - id: chat
    name: Chat
    owner: Chat Co
    domains: [chat.example]
  - id: video
    name: Video
    owner: Video Co
    domains: [video.example]
"""

D = dt.date
AS, IN = LegalStatus.AS_ORDERED, LegalStatus.IN_FORCE

PHASE_CASES = [
    # (client, day, legal status override, app, phase, producing frameworks, status of the first state)
    pytest.param(None, D(2019, 12, 31), None, "chat", Phase.NONE, (), None, id="before-any-schedule"),
    pytest.param(None, D(2020, 1, 20), None, "chat", Phase.DOWNLOADS, ("order-a",), Status.ENJOINED,
                 id="as-ordered-keeps-an-enjoined-phase"),
    pytest.param(None, D(2020, 1, 20), IN, "chat", Phase.NONE, (), Status.ENJOINED,
                 id="in-force-drops-an-enjoined-phase"),
    pytest.param(None, D(2020, 2, 15), IN, "chat", Phase.FULL, ("order-a",), Status.IN_FORCE,
                 id="injunction-of-downloads-leaves-full"),
    pytest.param("10.1.3.5", D(2020, 2, 15), None, "chat", Phase.FULL, ("order-a",), Status.IN_FORCE,
                 id="strictest-phase-wins"),
    pytest.param("10.1.3.5", D(2020, 3, 5), None, "chat", Phase.DOWNLOADS, ("rule-b",), Status.ENJOINED,
                 id="group-in-force-falls-back-to-another-framework"),
    pytest.param("10.1.3.5", D(2020, 3, 5), AS, "chat", Phase.FULL, ("order-a",), Status.ENJOINED,
                 id="command-line-as-ordered-beats-group-setting"),
    pytest.param(None, D(2021, 1, 1), None, "chat", Phase.FULL, ("order-a",), Status.REVOKED,
                 id="revoked-still-enforced-as-ordered"),
    pytest.param(None, D(2021, 1, 1), IN, "video", Phase.NONE, (), Status.REVOKED,
                 id="revoked-in-force-none"),
    pytest.param("10.2.0.1", D(2020, 2, 5), None, "video", Phase.DOWNLOADS, ("scoped",), Status.STAYED,
                 id="scoped-stay-drops-only-full"),
    pytest.param("10.2.0.1", D(2020, 1, 5), None, "video", Phase.FULL, ("scoped",), Status.IN_FORCE,
                 id="before-the-stay"),
    pytest.param("10.1.2.9", D(2020, 2, 15), None, "chat", Phase.DOWNLOADS, ("rule-b",), Status.IN_FORCE,
                 id="most-specific-network-wins"),
    pytest.param("2001:db8::7", D(2020, 2, 15), None, "chat", Phase.FULL, ("order-a",), Status.IN_FORCE,
                 id="ipv6-group"),
    pytest.param("10.9.1.1", D(2020, 2, 15), None, "chat", Phase.FULL, ("order-a",), Status.IN_FORCE,
                 id="exempt-group-takes-default-frameworks"),
]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy_text(POLICY, "legal.yaml")


@pytest.mark.parametrize(("client", "day", "ls", "app", "phase", "frameworks", "status"), PHASE_CASES)
def test_phase_semantics(policy: Policy, client: str | None, day: dt.date, ls: LegalStatus | None,
                         app: str, phase: Phase, frameworks: tuple[str, ...], status: Status | None) -> None:
    group = policy.group_for(client)
    got = policy.phases(day, group=group, legal_status=ls)[app]
    assert (got.phase, got.frameworks, got.group) == (phase, frameworks, group)
    assert (got.legal[0].status if got.legal else None) == status
    d = policy.view(day, legal_status=ls).decide(Observation.dns(f"www.{app}.example", client))
    assert d.phase is phase and d.group == group and d.frameworks == frameworks
    assert d.app_names == ("Chat",) if app == "chat" else ("Video",)


GROUP_CASES = [
    pytest.param(None, "default", id="no-client"),
    pytest.param("192.0.2.1", "default", id="in-no-group"),
    pytest.param("10.1.0.1", "strict", id="slash-16"),
    pytest.param("10.1.2.1", "lab", id="slash-24-inside-slash-16"),
    pytest.param("::ffff:10.1.2.1", "lab", id="v4-mapped"),
    pytest.param("10.9.0.1", "exempt", id="exempt-clients"),
    pytest.param("not-an-ip", "default", id="garbage"),
]


@pytest.mark.parametrize(("client", "group"), GROUP_CASES)
def test_group_for(policy: Policy, client: str | None, group: str) -> None:
    assert policy.group_for(client) == group


DECISION_CASES = [
    pytest.param("192.0.2.1", Action.BLOCK, None, "", id="default-enforces"),
    pytest.param("10.1.2.1", Action.LOG, Action.BLOCK, "group lab is in monitor mode", id="monitor-group"),
    pytest.param("10.9.0.1", Action.LOG, Action.BLOCK, "client 10.9.0.1 is exempt", id="exempt"),
]


@pytest.mark.parametrize(("client", "action", "enforced", "why"), DECISION_CASES)
def test_group_mode(policy: Policy, client: str, action: Action, enforced: Action | None, why: str) -> None:
    view = policy.view(D(2020, 2, 15), phase=Phase.FULL)
    d = view.decide_name("chat.example", client=client)
    assert (d.action, d.enforced) == (action, enforced)
    assert d.reason.startswith(why)


def test_state_describes_its_record(policy: Policy) -> None:
    st = policy.phases(D(2020, 3, 5))["chat"].legal[0]
    assert st.describe() == "Order A: enjoined since 2020-03-01, Court 2, No. 2"
    assert st.as_dict()["citation"] == "1 FR 1"


ERROR_CASES = [
    pytest.param("clients:\n  g: {frameworks: [nope]}\n", "clients.g.frameworks[0]",
                 "unknown framework 'nope'", id="unknown-framework"),
    pytest.param("clients:\n  g: {networks: [10.0.0.0/8]}\n  h: {networks: [10.0.0.0/8]}\n",
                 "clients.h.networks[0]", "10.0.0.0/8 is already a network of group 'g'", id="same-network"),
    pytest.param("clients:\n  default: {networks: [10.0.0.0/8]}\n", "clients.default.networks",
                 "it takes no networks", id="default-with-networks"),
    pytest.param("clients:\n  exempt: {}\n", "clients.exempt", "group of exempt_clients",
                 id="exempt-reserved"),
    pytest.param("frameworks:\n  f: {title: F, kind: law}\n", "frameworks.f.kind",
                 "'law' is not one of", id="bad-kind"),
    pytest.param("frameworks:\n  f: {title: F, kind: statute, status: [{from: 2020-01-01, status: paused, "
                 "source: s}]}\n", "frameworks.f.status[0].status", "'paused' is not one of",
                 id="bad-status"),
    pytest.param("frameworks:\n  f: {title: F, kind: statute, status: [{from: 2020-01-01, status: stayed, "
                 "source: s, apps: [nope]}]}\n", "frameworks.f.status[0].apps[0]", "unknown app 'nope'",
                 id="status-unknown-app"),
    pytest.param("frameworks:\n  f: {title: F, kind: statute, schedule: {nope: []}}\n",
                 "frameworks.f.schedule.nope", "unknown key 'nope'", id="schedule-unknown-app"),
    pytest.param("frameworks:\n  f: {kind: statute}\n", "frameworks.f.title", "required key is missing",
                 id="missing-title"),
    pytest.param("legal_status: sometimes\n", "legal_status", "'sometimes' is not one of",
                 id="bad-legal-status"),
]

BASE_V2 = "version: 2\napps:\n  - {id: chat, name: Chat, owner: Co, domains: [chat.example]}\n"


@pytest.mark.parametrize(("extra", "field", "message"), ERROR_CASES)
def test_bad_legal_sections(extra: str, field: str, message: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(BASE_V2 + extra, "p.yaml")
    issues = [i for i in info.value.issues if i.field == field]
    assert issues, [str(i) for i in info.value.issues]
    assert message in issues[0].message
    assert issues[0].file == "p.yaml" and issues[0].line > 1


V1 = """\
version: 1
apps:
  - id: chat
    name: Chat
    owner: Co
    legal_basis: {order: Order A, citation: 1 FR 1}
    schedule: [{from: 2020-01-01, phase: full, source: s}]
    domains: [chat.example]
"""


@pytest.mark.parametrize("key", ["frameworks: {}", "clients: {}", "legal_status: in_force"],
                         ids=["frameworks", "clients", "legal-status"])
def test_version_1_rejects_version_2_keys(key: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(V1 + key + "\n", "v1.yaml")
    assert "needs version: 2" in str(info.value)


def test_version_2_rejects_app_schedules() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(V1.replace("version: 1", "version: 2"), "v2.yaml")
    assert "v2.yaml:7: apps[chat].schedule: unknown key 'schedule'" in str(info.value)


def test_version_1_is_one_implicit_framework() -> None:
    p = load_policy_text(V1, "v1.yaml")
    assert list(p.frameworks) == ["policy"] and p.frameworks["policy"].implicit
    d = p.view(D(2021, 1, 1)).decide(Observation.dns("chat.example"))
    assert (d.action, d.frameworks, d.legal[0].title, d.legal[0].citation) == (
        Action.BLOCK, ("policy",), "Order A", "1 FR 1")


def test_events_carry_group_frameworks_and_policy_digest(policy: Policy) -> None:
    from policies import build_event

    obs = Observation.dns("chat.example", "10.1.3.5")
    d = policy.view(D(2020, 3, 5)).decide(obs)
    egress = build_event(d, obs, "dns")["egress"]
    assert egress["group"] == "strict" and egress["frameworks"] == ["rule-b"]
    assert egress["legal_status"] == "in_force"
    assert egress["legal"] == [
        {"id": "rule-b", "status": "in_force", "since": "2020-02-10", "source": "memo 7"}]
    assert egress["policy"]["name"] == "legal test"
    assert egress["policy"]["digest"].startswith("sha256:") and len(egress["policy"]["digest"]) == 71


DIGEST_CASES = [
    pytest.param(lambda p, lst: None, True, id="same-files-same-digest"),
    pytest.param(lambda p, lst: lst.write_text("other.example\n"), False, id="list-file-changed"),
    pytest.param(lambda p, lst: p.write_text(p.read_text() + "# comment\n"), False, id="policy-file-changed"),
]


@pytest.mark.parametrize(("change", "same"), DIGEST_CASES)
def test_digest_covers_the_policy_and_its_list_files(tmp_path: Path, change: Callable[[Path, Path], object],
                                                     same: bool) -> None:
    import hashlib

    from policies import load_policy

    lst = tmp_path / "names.txt"
    lst.write_text("chat.example\n")
    p = tmp_path / "p.yaml"
    p.write_text(BASE_V2 + "  - {id: more, name: M, owner: O, lists: [names.txt]}\n")
    first = load_policy(p).digest
    change(p, lst)
    assert (load_policy(p).digest == first) is same
    # An auditor recomputes it: length-prefixed file contents, policy file first.
    h = hashlib.sha256()
    for f in (p, lst):
        data = f.read_bytes()
        h.update(len(data).to_bytes(8, "big") + data)
    assert load_policy(p).digest == f"sha256:{h.hexdigest()}"
