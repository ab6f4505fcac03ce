"""Application-layer parsers for what replay reads off the wire: DNS messages,
TLS ClientHellos, QUIC Initials and HTTP/1.x request heads.

``capture`` hands each function the reassembled bytes of one message; each
returns plain values (names, URL parts) and never raises on bad input — it
returns ``None`` (or raises ``ValueError``, documented per function) so one
malformed packet costs one packet, not the capture.  ClientHellos and QUIC
Initials are read by mitmproxy's own parsers, so the proxy and replay agree on
what a ClientHello says.
"""

from __future__ import annotations

from dataclasses import dataclass

import dnslib
from mitmproxy.proxy.layers.quic import quic_parse_client_hello_from_datagrams
from mitmproxy.proxy.layers.tls import parse_client_hello
from mitmproxy.tls import ClientHello

ECH_EXTENSION = 0xFE0D
QUIC_V1 = b"\x00\x00\x00\x01"
QUIC_V2 = b"\x6b\x33\x43\xcf"
HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ", b"CONNECT ",
                b"TRACE ")


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


def _hello(ch: ClientHello) -> Hello:
    ech = any(t == ECH_EXTENSION for t, _ in ch.extensions)
    return Hello(ch.sni, ech)


def tls_client_hello(data: bytes) -> Hello | None:
    """The ClientHello at the start of a TLS stream; ``None`` while incomplete.

    Raises ``ValueError`` when the bytes are not a ClientHello.
    """
    if len(data) >= 6 and data[5] != 1:
        raise ValueError("first handshake message is not a ClientHello")
    try:
        ch = parse_client_hello(data)
    except ValueError:
        raise
    except Exception as exc:  # the Kaitai parser raises its own errors on garbage
        raise ValueError(f"malformed ClientHello: {exc}") from exc
    return None if ch is None else _hello(ch)


def quic_initial_kind(payload: bytes) -> bool:
    """Whether a UDP payload starts with a QUIC v1 or v2 Initial packet."""
    if len(payload) < 7 or payload[0] & 0xC0 != 0xC0:
        return False
    version = payload[1:5]
    long_type = payload[0] & 0x30
    return (version == QUIC_V1 and long_type == 0x00) or (version == QUIC_V2 and long_type == 0x10)


def quic_client_hello(datagrams: list[bytes]) -> Hello | None:
    """Decrypt a client's Initial datagrams (RFC 9001 / RFC 9369 keys) and read
    the ClientHello; ``None`` while the CRYPTO frames are incomplete.

    Raises ``ValueError`` when the datagrams do not decrypt as a client's Initial.
    """
    try:
        ch = quic_parse_client_hello_from_datagrams(datagrams)
    except ValueError:
        raise
    except Exception as exc:  # aioquic raises assorted errors on garbage
        raise ValueError(f"malformed QUIC Initial: {exc}") from exc
    return None if ch is None else _hello(ch)


def _name(label: dnslib.DNSLabel) -> str:
    return str(label).rstrip(".")


def dns_message(data: bytes) -> DnsMessage | None:
    """A DNS message's questions and CNAME records; ``None`` if malformed."""
    if len(data) < 12:
        return None
    try:
        rec = dnslib.DNSRecord.parse(data)
    except Exception:  # dnslib raises DNSError, BufferError, UnicodeError...
        return None
    questions = tuple((_name(q.qname), dnslib.QTYPE.get(q.qtype, str(q.qtype))) for q in rec.questions)
    cnames = tuple((_name(rr.rname), _name(rr.rdata.label)) for rr in rec.rr
                   if rr.rtype == dnslib.QTYPE.CNAME)
    return DnsMessage(bool(rec.header.qr), rec.header.id, questions, cnames)


def http_request_head(head: bytes) -> HttpRequest | None:
    """The request line and Host of one HTTP/1.x request head (without the
    blank line); ``None`` if it is not one."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return None
    host: str | None = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            break
    return HttpRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"), host)


def http_body_length(head: bytes) -> int | None:
    """Bytes of body after this head: ``Content-Length``, 0, or ``None`` for chunked."""
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        key = name.strip().lower()
        if key == b"transfer-encoding" and b"chunked" in value.lower():
            return None
        if key == b"content-length":
            try:
                length = max(0, int(value.strip()))
            except ValueError:
                length = 0
    return length


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
