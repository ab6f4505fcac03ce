"""The composition root: the CLI, the policy holder, the event writer and metrics.

The adapters (``dns_blocker``, ``proxy_addons``) and ``replay`` use the holder
and the event writer from here; only ``egress_filter.cli`` imports the adapters,
and lazily, so the adapters never import each other.
"""
