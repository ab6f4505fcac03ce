"""Record a real capture through a real SOCKS5 proxy on loopback, then replay it.

The test runs its own asyncio SOCKS5 server (RFC 1928, no authentication, CONNECT
only; it sends every name to 127.0.0.1, so nothing leaves the machine) and its own
HTTPS origin; curl fetches ``https://www.tiktok.com:PORT/`` with ``--socks5-hostname``,
so the name travels to the proxy as ATYP 3 and the TLS ClientHello inside the tunnel
carries it as SNI.  tcpdump records the proxy's port; replay must find the requested
destination and the SNI inside the tunnel, and tshark must read the same names.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from policies import Action, PolicyView

from .conftest import need, replay_all
from .test_live_capture import _self_signed, _start_tcpdump, _stop
from .tshark import replay_names, tshark_names

NAME = "www.tiktok.com"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _socks5(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """One SOCKS5 client: greeting, CONNECT (any address type), then bytes both ways."""
    try:
        version, count = await reader.readexactly(2)
        await reader.readexactly(count)
        if version != 5:
            return
        writer.write(b"\x05\x00")  # no authentication
        _, cmd, _, atyp = await reader.readexactly(4)
        if atyp == 3:
            await reader.readexactly((await reader.readexactly(1))[0])
        else:
            await reader.readexactly(4 if atyp == 1 else 16)
        port = int.from_bytes(await reader.readexactly(2), "big")
        if cmd != 1:
            writer.write(b"\x05\x07\x00\x01" + bytes(6))
            return
        # Every name is the test's own origin: the proxy never resolves or reaches anything else.
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01" + port.to_bytes(2, "big"))
        await writer.drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def _origin(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


class Servers:
    """The SOCKS5 proxy and the HTTPS origin on 127.0.0.1, on an event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        cert, key = _self_signed(tmp)
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.proxy = self._start(asyncio.start_server(_socks5, "127.0.0.1", 0))
        self.origin = self._start(asyncio.start_server(_origin, "127.0.0.1", 0, ssl=tls))
        self.proxy_port = self.proxy.sockets[0].getsockname()[1]
        self.origin_port = self.origin.sockets[0].getsockname()[1]

    def _start(self, coro: object) -> asyncio.Server:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)  # type: ignore[arg-type]

    def close(self) -> None:
        for server in (self.proxy, self.origin):
            self.loop.call_soon_threadsafe(server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    s = Servers(tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.mark.e2e
def test_recorded_socks5_capture(servers: Servers, view: PolicyView, tmp_path: Path) -> None:
    curl = need("curl")
    path = tmp_path / "socks.pcap"
    proc = _start_tcpdump(path, [servers.proxy_port])
    try:
        url = f"https://{NAME}:{servers.origin_port}/"
        done = subprocess.run(
            [
                curl,
                "-sS",
                "-k",
                "--max-time",
                "10",
                "--socks5-hostname",
                f"127.0.0.1:{servers.proxy_port}",
                url,
            ],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert (done.returncode, done.stdout) == (0, b"ok"), done.stderr
        time.sleep(0.5)  # let tcpdump see the last packets before it is stopped
    finally:
        _stop(proc)
    verdicts, rep = replay_all(view, path)
    assert rep.damage == []
    got = [(v.sighting.kind.value, v.sighting.value, v.sighting.via, v.sighting.tunnel) for v in verdicts]
    assert got == [("dns", NAME, "socks5", ""), ("sni", NAME, "tls", "socks5")]
    assert [v.decision.action for v in verdicts] == [Action.LOG, Action.LOG]  # TikTok in 'downloads'
    hello = verdicts[1].sighting
    assert (hello.client, hello.server, hello.server_port) == ("127.0.0.1", "127.0.0.1", servers.proxy_port)

    tshark = need("tshark")
    theirs = tshark_names(
        tshark, path, (f"tcp.port=={servers.proxy_port},socks", f"tcp.port=={servers.origin_port},tls")
    )
    assert replay_names(verdicts) == theirs
