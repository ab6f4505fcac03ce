"""The recvmmsg/sendmmsg binding, over real loopback sockets (issue 13).

Each case sends real datagrams between two sockets and compares what the
batch calls give with what the socket module gives for the same traffic:
partial batches, an empty socket (EAGAIN), datagrams longer than the buffer
(MSG_TRUNC), IPv4 and IPv6 addresses, packet info on a wildcard socket, a
datagram the kernel refuses amid others, and a socket closed under it.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Iterator

import pytest

from dns_blocker import mmsg


def test_the_calls_are_found_on_linux() -> None:
    """CI runs on Linux, where glibc has both calls: finding none there is a
    defect, not a reason to skip the rest."""
    assert sys.platform != "linux" or mmsg.load() is not None


def pair(family: int, host: str) -> tuple[socket.socket, socket.socket]:
    a = socket.socket(family, socket.SOCK_DGRAM)
    a.bind((host, 0))
    a.setblocking(False)
    b = socket.socket(family, socket.SOCK_DGRAM)
    b.bind((host, 0))
    b.settimeout(2)
    return a, b


@pytest.fixture
def v4() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = pair(socket.AF_INET, "127.0.0.1")
    yield a, b
    a.close()
    b.close()


def drain(batcher: mmsg.Batcher, limit: int = 100) -> list[list[mmsg.Datagram]]:
    """Batches until the socket is empty (bounded: at most ``limit`` calls)."""
    out: list[list[mmsg.Datagram]] = []
    for _ in range(limit):
        got = batcher.recv()
        if not got:
            return out
        out.append(got)
    raise AssertionError("the socket never emptied")


@pytest.mark.parametrize(("count", "size", "want"), [
    pytest.param(0, 64, [], id="empty-socket-is-eagain"),
    pytest.param(1, 64, [1], id="one"),
    pytest.param(64, 64, [64], id="exactly-one-batch"),
    pytest.param(70, 64, [64, 6], id="partial-second-batch"),
    pytest.param(10, 4, [4, 4, 2], id="small-batches"),
])
def test_batches(v4: tuple[socket.socket, socket.socket], count: int, size: int, want: list[int]) -> None:
    a, b = v4
    for i in range(count):
        b.sendto(b"q%03d" % i, a.getsockname())
    batches = drain(mmsg.Batcher(a, size=size))
    assert [len(x) for x in batches] == want
    got = [d for batch in batches for d in batch]
    assert [d.data for d in got] == [b"q%03d" % i for i in range(count)]  # in order, none lost
    assert all(d.addr == b.getsockname() and not d.truncated and d.pktinfo == b"" for d in got)


@pytest.mark.parametrize(("length", "bufsize"), [
    pytest.param(100, 64, id="longer-than-buffer"),
    pytest.param(64, 64, id="exactly-the-buffer"),
    pytest.param(65_000, 4096, id="near-the-udp-maximum"),
])
def test_truncated_datagrams_are_marked(v4: tuple[socket.socket, socket.socket], length: int,
                                        bufsize: int) -> None:
    a, b = v4
    a.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    payload = bytes(range(256)) * (length // 256) + bytes(length % 256)
    b.sendto(payload, a.getsockname())
    b.sendto(b"next", a.getsockname())
    (got,) = drain(mmsg.Batcher(a, size=8, bufsize=bufsize))
    assert got[0].data == payload[:bufsize]
    assert got[0].truncated is (length > bufsize)
    assert got[1] == mmsg.Datagram(b"next", b.getsockname(), b"", False)  # the next one is whole


@pytest.mark.parametrize(("family", "host"), [
    pytest.param(socket.AF_INET, "127.0.0.1", id="ipv4"),
    pytest.param(socket.AF_INET, "127.0.0.53", id="ipv4-other-loopback"),
    pytest.param(socket.AF_INET6, "::1", id="ipv6"),
])
def test_addresses_round_trip_as_the_socket_module_spells_them(family: int, host: str) -> None:
    a, b = pair(family, host)
    with a, b:
        b.sendto(b"ping", a.getsockname())
        batcher = mmsg.Batcher(a)
        (batch,) = drain(batcher)
        assert batch[0].addr == b.getsockname()  # (host, port) or (host, port, flowinfo, scope_id)
        assert batcher.send([(b"pong", batch[0].addr, b"")]) == 1
        data, src = b.recvfrom(100)
        assert (data, src) == (b"pong", a.getsockname())


@pytest.mark.parametrize("addr", [
    pytest.param(("127.0.0.1", 5353), id="v4"),
    pytest.param(("10.1.2.3", 65535), id="v4-high-port"),
])
def test_address_codec_v4(addr: tuple[str, int]) -> None:
    raw = mmsg.encode_address(addr, socket.AF_INET)
    assert mmsg.decode_address(raw) == addr


@pytest.mark.parametrize("addr", [
    pytest.param(("::1", 53, 0, 0), id="loopback"),
    pytest.param(("fe80::1", 5353, 0, 3), id="link-local-with-scope"),
    pytest.param(("2001:db8::53", 853, 0x12345, 0), id="flowinfo"),
])
def test_address_codec_v6(addr: tuple[str, int, int, int]) -> None:
    raw = mmsg.encode_address(addr, socket.AF_INET6)
    assert mmsg.decode_address(raw) == addr


def test_unknown_family_is_an_error() -> None:
    with pytest.raises(ValueError, match="family"):
        mmsg.decode_address(b"\x01\x00" + bytes(14))  # AF_UNIX


@pytest.mark.parametrize(("family", "host", "level", "kind", "asked"), [
    pytest.param(socket.AF_INET, "0.0.0.0", socket.IPPROTO_IP, 8, "127.0.0.9", id="ipv4-wildcard"),
    pytest.param(socket.AF_INET6, "::", socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, "::1", id="ipv6-wildcard"),
])
def test_packet_info_is_read_and_answered_from(family: int, host: str, level: int, kind: int,
                                               asked: str) -> None:
    """On a wildcard socket the packet info says which address was asked; an
    answer sent with it leaves from that address (what a client's connected
    socket requires)."""
    a = socket.socket(family, socket.SOCK_DGRAM)
    a.setsockopt(level, kind if family == socket.AF_INET else socket.IPV6_RECVPKTINFO, 1)
    a.bind((host, 0))
    a.setblocking(False)
    port = a.getsockname()[1]
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.settimeout(2)
    with a, c:
        c.connect((asked, port))  # accepts answers from (asked, port) only
        c.send(b"who")
        batcher = mmsg.Batcher(a, pktinfo=(level, kind))
        (batch,) = drain(batcher)
        d = batch[0]
        assert d.data == b"who" and d.pktinfo
        asked_bytes = socket.inet_pton(family, asked)
        assert asked_bytes in d.pktinfo
        info = d.pktinfo if family == socket.AF_INET6 else b"\0\0\0\0" + d.pktinfo[8:12] + b"\0\0\0\0"
        assert batcher.send([(b"me", d.addr, info)]) == 1
        assert c.recv(100) == b"me"


def test_a_refused_datagram_does_not_hold_the_others(v4: tuple[socket.socket, socket.socket]) -> None:
    a, b = v4
    batcher = mmsg.Batcher(a)
    # Broadcast without SO_BROADCAST: the kernel refuses that one (EACCES).
    batch: list[tuple[bytes | bytearray, tuple[object, ...], bytes]] = [
        (b"one", b.getsockname(), b""), (b"bad", ("255.255.255.255", 9), b""),
        (bytearray(b"two"), b.getsockname(), b"")]
    assert batcher.send(batch) == 2
    assert [b.recv(10), b.recv(10)] == [b"one", b"two"]


def test_many_answers_in_chunks(v4: tuple[socket.socket, socket.socket]) -> None:
    a, b = v4
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    batcher = mmsg.Batcher(a, size=16)
    assert batcher.send([(b"a%03d" % i, b.getsockname(), b"") for i in range(100)]) == 100
    assert [b.recv(10) for _ in range(100)] == [b"a%03d" % i for i in range(100)]


@pytest.mark.parametrize("call", ["recv", "send"], ids=str)
def test_a_closed_socket_is_an_error_not_a_crash(call: str) -> None:
    """At shutdown the socket may close between the loop's wake-up and the
    call: EBADF comes back as OSError, which the transport expects."""
    a, b = pair(socket.AF_INET, "127.0.0.1")
    batcher = mmsg.Batcher(a)
    addr = b.getsockname()
    a.close()
    b.close()
    with pytest.raises(OSError):
        if call == "recv":
            batcher.recv()
        else:
            batcher.send([(b"x", addr, b"")])


def test_the_address_table_is_bounded(v4: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
                                      ) -> None:
    a, _ = v4
    monkeypatch.setattr(mmsg, "ADDRESS_MEMO", 4)
    batcher = mmsg.Batcher(a)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(10)]
    for s in senders:
        s.bind(("127.0.0.1", 0))
    try:
        for s in senders:
            s.sendto(b"x", a.getsockname())
        got = [d for batch in drain(batcher) for d in batch]
        assert sorted(d.addr for d in got) == sorted(s.getsockname() for s in senders)
        assert len(batcher.addresses) <= 4 and batcher.address_resets >= 2
    finally:
        for s in senders:
            s.close()


@pytest.mark.parametrize("family", [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6"),
])
def test_a_slot_reused_for_other_clients_and_lengths_sends_each_right(family: int) -> None:
    """The send headers keep what the last send wrote (the address, its length, the control
    message) and only write what changed: three clients taking turns in the same slots, with
    payloads of shrinking and growing length, each get their own bytes, and a packet info
    set for one send is gone from the next."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a = socket.socket(family, socket.SOCK_DGRAM)
    a.bind((host, 0))
    clients = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
    with a, clients[0], clients[1], clients[2]:
        for c in clients:
            c.bind((host, 0))
            c.settimeout(2)
        level, kind = ((socket.IPPROTO_IP, 8) if family == socket.AF_INET
                       else (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO))
        batcher = mmsg.Batcher(a, size=2, pktinfo=(level, kind))
        src = socket.inet_pton(family, host)
        info = src + bytes(4) if family == socket.AF_INET6 else bytes(4) + src + bytes(4)
        rounds = [(0, 1, 300), (2, 0, 5), (1, 2, 1200), (0, 0, 40)]
        for n, (first, second, size) in enumerate(rounds):
            batch: list[tuple[bytes | bytearray, tuple[object, ...], bytes]] = [
                (bytes([65 + n]) * size, clients[first].getsockname(), info if n % 2 else b""),
                (bytes([97 + n]) * (size // 2 + 1), clients[second].getsockname(), b""),
            ]
            assert batcher.send(batch) == 2
            got = [clients[first].recvfrom(4096)]
            got.append(clients[second].recvfrom(4096))
            assert [g[0] for g in got] == [bytes([65 + n]) * size, bytes([97 + n]) * (size // 2 + 1)]
            assert all(g[1][0] == host for g in got)
            assert batcher.out_control_set[0] is bool(n % 2)


@pytest.mark.parametrize("family", [
    pytest.param(socket.AF_INET, id="ipv4"),
    pytest.param(socket.AF_INET6, id="ipv6"),
])
def test_exchange_answers_ready_questions_from_the_buffers(family: int) -> None:
    """Questions that ``ready`` answers go back in one call with their own ID before the
    answer; the others, a too-short datagram and a truncated one come back, in order, for
    the listener; an empty socket is an empty exchange."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    a, b = pair(family, host)
    c = socket.socket(family, socket.SOCK_DGRAM)
    c.bind((host, 0))
    c.settimeout(2)
    with a, b, c:
        batcher = mmsg.Batcher(a, size=8, bufsize=64)
        asked: list[tuple[bytes, object]] = []

        def ready(key: bytes, addr: mmsg.Address) -> bytes | None:
            asked.append((key, addr))
            return b"ANSWER-" + key if key.startswith(b"hit") else None

        assert batcher.exchange(ready) == mmsg.Exchanged([], 0, 0)
        sent = [(b, b"\x00\x01hit-one...."), (c, b"\x00\x02miss-one..."), (b, b"\x00\x03hit-two...."),
                (c, b"\x00\x04hit-three.."), (b, b"short"), (c, b"\x00\x06hit" + b"x" * 100)]
        for sock, data in sent:
            sock.sendto(data, a.getsockname())
        got = batcher.exchange(ready)
        assert (got.answered, got.unsent) == (3, 0)
        assert [(d.data, d.addr[:2], d.truncated) for d in got.slow] == [
            (b"\x00\x02miss-one...", c.getsockname()[:2], False),
            (b"short", b.getsockname()[:2], False),
            (b"\x00\x06hit" + b"x" * 59, c.getsockname()[:2], True)]
        assert [k for k, _ in asked] == [b"hit-one....", b"miss-one...", b"hit-two....", b"hit-three.."]
        assert [b.recv(100), b.recv(100)] == [b"\x00\x01ANSWER-hit-one....", b"\x00\x03ANSWER-hit-two...."]
        assert c.recv(100) == b"\x00\x04ANSWER-hit-three.."
        # The next batch's slots hold other clients and lengths: each answer still right.
        for sock, data in [(c, b"\x00\x07hit-four..."), (b, b"\x00\x08hit-5......")]:
            sock.sendto(data, a.getsockname())
        assert batcher.exchange(ready).answered == 2
        assert c.recv(100) == b"\x00\x07ANSWER-hit-four..."
        assert b.recv(100) == b"\x00\x08ANSWER-hit-5......"


def test_exchange_on_a_closed_socket_is_an_error_not_a_crash() -> None:
    a, b = pair(socket.AF_INET, "127.0.0.1")
    b.close()
    batcher = mmsg.Batcher(a)
    a.close()
    with pytest.raises(OSError):
        batcher.exchange(lambda key, addr: None)
