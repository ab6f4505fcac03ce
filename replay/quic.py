"""QUIC v1/v2 client Initials → the ClientHello inside (RFC 9000, 9001, 9369).

``capture`` imports this module on the first UDP payload that looks like a
QUIC Initial (aioquic and its TLS stack take a tenth of a second to import).
Flow: datagrams → aioquic's header parser and Initial keys (as mitmproxy's
QUIC ClientHello parser uses them) → CRYPTO frames reassembled by offset →
``wire.parse_hello``, the same ClientHello reading as for TLS over TCP.
"""

from __future__ import annotations

from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic.crypto import CryptoError, CryptoPair  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header

from .wire import Hello, parse_hello

QUIC_VERSIONS = (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2)


def _crypto_frames(payload: bytes, into: dict[int, bytes]) -> None:
    """Collect the CRYPTO frames of one decrypted Initial payload (RFC 9000 §19)."""
    buf = Buffer(data=payload)
    while not buf.eof():
        ftype = buf.pull_uint_var()
        if ftype in (0x00, 0x01):  # PADDING, PING
            continue
        if ftype in (0x02, 0x03):  # ACK (with ECN counts for 0x03)
            buf.pull_uint_var()
            buf.pull_uint_var()
            ranges = buf.pull_uint_var()
            buf.pull_uint_var()
            for _ in range(2 * ranges + (3 if ftype == 0x03 else 0)):
                buf.pull_uint_var()
        elif ftype == 0x06:  # CRYPTO
            offset = buf.pull_uint_var()
            data = buf.pull_bytes(buf.pull_uint_var())
            if len(data) > len(into.get(offset, b"")):
                into[offset] = data
        elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE: nothing more to read
            return
        else:
            raise ValueError(f"unexpected frame type {ftype:#x} in an Initial packet")


def client_hello(datagrams: list[bytes]) -> Hello | None:
    """Decrypt a client's Initial packets and read its ClientHello; ``None``
    while the CRYPTO stream is incomplete.

    aioquic's header parsing and Initial keys (RFC 9001 for v1, RFC 9369 for
    v2) remove the protection, as in mitmproxy's own QUIC ClientHello parser;
    the handshake bytes then go to mitmproxy's ``ClientHello``.  Unlike
    ``quic_parse_client_hello_from_datagrams`` this builds no connection
    object, which is what costs there (~2 ms per connection).

    Raises ``ValueError`` when the packets do not decrypt as a client's Initial.
    """
    crypto: dict[int, bytes] = {}
    initials = 0
    try:
        for datagram in datagrams:
            buf = Buffer(data=datagram)
            while not buf.eof():
                start = buf.tell()
                if datagram[start] & 0x80 == 0:
                    break  # a short-header packet ends the datagram
                header = pull_quic_header(buf, host_cid_length=8)
                end = start + header.packet_length
                if header.packet_type != QuicPacketType.INITIAL or header.version not in QUIC_VERSIONS:
                    buf.seek(end)
                    continue
                pair = CryptoPair()
                pair.setup_initial(header.destination_cid, is_client=False, version=header.version)
                _, payload, _ = pair.decrypt_packet(datagram[start:end], buf.tell() - start, 0)
                buf.seek(end)
                initials += 1
                _crypto_frames(payload, crypto)
    except (BufferReadError, CryptoError, AssertionError, IndexError) as exc:
        raise ValueError(f"not a client's QUIC Initial: {exc!r}") from exc
    if not initials:
        raise ValueError("no QUIC v1/v2 Initial packet")
    stream = b""
    for offset in sorted(crypto):
        if offset > len(stream):
            break
        stream += crypto[offset][len(stream) - offset :]
    if len(stream) < 4:
        return None
    if stream[0] != 1:
        raise ValueError("the CRYPTO stream does not start with a ClientHello")
    length = int.from_bytes(stream[1:4], "big")
    if len(stream) < 4 + length:
        return None
    return parse_hello(stream[4 : 4 + length])
