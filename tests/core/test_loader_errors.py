"""Bad policy input: each problem is reported as ``file:line: field: message``
(exact position and field), the load raises PolicyError, and nothing crashes."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies import PolicyError, load_policy, load_policy_text
from tests.core.conftest import MINIMAL_APP, WritePolicy

HEAD = "version: 1\napps:\n" + MINIMAL_APP

# (policy text, extra files, expected issues as (line, field, message fragment))
CASES = [
    pytest.param("version: 1\napps: [\n", {}, [(3, "(yaml)", "syntax error")], id="yaml-unclosed-flow"),
    pytest.param(
        "version: 1\n  bad: indent\n",
        {},
        [(2, "(yaml)", "mapping values are not allowed")],
        id="yaml-bad-indent",
    ),
    pytest.param(
        "version: 1\napps: []\n---\nversion: 1\n",
        {},
        [(3, "(yaml)", "single document")],
        id="yaml-two-documents",
    ),
    pytest.param(
        HEAD + "    colour: red\n",
        {},
        [(9, "apps[demo].colour", "unknown key 'colour'")],
        id="unknown-app-key",
    ),
    pytest.param(
        "version: 1\nmodee: monitor\napps: []\n",
        {},
        [(2, "modee", "unknown key 'modee'")],
        id="unknown-top-key",
    ),
    pytest.param(
        HEAD + "    legal_basis2: x\n",
        {},
        [(9, "apps[demo].legal_basis2", "unknown key")],
        id="unknown-key-near-known",
    ),
    pytest.param(
        HEAD + "    domains:\n      - {name: a.example, sorce: x}\n",
        {},
        [(10, "apps[demo].domains[0].sorce", "unknown key 'sorce'")],
        id="unknown-entry-key",
    ),
    pytest.param(
        "version: 1\nversion: 1\napps: []\n", {}, [(2, "version", "duplicate key")], id="duplicate-key"
    ),
    pytest.param(
        "version: one\napps: []\n",
        {},
        [(1, "version", "expected an integer, got 'one'")],
        id="wrong-type-version",
    ),
    pytest.param(
        "version: 3\napps: []\n", {}, [(1, "version", "unsupported version 3")], id="unsupported-version"
    ),
    pytest.param(
        "version: 1\napps: {}\n", {}, [(2, "apps", "expected a list, got a mapping")], id="wrong-type-apps"
    ),
    pytest.param(
        HEAD + "    domains: tiktok.com\n",
        {},
        [(9, "apps[demo].domains", "expected a list, got 'tiktok.com'")],
        id="wrong-type-domains",
    ),
    pytest.param(
        HEAD + "    domains: [[a.example]]\n",
        {},
        [(9, "apps[demo].domains[0]", "expected a mapping, got a list")],
        id="wrong-type-entry",
    ),
    pytest.param(
        "version: 1\nmode: block\napps: []\n",
        {},
        [(2, "mode", "'block' is not one of: enforce, monitor")],
        id="wrong-mode",
    ),
    pytest.param(
        HEAD.replace("phase: full", "phase: total"),
        {},
        [(8, "apps[demo].schedule[0].phase", "'total' is not one of: none, downloads, full")],
        id="wrong-phase",
    ),
    pytest.param(
        "version: 1\nsettings:\n  dns:\n    cache_size: lots\napps: []\n",
        {},
        [(4, "settings.dns.cache_size", "expected an integer, got 'lots'")],
        id="wrong-type-setting",
    ),
    pytest.param(
        "version: 1\nsettings:\n  dns:\n    block_response: drop\napps: []\n",
        {},
        [(4, "settings.dns.block_response", "must be nxdomain, null or refused")],
        id="bad-setting-choice",
    ),
    pytest.param(
        HEAD.replace("2020-01-01", "2020-02-30"),
        {},
        [(8, "apps[demo].schedule[0].from", "'2020-02-30' is not a valid date")],
        id="invalid-date",
    ),
    pytest.param(
        HEAD.replace("2020-01-01", "next tuesday"),
        {},
        [(8, "apps[demo].schedule[0].from", "'next tuesday' is not a valid date")],
        id="not-a-date",
    ),
    pytest.param(
        HEAD.replace(
            "legal_basis: {order: EO 1, citation: 1 FR 1}",
            "legal_basis: {order: EO 1, citation: 1 FR 1, signed: 2020-13-01}",
        ),
        {},
        [(6, "apps[demo].legal_basis.signed", "'2020-13-01' is not a valid date")],
        id="invalid-signed-date",
    ),
    pytest.param(
        "version: 1\nexempt_clients: [10.0.0.0/33]\napps: []\n",
        {},
        [(2, "exempt_clients[0]", "'10.0.0.0/33' is not a valid CIDR")],
        id="invalid-cidr-prefix",
    ),
    pytest.param(
        HEAD + "    networks:\n      - 10.0.0.300/24\n",
        {},
        [(10, "apps[demo].networks[0]", "'10.0.0.300/24' is not a valid CIDR")],
        id="invalid-cidr-address",
    ),
    pytest.param(
        HEAD + "    networks:\n      - {cidr: nonsense, source: x}\n",
        {},
        [(10, "apps[demo].networks[0].cidr", "'nonsense' is not a valid CIDR")],
        id="invalid-cidr-entry",
    ),
    pytest.param(
        HEAD + "    sni: ['**.example.com']\n",
        {},
        [(9, "apps[demo].sni[0]", "invalid SNI pattern '**.example.com': '**' is not allowed")],
        id="invalid-glob-double-star",
    ),
    pytest.param(
        HEAD + "    sni:\n      - example.*\n",
        {},
        [(10, "apps[demo].sni[0]", "the top-level label must be literal")],
        id="invalid-glob-tld",
    ),
    pytest.param(
        HEAD + "    sni: ['a?.example.com']\n",
        {},
        [(9, "apps[demo].sni[0]", "only '*' is a wildcard")],
        id="invalid-glob-char",
    ),
    pytest.param(
        HEAD + MINIMAL_APP,
        {},
        [(9, "apps[1].id", "duplicate app id 'demo' (first defined at line 3)")],
        id="duplicate-app-id",
    ),
    pytest.param(
        HEAD + "    lists: [missing.txt]\n",
        {},
        [(9, "apps[demo].lists[0]", "list file 'missing.txt' cannot be read: No such file or directory")],
        id="missing-list-file",
    ),
    pytest.param(
        HEAD + "    lists:\n      - {path: lists/gone.txt, as: hosts}\n",
        {},
        [(10, "apps[demo].lists[0]", "list file 'lists/gone.txt' cannot be read")],
        id="missing-list-file-mapping",
    ),
    pytest.param(
        HEAD + "    domains: ['bad name.example']\n",
        {},
        [(9, "apps[demo].domains[0]", "'bad name.example' is not a valid domain name")],
        id="bad-domain",
    ),
    pytest.param(
        HEAD + "    domains: ['*.example.com']\n",
        {},
        [(9, "apps[demo].domains[0]", "'*.example.com' is not a valid domain name")],
        id="glob-in-domains",
    ),
    pytest.param(
        HEAD + "    domains: [apple.com]\n",
        {},
        [
            (
                9,
                "apps[demo].domains[0]",
                "'apple.com' would block the app-store host apps.apple.com, itunes.apple.com for every app",
            )
        ],
        id="domain-covers-store-host",
    ),
    pytest.param(
        HEAD + "    hosts: [play.google.com]\n",
        {},
        [(9, "apps[demo].hosts[0]", "would block the app-store host play.google.com")],
        id="host-is-store-host",
    ),
    pytest.param(
        HEAD + "    sni: ['*.google.com']\n",
        {},
        [(9, "apps[demo].sni[0]", "would match the app-store host play.google.com")],
        id="glob-matches-store-host",
    ),
    pytest.param(
        HEAD + "    downloads:\n      - {host: apps.apple.com}\n",
        {},
        [(10, "apps[demo].downloads[0].host", "would block the app-store host apps.apple.com")],
        id="download-host-is-store-host",
    ),
    pytest.param(
        HEAD + "    downloads:\n      - {host: dl.example, path: weixin/}\n",
        {},
        [(10, "apps[demo].downloads[0].path", "'weixin/' must start with '/'")],
        id="download-path",
    ),
    pytest.param(
        HEAD + "    store:\n      apple: [tiktok]\n",
        {},
        [(10, "apps[demo].store.apple[0]", "an Apple App Store id is a positive number, got 'tiktok'")],
        id="bad-apple-id",
    ),
    pytest.param(
        HEAD + "    store:\n      google_play: [{id: musically, source: x}]\n",
        {},
        [(10, "apps[demo].store.google_play[0].id", "'musically' is not a Google Play package name")],
        id="bad-play-id",
    ),
    pytest.param(
        HEAD + "    domains:\n      - {name: a.example, group: nope}\n",
        {},
        [(10, "apps[demo].domains[0].group", "unknown group 'nope'")],
        id="unknown-group",
    ),
    pytest.param(
        HEAD.replace("    owner: Demo Ltd.\n", ""),
        {},
        [(3, "apps[demo].owner", "required key is missing")],
        id="missing-required",
    ),
    pytest.param(
        HEAD.replace("id: demo", "id: Demo-App"),
        {},
        [(3, "apps[0].id", "'Demo-App' must be lower-case letters, digits and '_'")],
        id="bad-app-id",
    ),
    pytest.param(
        "version: 1\ntimezone: Mars/Olympus\napps: []\n",
        {},
        [(2, "timezone", "unknown time zone 'Mars/Olympus'")],
        id="bad-timezone",
    ),
    pytest.param(
        "- just\n- a list\n", {}, [(1, "(top level)", "expected a mapping, got a list")], id="top-level-list"
    ),
    pytest.param(
        HEAD + "    schedule:\n", {}, [(9, "apps[demo].schedule", "duplicate key")], id="duplicate-schedule"
    ),
]


@pytest.mark.parametrize(("text", "files", "want"), CASES)
def test_bad_policy_is_reported_with_file_line_field(
    write_policy: WritePolicy, text: str, files: dict[str, str], want: list[tuple[int, str, str]]
) -> None:
    path = write_policy(text, files)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    issues = info.value.issues
    got = [(i.line, i.field) for i in issues]
    assert got == [(line, field) for line, field, _ in want], [str(i) for i in issues]
    for issue, (line, field, fragment) in zip(issues, want, strict=True):
        assert issue.file == str(path)
        assert fragment in issue.message
        assert str(issue).startswith(f"{path}:{line}: {field}: ")


LIST_CASES = [
    pytest.param(
        "ok.example\nnot a name at all\n\n# fine\nbad_\u00ff\u00fe!.example\n",
        [
            (2, "'not a name at all' is not a domain name"),
            (5, "is not a domain name"),
        ],
        id="bad-lines",
    ),
    pytest.param(
        b"ok.example\n\xff\xfe.example\n# \xff in a comment is fine\n",
        [
            (2, "is not a domain name"),
        ],
        id="non-utf8-line",
    ),
    pytest.param(
        "0.0.0.0 fine.example\nfoo bar\n", [(2, "'foo bar' is not a domain name")], id="not-a-hosts-line"
    ),
    pytest.param("apple.com\n", [(1, "'apple.com' would block the app-store host")], id="store-host-in-list"),
]


@pytest.mark.parametrize(("content", "want"), LIST_CASES)
def test_bad_list_lines(write_policy: WritePolicy, content: str | bytes, want: list[tuple[int, str]]) -> None:
    path = write_policy(HEAD + "    lists: [lists/bad.txt]\n", {"lists/bad.txt": content})
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    list_file = str(path.parent / "lists/bad.txt")
    got = [(i.file, i.line, i.field) for i in info.value.issues]
    assert got == [(list_file, line, "apps[demo].lists[0]") for line, _ in want]
    for issue, (_, fragment) in zip(info.value.issues, want, strict=True):
        assert fragment in issue.message


def test_many_bad_list_lines_are_summarised(write_policy: WritePolicy) -> None:
    path = write_policy(HEAD + "    lists: [lists/bad.txt]\n", {"lists/bad.txt": "bad line\n" * 50})
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    issues = info.value.issues
    assert len(issues) == 21
    assert [i.line for i in issues[:20]] == list(range(1, 21))
    assert issues[-1].message == "30 more bad lines like these" and issues[-1].line == 50


FILE_CASES = [
    pytest.param(b"", 1, "(file)", "the policy is empty", id="empty"),
    pytest.param(b"# only a comment\n", 1, "(file)", "the policy is empty", id="only-comments"),
    pytest.param(
        b"version: 1\napps: []\nname: caf\xe9\n", 3, "(file)", "not UTF-8 text (byte 0xe9", id="latin-1"
    ),
]


@pytest.mark.parametrize(("content", "line", "field", "message"), FILE_CASES)
def test_bad_policy_file(tmp_path: Path, content: bytes, line: int, field: str, message: str) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(content)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    (issue,) = info.value.issues
    assert (issue.file, issue.line, issue.field) == (str(path), line, field)
    assert issue.message.startswith(message)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(tmp_path / "nope.yaml")
    assert str(info.value) == f"{tmp_path / 'nope.yaml'}:0: (file): cannot read: No such file or directory"


def test_every_problem_is_reported_at_once(write_policy: WritePolicy) -> None:
    path = write_policy(
        "version: 1\nmode: loud\nexempt_clients: [x]\napps:\n" + MINIMAL_APP + "    sni: ['**.a.com']\n"
    )
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    assert [i.field for i in info.value.issues] == ["mode", "exempt_clients[0]", "apps[demo].sni[0]"]


def test_load_policy_text_names_the_given_file() -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text("version: 1\napps: [\n", "inline.yaml")
    assert str(info.value).startswith("inline.yaml:3: (yaml): syntax error")


MERGE_POLICY = """\
version: 1
x-eo13971: &eo13971
  legal_basis: {order: EO 13971, citation: 86 FR 1249}
  schedule:
    - {from: 2021-02-19, phase: full, source: EO 13971 + 45 days}
apps:
  - <<: *eo13971
    id: alipay
    name: Alipay
    owner: Ant Group
    domains: [alipay.example]
  - <<: *eo13971
    id: qq_wallet
    name: QQ Wallet
    owner: Tencent
    schedule:
      - {from: 2021-03-01, phase: downloads, source: override}
"""


def test_yaml_merge_keys_and_extension_anchors() -> None:
    import datetime as dt

    from policies import Phase

    policy = load_policy_text(MERGE_POLICY, "merge.yaml")
    assert policy.apps["alipay"].legal_basis.order == "EO 13971"
    phases = policy.phases(dt.date(2021, 3, 2))
    assert phases["alipay"].phase is Phase.FULL  # merged schedule
    assert phases["qq_wallet"].phase is Phase.DOWNLOADS  # a key written out overrides the merged one
    assert policy.view(at=dt.date(2021, 3, 2)).decide_name("x.alipay.example").blocked


MERGE_ERROR_CASES = [
    pytest.param(
        "version: 1\n<<: 5\napps: []\n",
        (1, "(top level)", "bad merge key: expected a mapping"),
        id="merge-a-scalar",
    ),
    pytest.param(
        "version: 1\nx-a: &a {colour: red}\napps:\n  - <<: *a\n    id: q\n",
        (2, "apps[q].colour", "unknown key 'colour'"),
        id="merged-unknown-key-at-its-definition",
    ),
]


@pytest.mark.parametrize(("text", "want"), MERGE_ERROR_CASES)
def test_merge_key_errors(text: str, want: tuple[int, str, str]) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy_text(text, "m.yaml")
    first = info.value.issues[0]
    assert (first.line, first.field) == want[:2] and want[2] in first.message
