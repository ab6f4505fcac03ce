"""The proxy's control socket (``egress-filter pause``): ``runtime.control`` on the addon's holder.

The pause itself lives in the ``PolicyHolder`` (every hook decides through
``holder.view``); this addon only serves the socket from ``running`` to
``done`` and logs pause events through the telemetry addon's event log.
Option ``egress_control``: the socket path (default: ``runtime.control.default_path()``;
``off``: none).  A new ``egress_policy`` (a new holder) gets a new handler.
"""

from __future__ import annotations

from typing import Any

from mitmproxy import ctx

from runtime.control import ControlServer, HolderControl, start_for

from .decisions import PolicyDecisions
from .telemetry import Telemetry


class ControlSocket:
    def __init__(self, decisions: PolicyDecisions, telemetry: Telemetry) -> None:
        self.decisions = decisions
        self.telemetry = telemetry
        self.server: ControlServer | None = None
        self.handler: HolderControl | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("egress_control", str | None, None,
                          "Local control socket for egress-filter pause (default "
                          "/run/egress-filter/control.sock as root, else under $XDG_RUNTIME_DIR or "
                          "/tmp/egress-filter-UID/; 'off': none). Read once, at start.")

    def _emit(self, event: dict[str, Any]) -> None:
        self.telemetry.events.emit(event)  # the log in force now (a reload may have swapped it)

    def configure(self, updated: set[str]) -> None:
        holder = self.decisions.holder
        if holder is not None and (self.handler is None or self.handler.holder is not holder):
            self.handler = HolderControl(holder, "proxy", self._emit)
            if self.server is not None:
                self.server.handler = self.handler

    def running(self) -> None:
        if self.server is None and self.handler is not None:
            self.server = start_for(ctx.options.egress_control, self.handler, "egress-filter proxy")

    def done(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
