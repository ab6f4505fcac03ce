"""Real DNS-over-TLS and DNS-over-HTTPS servers on loopback, with a test CA of their own.

``TestCA`` (cryptography) writes a CA and leaf certificates to a directory;
the leaf is valid for ``NAMES`` and 127.0.0.1/::1.  ``DotServer`` (RFC 7858,
asyncio + ssl) and ``DohServer`` (RFC 8484 POST over HTTP/2 with the h2
library, ALPN ``h2``) run their own event loop on a thread and answer every
query with ``Authority.answer`` (tests/dns/authority.py), so they serve the
same zone as the plain upstream and its ``mode`` misbehaviours.  Each counts
connections (TLS handshakes that finished), queries per connection and, for
DoH, the ALPN protocol of each connection.  ``mode`` adds stream-level
misbehaviour: ``stray`` (DoT: an answer with an ID nobody asked, then the
real one), ``close`` (DoT: close the connection after each answer),
``wrong-question`` (answer another name), ``http-500``, ``text-plain`` and
``id-1`` (DoH).  ``stop`` closes the listener and every connection.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl
import struct
import threading
from collections import Counter
from pathlib import Path

import h2.config
import h2.connection
import h2.events
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from dnslib import DNSRecord

from .authority import Authority

NAMES = ("dot.test", "doh.test")


class TestCA:
    """A CA and one leaf certificate, as PEM files in ``directory``."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, directory: Path, tag: str = "egress-filter test CA", names: tuple[str, ...] = NAMES):
        directory.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.UTC)
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, tag)])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(hours=1))
                     .not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     # Python 3.13's default VERIFY_X509_STRICT wants the key identifiers (RFC 5280).
                     .add_extension(x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()),
                                    critical=False)
                     .sign(self.key, hashes.SHA256()))
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        leaf_key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
        sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1")]
        leaf = (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
                .issuer_name(name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                               critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()),
                               critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        self.cert_path = directory / "leaf.pem"
        self.cert_path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
        self.key_path = directory / "leaf.key"
        self.key_path.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM,
                                                         serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))

    def server_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, self.key_path)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


class _LoopServer:
    """An asyncio TLS listener on its own thread; subclasses handle the connections."""

    def __init__(self, ca: TestCA, authority: Authority, alpn: list[str] | None = None):
        self.authority = authority
        self.mode = "ok"
        self.connections = 0  # finished handshakes
        self.queries: Counter[int] = Counter()  # connection number -> queries on it
        self.protocols: list[str | None] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._ctx = ca.server_context(alpn)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("test TLS server did not start")
        assert self._server is not None
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._accepted, "127.0.0.1", 0, ssl=self._ctx)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number = self.connections
        sslobj = writer.get_extra_info("ssl_object")
        self.protocols.append(sslobj.selected_alpn_protocol() if sslobj else None)
        self._writers.add(writer)
        try:
            await self.serve(number, reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    async def serve(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def answer(self, query: bytes, transport: str) -> bytes | None:
        """The authority's answer, computed off this loop (its ``slow`` mode sleeps)."""
        out = await asyncio.get_running_loop().run_in_executor(None, self.authority.answer, query, transport)
        if out is not None and self.mode == "wrong-question":
            reply = DNSRecord.parse(out)
            reply.q.qname = "someone-else.example.test"
            out = bytes(reply.pack())
        return out

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in others:
                t.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        if not self._thread.is_alive():
            self._loop.close()


class DotServer(_LoopServer):
    """DNS-over-TLS: 2-byte length, message; pipelined queries answered as they finish."""

    def __init__(self, ca: TestCA, authority: Authority):
        super().__init__(ca, authority)

    def upstream(self, host: str = "127.0.0.1", pin: str | None = None) -> str:
        return f"tls://{host}:{self.port}" + (f"#{pin}" if pin else "")

    async def serve(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        lock = asyncio.Lock()
        tasks: set[asyncio.Task[None]] = set()

        async def one(query: bytes) -> None:
            out = await self.answer(query, "tls")
            if out is None:
                return
            async with lock:
                if self.mode == "stray":
                    stray = bytes([query[0] ^ 0xFF, query[1]]) + out[2:]
                    writer.write(struct.pack("!H", len(stray)) + stray)
                writer.write(struct.pack("!H", len(out)) + out)
                await writer.drain()
                if self.mode == "close":
                    writer.close()

        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            query = await reader.readexactly(length)
            self.queries[number] += 1
            task = asyncio.get_running_loop().create_task(one(query))
            tasks.add(task)
            task.add_done_callback(tasks.discard)


class DohServer(_LoopServer):
    """DNS-over-HTTPS: POST /dns-query over HTTP/2 (ALPN h2 only)."""

    def __init__(self, ca: TestCA, authority: Authority, path: str = "/dns-query"):
        self.path = path
        self.requests: list[dict[str, str]] = []  # the headers of each request
        super().__init__(ca, authority, alpn=["h2"])

    def upstream(self, host: str = "127.0.0.1", pin: str | None = None) -> str:
        return f"https://{host}:{self.port}{self.path}" + (f"#{pin}" if pin else "")

    async def respond(self, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        if headers.get(":path") != self.path or headers.get(":method") != "POST":
            return 404, {"content-type": "text/plain"}, b"not here\n"
        if self.mode == "http-500":
            return 500, {"content-type": "text/plain"}, b"broken\n"
        out = await self.answer(body, "https")
        if out is None:
            await asyncio.sleep(3600)  # silent: never answers (the client gives up)
            return 504, {}, b""
        if self.mode == "id-1":
            out = b"\x00\x01" + out[2:]
        ctype = "text/plain" if self.mode == "text-plain" else "application/dns-message"
        return 200, {"content-type": ctype}, out

    async def serve(self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False,
                                                                    header_encoding="utf-8"))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        streams: dict[int, tuple[dict[str, str], bytearray]] = {}
        tasks: set[asyncio.Task[None]] = set()

        async def reply(stream_id: int, headers: dict[str, str], body: bytes) -> None:
            status, extra, out = await self.respond(headers, body)
            conn.send_headers(stream_id, [(":status", str(status)), ("content-length", str(len(out))),
                                          *extra.items()])
            conn.send_data(stream_id, out, end_stream=True)
            writer.write(conn.data_to_send())
            await writer.drain()

        while True:
            data = await reader.read(65_535)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = (dict(ev.headers), bytearray())  # type: ignore[arg-type]
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id][1].extend(ev.data)
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    headers, body = streams.pop(ev.stream_id)
                    self.queries[number] += 1
                    self.requests.append(headers)
                    task = asyncio.get_running_loop().create_task(reply(ev.stream_id, headers, bytes(body)))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return
            writer.write(conn.data_to_send())
            await writer.drain()


def server_for(kind: str, ca: TestCA, authority: Authority) -> DotServer | DohServer:
    """``tls``: a DoT server; ``https``: a DoH one."""
    return DotServer(ca, authority) if kind == "tls" else DohServer(ca, authority)
