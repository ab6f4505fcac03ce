"""The shared policy core: load, validate, match, decide. Pure: no sockets,
no mitmproxy, no dnslib.

    policy = load_policy("policies/bundled.yaml")     # or load_policy() for the bundled one
    view = policy.view(at=date(2020, 11, 13))          # phases fixed for that day
    decision = view.decide(Observation.sni("www.tiktok.com"))
    event = build_event(decision, observation, "proxy")

Adapters import from here and nothing deeper.
"""

from .builtins import (
    CANARY_RULE,
    DDR_RULE,
    DOH_RULE,
    ECH_RULE,
    PRIVATE_RELAY_RULE,
    Builtins,
    EchAction,
    Signal,
)
from .decide import PolicyView, decide
from .events import SCHEMA_VERSION, build_event, new_event_id
from .loader import (
    BUNDLED,
    SCHEMA,
    PolicyError,
    PolicyIssue,
    blocks_anything,
    load_policy,
    load_policy_text,
    policy_summary,
    policy_warnings,
)
from .matching import STORE_HOSTS, normalize_name, recognize_store_url
from .model import (
    ALLOW,
    DEFAULT_GROUP,
    EXEMPT_GROUP,
    Action,
    App,
    AppPhase,
    ClientGroup,
    Decision,
    DnsSettings,
    EventQueueSettings,
    Framework,
    FrameworkState,
    Kind,
    LegalStatus,
    Mode,
    Observation,
    Phase,
    ProxySettings,
    Rule,
    RuleKind,
    Settings,
    Status,
    Tier,
)
from .policy import Policy

__all__ = [
    "ALLOW",
    "BUNDLED",
    "CANARY_RULE",
    "DDR_RULE",
    "DEFAULT_GROUP",
    "DOH_RULE",
    "ECH_RULE",
    "EXEMPT_GROUP",
    "PRIVATE_RELAY_RULE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STORE_HOSTS",
    "Action",
    "App",
    "AppPhase",
    "Builtins",
    "ClientGroup",
    "Decision",
    "DnsSettings",
    "EchAction",
    "EventQueueSettings",
    "Framework",
    "FrameworkState",
    "Kind",
    "LegalStatus",
    "Mode",
    "Observation",
    "Phase",
    "Policy",
    "PolicyError",
    "PolicyIssue",
    "PolicyView",
    "ProxySettings",
    "Rule",
    "RuleKind",
    "Settings",
    "Signal",
    "Status",
    "Tier",
    "blocks_anything",
    "build_event",
    "decide",
    "load_policy",
    "load_policy_text",
    "new_event_id",
    "normalize_name",
    "policy_summary",
    "policy_warnings",
    "recognize_store_url",
]
