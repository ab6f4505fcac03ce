"""The built-in rules (``builtin:*``) decided by the core: every rule in
enforce mode, in monitor mode, in a monitoring group, for an exempt client
and switched off; the ``builtins:`` keys and their errors; the older
settings they default from; and a policy rule taking precedence."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from policies import (
    CANARY_RULE,
    DDR_RULE,
    DOH_RULE,
    ECH_RULE,
    PRIVATE_RELAY_RULE,
    Action,
    Builtins,
    Decision,
    EchAction,
    Kind,
    Mode,
    Phase,
    Policy,
    PolicyError,
    PolicyView,
    Signal,
    load_policy,
    load_policy_text,
)
from policies.builtins import CANARY, DDR_NAME, DOH_HOSTS, PRIVATE_RELAY_HOSTS

POLICY = """\
version: 2
clients:
  lab: {{networks: [10.1.0.0/16], frameworks: [], mode: monitor}}
exempt_clients: [10.9.0.0/16]
{extra}apps:
  - id: demo
    name: Demo
    owner: Demo Ltd.
    domains: [demo.example]
"""
PLAIN, LAB, EXEMPT = "192.0.2.7", "10.1.2.3", "10.9.2.3"


def policy(extra: str = "") -> Policy:
    return load_policy_text(POLICY.format(extra=extra))


Ask = Callable[[PolicyView, str], Decision]


def _name(name: str, kind: Kind = Kind.DNS) -> Ask:
    return lambda view, client: view.decide_name(name, kind, client)


# (builtin key, rule id, how the observation is asked, subject in the reason)
RULES = [
    pytest.param("doh", DOH_RULE, _name("dns.google"), "dns.google", id="doh-dns-name"),
    pytest.param("doh", DOH_RULE, _name("DNS.Google.", Kind.SNI), "dns.google", id="doh-sni"),
    pytest.param("doh", DOH_RULE,
                 lambda v, c: v.decide_http("https://cloudflare-dns.com/dns-query?dns=AA", None, c),
                 "cloudflare-dns.com", id="doh-http-url"),
    pytest.param("doh", DOH_RULE, lambda v, c: v.decide_ip("1.1.1.1", c, 443), "1.1.1.1", id="doh-ip-443"),
    pytest.param("doh", DOH_RULE, lambda v, c: v.decide_ip("2606:4700:4700:0:0:0:0:1111", c, 853),
                 "2606:4700:4700::1111", id="doh-ipv6-853-long-form"),
    pytest.param("doh", DOH_RULE, lambda v, c: v.decide_ip("9.9.9.9", c), "9.9.9.9", id="doh-ip-no-port"),
    pytest.param("doh", DOH_RULE, lambda v, c: v.decide_builtin(Signal.DOH_REQUEST, "doh.example", c),
                 "doh.example", id="doh-request-shape"),
    pytest.param("canary", CANARY_RULE, _name("use-application-dns.net"), "use-application-dns.net",
                 id="canary"),
    pytest.param("private_relay", PRIVATE_RELAY_RULE, _name("mask.icloud.com"), "mask.icloud.com",
                 id="private-relay"),
    pytest.param("private_relay", PRIVATE_RELAY_RULE, _name("mask-h2.icloud.com", Kind.SNI),
                 "mask-h2.icloud.com", id="private-relay-h2"),
    pytest.param("ddr", DDR_RULE, _name("_dns.resolver.arpa"), "_dns.resolver.arpa", id="ddr"),
]

# (view mode, client, expected action, enforced, reason prefix)
SITUATIONS = [
    pytest.param(None, PLAIN, Action.BLOCK, None, "", id="enforce"),
    pytest.param(Mode.MONITOR, PLAIN, Action.LOG, Action.BLOCK,
                 "monitor mode: would be blocked, logged instead; ", id="monitor-mode"),
    pytest.param(None, LAB, Action.LOG, Action.BLOCK,
                 "group lab is in monitor mode: would be blocked, logged instead; ", id="monitor-group"),
    pytest.param(None, EXEMPT, Action.LOG, Action.BLOCK,
                 f"client {EXEMPT} is exempt: would be blocked, logged instead; ", id="exempt-client"),
]


@pytest.mark.parametrize(("mode", "client", "action", "enforced", "prefix"), SITUATIONS)
@pytest.mark.parametrize(("key", "rule", "ask", "subject"), RULES)
def test_builtin_respects_mode_groups_and_exempt(key: str, rule: str, ask: Ask, subject: str,
                                                 mode: Mode | None, client: str, action: Action,
                                                 enforced: Action | None, prefix: str) -> None:
    d = ask(policy().view(mode=mode), client)
    assert (d.action, d.enforced, d.rule) == (action, enforced, rule)
    assert d.reason.startswith(prefix + subject + " is ")
    assert d.apps == ()


@pytest.mark.parametrize(("key", "rule", "ask", "subject"), RULES)
def test_builtin_switched_off(key: str, rule: str, ask: Ask, subject: str) -> None:
    d = ask(policy(f"builtins: {{{key}: false}}\n").view(), PLAIN)
    assert (d.action, d.rule) == (Action.ALLOW, None)


ECH_CASES = [
    pytest.param("", None, Action.LOG, ECH_RULE, id="default-log"),
    pytest.param("", Mode.MONITOR, Action.LOG, ECH_RULE, id="monitor-still-logs"),
    pytest.param("builtins: {ech: off}\n", None, Action.ALLOW, None, id="switched-off"),
    pytest.param("settings: {proxy: {log_ech: false}}\n", None, Action.ALLOW, None, id="old-setting-off"),
    pytest.param("settings: {proxy: {log_ech: false}}\nbuiltins: {ech: log}\n", None, Action.LOG, ECH_RULE,
                 id="builtins-win-over-old-setting"),
]


@pytest.mark.parametrize(("extra", "mode", "action", "rule"), ECH_CASES)
def test_ech_signal(extra: str, mode: Mode | None, action: Action, rule: str | None) -> None:
    d = policy(extra).view(mode=mode).decide_builtin(Signal.ECH, "cover.example", PLAIN)
    assert (d.action, d.rule) == (action, rule)
    if rule:
        assert d.reason == ("the ClientHello carries Encrypted ClientHello; the outer SNI is cover.example "
                            "and the inner name is hidden")


DEFAULT_CASES = [
    pytest.param("", Builtins(), id="defaults"),
    pytest.param("settings: {proxy: {block_doh: false}}\n", Builtins(doh=False), id="proxy-block-doh-off"),
    pytest.param("settings: {dns: {canary: false}}\n", Builtins(canary=False), id="dns-canary-off"),
    pytest.param("settings: {dns: {canary: false}}\nbuiltins: {canary: true}\n", Builtins(),
                 id="builtins-win"),
    pytest.param("builtins: {doh: false, canary: false, ech: off, private_relay: false, ddr: false}\n",
                 Builtins(False, False, EchAction.OFF, False, False), id="all-off"),
]


@pytest.mark.parametrize(("extra", "expected"), DEFAULT_CASES)
def test_builtins_read_from_policy(extra: str, expected: Builtins) -> None:
    assert policy(extra).builtins == expected


ERROR_CASES = [
    pytest.param("builtins: {doh: true, quic: true}\n", 5, "builtins.quic", "unknown key 'quic'",
                 id="unknown-key"),
    pytest.param("builtins: {ddr: maybe}\n", 5, "builtins.ddr", "true or false", id="not-a-bool"),
    pytest.param("builtins: {ech: block}\n", 5, "builtins.ech", "'block'", id="ech-choice"),
    pytest.param("builtins: [doh]\n", 5, "builtins", "expected a mapping", id="not-a-mapping"),
]


@pytest.mark.parametrize(("extra", "line", "field", "fragment"), ERROR_CASES)
def test_builtins_errors_name_file_and_line(extra: str, line: int, field: str, fragment: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy(extra)
    issues = [(i.line, i.field) for i in err.value.issues if fragment in i.message]
    assert issues == [(line, field)], [str(i) for i in err.value.issues]


PRECEDENCE_CASES = [
    pytest.param("allow:\n  hosts: [dns.google]\n", Action.ALLOW, "allow:dns.google", id="allow-list-wins"),
    pytest.param("", Action.BLOCK, DOH_RULE, id="builtin-when-no-rule"),
]


@pytest.mark.parametrize(("extra", "action", "rule"), PRECEDENCE_CASES)
def test_a_policy_rule_decides_before_a_builtin(extra: str, action: Action, rule: str) -> None:
    d = policy(extra).view().decide_name("dns.google", Kind.DNS, PLAIN)
    assert (d.action, d.rule) == (action, rule)


@pytest.mark.parametrize("port", [80, 53, 8443], ids=["http", "dns", "other"])
def test_resolver_address_on_other_ports_is_not_builtin(port: int) -> None:
    assert policy().view().decide_ip("8.8.8.8", PLAIN, port).action is Action.ALLOW


def test_policy_names_never_consult_the_builtin_table() -> None:
    """A name a policy rule matches is decided from the rule cache alone."""
    view = policy().view()
    group = view.default
    group._builtin_names = {}  # a probe would now change nothing; prove the rule path answers
    assert view.decide_name("www.demo.example").apps == ("demo",)
    assert view.decide_name("dns.google").action is Action.ALLOW


BUILTIN_NAMES = sorted(DOH_HOSTS | PRIVATE_RELAY_HOSTS | {CANARY, DDR_NAME})


@pytest.mark.parametrize("name", BUILTIN_NAMES, ids=BUILTIN_NAMES)
def test_bundled_policy_leaves_every_builtin_name_to_its_rule(name: str) -> None:
    """No rule of the bundled policy covers a built-in name and so masks it."""
    d = load_policy().view().decide_name(name)
    assert d.action is Action.BLOCK and d.rule is not None and d.rule.startswith("builtin:")


WITH_ECH = [
    # (builtins extra, outer SNI, client, action, rule, apps)
    pytest.param("", "allowed.example", PLAIN, Action.LOG, ECH_RULE, (), id="allowed-name-logged-as-ech"),
    pytest.param("", "demo.example", PLAIN, Action.BLOCK, "domain:demo.example", ("demo",),
                 id="blocked-name-stays-blocked"),
    pytest.param("", "allowed.example", EXEMPT, Action.LOG, ECH_RULE, (), id="exempt-client-still-logged"),
    pytest.param("builtins: {ech: off}\n", "allowed.example", PLAIN, Action.ALLOW, None, (), id="ech-off"),
]


@pytest.mark.parametrize(("extra", "sni", "client", "action", "rule", "apps"), WITH_ECH)
def test_with_ech_is_the_one_ech_verdict(extra: str, sni: str, client: str, action: Action,
                                         rule: str | None, apps: tuple[str, ...]) -> None:
    """``with_ech``: the ClientHello's own verdict, or the builtin:ech log where that allows;
    the proxy and replay both ask it."""
    view = policy(extra).view(phase=Phase.FULL)
    d = view.with_ech(view.decide_name(sni, Kind.SNI, client), sni, client)
    assert (d.action, d.rule, d.apps) == (action, rule, apps)
