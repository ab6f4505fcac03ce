"""Application-layer parsers for what replay reads off the wire: DNS messages,
TLS ClientHellos, QUIC Initials, SOCKS requests, and the URL of an HTTP/1.x
request (whose head h11 reads, in ``protocols``).

``capture`` hands each function the reassembled bytes of one message; each
returns plain values (names, URL parts) and never raises on bad input — it
returns ``None`` (or raises ``ValueError``, documented per function) so one
malformed packet costs one packet, not the capture.  ClientHellos are read
along mitmproxy's ClientHello grammar and SNI rule (checked against it in the
tests), so the proxy and replay agree on what a ClientHello says.  QUIC
Initials are in ``quic``, imported on the first QUIC packet.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dnslib
from mitmproxy.net import check

from policies.builtins import ECH_EXTENSION

QUIC_V1 = b"\x00\x00\x00\x01"
QUIC_V2 = b"\x6b\x33\x43\xcf"
HTTP_METHODS = (
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
)


@dataclass(frozen=True, slots=True)
class Hello:
    """What a ClientHello tells a filter: the SNI (None if absent) and ECH."""

    sni: str | None
    ech: bool


@dataclass(frozen=True, slots=True)
class DnsMessage:
    response: bool
    id: int
    questions: tuple[tuple[str, str], ...]  # (name, qtype)
    cnames: tuple[tuple[str, str], ...]  # (owner, target), in answer order


@dataclass(frozen=True, slots=True)
class HttpRequest:
    method: str
    target: str
    host: str | None


def tls_client_hello(data: bytes) -> Hello | None:
    """The ClientHello at the start of a TLS stream; ``None`` while incomplete.

    Handshake records are unwrapped as mitmproxy's ``get_client_hello`` does
    (a ClientHello may span several records); the message itself goes to
    mitmproxy's ``ClientHello``.  (``mitmproxy.proxy.layers.tls`` would pull
    in every proxy layer: a tenth of a second at start-up.)

    Raises ``ValueError`` when the bytes are not a ClientHello.
    """
    if len(data) >= 6 and data[5] != 1:
        raise ValueError("first handshake message is not a ClientHello")
    handshake = b""
    off = 0
    while len(data) >= off + 5:
        if data[off] != 0x16 or data[off + 1] != 0x03:
            raise ValueError("expected a TLS handshake record")
        size = data[off + 3] << 8 | data[off + 4]
        if size == 0:
            raise ValueError("empty TLS record")
        if len(data) < off + 5 + size:
            return None
        handshake += data[off + 5 : off + 5 + size]
        off += 5 + size
        if len(handshake) >= 4:
            end = (handshake[1] << 16 | handshake[2] << 8 | handshake[3]) + 4
            if len(handshake) >= end:
                return parse_hello(handshake[4:end])
    return None


def parse_hello(body: bytes) -> Hello:
    """Read a ClientHello message body as mitmproxy's ``ClientHello`` does.

    The bytes are walked by slicing, following the Kaitai grammar mitmproxy
    uses (``contrib/kaitaistruct/tls_client_hello.ksy``) step by step: the
    same fields are read, the same truncations fail, and the SNI rule is
    ``ClientHello.sni``'s (the first server_name extension holding exactly
    one host name of type 0 that ``check.is_valid_host`` accepts).  The
    generated parser builds an object per field, ~50 µs a ClientHello, and
    was half of replay's decode time; tests/replay/test_wire.py checks both
    readers agree on generated ClientHellos, truncated and corrupted ones.
    """
    try:
        return _walk_hello(body)
    except IndexError as exc:
        raise ValueError(f"malformed ClientHello: {exc!r}") from exc


def mitmproxy_hello(body: bytes) -> Hello:
    """The reference reading, through mitmproxy's ``ClientHello``."""
    from mitmproxy.tls import ClientHello  # 0.1 s of imports (pyOpenSSL): only where it is used

    try:
        ch = ClientHello(body)
        ech = any(t == ECH_EXTENSION for t, _ in ch.extensions)
        return Hello(ch.sni, ech)
    except Exception as exc:  # the Kaitai parser raises its own errors on garbage
        raise ValueError(f"malformed ClientHello: {exc!r}") from exc


def _need(data: bytes, end: int) -> None:
    if end > len(data):
        raise ValueError("malformed ClientHello: truncated")


def _walk_hello(b: bytes) -> Hello:
    n = len(b)
    p = 34  # version, random
    _need(b, p + 1)
    p += 1 + b[p]  # session id
    _need(b, p + 2)
    p += 2 + ((b[p] << 8 | b[p + 1]) // 2) * 2  # cipher suites: len // 2 of them, as the grammar reads
    _need(b, p + 1)
    p += 1 + b[p]  # compression methods
    _need(b, p)
    sni: str | None = None
    ech = False
    if p < n:
        _need(b, p + 2)  # the extensions' total length, read and not used
        p += 2
        while p < n:
            _need(b, p + 4)
            etype = b[p] << 8 | b[p + 1]
            end = p + 4 + (b[p + 2] << 8 | b[p + 3])
            _need(b, end)
            if etype == 0:
                names = _server_names(b[p + 4 : end])
                if sni is None and len(names) == 1 and names[0][0] == 0 and check.is_valid_host(names[0][1]):
                    sni = names[0][1].decode("ascii")
            elif etype == 16:
                _alpn(b[p + 4 : end])
            elif etype == ECH_EXTENSION:
                ech = True
            p = end
    return Hello(sni, ech)


def _server_names(body: bytes) -> list[tuple[int, bytes]]:
    _need(body, 2)
    p, out = 2, []
    while p < len(body):
        _need(body, p + 3)
        end = p + 3 + (body[p + 1] << 8 | body[p + 2])
        _need(body, end)
        out.append((body[p], body[p + 3 : end]))
        p = end
    return out


def _alpn(body: bytes) -> None:
    _need(body, 2)
    p = 2
    while p < len(body):
        p += 1 + body[p]
        _need(body, p)


def quic_initial_kind(payload: bytes) -> bool:
    """Whether a UDP payload starts with a QUIC v1 or v2 Initial packet."""
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0:
        return False
    version = payload[1:5]
    long_type = payload[0] & 0x30
    return (version == QUIC_V1 and long_type == 0x00) or (version == QUIC_V2 and long_type == 0x10)


def _name(label: dnslib.DNSLabel) -> str:
    return str(label).rstrip(".")


def dns_message(data: bytes) -> DnsMessage | None:
    """A DNS message's questions and CNAME records; ``None`` if malformed.

    Most messages are read by slicing (questions, answer headers, CNAME
    targets); anything unusual (escapes a name would need, odd pointers) goes
    to dnslib, whose answer is the reference.
    """
    if len(data) < 12:
        return None
    try:
        fast = _dns_fast(data)
    except (IndexError, ValueError):
        fast = None
    return fast if fast is not None else _dns_dnslib(data)


_PLAIN = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*"
_QTYPES: dict[int, str] = {}


def _qtype(code: int) -> str:
    name = _QTYPES.get(code)
    if name is None:
        name = _QTYPES[code] = str(dnslib.QTYPE.get(code, str(code)))
    return name


def _wire_name(data: bytes, pos: int) -> tuple[str | None, int]:
    """(name, position after it); name ``None`` when it needs escaping."""
    labels: list[bytes] = []
    after = -1
    hops = 0
    while True:
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n >= 0xC0:
            if after < 0:
                after = pos + 2
            pos = (n & 0x3F) << 8 | data[pos + 1]
            hops += 1
            if hops > 64:
                raise ValueError("compression loop")
            continue
        if n > 63:
            raise ValueError("bad label type")
        label = data[pos + 1 : pos + 1 + n]
        if len(label) < n:
            raise IndexError("label past the end")
        labels.append(label)
        pos += 1 + n
    name = b".".join(labels)
    for label in labels:
        if label.translate(None, _PLAIN):
            return None, after if after >= 0 else pos
    return name.decode("ascii"), after if after >= 0 else pos


def _dns_fast(data: bytes) -> DnsMessage | None:
    qdcount = data[4] << 8 | data[5]
    ancount = data[6] << 8 | data[7]
    response = bool(data[2] & 0x80)
    pos = 12
    questions = []
    for _ in range(qdcount):
        name, pos = _wire_name(data, pos)
        if name is None or pos + 4 > len(data):
            return None
        questions.append((name, _qtype(data[pos] << 8 | data[pos + 1])))
        pos += 4
    cnames = []
    if response:
        for _ in range(ancount):
            owner, pos = _wire_name(data, pos)
            rtype = data[pos] << 8 | data[pos + 1]
            rdlen = data[pos + 8] << 8 | data[pos + 9]
            pos += 10
            if pos + rdlen > len(data):
                return None
            if rtype == 5:
                target, _ = _wire_name(data, pos)
                if owner is None or target is None:
                    return None
                cnames.append((owner, target))
            pos += rdlen
    return DnsMessage(response, data[0] << 8 | data[1], tuple(questions), tuple(cnames))


def _dns_dnslib(data: bytes) -> DnsMessage | None:
    try:
        rec = dnslib.DNSRecord.parse(data)
    except Exception:  # dnslib raises DNSError, BufferError, UnicodeError...
        return None
    questions = tuple((_name(q.qname), _qtype(q.qtype)) for q in rec.questions)
    cnames = tuple(
        (_name(rr.rname), _name(rr.rdata.label)) for rr in rec.rr if rr.rtype == dnslib.QTYPE.CNAME
    )
    return DnsMessage(bool(rec.header.qr), rec.header.id, questions, cnames)


def http_url(req: HttpRequest, server: str, port: int) -> tuple[str, str]:
    """(full URL, host) of a request, as the proxy would see them."""
    target = req.target
    if req.method == "CONNECT":
        return f"https://{target}/", req.host or target
    host = req.host or (f"[{server}]" if ":" in server else server)
    if "://" in target:
        return target, req.host or target.split("://", 1)[1].split("/", 1)[0]
    scheme = "https" if port == 443 else "http"
    return f"{scheme}://{host}{target if target.startswith('/') else '/' + target}", host


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """A SOCKS client's CONNECT: ``host`` (a name: SOCKS4a, SOCKS5 ATYP 3) or ``address``."""

    version: str  # "socks4", "socks4a" or "socks5"
    host: str | None
    address: str | None
    port: int
    length: int  # bytes of the client's handshake, up to where the tunnel's own bytes start


def _socks_name(raw: bytes) -> tuple[str | None, str | None]:
    """(host, address): a name that is an address literal is judged as the address."""
    text = raw.decode("latin-1")
    try:
        return None, str(ipaddress.ip_address(text))
    except ValueError:
        return text, None


def socks_request(data: bytes) -> SocksRequest | None:
    """The CONNECT request a SOCKS 4, 4a (RFC-less, the NEC/OpenSSH spec) or 5 (RFC 1928,
    with RFC 1929 username/password) client sends first; ``None`` while incomplete.

    Only the client's direction is read: the proxy's method choice is inferred from what the
    client sends next.  Raises ``ValueError`` when the bytes are no SOCKS CONNECT.
    """
    if data[:1] == b"\x04":
        if len(data) < 9:
            return None
        if data[1] != 1:
            raise ValueError("not a SOCKS4 CONNECT")
        port = data[2] << 8 | data[3]
        user_end = data.find(b"\x00", 8)
        if user_end < 0:
            if len(data) > 8 + 255:
                raise ValueError("SOCKS4 user id too long")
            return None
        ip = data[4:8]
        if ip[:3] == b"\x00\x00\x00" and ip[3]:  # 0.0.0.x: SOCKS4a, the name follows
            host_end = data.find(b"\x00", user_end + 1)
            if host_end < 0:
                if len(data) > user_end + 256:
                    raise ValueError("SOCKS4a host name too long")
                return None
            host, address = _socks_name(data[user_end + 1 : host_end])
            return SocksRequest("socks4a", host, address, port, host_end + 1)
        return SocksRequest("socks4", None, str(ipaddress.IPv4Address(ip)), port, user_end + 1)
    if data[:1] != b"\x05":
        raise ValueError("not SOCKS")
    if len(data) < 2:
        return None
    methods = data[2 : 2 + data[1]]
    pos = 2 + data[1]
    if len(data) <= pos:
        return None
    if data[pos] == 1 and 2 in methods:  # RFC 1929 username/password sub-negotiation
        if len(data) < pos + 2 or len(data) < pos + 3 + data[pos + 1]:
            return None
        plen_at = pos + 2 + data[pos + 1]
        pos = plen_at + 1 + data[plen_at]
    if len(data) < pos + 5:
        return None
    if data[pos] != 5 or data[pos + 1] != 1 or data[pos + 2] != 0:
        raise ValueError("not a SOCKS5 CONNECT")
    atyp = data[pos + 3]
    if atyp == 1:
        end = pos + 8
        host, address = None, str(ipaddress.IPv4Address(data[pos + 4 : pos + 8])) if len(data) >= end else ""
    elif atyp == 4:
        end = pos + 20
        host, address = None, str(ipaddress.IPv6Address(data[pos + 4 : pos + 20])) if len(data) >= end else ""
    elif atyp == 3:
        end = pos + 5 + data[pos + 4]
        host, address = _socks_name(data[pos + 5 : end]) if len(data) >= end else (None, "")
    else:
        raise ValueError(f"SOCKS5 address type {atyp}")
    if len(data) < end + 2:
        return None
    return SocksRequest("socks5", host, address, data[end] << 8 | data[end + 1], end + 2)


def plainly_dns(data: bytes) -> bool:
    """Whether a UDP payload on a port that is not a DNS port is plainly a DNS message: one
    question, at most 64 records, class IN (or an EDNS OPT record), and every name and record
    ending exactly where the payload does.  Anything less is not read as DNS."""
    n = len(data)
    if n < 17 or data[2] & 0x78 or data[4:6] != b"\x00\x01":  # opcode QUERY, QDCOUNT 1
        return False
    records = (data[6] << 8 | data[7]) + (data[8] << 8 | data[9]) + (data[10] << 8 | data[11])
    if records > 64:
        return False
    try:
        pos = _skip_name(data, 12)
        if data[pos + 2 : pos + 4] != b"\x00\x01":
            return False
        pos += 4
        for _ in range(records):
            pos = _skip_name(data, pos)
            rtype = data[pos] << 8 | data[pos + 1]
            if rtype != 41 and data[pos + 2 : pos + 4] != b"\x00\x01":
                return False
            pos += 10 + (data[pos + 8] << 8 | data[pos + 9])
    except IndexError:
        return False
    return pos == n


def _skip_name(data: bytes, pos: int) -> int:
    for _ in range(128):
        n = data[pos]
        if n == 0:
            return pos + 1
        if n >= 0xC0:
            if (n & 0x3F) << 8 | data[pos + 1] >= pos:
                raise IndexError("forward compression pointer")
            return pos + 2
        if n > 63:
            raise IndexError("bad label")
        pos += 1 + n
        if pos >= len(data):
            raise IndexError("label past the end")
    raise IndexError("too many labels")
