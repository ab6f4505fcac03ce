"""RPZ primary: the policy served as one Response Policy Zone per client group.

Data flow.  ``RpzPrimary.rebuild`` (on a helper thread, at start and whenever
the ``PolicyHolder`` tells its subscribers that the policy or an app's phase
changed) asks ``policies.export.rpz_zone`` for each group's records and
encodes each record once as its wire form (``ZoneVersion``).  A version whose
records differ from the one served gets a higher serial (RFC 1982: a
secondary ignores a serial that is not newer) and the difference to its
predecessor is kept (``Diff``, at most ``IXFR_HISTORY`` per zone) for IXFR.
Then every ``--rpz-notify`` target gets a NOTIFY (RFC 1996), retried until
it answers or ``NOTIFY_TRIES`` run out.

Queries come in through ``RpzPrimary.front``, which wraps
``Resolver.handle``: a message that names none of our zones goes on to the
resolver untouched (one ``bytes.find`` per message); SOA and NS at a zone's
apex are answered here over UDP and TCP; AXFR and IXFR only over TCP, only
from a source in ``rpz_allow`` with a valid TSIG (RFC 8945) or from one in
``rpz_allow_unsigned`` without, and at most ``rpz_transfers`` at once.  A
transfer is streamed from a task (``_transfer``) that writes one message at
a time and waits while the client has ``TCP_WRITE_HIGH`` unread, so the
connection's own deadline (``TcpConnection.progress``) and caps apply.
Each transfer, refused or not, is one ECS event in the resolver's event log.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import re
import struct
import sys
import threading
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Any

import dns.exception
import dns.message
import dns.name
import dns.opcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig

from policies import DnsSettings
from policies.events import ECS_VERSION, SCHEMA_VERSION, utc_iso
from policies.export import RPZ_SUFFIX, rpz_zone

from .config import ConfigError, parse_hostport

# Our zones all end in rpz.egress-filter.: a message without these bytes is
# not for us (qnames are compared case-insensitively below, after this cheap test).
SUFFIX_WIRE = b"".join(bytes((len(x),)) + x.encode() for x in RPZ_SUFFIX.rstrip(".").split(".")) + b"\0"
IXFR_HISTORY = 8  # differences kept per zone; an IXFR from an older serial gets the whole zone
MESSAGE_SIZE = 16_384  # bytes of records per transfer message (TSIG comes on top)
TRANSFER_DEADLINE = 300.0  # seconds for one whole transfer, however fast it progresses
NOTIFY_TRIES = 5
NOTIFY_INTERVAL = 2.0  # seconds between tries (RFC 1996 suggests 60; we are on a LAN)
C_IN, C_ANY = 1, 255
T_SOA, T_NS, T_CNAME, T_TSIG, T_IXFR, T_AXFR = 6, 2, 5, 250, 251, 252
NOERROR, REFUSED, NOTAUTH = 0, 5, 9
ALGORITHMS = {"hmac-sha256": dns.tsig.HMAC_SHA256, "hmac-sha384": dns.tsig.HMAC_SHA384,
              "hmac-sha512": dns.tsig.HMAC_SHA512}


def name_wire(name: str) -> bytes:
    """An absolute name's uncompressed wire form (our names are plain LDH, ``*`` and ``_`` labels)."""
    name = name.rstrip(".")
    if not name:
        return b"\0"
    if "\\" in name:
        return dns.name.from_text(name).to_wire() or b"\0"
    return b"".join(bytes((len(x),)) + x.encode("ascii") for x in name.split(".")) + b"\0"


_LEN = [bytes((i,)) for i in range(256)]


def _labels(relative: str) -> bytes:
    """A relative owner's labels in wire form, without the terminating root
    label (the origin follows).  Labels longer than 63 octets cannot come
    from the export (it checks names), and an escape goes through dnspython."""
    if "\\" in relative:
        return (dns.name.from_text(relative, dns.name.root).to_wire() or b"\0")[:-1]
    return b"".join([_LEN[len(x)] + x for x in relative.encode("ascii").split(b".")])


def rr_wire(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, C_IN, ttl, len(rdata)) + rdata


# --- keys -------------------------------------------------------------------

@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    key: dns.tsig.Key


_KEY_FILE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{[^}]*?algorithm\s+"?([\w-]+)"?\s*;[^}]*?secret\s+"([^"]+)"',
                       re.S)


def parse_tsig_key(text: str) -> TsigKey:
    """``NAME:ALG:SECRET`` (base64 secret), or a BIND key file as ``tsig-keygen`` writes it."""
    if os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                body = f.read()
        except OSError as exc:
            raise ConfigError(f"tsig_key: cannot read {text}: {exc.strerror or exc}") from exc
        m = _KEY_FILE.search(body)
        if m is None:
            raise ConfigError(f"tsig_key: {text} holds no key {{ algorithm ...; secret \"...\"; }}")
        name, alg, secret = m.groups()
    else:
        parts = text.split(":", 2)
        if len(parts) != 3:
            raise ConfigError("tsig_key: expected NAME:ALGORITHM:BASE64SECRET or a key file")
        name, alg, secret = parts
    alg = alg.lower()
    if alg not in ALGORITHMS:
        raise ConfigError(f"tsig_key: algorithm '{alg}' is not one of {', '.join(ALGORITHMS)}")
    try:
        raw = base64.b64decode(secret, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError("tsig_key: the secret is not base64") from exc
    if len(raw) < 16:
        raise ConfigError("tsig_key: the secret is shorter than 16 bytes (RFC 8945 6: half the MAC)")
    try:
        key = dns.tsig.Key(dns.name.from_text(name), raw, ALGORITHMS[alg])
    except dns.exception.DNSException as exc:
        raise ConfigError(f"tsig_key: '{name}' is not a key name") from exc
    return TsigKey(name.rstrip(".") + ".", alg, key)


def check_settings(s: DnsSettings) -> None:
    """The RPZ keys of ``settings.dns`` (called by ``config.check``)."""
    for key in ("rpz_allow", "rpz_allow_unsigned"):
        for net in getattr(s, key):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError as exc:
                raise ConfigError(f"{key}: '{net}' is not a CIDR") from exc
    for target in s.rpz_notify:
        parse_hostport(target, 53)
    if s.rpz_transfers < 1:
        raise ConfigError("rpz_transfers: must be 1 or more")
    if s.tsig_key is not None:
        parse_tsig_key(s.tsig_key)


# --- zone versions ------------------------------------------------------------

@dataclass(frozen=True)
class Diff:
    """What changed from ``old`` to ``new`` (RFC 1995 section 4: one difference sequence)."""

    old: int
    new: int
    removed: tuple[bytes, ...]
    added: tuple[bytes, ...]


@dataclass(frozen=True)
class ZoneVersion:
    """One version of a zone.  Every RR but the SOA, as wire, end to end in one
    buffer with each record's end offset: a million-name zone's 2,000,000
    records as 2,000,000 ``bytes`` objects cost ~90 MB more in object headers."""

    serial: int
    wire: bytes | bytearray
    ends: array[int]
    soa_rdata: bytes  # with ``serial``
    ttl: int

    def __len__(self) -> int:
        return len(self.ends)

    def records(self) -> Iterator[bytes]:
        wire = self.wire
        start = 0
        for end in self.ends:
            yield bytes(wire[start:end])
            start = end

    def soa(self, owner: bytes) -> bytes:
        return rr_wire(owner, T_SOA, self.ttl, self.soa_rdata)


def soa_rdata(serial: int, refresh: int = 300, retry: int = 60, expire: int = 86_400,
              minimum: int = 60) -> bytes:
    return name_wire("localhost.") + name_wire("hostmaster.localhost.") + struct.pack(
        "!IIIII", serial, refresh, retry, expire, minimum)


def serial_newer(a: int, b: int) -> bool:
    """RFC 1982: is ``a`` newer than ``b``?"""
    return a != b and ((a - b) % (1 << 32)) < (1 << 31)


@dataclass
class Zone:
    group: str
    origin: str  # absolute, lower case
    owner: bytes  # the origin's wire form
    current: ZoneVersion
    diffs: deque[Diff] = field(default_factory=lambda: deque(maxlen=IXFR_HISTORY))

    def since(self, serial: int) -> list[Diff] | None:
        """The differences from ``serial`` to now, or None when not kept."""
        chain = list(self.diffs)
        for i, d in enumerate(chain):
            if d.old == serial:
                return chain[i:]
        return None


def build_version(policy: Any, at: Any, phase: Any, group: str, previous: ZoneVersion | None
                  ) -> ZoneVersion:
    z = rpz_zone(policy, at=at, phase=phase, group=group)
    origin = name_wire(z.origin)
    # Everything after the owner's own labels is one of a few byte strings
    # (the origin, then type, class, TTL and target): built once, not per record.
    tails: dict[tuple[str, str], bytes] = {}
    wire = bytearray()
    ends = array("Q")
    add = wire.extend
    mark = ends.append
    for rec in z.records():
        if rec.rtype == "SOA":
            continue
        tail = tails.get((rec.rtype, rec.rdata))
        if tail is None:
            rdata = name_wire(rec.rdata)
            rtype = T_NS if rec.rtype == "NS" else T_CNAME
            tail = tails[(rec.rtype, rec.rdata)] = origin + struct.pack("!HHIH", rtype, C_IN, z.ttl,
                                                                          len(rdata)) + rdata
        if rec.owner != "@":
            add(_labels(rec.owner))
        add(tail)
        mark(len(wire))
    serial = z.serial
    if previous is not None:
        if wire == previous.wire and ends == previous.ends:
            return previous
        if not serial_newer(serial, previous.serial):
            # An edit the same day may hash to a lower serial: a secondary
            # would never fetch it.  One more than the served serial is newer.
            serial = (previous.serial + 1) % (1 << 32)
    return ZoneVersion(serial, wire, ends, soa_rdata(serial, minimum=z.ttl), z.ttl)


DIFF_BUCKET = 250_000  # records per pass of ``difference``: the sets of one pass stay ~25 MB


def difference(old: ZoneVersion, new: ZoneVersion) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
    """(removed, added) records, each in its version's order.  The records
    are compared as sets one hash bucket at a time: two whole sets of a
    million-name zone's 2,000,000 records held ~380 MB at once (a reload's
    peak RSS was 897 MB); a pass per bucket holds an eighth of that and
    costs one more walk of both versions each."""
    passes = max(1, max(len(old), len(new)) // DIFF_BUCKET)
    removed: set[bytes] = set()
    added: set[bytes] = set()
    for bucket in range(passes):
        before = {r for r in old.records() if hash(r) % passes == bucket}
        after = {r for r in new.records() if hash(r) % passes == bucket}
        removed |= before - after
        added |= after - before
        del before, after
    return (tuple(r for r in old.records() if r in removed) if removed else (),
            tuple(r for r in new.records() if r in added) if added else ())


# --- messages -------------------------------------------------------------------

def header(qid: int, flags: int, qd: int, an: int, ns: int = 0, ar: int = 0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def sign(wire: bytes, key: dns.tsig.Key, qid: int, request_mac: bytes, ctx: Any, error: int = 0
         ) -> tuple[bytes, Any]:
    """Append a TSIG RR (RFC 8945 section 5.3; for the messages of a transfer, 5.3.1:
    each one's MAC covers the previous MAC, carried in ``ctx``)."""
    rd = dns.rdtypes.ANY.TSIG.TSIG(  # type: ignore[no-untyped-call]
        dns.rdataclass.ANY, dns.rdatatype.TSIG, key.algorithm, 0, 300, b"", qid, error, b"")
    tsig, ctx = dns.tsig.sign(  # type: ignore[no-untyped-call]
        wire, key, rd, int(time.time()), request_mac or None, ctx, True)
    rdw = tsig.to_wire()
    assert rdw is not None
    ar = struct.unpack("!H", wire[10:12])[0] + 1
    out = wire[:10] + struct.pack("!H", ar) + wire[12:] + (key.name.to_wire() or b"") + struct.pack(
        "!HHIH", T_TSIG, C_ANY, 0, len(rdw)) + rdw
    return out, ctx


@dataclass(frozen=True)
class Asked:
    qid: int
    rd: int
    opcode: int
    qname: str
    qtype: int
    question: bytes  # wire, as asked
    client_serial: int | None  # IXFR: the serial in the authority section
    key: dns.tsig.Key | None  # the query was signed with it (and verified)
    mac: bytes


def parse_asked(data: bytes, keyring: dict[dns.name.Name, dns.tsig.Key]) -> Asked:
    """Raises dns.exception.DNSException (dns.tsig.* for a bad signature)."""
    m = dns.message.from_wire(data, keyring=keyring, ignore_trailing=False)
    if len(m.question) != 1:
        raise dns.exception.FormError("one question expected")  # type: ignore[no-untyped-call]
    q = m.question[0]
    client_serial = None
    if q.rdtype == T_IXFR:
        for rrset in m.authority:
            if rrset.rdtype == T_SOA and len(rrset):
                client_serial = int(next(iter(rrset)).serial)  # type: ignore[attr-defined]
    qwire = name_wire(q.name.to_text().lower()) + struct.pack("!HH", q.rdtype, q.rdclass)
    key = keyring.get(m.keyname) if m.had_tsig and m.keyname is not None else None
    return Asked(m.id, m.flags & 0x0100, m.opcode(), q.name.to_text().lower(), int(q.rdtype), qwire,
                 client_serial, key, m.mac or b"")


# --- the primary ------------------------------------------------------------------

class RpzPrimary:
    def __init__(self, settings: DnsSettings, holder: Any, events: Any,
                 say: Callable[[str], None] | None = None):
        self.holder = holder
        self.events = events
        self.say = say or (lambda line: print(line, file=sys.stderr, flush=True))
        self.allow = [ipaddress.ip_network(n, strict=False) for n in settings.rpz_allow]
        self.allow_unsigned = [ipaddress.ip_network(n, strict=False) for n in settings.rpz_allow_unsigned]
        self.tsig = parse_tsig_key(settings.tsig_key) if settings.tsig_key else None
        self.keyring: dict[dns.name.Name, dns.tsig.Key] = (
            {self.tsig.key.name: self.tsig.key} if self.tsig else {})
        self.notify_targets = [parse_hostport(t, 53) for t in settings.rpz_notify]
        self.max_transfers = settings.rpz_transfers
        self.transfers = 0
        self.refused = 0
        self.notifies_sent = 0
        self.notifies_answered = 0
        self.zones: dict[str, Zone] = {}  # origin -> zone
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.asks: Callable[[str], bool] = lambda client: False  # the resolver's ACL, from ``front``
        self._rebuild_lock = threading.Lock()
        self.rebuild()

    # --- zones ---------------------------------------------------------------------

    def rebuild(self) -> list[Zone]:
        """New versions of every group's zone from the holder's policy and day;
        returns the zones whose serial changed.  Safe on any thread: the new
        dict of zones replaces the old in one assignment."""
        with self._rebuild_lock:
            policy = self.holder.policy
            at = self.holder.view.at
            phase = self.holder.phase
            zones: dict[str, Zone] = {}
            changed = []
            for group in sorted(policy.clients):
                origin = f"{group}.{RPZ_SUFFIX}.".lower()
                old = self.zones.get(origin)
                version = build_version(policy, at, phase, group, old.current if old else None)
                if old is None:
                    zones[origin] = Zone(group, origin, name_wire(origin), version)
                    continue
                zones[origin] = old
                if version is not old.current:
                    prev = old.current
                    removed, added = difference(prev, version)
                    old.diffs.append(Diff(prev.serial, version.serial, removed, added))
                    old.current = version
                    changed.append(old)
            self.zones = zones
            return changed

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

        def notice(reason: str) -> None:
            # On the holder's thread: build there, then NOTIFY from the loop.
            changed = self.rebuild()
            for z in changed:
                self.say(f"egress-filter dns: rpz: {z.origin} serial {z.current.serial} ({reason})")
            if changed and self.notify_targets:
                loop.call_soon_threadsafe(self._notify_all, changed)

        self.holder.subscribe(notice)
        for z in self.zones.values():
            self.say(f"egress-filter dns: rpz: serving {z.origin} serial {z.current.serial} "
                     f"({len(z.current)} records)")

    # --- the hook --------------------------------------------------------------------

    def front(self, handle: Callable[[bytes, str, int, Any, Any], None], asks: Callable[[str], bool]
              ) -> Callable[[bytes, str, int, Any, Any], None]:
        """``Resolver.handle`` with our zones' SOA, NS, AXFR and IXFR taken out first.
        ``asks`` is the resolver's ACL: SOA and NS go to its clients and to the
        transfer sources; anyone else is left to the resolver (which refuses them)."""
        self.asks = asks

        def front(data: bytes, client: str, port: int, sink: Any, addr: Any) -> None:
            if ((SUFFIX_WIRE in data or SUFFIX_WIRE in data.lower())
                    and len(data) >= 12 and not data[2] & 0x80):
                if self._mine(data, client, port, sink, addr):
                    return
            handle(data, client, port, sink, addr)
        return front

    def _mine(self, data: bytes, client: str, port: int, sink: Any, addr: Any) -> bool:
        """Answer it here if it is a query about one of our zones' apex; False: not ours."""
        try:
            asked = parse_asked(data, self.keyring)
        except (dns.tsig.BadSignature, dns.tsig.BadTime, dns.message.UnknownTSIGKey,
                dns.tsig.BadAlgorithm, dns.tsig.PeerError) as exc:
            # RFC 8945 5.2: NOTAUTH, unsigned (we cannot sign with a key we do not trust).
            sink.send(data[0:2] + bytes((0x80 | (data[2] & 0x79), NOTAUTH)) + b"\0" * 8, addr)
            self._event(client, port, "-", "-", False, f"bad TSIG: {type(exc).__name__}", signed=True)
            return True
        except dns.exception.DNSException:
            return False  # the resolver has its own answers to malformed messages
        zone = self.zones.get(asked.qname)
        if zone is None or asked.opcode != dns.opcode.QUERY:
            return False
        if asked.qtype in (T_AXFR, T_IXFR):
            self._transfer_request(zone, asked, client, port, sink, addr)
            return True
        if asked.qtype not in (T_SOA, T_NS) or not (self.asks(client) or self._source_allowed(client)):
            return False
        v = zone.current
        if asked.qtype == T_SOA:
            answers = [v.soa(zone.owner)]
        else:
            ns = zone.owner + b"\0\x02"
            # The apex NS come first (rpz_zone yields SOA, NS, then the policy):
            # never a walk of a million records per NS query.
            answers = list(takewhile(lambda r: r.startswith(ns), v.records()))
        out = header(asked.qid, 0x8400 | asked.rd, 1, len(answers)) + asked.question + b"".join(answers)
        if asked.key is not None:
            out, _ = sign(out, asked.key, asked.qid, asked.mac, None)
        sink.send(out, addr)
        return True

    # --- transfers ---------------------------------------------------------------------

    def _refuse(self, asked: Asked, sink: Any, addr: Any) -> None:
        out = header(asked.qid, 0x8000 | asked.rd | REFUSED, 1, 0) + asked.question
        if asked.key is not None:
            out, _ = sign(out, asked.key, asked.qid, asked.mac, None)
        sink.send(out, addr)

    def _transfer_request(self, zone: Zone, asked: Asked, client: str, port: int, sink: Any,
                          addr: Any) -> None:
        kind = "AXFR" if asked.qtype == T_AXFR else "IXFR"
        why = self._why_refused(asked, client, addr is not None)
        if why is None and self.transfers >= self.max_transfers:
            why = f"rpz_transfers: {self.max_transfers} already running"
        if why is not None:
            self.refused += 1
            self._refuse(asked, sink, addr)
            self._event(client, port, zone.origin, kind, False, why, signed=asked.key is not None)
            return
        self._event(client, port, zone.origin, kind, True, "", signed=asked.key is not None)
        self.transfers += 1
        task = asyncio.get_running_loop().create_task(self._transfer(zone, asked, sink))
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        self.transfers -= 1

    def _source_allowed(self, client: str) -> bool:
        try:
            ip = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return False
        return any(ip in n for n in (*self.allow, *self.allow_unsigned))

    def _why_refused(self, asked: Asked, client: str, udp: bool) -> str | None:
        if udp:
            return "zone transfers are served over TCP only"
        try:
            ip = ipaddress.ip_address(client.split("%", 1)[0])
        except ValueError:
            return "unknown source address"
        if asked.key is not None:
            return None if any(ip in n for n in self.allow) else "source not in rpz_allow"
        if any(ip in n for n in self.allow_unsigned):
            return None
        return "not signed with the TSIG key (and source not in rpz_allow_unsigned)"

    def messages(self, zone: Zone, asked: Asked) -> Iterator[list[bytes]]:
        """The records of the answer, in messages of at most MESSAGE_SIZE bytes."""
        v = zone.current
        soa = v.soa(zone.owner)
        if asked.qtype == T_IXFR and asked.client_serial is not None:
            if not serial_newer(v.serial, asked.client_serial):
                yield [soa]  # up to date (RFC 1995 section 2)
                return
            diffs = zone.since(asked.client_serial)
            if diffs is not None:
                seq: Iterator[bytes] = self._ixfr(zone, soa, diffs)
                yield from _chunks(seq)
                return
        yield from _chunks(_axfr(soa, v.records()))

    def _ixfr(self, zone: Zone, soa: bytes, diffs: list[Diff]) -> Iterator[bytes]:
        yield soa
        for d in diffs:
            yield rr_wire(zone.owner, T_SOA, zone.current.ttl, soa_rdata(d.old, minimum=zone.current.ttl))
            yield from d.removed
            yield rr_wire(zone.owner, T_SOA, zone.current.ttl, soa_rdata(d.new, minimum=zone.current.ttl))
            yield from d.added
        yield soa

    async def _transfer(self, zone: Zone, asked: Asked, conn: Any) -> None:
        """Stream the answer; each message waits until the client has read the
        previous ones down to the high-water mark, and moves the connection's
        deadline on (a client that stops reading is cut by it)."""
        from .server import TCP_WRITE_HIGH

        deadline = time.monotonic() + TRANSFER_DEADLINE
        ctx: Any = None
        first = True
        pending: bytes | None = None
        try:
            for rrs in self.messages(zone, asked):
                out = header(asked.qid, 0x8400, 1 if first else 0, len(rrs)) + (
                    asked.question if first else b"") + b"".join(rrs)
                if asked.key is not None:
                    out, ctx = sign(out, asked.key, asked.qid, asked.mac if first else b"", ctx)
                first = False
                if pending is not None:
                    t = conn.transport
                    while t is not None and t.get_write_buffer_size() > TCP_WRITE_HIGH // 2:
                        if time.monotonic() > deadline:
                            conn.cut()
                            return
                        await asyncio.sleep(0.005)
                        t = conn.transport
                    if t is None or t.is_closing():
                        return
                    t.write(len(pending).to_bytes(2, "big") + pending)
                    conn.progress()
                pending = out
                await asyncio.sleep(0)  # let queries be answered between messages
            if pending is not None:
                conn.send(pending, None)  # the last one through the ordinary path: it counts the answer
        except Exception as exc:  # a bug must not kill the loop; the connection goes
            self.say(f"egress-filter dns: rpz: transfer of {zone.origin} failed: {exc!r}")
            conn.cut()

    # --- NOTIFY ------------------------------------------------------------------------

    def _notify_all(self, zones: list[Zone]) -> None:
        for z in zones:
            for host, port in self.notify_targets:
                task = asyncio.get_running_loop().create_task(self._notify(z, host, port))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _notify(self, zone: Zone, host: str, port: int) -> None:
        """RFC 1996: NOTIFY with the new SOA, retried until answered."""
        loop = asyncio.get_running_loop()
        qid = int.from_bytes(os.urandom(2), "big")
        soa = zone.current.soa(zone.owner)
        msg = header(qid, 0x2400, 1, 1) + zone.owner + struct.pack("!HH", T_SOA, C_IN) + soa
        answered = loop.create_future()

        class Proto(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if len(data) >= 4 and data[:2] == msg[:2] and data[2] & 0x80 and not answered.done():
                    answered.set_result(data[3] & 0x0F)

        family = 10 if ":" in host else 2
        transport, _ = await loop.create_datagram_endpoint(Proto, family=family, remote_addr=(host, port))
        try:
            for _ in range(NOTIFY_TRIES):
                transport.sendto(msg)
                self.notifies_sent += 1
                try:
                    await asyncio.wait_for(asyncio.shield(answered), NOTIFY_INTERVAL)
                    self.notifies_answered += 1
                    return
                except TimeoutError:
                    continue
            self.say(f"egress-filter dns: rpz: no answer to NOTIFY {zone.origin} from {host}:{port}")
        finally:
            transport.close()

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass

    # --- events ----------------------------------------------------------------------

    def _event(self, client: str, port: int, zone: str, kind: str, allowed: bool, reason: str,
               signed: bool) -> None:
        if not getattr(self.events, "enabled", False):
            return
        action = "zone-transfer" if allowed else "zone-transfer-refused"
        self.events.emit({
            "@timestamp": utc_iso(time.time()),
            "ecs": {"version": ECS_VERSION},
            "event": {"kind": "event" if allowed else "alert", "category": ["network"],
                      "type": ["allowed" if allowed else "denied"], "action": action,
                      "outcome": "success" if allowed else "failure", "module": "egress_filter",
                      "dataset": "egress_filter.dns", **({"reason": reason} if reason else {})},
            "source": {"ip": client, "port": port},
            "dns": {"question": {"name": zone.rstrip("."), "type": kind}},
            "network": {"transport": "tcp", "protocol": "dns"},
            "observer": {"product": "egress-filter", "type": "dns"},
            "message": f"{kind} {zone} from {client}: " + ("sent" if allowed else f"REFUSED ({reason})"),
            "egress": {"schema": SCHEMA_VERSION, "component": "dns", "rpz": {
                "zone": zone, "transfer": kind, "signed": signed, "allowed": allowed,
                "key": self.tsig.name if signed and self.tsig else None}},
        })


def _axfr(soa: bytes, records: Iterator[bytes]) -> Iterator[bytes]:
    yield soa
    yield from records
    yield soa


def _chunks(rrs: Iterator[bytes]) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    size = 12
    for rr in rrs:
        if batch and size + len(rr) > MESSAGE_SIZE:
            yield batch
            batch, size = [], 12
        batch.append(rr)
        size += len(rr)
    if batch:
        yield batch
