"""End to end: allowed QUIC with ``egress_quic=passthrough``, through a real proxy
to a real QUIC origin (aioquic, loopback), with a real QUIC client.

mitmproxy sees QUIC in reverse, WireGuard and local modes (transparent mode is TCP only);
reverse mode needs no privileges, so it stands in for them.  Passed through
untouched, the client completes its handshake with the *origin's*
certificate (verified against the origin's own CA, which mitmproxy's CA is
not), and the origin counts the connection.  Where mitmproxy cannot relay an
ignored QUIC connection (mitmproxy#8338, ``compat.QUIC_PASSTHROUGH`` false),
the same client stalls and the origin never sees a handshake: the test then
asserts exactly that, so the day a mitmproxy fixes it without the seam
noticing, this test fails and says so."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from proxy_addons import compat

from .conftest import Origin
from .helpers import FULL, write_policy
from .test_e2e import free_udp_port, quic_handshake

pytestmark = pytest.mark.e2e


@dataclass
class QuicOrigin:
    port: int
    handshakes: list[str] = field(default_factory=list)  # the ALPN of each completed handshake


@pytest.fixture(scope="module")
def quic_origin(origin: Origin) -> Iterator[QuicOrigin]:
    """An aioquic server with the TCP origin's certificate, on its own event loop thread."""
    from aioquic.asyncio import QuicConnectionProtocol, serve
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.events import HandshakeCompleted, QuicEvent

    config = QuicConfiguration(is_client=False, alpn_protocols=["h3"])
    config.load_cert_chain(origin.pki.cert, origin.pki.key)
    port = free_udp_port()
    result = QuicOrigin(port)

    class Counting(QuicConnectionProtocol):
        def quic_event_received(self, event: QuicEvent) -> None:
            if isinstance(event, HandshakeCompleted):
                result.handshakes.append(event.alpn_protocol or "")

    loop = asyncio.new_event_loop()
    server: Any = loop.run_until_complete(
        serve("127.0.0.1", port, configuration=config, create_protocol=Counting)
    )
    thread = threading.Thread(target=loop.run_forever, daemon=True, name="test-quic-origin")
    thread.start()
    try:
        yield result
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_quic_origin_answers_directly(quic_origin: QuicOrigin, origin: Origin) -> None:
    """The control: without the proxy the client reaches the origin, so a failure below is the proxy's."""
    before = len(quic_origin.handshakes)
    assert quic_handshake(quic_origin.port, "example.org", 5.0, origin.pki.ca_cert) == "connected"
    assert quic_origin.handshakes[before:] == ["h3"]


QUIC_OPTIONS = [
    # (id, extra proxy args): the option set by hand, and the default the seam chose
    ("passthrough-option", ("--set", "egress_quic=passthrough")),
    ("default", ()),
]


@pytest.mark.parametrize("args", [c[1] for c in QUIC_OPTIONS], ids=[c[0] for c in QUIC_OPTIONS])
def test_allowed_quic(run_proxy: Any, quic_origin: QuicOrigin, origin: Origin, tmp_path: Path,
                      args: tuple[str, ...]) -> None:
    policy = write_policy(tmp_path)
    udp = free_udp_port()
    proxy = run_proxy(
        "--policy", str(policy), "--at", FULL,
        "--proxy-mode", "regular",
        "--proxy-mode", f"reverse:quic://127.0.0.1:{quic_origin.port}@127.0.0.1:{udp}",
        *args,
    )
    before = len(quic_origin.handshakes)
    got = quic_handshake(udp, "example.org", 4.0, origin.pki.ca_cert)
    time.sleep(0.3)  # let a relayed handshake be counted on the origin's thread
    stderr = proxy.stderr.read_text()
    if compat.QUIC_PASSTHROUGH:
        # Relayed untouched: the origin's own certificate, the origin's handshake.
        assert got == "connected", stderr
        assert quic_origin.handshakes[before:] == ["h3"]
        assert "Traceback" not in stderr
    elif args:
        # mitmproxy#8338: the ClientHello is never relayed, so nothing reaches the origin.
        assert (got, quic_origin.handshakes[before:]) == ("timeout", []), stderr
        assert "Unexpected event type at UDPLayer.start" in stderr
    else:
        # The default here is fallback: refused unanswered (the client retries over TCP),
        # without ever reaching mitmproxy's broken relay.
        assert (got, quic_origin.handshakes[before:]) == ("timeout", []), stderr
        assert "Unexpected event type" not in stderr and "Traceback" not in stderr
    assert proxy.events() == []  # an allowed connection is not logged
