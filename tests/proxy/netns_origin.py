"""The origin of the transparent-mode test, run inside its namespace:
``python -m tests.proxy.netns_origin CERT KEY``.

It serves plain HTTP on port 80, HTTPS on TCP 443 and QUIC (aioquic, ALPN h3)
on UDP 443, all on every address of the namespace, with the test origin's own
certificate.  It prints one line per event, flushed: ``ready`` once all three
listen, ``http HOST PATH`` / ``https HOST PATH`` per request served and
``quic`` per QUIC handshake completed, so the test can tell what reached
the origin.  It runs until it is terminated.
"""

from __future__ import annotations

import asyncio
import http.server
import ssl
import sys
import threading
from pathlib import Path
from typing import Any

from tests.proxy.conftest import _Handler


def say(line: str) -> None:
    print(line, flush=True)


class Seen:
    """What ``tests.proxy.conftest._Handler`` records of each request, printed with the scheme."""

    def __init__(self, scheme: str) -> None:
        self.scheme = scheme

    def append(self, line: str) -> None:
        say(f"{self.scheme} {line}")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], scheme: str) -> None:
        super().__init__(address, _Handler)
        self.seen = Seen(scheme)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # refused handshakes are the point of the test


class TlsServer(Server):
    def __init__(self, address: tuple[str, int], context: ssl.SSLContext) -> None:
        super().__init__(address, "https")
        self.context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        tls = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return tls, addr

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(10)
        request.do_handshake()
        super().finish_request(request, client_address)


def main() -> None:
    cert, key = sys.argv[1], sys.argv[2]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    servers: list[Server] = [Server(("0.0.0.0", 80), "http"), TlsServer(("0.0.0.0", 443), context)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()

    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import HandshakeCompleted, QuicEvent

    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    config.load_cert_chain(Path(cert), Path(key))

    class Counting(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, HandshakeCompleted):
                say("quic")

    async def run() -> None:
        await serve("0.0.0.0", 443, configuration=config, create_protocol=Counting)
        say("ready")
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
