"""A mitmproxy script for the tests: the stand-in for DNS.

The tests' hostnames (www.tiktok.com, apps.apple.com...) must never be looked
up or reached on the internet, yet the proxy must connect where a real one
would: to the host in the request target.  This script runs in
``server_connect`` and sends a connection for any name to a local server
instead: port 80 to the plain-HTTP origin, 443 and 8080 to the TLS origin,
as given in ``EGRESS_TEST_ORIGINS`` (``HTTP_PORT,TLS_PORT``), any other port
to 127.0.0.1 on that port.  The flow keeps the name and port the client
asked for, so the addon's request and ClientHello hooks see those; load
this script after the addon (``mitmdump -s egress_filter.py -s
loopback_dns.py``) when its ``server_connect`` must see the name too.
"""

import logging
import os

from mitmproxy.proxy import server_hooks

log = logging.getLogger(__name__)


class LoopbackDns:
    def __init__(self) -> None:
        plain, _, tls = os.environ.get("EGRESS_TEST_ORIGINS", "0,0").partition(",")
        self.plain, self.tls = int(plain), int(tls)

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        address = data.server.address
        if address is None or address[0] == "127.0.0.1":
            return
        port = {80: self.plain, 443: self.tls, 8080: self.tls}.get(address[1], address[1])
        log.info("loopback-dns: %s:%s -> 127.0.0.1:%s", address[0], address[1], port)
        data.server.address = ("127.0.0.1", port)


addons = [LoopbackDns()]
