"""The mitmproxy adapter: the shared policy enforced at a forward or transparent proxy.

``egress_filter`` is the addon to load with ``mitmdump -s``: ``EgressFilter``
lists one sub-addon per concern, in the order mitmproxy calls them
(``decisions``, ``bypass``, ``block_page``, ``telemetry``, ``connections``),
which pass each other a ``verdict.Verdict``.  ``compat`` is the one seam to
the installed mitmproxy; ``cli`` registers ``egress-filter proxy``, which
runs mitmproxy with the addon in-process.
"""
