"""The mitmproxy adapter: the shared policy enforced at a forward or transparent proxy.

``egress_filter`` holds the addon (load it with ``mitmdump -s``); ``cli``
registers ``egress-filter proxy``, which runs mitmproxy with the addon
in-process.
"""
