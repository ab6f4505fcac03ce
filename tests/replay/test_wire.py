"""The application-layer readers: the sliced DNS reader agrees with dnslib,
QUIC and TLS readers refuse what is not a client's first flight."""

from __future__ import annotations

import os

import dnslib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replay import quic, wire

from . import craft as c

# A shared, loaded machine makes generation slow at times; that is not a failure of the code.
SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large]


def _response(name: str, chain: list[str]) -> bytes:
    return bytes(c.dns_answer(name, chain))


DNS_CASES = [
    ("query", bytes(c.dns_query("www.tiktok.com"))),
    ("aaaa-query", bytes(c.dns_query("web.wechat.com", qtype="AAAA"))),
    ("cname-chain-compressed", _response("www.tiktok.com", ["a.tiktokcdn.example", "b.edge.example"])),
    (
        "label-with-dot-needs-escape",
        dnslib.DNSRecord.question("x.y").pack().replace(b"\x01x\x01y", b"\x03x.y"),
    ),
    ("label-with-space", dnslib.DNSRecord.question("ab.example").pack().replace(b"\x02ab", b"\x02a ")),
    ("punycode", bytes(c.dns_query("xn--e1afmkfd.example"))),
    ("pointer-loop", b"\x00\x01\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01"),
    ("truncated-question", bytes(c.dns_query("www.tiktok.com"))[:20]),
    ("truncated-answer", _response("www.tiktok.com", ["a.example"])[:-10]),
    ("header-only", b"\x00\x01\x81\x80" + b"\x00" * 8),
    ("too-short", b"\x00\x01"),
]


@pytest.mark.parametrize("data", [x[1] for x in DNS_CASES], ids=[x[0] for x in DNS_CASES])
def test_dns_fast_path_agrees_with_dnslib(data: bytes) -> None:
    assert wire.dns_message(data) == (wire._dns_dnslib(data) if len(data) >= 12 else None)


LABEL = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=20)
NAME = st.lists(LABEL, min_size=1, max_size=5).map(".".join)


@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_OK)
@given(name=NAME, chain=st.lists(NAME, max_size=4), cut=st.integers(min_value=0, max_value=40))
def test_dns_fast_path_agrees_with_dnslib_on_generated(name: str, chain: list[str], cut: int) -> None:
    data = _response(name, chain)
    for msg in (data, data[: len(data) - cut]):
        assert wire.dns_message(msg) == (wire._dns_dnslib(msg) if len(msg) >= 12 else None)


def test_dns_response_reads_chain() -> None:
    msg = wire.dns_message(_response("www.tiktok.com", ["a.example", "b.example"]))
    assert msg is not None and msg.response
    assert msg.questions == (("www.tiktok.com", "A"),)
    assert msg.cnames == (("www.tiktok.com", "a.example"), ("a.example", "b.example"))


QUIC_BAD = [
    ("server-initial", c.quic_server_flight(c.quic_initials("www.tiktok.com")[0])[0]),
    ("random-long-header", b"\xc0\x00\x00\x00\x01\x08" + os.urandom(8) + b"\x00\x00" + os.urandom(1180)),
    ("version-negotiation", b"\xc0\x00\x00\x00\x00\x08" + os.urandom(8) + b"\x00"),
]


@pytest.mark.parametrize("data", [x[1] for x in QUIC_BAD], ids=[x[0] for x in QUIC_BAD])
def test_quic_refuses_non_initials(data: bytes) -> None:
    with pytest.raises(ValueError):
        quic.client_hello([data])


def test_quic_tampered_initial_is_refused() -> None:
    d = bytearray(c.quic_initials("www.tiktok.com")[0])
    d[100] ^= 0xFF  # inside the AEAD-protected payload (the datagram is padded after the packet)
    with pytest.raises(ValueError):
        quic.client_hello([bytes(d)])


# RFC 9001 Appendix A.1 and RFC 9369 Appendix A.1: the client's Initial secrets for the
# destination connection ID 0x8394c8f03e515708.
INITIAL_VECTORS = [
    ("v1", 0x00000001, "1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c",
     "9f50449e04a0e810283a1e9933adedd2"),
    ("v2", 0x6B3343CF, "8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f",
     "45b95e15235d6f45a6b19cbcb0294ba9"),
]


@pytest.mark.parametrize("version,key,iv,hp", [x[1:] for x in INITIAL_VECTORS],
                         ids=[x[0] for x in INITIAL_VECTORS])
def test_quic_initial_secrets_match_the_rfc_vectors(version: int, key: str, iv: str, hp: str) -> None:
    got = quic.client_initial_secrets(bytes.fromhex("8394c8f03e515708"), version)
    assert got == (bytes.fromhex(key), bytes.fromhex(iv), bytes.fromhex(hp))


@pytest.mark.parametrize("version", [x[1] for x in INITIAL_VECTORS], ids=[x[0] for x in INITIAL_VECTORS])
def test_quic_initial_payload_matches_aioquic(version: int) -> None:
    """Our decryption of a real client Initial gives the bytes aioquic's own keys give."""
    from aioquic.buffer import Buffer  # type: ignore[attr-defined]
    from aioquic.quic.crypto import CryptoPair  # type: ignore[attr-defined]
    from aioquic.quic.packet import pull_quic_header

    datagram = c.quic_initials("www.tiktok.com", version=version)[0]
    buf = Buffer(data=datagram)
    header = pull_quic_header(buf, host_cid_length=8)
    packet = datagram[: header.packet_length]
    pair = CryptoPair()
    pair.setup_initial(header.destination_cid, is_client=False, version=version)
    _, theirs, _ = pair.decrypt_packet(packet, buf.tell(), 0)
    assert quic.InitialKeys(header.destination_cid, version).decrypt(packet, buf.tell()) == theirs


def _two_records(record: bytes) -> bytes:
    """The same handshake message cut into two TLS records."""
    body = record[5:]
    half = len(body) // 2
    return b"".join(b"\x16\x03\x01" + len(p).to_bytes(2, "big") + p for p in (body[:half], body[half:]))


@pytest.mark.parametrize(
    "data,expected",
    [
        (c.client_hello("www.tiktok.com"), wire.Hello("www.tiktok.com", False)),
        (c.client_hello("www.tiktok.com")[:100], None),
        (_two_records(c.client_hello("www.tiktok.com", mlkem=True)), wire.Hello("www.tiktok.com", False)),
        (_two_records(c.client_hello("www.tiktok.com"))[:-5], None),
    ],
    ids=["whole", "partial", "over-two-records", "second-record-partial"],
)
def test_tls_client_hello(data: bytes, expected: wire.Hello | None) -> None:
    assert wire.tls_client_hello(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x03\x00\x30\x02" + bytes(47),  # ServerHello
        b"\x16\x03\x01\x00\x10\x01\x00\x00\x0c" + b"\xff" * 12,  # ClientHello of garbage
    ],
    ids=["server-hello", "garbage-hello"],
)
def test_tls_refuses(data: bytes) -> None:
    with pytest.raises(ValueError):
        wire.tls_client_hello(data)


# --- the sliced ClientHello reader against mitmproxy's ----------------------


def _ext(kind: int, body: bytes) -> bytes:
    return kind.to_bytes(2, "big") + len(body).to_bytes(2, "big") + body


HOSTS = st.one_of(
    NAME,
    NAME,
    NAME,
    st.sampled_from(
        [
            "www.tiktok.com",
            "a..b",
            "-x.example",
            "x" * 70 + ".example",
            "10.0.0.1",
            "bücher.example",
            "trailing.dot.",
            "",
        ]
    ),
)
SNI_BODY = st.builds(
    lambda names, extra: (
        (lambda lst: len(lst).to_bytes(2, "big") + lst)(
            b"".join(t.to_bytes(1, "big") + len(h).to_bytes(2, "big") + h for t, h in names)
        )
        + extra
    ),
    st.lists(
        st.tuples(st.sampled_from([0, 0, 0, 1]), HOSTS.map(lambda h: h.encode("utf-8"))),
        min_size=1,
        max_size=2,
    )
    | st.lists(st.tuples(st.just(0), HOSTS.map(str.encode)), max_size=3),
    st.sampled_from([b"", b"", b"", b"", b"\x00"]),
)
ALPN_BODY = st.lists(st.binary(min_size=1, max_size=8), max_size=3).map(
    lambda ps: (lambda lst: len(lst).to_bytes(2, "big") + lst)(b"".join(bytes([len(p)]) + p for p in ps))
)
EXTENSION = st.one_of(
    SNI_BODY.map(lambda b: _ext(0, b)),
    ALPN_BODY.map(lambda b: _ext(16, b)),
    st.binary(max_size=40).map(lambda b: _ext(0xFE0D, b)),
    st.tuples(st.integers(17, 0xFFFF), st.binary(max_size=20)).map(lambda t: _ext(*t)),
)


@st.composite
def hello_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed ClientHello bodies; a third cut short, a fifth with one byte flipped."""
    exts = b"".join(draw(st.lists(EXTENSION, max_size=6)))
    sid = bytes(draw(st.sampled_from([0, 32])))
    suites = bytes(draw(st.sampled_from([2, 8, 8, 8, 7])))  # 7: an odd length, read as the grammar does
    body = (
        b"\x03\x03"
        + bytes(32)
        + bytes([len(sid)])
        + sid
        + len(suites).to_bytes(2, "big")
        + suites
        + b"\x01\x00"
    )
    if draw(st.integers(0, 9)):
        body += len(exts).to_bytes(2, "big") + exts
    if draw(st.integers(0, 3)) == 0:
        body = body[: draw(st.integers(0, len(body)))]
    if body and draw(st.integers(0, 5)) == 0:
        flip = draw(st.integers(0, len(body) - 1))
        body = body[:flip] + bytes([body[flip] ^ draw(st.integers(1, 255))]) + body[flip + 1 :]
    return body


def _reading(fn: object, body: bytes) -> object:
    try:
        return fn(body)  # type: ignore[operator]
    except ValueError:
        return ValueError


@settings(max_examples=2000, deadline=None, suppress_health_check=SLOW_OK)
@given(body=hello_bodies())
def test_sliced_client_hello_reads_like_mitmproxy(body: bytes) -> None:
    assert _reading(wire.parse_hello, body) == _reading(wire.mitmproxy_hello, body)


@pytest.mark.parametrize("sni", ["www.tiktok.com", "public.example", None], ids=["sni", "ech", "none"])
def test_sliced_client_hello_on_real_shapes(sni: str | None) -> None:
    for record in (
        c.client_hello(sni, ech=sni == "public.example", mlkem=True),
        c.openssl_client_hello(sni or "x.example"),
    ):
        body = record[9:]
        assert wire.parse_hello(body) == wire.mitmproxy_hello(body)


@settings(max_examples=500, deadline=None, suppress_health_check=SLOW_OK)
@given(
    first=st.integers(0xC0, 0xFF),
    version=st.sampled_from([b"\x00\x00\x00\x01", b"\x6b\x33\x43\xcf"]),
    rest=st.binary(max_size=120),
    edits=st.lists(st.tuples(st.integers(0, 80), st.integers(0, 255)), max_size=3),
)
def test_quic_garbage_is_a_value_error(
    first: int, version: bytes, rest: bytes, edits: list[tuple[int, int]]
) -> None:
    """Random long-header datagrams, and real Initials with header bytes changed: ValueError or
    nothing read, since a changed header or payload fails the Initial's AEAD; the unchanged Initial
    reads its name."""
    real = bytearray(_REAL_INITIAL)
    for pos, value in edits:
        real[pos] = value
    for datagram in (bytes([first]) + version + rest, bytes(real)):
        try:
            hello = quic.client_hello([datagram])
        except ValueError:
            assert datagram != _REAL_INITIAL
            continue
        if datagram == _REAL_INITIAL:
            assert hello is not None and hello.sni == "www.tiktok.com"
        else:
            assert hello is None


_REAL_INITIAL = c.quic_initials("www.tiktok.com")[0]
