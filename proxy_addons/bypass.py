"""The bypass controls that edit traffic: QUIC refused for a TCP fallback, ECH configs stripped.

The bypass *verdicts* are the core's built-in rules, decided with every other
rule by the deciding addon (``builtin:doh`` on resolver names, addresses and
DoH-shaped requests; ``builtin:ech`` on a ClientHello that carries ECH).
What is left here acts on traffic the policy lets through:

* ``tls_clienthello``: QUIC that the deciding addon passed through is
  refused instead when ``egress_quic=fallback`` (the default where
  mitmproxy cannot relay it, ``compat.QUIC_PASSTHROUGH``), so the client
  retries over TCP, where passthrough works and the SNI is judged again;
* ``response`` and ``dns_response``: ECH configs are stripped from DNS
  ``HTTPS`` records (mitmproxy's DNS mode, and DoH answers that got
  through), so clients keep sending a visible SNI.  The flow is marked
  (``flow.metadata[ECH_STRIPPED]``) for the telemetry addon to count.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from struct import error as struct_error  # mitmproxy's DNS codec raises it on short data
from typing import Any

from mitmproxy import ctx, dns, http, tls
from mitmproxy.net.dns import types as dns_types

from policies import Policy

from . import compat
from .decisions import PolicyDecisions, options_error, refuse

log = logging.getLogger(__name__)

QUIC_STYLES = ("fallback", "passthrough")
# Pass allowed QUIC through wherever this mitmproxy can relay it; refuse it (TCP fallback) elsewhere.
DEFAULT_QUIC = "passthrough" if compat.QUIC_PASSTHROUGH else "fallback"
ECH_STRIPPED = "egress_filter.ech_stripped"
"""``flow.metadata`` key: this flow's DNS answer had its ECH configs stripped."""


class BypassControls:
    def __init__(self, decisions: PolicyDecisions) -> None:
        self.decisions = decisions
        decisions.settings_users.append(self)
        self.strip_ech = True

    def load(self, loader: Any) -> None:
        loader.add_option("egress_strip_ech", bool, True,
                          "Strip ECH configs from DNS HTTPS records (DNS mode and DoH answers), "
                          "so the SNI stays visible (also off when settings.proxy.strip_ech is false).")
        loader.add_option("egress_quic", str, DEFAULT_QUIC,
                          "QUIC the policy lets through: 'fallback' refuses it so clients retry over "
                          "TCP; 'passthrough' sets ignore_connection, which relays QUIC only on a "
                          "mitmproxy with #8338 fixed (the default there). Banned QUIC is refused "
                          "either way.", choices=QUIC_STYLES)

    def configure(self, updated: set[str]) -> None:
        if self.decisions.holder is not None:
            self.prepare(self.decisions.holder.policy)()

    def prepare(self, policy: Policy) -> Callable[[], None]:
        quic = ctx.options.egress_quic
        if quic not in QUIC_STYLES:
            raise options_error(f"egress_quic: '{quic}' is not one of {', '.join(QUIC_STYLES)}")
        strip = bool(ctx.options.egress_strip_ech and policy.settings.proxy.strip_ech)

        def apply() -> None:
            self.strip_ech = strip

        return apply

    def tls_clienthello(self, data: tls.ClientHelloData) -> None:
        v = self.decisions.verdict(data)
        if v is None or not data.ignore_connection or v.extra.get("transport") != "quic":
            return
        if ctx.options.egress_quic != "fallback":
            return
        # ignore_connection stalls QUIC on this mitmproxy (mitmproxy#8338): refuse
        # it instead, so the client falls back to TCP.
        data.ignore_connection = False
        refuse(data)
        self.decisions.revise(data, replace(v, response="quic-refused"))

    def response(self, flow: http.HTTPFlow) -> None:
        """DoH answers that got through (DoH blocking off): strip their ECH configs too."""
        if not self.strip_ech or flow.response is None:
            return
        if flow.response.headers.get("content-type", "").split(";")[0].strip() != "application/dns-message":
            return
        try:
            message = compat.unpack_dns(flow.response.content or b"")
        except (ValueError, struct_error, IndexError) as exc:
            log.debug("egress-filter: unparsable DoH answer from %s: %s", flow.request.pretty_host, exc)
            return
        if strip_ech(message.answers):
            flow.response.content = message.packed
            flow.metadata[ECH_STRIPPED] = True

    def dns_response(self, flow: dns.DNSFlow) -> None:
        if self.strip_ech and flow.response is not None and strip_ech(flow.response.answers):
            flow.metadata[ECH_STRIPPED] = True


def strip_ech(answers: Iterable[dns.ResourceRecord]) -> bool:
    """Remove the ECH parameter of every HTTPS record; whether any had one."""
    stripped = False
    for answer in answers:
        if answer.type == dns_types.HTTPS:
            try:
                if answer.https_ech is not None:
                    answer.https_ech = None
                    stripped = True
            except (ValueError, struct_error, IndexError):
                continue  # a malformed record is passed on as it came
    return stripped
