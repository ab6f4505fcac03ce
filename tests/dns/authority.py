"""A small real authoritative server on loopback: the resolver's upstream in tests.

Built on dnslib; serves UDP and TCP from two threads.  Its zone is fixed
(``RECORDS``); names under ``tiktok.test``, ``tiktokcdn.test`` and
``wechat.test`` answer A 192.0.2.66, anything else NXDOMAIN with an SOA
(negative TTL ``NEG_TTL``).  ``big.example.test`` comes back truncated over
UDP and whole over TCP.  ``mode`` makes it misbehave on purpose: ``slow``
(answers after ``SLOW`` seconds), ``garbage`` (random bytes with the right
ID), ``silent`` (no answer), ``servfail``, ``refused``, ``notimp``, ``formerr``
(that rcode).  ``stop`` closes the sockets (ICMP unreachable).
``delay`` holds every UDP answer back that long without holding the others
(a slow upstream under load), ``forge`` is called with each UDP query
before its answer leaves (a spoofer racing the real answer), and
``lower_case`` makes it answer with the question lower-cased.  Some names
come with records that do not belong (``EXTRA``, ``stuffed.example.test``):
the scrubber's cases.  It counts what it was asked, so tests can tell a
cached answer from a forwarded one, and keeps every query with its source
(``seen``).
"""

from __future__ import annotations

import os
import queue
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

from dnslib import AAAA, CNAME, EDNS0, NS, QTYPE, RCODE, RR, SOA, TXT, A, DNSQuestion, DNSRecord

NEG_TTL = 3
SLOW = 10.0
SHORT_TTL = 2

RECORDS: dict[str, list[RR]] = {
    "www.example.test": [RR("www.example.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=300),
                         RR("www.example.test", QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=300)],
    "short.example.test": [RR("short.example.test", QTYPE.A, rdata=A("192.0.2.2"), ttl=SHORT_TTL)],
    "alias.example.test": [RR("alias.example.test", QTYPE.CNAME, rdata=CNAME("edge.tiktokcdn.test"), ttl=300),
                           RR("edge.tiktokcdn.test", QTYPE.A, rdata=A("192.0.2.66"), ttl=300)],
    "alias2.example.test": [RR("alias2.example.test", QTYPE.CNAME, rdata=CNAME("alias3.example.test"),
                               ttl=300),
                            RR("alias3.example.test", QTYPE.CNAME, rdata=CNAME("img.wechat.test"), ttl=300),
                            RR("img.wechat.test", QTYPE.A, rdata=A("192.0.2.67"), ttl=300)],
    "fine.example.test": [RR("fine.example.test", QTYPE.CNAME, rdata=CNAME("www.example.test"), ttl=300),
                          RR("www.example.test", QTYPE.A, rdata=A("192.0.2.1"), ttl=300)],
    "big.example.test": [RR("big.example.test", QTYPE.TXT, rdata=TXT(f"{i}" * 200), ttl=300)
                         for i in range(8)],
}
RECORDS["stuffed.example.test"] = [  # an answer that also "answers" questions nobody asked
    RR("stuffed.example.test", QTYPE.A, rdata=A("192.0.2.9"), ttl=300),
    RR("www.bank.test", QTYPE.A, rdata=A("10.66.66.66"), ttl=300),
    RR("stuffed.example.test.bank.test", QTYPE.A, rdata=A("10.66.66.66"), ttl=300)]
RECORDS["glue.example.test"] = [RR("glue.example.test", QTYPE.A, rdata=A("192.0.2.10"), ttl=300)]
# name -> (authority records, additional records) added to its answer.
EXTRA: dict[str, tuple[list[RR], list[RR]]] = {
    "glue.example.test": (
        [RR("example.test", QTYPE.NS, rdata=NS("ns1.example.test"), ttl=300),
         RR("example.test", QTYPE.NS, rdata=NS("ns.bank.test"), ttl=300),
         RR("test", QTYPE.NS, rdata=NS("ns.bank.test"), ttl=300),
         RR("www.bank.test", QTYPE.A, rdata=A("10.66.66.66"), ttl=300)],
        [RR("ns1.example.test", QTYPE.A, rdata=A("192.0.2.53"), ttl=300),
         RR("ns.bank.test", QTYPE.A, rdata=A("10.66.66.66"), ttl=300),
         RR("www.bank.test", QTYPE.A, rdata=A("10.66.66.66"), ttl=300)]),
}
APP_ZONES = ("tiktok.test", "tiktokcdn.test", "wechat.test")
Forge = Callable[[tuple[str, int], bytes, bytes | None], None]  # (asker, query, real answer)


class Authority:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.mode = "ok"
        self.slow = SLOW
        self.asked: Counter[tuple[str, str, str]] = Counter()
        self.edns_seen: list[tuple[int, int] | None] = []  # (UDP size, DO bit) per query, None: no OPT
        self.seen: list[tuple[tuple[str, int], bytes]] = []  # (source, query bytes) of each UDP query
        self.delay = 0.0
        self.forge: Forge | None = None
        self.lower_case = False
        self._later: queue.Queue[tuple[float, bytes, tuple[str, int]]] = queue.Queue()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        for _ in range(50):  # port 0: find one free for both UDP and TCP
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind((host, port))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                self.tcp.bind((host, self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
                if port:
                    raise
        self.tcp.listen(64)
        self.udp.settimeout(0.2)
        self.tcp.settimeout(0.2)
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True),
                         threading.Thread(target=self._serve_tcp, daemon=True),
                         threading.Thread(target=self._send_later, daemon=True)]
        for t in self._threads:
            t.start()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def slow_down(self, seconds: float) -> None:
        """Answer every question ``seconds`` late."""
        self.mode, self.slow = "slow", seconds

    def count(self, name: str, transport: str | None = None) -> int:
        with self._lock:
            return sum(n for (q, _t, tr), n in self.asked.items()
                       if q == name and (transport is None or tr == transport))

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(2)
        self.udp.close()
        self.tcp.close()

    # --- answering -------------------------------------------------------------

    def answer(self, data: bytes, transport: str) -> bytes | None:
        try:
            return self._answer(data, transport)
        except Exception:  # whatever a fuzzed query does to dnslib, the server thread lives on
            return None

    def _answer(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        name = str(query.q.qname).rstrip(".").lower()
        opt = next((rr for rr in query.ar if rr.rtype == QTYPE.OPT), None)
        with self._lock:
            self.asked[(name, QTYPE.get(query.q.qtype), transport)] += 1
            self.edns_seen.append(None if opt is None else (opt.rclass, (opt.ttl >> 15) & 1))
        mode = self.mode
        if mode == "silent":
            return None
        if mode == "slow":
            time.sleep(self.slow)
        if mode == "garbage":
            return data[:2] + os.urandom(40)
        reply = query.reply()
        if self.lower_case:  # a server that does not keep the case of the question (no 0x20)
            reply.questions = [DNSQuestion(name, query.q.qtype, query.q.qclass)]
        if opt is not None:  # an EDNS0 answer for an EDNS0 question (RFC 6891)
            reply.add_ar(EDNS0(udp_len=1232, flags="do" if (opt.ttl >> 15) & 1 else ""))
        if mode in ("servfail", "refused", "notimp", "formerr"):
            reply.header.rcode = getattr(RCODE, mode.upper())
            return bytes(reply.pack())
        records = RECORDS.get(name)
        if records is None and any(name == z or name.endswith("." + z) for z in APP_ZONES):
            records = [RR(query.q.qname, QTYPE.A, rdata=A("192.0.2.66"), ttl=300)]
        if records is None:
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(soa(name))
            return bytes(reply.pack())
        if name == "big.example.test" and transport == "udp":
            reply.header.tc = 1
            return bytes(reply.pack())
        for rr in records:
            if rr.rtype == query.q.qtype or rr.rtype == QTYPE.CNAME:
                reply.add_answer(rr)
        auth, additional = EXTRA.get(name, ([], []))
        for rr in auth:
            reply.add_auth(rr)
        for rr in additional:
            reply.add_ar(rr)
        if not reply.rr:
            reply.add_auth(soa(name))
        return bytes(reply.pack())

    def _serve_udp(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.recvfrom(65535)
            except (TimeoutError, OSError):
                continue
            with self._lock:
                self.seen.append((addr, data))
            out = self.answer(data, "udp")
            if self.forge is not None:
                self.forge(addr, data, out)
            if out is not None and self.delay:
                self._later.put((time.monotonic() + self.delay, out, addr))
            elif out is not None:
                self._send(out, addr)

    def _send(self, out: bytes, addr: tuple[str, int]) -> None:
        try:
            self.udp.sendto(out, addr)
        except OSError:
            pass

    def _send_later(self) -> None:
        """Delayed answers, in the order they are due (one delay for all)."""
        while not self._stop.is_set():
            try:
                due, out, addr = self._later.get(timeout=0.2)
            except queue.Empty:
                continue
            time.sleep(max(0.0, due - time.monotonic()))
            self._send(out, addr)

    def _serve_tcp(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.tcp.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while True:
                    head = _read(conn, 2)
                    if head is None:
                        return
                    data = _read(conn, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    out = self.answer(data, "tcp")
                    if out is not None:
                        conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return


def soa(name: str) -> RR:
    """The SOA of the name's zone (its last two labels), so that it is in bailiwick."""
    zone = ".".join(name.split(".")[-2:])
    return RR(zone, QTYPE.SOA, ttl=60, rdata=SOA("ns.example.test", "hostmaster.example.test",
                                                (1, 3600, 600, 86400, NEG_TTL)))


def _read(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf
