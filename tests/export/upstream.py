"""A loopback upstream that answers every name: A 192.0.2.1, AAAA 2001:db8::1.

The engines under test forward what they do not block here, so an answer
from it means "not blocked"; NXDOMAIN or a null address means "blocked".
"""

from __future__ import annotations

from dnslib import AAAA, QTYPE, RR, A, DNSRecord

from tests.dns.authority import Authority

UPSTREAM_A = "192.0.2.1"


class CatchAll(Authority):
    def _answer(self, data: bytes, transport: str) -> bytes | None:
        query = DNSRecord.parse(data)
        with self._lock:
            self.asked[(str(query.q.qname).rstrip(".").lower(), QTYPE.get(query.q.qtype), transport)] += 1
        reply = query.reply()
        if query.q.qtype == QTYPE.A:
            reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(UPSTREAM_A), ttl=5))
        elif query.q.qtype == QTYPE.AAAA:
            reply.add_answer(RR(query.q.qname, QTYPE.AAAA, rdata=AAAA("2001:db8::1"), ttl=5))
        return bytes(reply.pack())
