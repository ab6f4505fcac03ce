"""The egress-filter mitmproxy addon: the shared policy, enforced at the proxy.

Load it with ``mitmdump -s proxy_addons/egress_filter.py --set egress_policy=P``
or run ``egress-filter proxy``.  ``EgressFilter`` holds one addon per
concern, as sub-addons, which mitmproxy calls in this order for every hook:

1. ``decisions.PolicyDecisions``: the policy holder and its options; judges
   every CONNECT, ClientHello, request and dial, enforces blocks, and hands
   the ``Verdict`` on (``flow.metadata`` on flows, see ``verdict.py``);
2. ``bypass.BypassControls``: QUIC refused for a TCP fallback, ECH configs
   stripped from DNS answers;
3. ``block_page.BlockPage``: the 451 page a blocked request is shown;
4. ``telemetry.Telemetry``: one event per block or log verdict, and metrics;
5. ``connections.ConnectionGuard``: a deadline for undecided connections and
   a cap per client address (it reads what the addons above did);
6. ``control.ControlSocket``: the local socket ``egress-filter pause`` talks
   to (the pause itself is the holder's, so every hook above sees it);
7. ``resolver.UpstreamResolver``: with ``egress_resolver`` set, the names
   of the servers dialled are looked up through the DNS filter, never the
   system resolver (last, because it awaits the network).

Data flows one way: options and YAML → ``PolicyHolder`` → a ``Decision`` per
observation → the addons act on its ``Verdict`` → one event.
"""

# No `from __future__ import annotations`: mitmdump -s loads this file without
# putting it in sys.modules, and dataclasses cannot resolve string annotations then.
# This file shares its name with the `egress_filter` package, which mitmdump -s
# would shadow (it puts this directory first on sys.path): nothing imported
# from here imports that package (tests/test_layers.py keeps it so).
from typing import Any

from proxy_addons.block_page import BlockPage
from proxy_addons.bypass import BypassControls
from proxy_addons.connections import ConnectionGuard
from proxy_addons.control import ControlSocket
from proxy_addons.decisions import PolicyDecisions
from proxy_addons.resolver import UpstreamResolver
from proxy_addons.telemetry import Telemetry
from proxy_addons.verdict import authority_names
from runtime.holder import PolicyHolder

__all__ = ["EgressFilter", "addons", "authority_names"]


class EgressFilter:
    """The addons of egress-filter, in the order they must run."""

    def __init__(self) -> None:
        self.decisions = PolicyDecisions()
        self.bypass = BypassControls(self.decisions)
        self.page = BlockPage()
        self.telemetry = Telemetry(self.decisions)
        self.guard = ConnectionGuard(self.telemetry.registry)
        self.control = ControlSocket(self.decisions, self.telemetry)
        self.resolver = UpstreamResolver(self.telemetry.registry)
        self.addons: list[Any] = [self.decisions, self.bypass, self.page, self.telemetry, self.guard,
                                  self.control, self.resolver]

    @property
    def holder(self) -> PolicyHolder | None:
        return self.decisions.holder


addons = [EgressFilter()]
