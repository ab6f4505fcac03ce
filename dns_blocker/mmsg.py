"""Batched datagrams: ``recvmmsg``/``sendmmsg`` through ctypes over libc.

One system call moves up to ``size`` datagrams, where a plain event loop
pays a ``recvfrom``, a ``sendto`` and a callback for each.  A measurement on
one pinned core (issue 13) put the per-datagram calls, not the policy or the
cache, as the resolver's ceiling: 131k QPS with one call per query against
154k with 64 per call.

Data flows: ``Batcher.recv`` fills preallocated buffers in one call and
returns a list of ``Datagram`` (bytes, the sender's address as Python spells
it, the packet-info control bytes if asked for, and whether the kernel cut
the datagram short); ``Batcher.send`` takes ``(bytes, address, pktinfo)``
triples and sends as many as the kernel takes in one call per ``size``.
Neither blocks: both are called with ``MSG_DONTWAIT`` on a socket the event
loop watches.  ``load`` says whether the calls exist here (Linux with glibc
or musl); elsewhere the server keeps the loop's own transport.

Nothing here knows DNS; the transport that uses it is in ``server.py``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
from collections.abc import Callable
from typing import NamedTuple

from policies.bounded import BoundedMemo

MSG_DONTWAIT = int(getattr(socket, "MSG_DONTWAIT", 0x40))  # plain ints: enum arithmetic is slow here
MSG_TRUNC = int(getattr(socket, "MSG_TRUNC", 0x20))
SOCKADDR_SIZE = 128  # struct sockaddr_storage
# Room for one in6_pktinfo (20 bytes) or in_pktinfo (12) with its cmsghdr.
CONTROL_SIZE = socket.CMSG_SPACE(20)
# The largest datagram sent: a UDP answer is cut to the client's EDNS size
# (at most 4096 here) before it gets this far; this is what UDP can carry.
OUT_SLOT = 65_507
# Decoded sender addresses kept (clients repeat; a busy resolver sees a few
# thousand): past this the table starts again, so it cannot grow with a flood
# of spoofed sources.
ADDRESS_MEMO = 4096


class Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class Msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(Iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", Msghdr), ("msg_len", ctypes.c_uint)]


class Cmsghdr(ctypes.Structure):
    _fields_ = [("cmsg_len", ctypes.c_size_t), ("cmsg_level", ctypes.c_int), ("cmsg_type", ctypes.c_int)]


CMSG_HEADER = ctypes.sizeof(Cmsghdr)
# Where the kernel reads and writes each header's fields, so that the hot loops
# read them with struct from one memoryview rather than through ctypes objects.
MMSG_SIZE = ctypes.sizeof(Mmsghdr)
LEN_AT = Mmsghdr.msg_len.offset
NAMELEN_AT = Msghdr.msg_namelen.offset
FLAGS_AT = Msghdr.msg_flags.offset
CONTROL_AT = Msghdr.msg_control.offset
CONTROLLEN_AT = Msghdr.msg_controllen.offset
IOV_SIZE = ctypes.sizeof(Iovec)
IOV_LEN_AT = Iovec.iov_len.offset
# The same places as indexes into views of 4-byte ('I') and size_t cells ('P': a pointer's
# size, which is size_t's on every Linux target): item
# assignment on a memoryview costs a third of ``struct.pack_into``, and a slice assignment
# a third of ``ctypes.memmove`` (a foreign call), on the loops run for every datagram.
WORD, SIZE_T = 4, ctypes.sizeof(ctypes.c_size_t)
assert MMSG_SIZE % SIZE_T == 0 and IOV_SIZE % SIZE_T == 0 and LEN_AT % WORD == 0
assert NAMELEN_AT % WORD == 0 and FLAGS_AT % WORD == 0 and CONTROL_AT % SIZE_T == 0
assert CONTROLLEN_AT % SIZE_T == 0 and IOV_LEN_AT % SIZE_T == 0
assert ctypes.sizeof(ctypes.c_void_p) == SIZE_T and ctypes.sizeof(ctypes.c_uint32) == WORD


Address = tuple[str, int] | tuple[str, int, int, int]  # as socket.recvfrom gives it


class Datagram(NamedTuple):
    data: bytes
    addr: Address
    pktinfo: bytes  # the IP_PKTINFO / IPV6_PKTINFO payload, b"" if not asked for or absent
    truncated: bool  # longer than the buffer: ``data`` holds only its first bytes


class Exchanged(NamedTuple):
    """What ``Batcher.exchange`` did with one batch."""

    slow: list[Datagram]  # for the listener: no ready answer, or truncated
    answered: int  # ready answers sent, or tried
    unsent: int  # of those, what the kernel did not take


# A ready answer for (the query after its ID, its sender): the answer after the ID, or None.
Ready = Callable[[bytes, Address], bytes | None]


class Libc(NamedTuple):
    recvmmsg: ctypes._CFuncPtr  # type: ignore[name-defined]
    sendmmsg: ctypes._CFuncPtr  # type: ignore[name-defined]


_libc: Libc | bool | None = False  # False: not looked up yet


def load() -> Libc | None:
    """libc's ``recvmmsg`` and ``sendmmsg``, or None where they are missing."""
    global _libc
    if _libc is False:
        _libc = None
        if hasattr(socket, "AF_INET6") and os.name == "posix":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                recv, send = libc.recvmmsg, libc.sendmmsg
            except (OSError, AttributeError):
                pass
            else:
                # The header arrays go as plain addresses: converting a POINTER
                # argument costs several microseconds a call, more than the call.
                recv.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
                recv.restype = ctypes.c_int
                send.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int]
                send.restype = ctypes.c_int
                _libc = Libc(recv, send)
    return _libc if isinstance(_libc, Libc) else None


def decode_address(raw: bytes) -> Address:
    """A ``struct sockaddr_in``/``sockaddr_in6``, as Python's socket module spells it."""
    family = struct.unpack_from("=H", raw)[0]
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), (raw[2] << 8) | raw[3]
    if family == socket.AF_INET6:
        flowinfo, scope = struct.unpack_from("!I", raw, 4)[0], struct.unpack_from("=I", raw, 24)[0]
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), (raw[2] << 8) | raw[3], flowinfo, scope
    raise ValueError(f"address family {family} is not IPv4 or IPv6")


def encode_address(addr: tuple[object, ...], family: int) -> bytes:
    """The ``struct sockaddr`` for ``addr`` (host, port[, flowinfo, scope_id])."""
    host, port = str(addr[0]), int(addr[1])  # type: ignore[call-overload]
    if family == socket.AF_INET:
        return struct.pack("=H", family) + struct.pack("!H", port) + socket.inet_pton(family, host) + bytes(8)
    flowinfo = int(addr[2]) if len(addr) > 2 else 0  # type: ignore[call-overload]
    scope = int(addr[3]) if len(addr) > 3 else 0  # type: ignore[call-overload]
    return (struct.pack("=H", family) + struct.pack("!HI", port, flowinfo)
            + socket.inet_pton(family, host) + struct.pack("=I", scope))


class Batcher:
    """Preallocated buffers for ``size`` datagrams of up to ``bufsize`` bytes
    each, on one socket; not thread-safe (one per socket, on its loop)."""

    def __init__(self, sock: socket.socket, size: int = 64, bufsize: int = 4096,
                 pktinfo: tuple[int, int] | None = None):
        libc = load()
        if libc is None:
            raise OSError(errno.ENOSYS, "recvmmsg/sendmmsg are not available here")
        self.libc = libc
        self.sock = sock
        self.family = sock.family
        self.size = size
        self.bufsize = bufsize
        self.pktinfo = pktinfo  # (level, type) of the control message to ask for and answer with
        self.buffers = ctypes.create_string_buffer(size * bufsize)
        self.names = ctypes.create_string_buffer(size * SOCKADDR_SIZE)
        self.controls = ctypes.create_string_buffer(size * CONTROL_SIZE)
        self.iov = (Iovec * size)()
        self.msgs = (Mmsghdr * size)()
        self.out_iov = (Iovec * size)()
        self.out_msgs = (Mmsghdr * size)()
        self.out_buffers = ctypes.create_string_buffer(size * OUT_SLOT)
        self.out_names = ctypes.create_string_buffer(size * SOCKADDR_SIZE)
        self.out_controls = ctypes.create_string_buffer(size * CONTROL_SIZE)
        base, names = ctypes.addressof(self.buffers), ctypes.addressof(self.names)
        for i in range(size):
            self.iov[i].iov_base = base + i * bufsize
            self.iov[i].iov_len = bufsize
            self.msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.iov[i])
            self.msgs[i].msg_hdr.msg_iovlen = 1
            self.msgs[i].msg_hdr.msg_name = names + i * SOCKADDR_SIZE
            self.out_iov[i].iov_base = ctypes.addressof(self.out_buffers) + i * OUT_SLOT
            self.out_msgs[i].msg_hdr.msg_iov = ctypes.pointer(self.out_iov[i])
            self.out_msgs[i].msg_hdr.msg_iovlen = 1
            self.out_msgs[i].msg_hdr.msg_name = ctypes.addressof(self.out_names) + i * SOCKADDR_SIZE
        if pktinfo is not None:
            for i in range(size):
                self.msgs[i].msg_hdr.msg_control = ctypes.addressof(self.controls) + i * CONTROL_SIZE
        self.used = size  # headers the last call may have changed
        self.msgs_at, self.out_at = ctypes.addressof(self.msgs), ctypes.addressof(self.out_msgs)
        self.out_addresses = (ctypes.addressof(self.out_buffers), ctypes.addressof(self.out_names),
                              ctypes.addressof(self.out_controls))
        self.hdr_view = memoryview(self.msgs).cast("B")
        self.buf_view = memoryview(self.buffers).cast("B")
        self.name_view = memoryview(self.names).cast("B")
        self.control_view = memoryview(self.controls).cast("B")
        self.out_view = memoryview(self.out_msgs).cast("B")
        self.out_iov_view = memoryview(self.out_iov).cast("B")
        self.hdr_words, self.hdr_sizes = self.hdr_view.cast("I"), self.hdr_view.cast("P")
        self.out_words, self.out_sizes = self.out_view.cast("I"), self.out_view.cast("P")
        self.out_iov_sizes = self.out_iov_view.cast("P")
        self.out_payload_view = memoryview(self.out_buffers).cast("B")
        self.out_name_view = memoryview(self.out_names).cast("B")
        # What each outgoing header holds from the last send, so that only what changes is
        # written again: the address (the same bytes object while the client is the same),
        # its length, and whether a control message is set.
        self.out_name_of: list[bytes | None] = [None] * size
        self.out_control_set = [False] * size
        self.addresses: BoundedMemo[bytes, Address] = BoundedMemo(ADDRESS_MEMO)
        self.sockaddrs: BoundedMemo[tuple[object, ...], bytes] = BoundedMemo(ADDRESS_MEMO)

    @property
    def address_resets(self) -> int:
        """Times either address table was full and started again."""
        return self.addresses.resets + self.sockaddrs.resets

    def _receive(self) -> int:
        """One ``recvmmsg`` into the buffers, after resetting the headers the last call
        filled; the datagrams read (0 for EAGAIN, EINTR or a queued ICMP error, which the
        call takes off the socket).  A closed socket raises ``OSError``."""
        words, sizes = self.hdr_words, self.hdr_sizes
        per_word, per_size = MMSG_SIZE // WORD, MMSG_SIZE // SIZE_T
        namelen_at, flags_at = NAMELEN_AT // WORD, FLAGS_AT // WORD
        controllen_at = CONTROLLEN_AT // SIZE_T
        asks = self.pktinfo is not None
        for i in range(self.used):
            at = i * per_word
            words[at + namelen_at] = SOCKADDR_SIZE
            words[at + flags_at] = 0
            if asks:
                sizes[i * per_size + controllen_at] = CONTROL_SIZE
        n: int = self.libc.recvmmsg(self.sock.fileno(), self.msgs_at, self.size, MSG_DONTWAIT, None)
        if n < 0:
            self.used = 0
            err = ctypes.get_errno()
            if err == errno.EBADF:
                raise OSError(err, os.strerror(err))
            return 0
        self.used = n
        return n

    def recv(self) -> list[Datagram]:
        """Every datagram waiting, up to ``size``; [] when none is (EAGAIN).

        Errors other than EAGAIN/EINTR (an ICMP error queued on the socket by
        an earlier answer, ECONNREFUSED) are returned as an empty batch after
        being taken off the socket, as a plain ``recvfrom`` loop skips them.
        Only the headers the last call filled are reset, and only the bytes
        each datagram filled are copied: at a few datagrams per wake-up,
        copying whole buffers cost more than the calls saved."""
        n = self._receive()
        words, sizes = self.hdr_words, self.hdr_sizes
        per_word, per_size = MMSG_SIZE // WORD, MMSG_SIZE // SIZE_T
        namelen_at, flags_at, len_at = NAMELEN_AT // WORD, FLAGS_AT // WORD, LEN_AT // WORD
        controllen_at = CONTROLLEN_AT // SIZE_T
        asks = self.pktinfo is not None
        buf, names, memo = self.buf_view, self.name_view, self.addresses
        bufsize, out = self.bufsize, []
        for i in range(n):
            at = i * per_word
            length = words[at + len_at]
            flags = words[at + flags_at]
            name_at = i * SOCKADDR_SIZE
            raw = names[name_at: name_at + words[at + namelen_at]].tobytes()
            addr = memo.get(raw)
            if addr is None:
                addr = memo.put(raw, decode_address(raw))
            info = self._control(i, sizes[i * per_size + controllen_at]) if asks else b""
            start = i * bufsize
            out.append(Datagram(buf[start: start + min(length, bufsize)].tobytes(), addr, info,
                                bool(flags & MSG_TRUNC)))
        return out

    def _control(self, i: int, length: int) -> bytes:
        """The packet info of datagram ``i`` (the only control message asked for)."""
        ctl = self.control_view
        at, end = i * CONTROL_SIZE, i * CONTROL_SIZE + min(length, CONTROL_SIZE)
        while at + CMSG_HEADER <= end:
            clen, level, kind = struct.unpack_from("@Nii", ctl, at)
            if clen < CMSG_HEADER:
                break
            if self.pktinfo == (level, kind):
                return ctl[at + CMSG_HEADER: at + clen].tobytes()
            at += socket.CMSG_SPACE(clen - CMSG_HEADER)
        return b""

    def exchange(self, ready: Ready) -> Exchanged:
        """``recv``, with the answers that ``ready`` gives straight from the receive buffers
        sent back in one ``sendmmsg``: no ``Datagram``, no listener call and no answer
        object for a repeated question (issue 13).  ``ready(key, addr)`` is handed the query
        after its ID and its sender, and returns the answer's bytes after the ID, or None
        when the datagram must take the listener's way: those come back as ``slow``.  Only
        for a socket that asks no packet info (an answer leaves by the kernel's route)."""
        assert self.pktinfo is None
        n = self._receive()
        if not n:
            return Exchanged([], 0, 0)
        words = self.hdr_words
        per_word = MMSG_SIZE // WORD
        namelen_at, flags_at, len_at = NAMELEN_AT // WORD, FLAGS_AT // WORD, LEN_AT // WORD
        buf, names, memo = self.buf_view, self.name_view, self.addresses
        payloads, out_names, iov_sizes = self.out_payload_view, self.out_name_view, self.out_iov_sizes
        out_words, name_of, slot = self.out_words, self.out_name_of, OUT_SLOT
        iov_len_at, per_iov = IOV_LEN_AT // SIZE_T, IOV_SIZE // SIZE_T
        bufsize, slow, fast = self.bufsize, [], []
        j = 0
        for i in range(n):
            at = i * per_word
            length = words[at + len_at]
            name_at = i * SOCKADDR_SIZE
            raw = names[name_at: name_at + words[at + namelen_at]].tobytes()
            addr = memo.get(raw)
            if addr is None:
                addr = memo.put(raw, decode_address(raw))
            start = i * bufsize
            truncated = bool(words[at + flags_at] & MSG_TRUNC)
            answer = None
            if not truncated and length >= 12:
                answer = ready(buf[start + 2: start + length].tobytes(), addr)
            if answer is None or len(answer) + 2 > slot:
                data = buf[start: start + min(length, bufsize)].tobytes()
                slow.append(Datagram(data, addr, b"", truncated))
                continue
            out = j * slot
            payloads[out: out + 2] = buf[start: start + 2]  # the query's ID
            payloads[out + 2: out + 2 + len(answer)] = answer
            iov_sizes[j * per_iov + iov_len_at] = len(answer) + 2
            if name_of[j] != raw:
                out_at = j * SOCKADDR_SIZE
                out_names[out_at: out_at + len(raw)] = raw
                out_words[j * per_word + NAMELEN_AT // WORD] = len(raw)
                name_of[j] = raw
            fast.append((start, answer, addr))
            j += 1
        if not j:
            return Exchanged(slow, 0, 0)
        sent: int = self.libc.sendmmsg(self.sock.fileno(), self.out_at, j, MSG_DONTWAIT)
        if sent < 0:
            err = ctypes.get_errno()
            if err == errno.EBADF:
                raise OSError(err, os.strerror(err))
            sent = 0
        if sent < j:  # a full send buffer, or a refused address: the rest the plain way
            rest = [(buf[at: at + 2].tobytes() + answer, addr, b"") for at, answer, addr in fast[sent:]]
            sent += self.send(rest)  # type: ignore[arg-type]
        return Exchanged(slow, j, j - sent)

    def send(self, batch: list[tuple[bytes | bytearray, tuple[object, ...], bytes]]) -> int:
        """Send ``(data, address, pktinfo)`` triples; the number the kernel took.

        A full send buffer (EAGAIN) ends the call early, and the caller counts
        the rest as dropped, as a full link would drop them (the client
        retries).  A datagram the kernel refuses outright (an address it
        cannot send to) is skipped, so it cannot hold back the others, and is
        not counted as sent either."""
        sent, at, total = 0, 0, len(batch)
        slot, controls = OUT_SLOT, self.out_addresses[2]
        payloads, names, iov_sizes = self.out_payload_view, self.out_name_view, self.out_iov_sizes
        words, sizes = self.out_words, self.out_sizes
        name_of, control_set, sockaddrs = self.out_name_of, self.out_control_set, self.sockaddrs
        per_word, per_size = MMSG_SIZE // WORD, MMSG_SIZE // SIZE_T
        iov_len_at = IOV_LEN_AT // SIZE_T
        control_at, controllen_at = CONTROL_AT // SIZE_T, CONTROLLEN_AT // SIZE_T
        while at < total:
            chunk = batch[at: at + self.size]
            for i, (data, addr, info) in enumerate(chunk):
                length = len(data)
                if length > slot:
                    length, data = slot, data[:slot]
                start = i * slot
                payloads[start: start + length] = data
                iov_sizes[i * (IOV_SIZE // SIZE_T) + iov_len_at] = length
                name = sockaddrs.get(addr)
                if name is None:
                    name = sockaddrs.put(addr, encode_address(addr, self.family))
                if name_of[i] is not name:
                    name_at = i * SOCKADDR_SIZE
                    names[name_at: name_at + len(name)] = name
                    words[i * per_word + NAMELEN_AT // WORD] = len(name)
                    name_of[i] = name
                if info and self.pktinfo is not None and len(info) <= 20:
                    cdata = struct.pack("@Nii", CMSG_HEADER + len(info), *self.pktinfo) + info
                    ctypes.memmove(controls + i * CONTROL_SIZE, cdata, len(cdata))
                    sizes[i * per_size + control_at] = controls + i * CONTROL_SIZE
                    sizes[i * per_size + controllen_at] = socket.CMSG_SPACE(len(info))
                    control_set[i] = True
                elif control_set[i]:
                    sizes[i * per_size + control_at] = 0
                    sizes[i * per_size + controllen_at] = 0
                    control_set[i] = False
            n: int = self.libc.sendmmsg(self.sock.fileno(), self.out_at, len(chunk), MSG_DONTWAIT)
            if n < 0:
                err = ctypes.get_errno()
                if err == errno.EBADF:
                    raise OSError(err, os.strerror(err))
                if err in (errno.EAGAIN, errno.EWOULDBLOCK, errno.ENOBUFS):
                    return sent
                at += 1  # the first of the chunk was refused: skip it, send the rest
                continue
            sent += n
            at += n
            if n == 0:
                return sent
        return sent
