"""What TCP streams and UDP datagrams carry → sightings: DNS, TLS ClientHellos,
HTTP/1.x requests (h11), SOCKS and HTTP CONNECT tunnels, QUIC Initials.

Flow: ``tcp.Reassembly`` asks ``_claim`` which protocol a stream's first bytes
start, then hands the stream's contiguous bytes to ``_stream``; ``network``
hands UDP payloads to ``_dns`` and ``_quic``.  Each protocol parses with
``wire`` (or h11, or aioquic through ``quic``) and appends one ``Sighting``
per name to ``out``; a proxy handshake (SOCKS, CONNECT) ends with the tunnel's
bytes read again as a stream of their own (``_tunnel``).
"""

from __future__ import annotations

import socket

import h11

from policies import Kind

from . import wire
from .model import Sighting
from .tcp import DONE, MAX_STREAMS, Reassembly, Stream, _Done

MAX_QUIC_DATAGRAMS = 8
TLS, HTTP, DNS, SOCKS = 1, 2, 3, 4  # ``Stream.proto``; 0: not claimed yet


def _ip(raw: bytes) -> str:
    return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)


def _h11() -> h11.Connection:
    # One connection per request: replay sees only the client's side, so h11's
    # request/response cycle can never complete; a fresh reader per request also
    # takes the next request of an HTTP/1.0 client that h11 would expect to close.
    return h11.Connection(h11.SERVER, max_incomplete_event_size=16_384)


class Protocols(Reassembly):
    """Per-capture protocol state: the sightings produced (``out``) and what they need."""

    def __init__(self, file: str, dns_ports: frozenset[int]) -> None:
        super().__init__(dns_ports)
        self.file = file
        self.out: list[Sighting] = []
        self.quic: dict[bytes, list[bytes] | _Done] = {}
        self.dns_queries: dict[tuple[str, str, int, str], None] = {}
        self.malformed = 0
        self.first_malformed = 0
        self.tunnel = ""  # the encapsulations of the current packet, outermost first
        self.number = 0
        self.ts = 0.0

    def _claim(self, st: Stream, dns: bool) -> bool:
        """Name the protocol of a stream (or of what a proxy tunnel carries) from its first bytes."""
        first = st.buf[:1]
        if dns:
            st.proto = DNS
        elif first == b"\x16":
            st.proto = TLS
        elif bytes(st.buf[:8]).startswith(wire.HTTP_METHODS):
            st.proto = HTTP
        elif (first == b"\x05" or first == b"\x04") and not st.tunnel:
            st.proto = SOCKS
        else:
            return False
        return True

    def _stream(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """Run the stream's protocol over its bytes; True when it is finished."""
        if st.proto == TLS:
            try:
                hello = wire.tls_client_hello(bytes(st.buf))
            except ValueError:
                return True
            if hello is None:
                return False
            self._hello(hello, src, dst, sport, dport, "tls", st)
            return True
        if st.proto == DNS:
            buf = st.buf
            while len(buf) >= 2:
                n = buf[0] << 8 | buf[1]
                if n == 0:
                    return True
                if len(buf) < n + 2:
                    return False
                self._dns(bytes(buf[2 : n + 2]), src, dst, sport, dport, "dns/tcp")
                del buf[: n + 2]
            return False
        if st.proto == SOCKS:
            return self._socks(st, src, dst, sport, dport)
        return self._http(st, src, dst, sport, dport)

    def _socks(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """A SOCKS client's handshake: the destination it asks for is an observation of its own;
        the bytes after it are the tunnel's, claimed and read like a stream of their own."""
        try:
            req = wire.socks_request(bytes(st.buf))
        except ValueError:
            return True
        if req is None:
            return False
        if req.host is not None:
            self._sight(Kind.DNS, req.host, src, dst, sport, dport, req.version, st)
        else:
            self._sight(Kind.IP, req.address or "", src, dst, sport, dport, req.version, st)
        return self._tunnel(st, req.version.removesuffix("a"), req.length, src, dst, sport, dport)

    def _tunnel(
        self, st: Stream, name: str, start: int, src: bytes, dst: bytes, sport: int, dport: int
    ) -> bool:
        """The proxy handshake ends at ``start``: what follows is read as a new stream inside it."""
        del st.buf[:start]
        st.proto = 0
        st.tunnel = name
        if not st.buf:
            return False
        if not self._claim(st, False):
            return True
        return self._stream(st, src, dst, sport, dport)

    def _http(self, st: Stream, src: bytes, dst: bytes, sport: int, dport: int) -> bool:
        """Requests read by h11 (bodies, chunked or by length, passed over), one after another
        on a keep-alive stream; True once the stream is finished or is not HTTP."""
        conn = st.http or _h11()
        conn.receive_data(bytes(st.buf))
        st.buf.clear()
        st.http = None
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError:
                return True
            if event is h11.NEED_DATA:
                # The bytes h11 holds count against the stream's bound, as ``buf`` did.
                st.http, st.held = conn, len(conn.trailing_data[0])
                return False
            st.held = 0
            if type(event) is h11.Request:
                host = next((v.decode("latin-1") for k, v in event.headers if k == b"host"), None)
                req = wire.HttpRequest(event.method.decode("latin-1"), event.target.decode("latin-1"), host)
                url, host = wire.http_url(req, _ip(dst), dport)
                self._sight(Kind.HTTP, url, src, dst, sport, dport, "http", st, host=host)
                if req.method == "CONNECT":
                    # The proxy's answer is in the other direction; the client's next bytes are
                    # the tunnel's.
                    st.buf[:] = conn.trailing_data[0]
                    return self._tunnel(st, "http-connect", 0, src, dst, sport, dport)
            elif type(event) is h11.EndOfMessage:
                rest = conn.trailing_data[0]
                if not rest:
                    return False
                conn = _h11()
                conn.receive_data(rest)
            elif event is h11.PAUSED:  # an Upgrade: what follows is not HTTP/1
                return True

    def _hello(
        self,
        hello: wire.Hello,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        via: str,
        st: Stream | None = None,
    ) -> None:
        # No name on the wire: the server address is all a filter has.
        kind, value = (Kind.SNI, hello.sni) if hello.sni else (Kind.IP, _ip(dst))
        self._sight(kind, value, src, dst, sport, dport, via, st, ech=hello.ech)

    def _sight(
        self,
        kind: Kind,
        value: str,
        src: bytes,
        dst: bytes,
        sport: int,
        dport: int,
        via: str,
        st: Stream | None,
        host: str | None = None,
        ech: bool = False,
    ) -> None:
        """One sighting of the current packet, client → server, with the tunnels it came through."""
        tunnel = self.tunnel
        if st is not None and st.tunnel:
            tunnel = f"{tunnel},{st.tunnel}" if tunnel else st.tunnel
        self.out.append(
            Sighting(
                self.ts,
                kind,
                value,
                _ip(src),
                _ip(dst),
                sport,
                dport,
                host,
                via,
                file=self.file,
                packet=self.number,
                ech=ech,
                tunnel=tunnel,
            )
        )

    # --- UDP: DNS and QUIC --------------------------------------------------

    def _dns(self, data: bytes, src: bytes, dst: bytes, sport: int, dport: int, via: str) -> None:
        msg = wire.dns_message(data)
        if msg is None:
            self.malformed += 1
            if not self.first_malformed:
                self.first_malformed = self.number
            return
        a, b = _ip(src), _ip(dst)
        if msg.response:
            client, server, cport, sport_ = b, a, dport, sport
        else:
            client, server, cport, sport_ = a, b, sport, dport
        seen = self.dns_queries
        for name, qtype in msg.questions:
            if not name:
                continue
            key = (client, server, msg.id, name)
            if msg.response:
                if key in seen:
                    del seen[key]
                    continue  # the query was already reported
            else:
                if len(seen) >= MAX_STREAMS:
                    del seen[next(iter(seen))]
                seen[key] = None
            self.out.append(
                Sighting(
                    self.ts,
                    Kind.DNS,
                    name,
                    client,
                    server,
                    cport,
                    sport_,
                    via=via,
                    qtype=qtype,
                    file=self.file,
                    packet=self.number,
                    tunnel=self.tunnel,
                )
            )
        for owner, target in msg.cnames:
            if target:
                self.out.append(
                    Sighting(
                        self.ts,
                        Kind.DNS,
                        target,
                        client,
                        server,
                        cport,
                        sport_,
                        via="cname",
                        qtype="CNAME",
                        file=self.file,
                        packet=self.number,
                        cname_of=owner,
                        tunnel=self.tunnel,
                    )
                )

    def _quic(self, payload: bytes, src: bytes, dst: bytes, ports: bytes, sport: int, dport: int) -> None:
        if not wire.quic_initial_kind(payload):
            return
        key = src + dst + ports
        got = self.quic.get(key)
        if got is DONE:
            return
        if got is None:
            if len(self.quic) >= MAX_STREAMS:
                for old in list(self.quic)[: MAX_STREAMS // 8]:
                    del self.quic[old]
            got = self.quic[key] = []
        assert isinstance(got, list)
        got.append(payload)
        from . import quic  # first QUIC Initial: import its header reader and AES now

        try:
            hello = quic.client_hello(got)
        except ValueError:
            # A server's Initial (other keys) or garbage; a new connection on
            # the same ports starts over.
            self.quic[key] = DONE if len(got) == 1 else [payload]
            return
        if hello is None:
            if len(got) >= MAX_QUIC_DATAGRAMS:
                self.quic[key] = DONE
            return
        self.quic[key] = DONE
        self._hello(hello, src, dst, sport, dport, "quic")
