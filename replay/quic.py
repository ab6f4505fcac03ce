"""QUIC v1/v2 client Initials → the ClientHello inside (RFC 9000, 9001, 9369).

``capture`` imports this module on the first UDP payload that looks like a
QUIC Initial.  Flow: datagrams → aioquic's header parser → the Initial keys
(derived here from the destination connection ID) remove header protection
and decrypt → CRYPTO frames reassembled by offset → ``wire.parse_hello``, the
same ClientHello reading as for TLS over TCP.

The keys are derived here, with the stdlib's HMAC and cryptography's AES,
rather than by ``aioquic.quic.crypto``: that module imports aioquic's TLS stack
(service_identity, x509), 0.11-0.15 s that every replay worker paid at its
first QUIC packet, for four HKDF steps (issue 11).
"""

from __future__ import annotations

import hashlib
import hmac

from aioquic.buffer import Buffer, BufferReadError  # type: ignore[attr-defined]
from aioquic.quic.packet import QuicPacketType, QuicProtocolVersion, pull_quic_header
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .wire import Hello, parse_hello

QUIC_VERSIONS = (QuicProtocolVersion.VERSION_1, QuicProtocolVersion.VERSION_2)
# RFC 9001 §5.2 and RFC 9369 §3.3.1: the salt and the labels of each version's Initial keys.
SALTS: dict[int, bytes] = {
    QuicProtocolVersion.VERSION_1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
    QuicProtocolVersion.VERSION_2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9"),
}
LABELS: dict[int, bytes] = {
    QuicProtocolVersion.VERSION_1: b"quic ",
    QuicProtocolVersion.VERSION_2: b"quicv2 ",
}
SAMPLE = 16  # RFC 9001 §5.4.2: the header-protection sample


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """HKDF-Expand-Label with SHA-256 (RFC 8446 §7.1), empty context; one block suffices."""
    full = b"tls13 " + label
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.digest(secret, info + b"\x01", hashlib.sha256)[:length]


def client_initial_secrets(dcid: bytes, version: int) -> tuple[bytes, bytes, bytes]:
    """The client's Initial key, IV and header-protection key (RFC 9001 §5.2, RFC 9369 §3.3)."""
    initial = hmac.digest(SALTS[version], dcid, hashlib.sha256)  # HKDF-Extract
    client = _expand_label(initial, b"client in", 32)
    prefix = LABELS[version]
    return (_expand_label(client, prefix + b"key", 16), _expand_label(client, prefix + b"iv", 12),
            _expand_label(client, prefix + b"hp", 16))


class InitialKeys:
    """The client's Initial packet protection for one destination connection ID."""

    __slots__ = ("aead", "hp", "iv")

    def __init__(self, dcid: bytes, version: int) -> None:
        key, self.iv, hp = client_initial_secrets(dcid, version)
        self.aead = AESGCM(key)
        self.hp = Cipher(algorithms.AES(hp), modes.ECB())

    def decrypt(self, packet: bytes, pn_offset: int) -> bytes:
        """The payload of one long-header packet (RFC 9001 §5.3, §5.4); raises ``InvalidTag``
        or ``ValueError`` when it does not decrypt."""
        sample = packet[pn_offset + 4 : pn_offset + 4 + SAMPLE]
        if len(sample) < SAMPLE:
            raise ValueError("packet too short for its header-protection sample")
        encryptor = self.hp.encryptor()
        mask = encryptor.update(sample) + encryptor.finalize()
        first = packet[0] ^ (mask[0] & 0x0F)
        pn_length = (first & 0x03) + 1
        masked = packet[pn_offset : pn_offset + pn_length]
        number = bytes(b ^ m for b, m in zip(masked, mask[1:], strict=False))
        header = bytes([first]) + packet[1:pn_offset] + number
        # The first Initial's number is small: decoded against an expected 0 it is itself.
        nonce = (int.from_bytes(self.iv, "big") ^ int.from_bytes(number, "big")).to_bytes(12, "big")
        return self.aead.decrypt(nonce, packet[len(header) :], header)


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

    aioquic's header parsing and the Initial keys (RFC 9001 for v1, RFC 9369
    for v2) remove the protection, as in mitmproxy's own QUIC ClientHello
    parser; the handshake bytes then go to ``wire.parse_hello``.  Unlike
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
                keys = InitialKeys(header.destination_cid, header.version)
                payload = keys.decrypt(datagram[start:end], buf.tell() - start)
                buf.seek(end)
                initials += 1
                _crypto_frames(payload, crypto)
    except (BufferReadError, InvalidTag, AssertionError, IndexError) as exc:
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
