"""The resolver chain: one short, readable path per query.

The order of the links is written once, in the comment above
``Resolver.handle`` (step 0, ``ReadyAnswers.answer``, is asked by the UDP
transports before it), and in docs/dns.md; each link is a module of its
own under ``chain/`` (ready answers, ACL, CH identity, the policy verdict,
cache, coalescing, forwarding, telemetry).  This module runs them in order
and sends what they return.

    bytes ─▶ ACL ─▶ parse question ─▶ policy decision ─▶ cache ─▶ upstream
              │           │                 │ block            │ hit      │ answer
           REFUSED   FORMERR/drop      block answer         answer    CNAME check,
                                  (builtin:canary: NXDOMAIN)           cache, answer

Every step that can answer does so from bytes it already has (pre-built
block answers, cached upstream answers) with the asker's ID spliced in; only
a cache miss leaves the hot path, as a task that awaits the upstream.  Askers
of a question already on its way upstream wait for that one answer (so a
cache flush at a phase change does not send a burst of duplicates upstream):
questions are the same when their ``Query.key`` is (the lower-cased question
and the RD, CD, DO and EDNS flags).  What goes upstream is built by the
forwarder from that key alone, never from the first asker's bytes, so junk
in one client's packet cannot fail the others' answers.  The
answer is sent before the event is built and queued, so logging never delays
it.  The memo, the ready answers and the block templates hold verdicts of one
policy moment, so the policy holder's "reload"/"phase" notices clear them (on
the loop's thread); the answer cache holds only upstream answers and stays.

Client groups: every verdict depends on the asker's group (its frameworks,
mode and legal status), so the decisions are memoised per (group, name) and
CNAME targets are judged with the asker's group.  Without group networks
every client is in ``default`` and no lookup is made.

A UDP answer that the chain would give again byte for byte (a block, the
canary, a cache hit) is also kept by the ready-answer link
(``chain/ready.py``), per client group; the UDP transports ask
``ReadyAnswers.answer`` first, so a repeated question costs two dict lookups
and one concatenation instead of the parse, the decision and the splice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

from policies import (
    ALLOW,
    CANARY_RULE,
    Action,
    Decision,
    DnsSettings,
    PolicyView,
)
from policies.bounded import BoundedMemo

from .cache import AnswerCache
from .chain.acl import Acl
from .chain.cache import CacheLink
from .chain.coalesce import Coalescer, Join
from .chain.forward import Forward, Forwarded, no_route
from .chain.identity import Identity
from .chain.ready import ReadyAnswers
from .chain.telemetry import EventSink, Served, Telemetry
from .chain.verdict import ChainVerdict, Verdicts
from .client_names import ClientNames
from .local import LocalAnswer, LocalAnswers
from .metrics import NullMetrics
from .responses import BlockParts, BlockResponse, block_parts, template_qtype
from .upstream import Forwarder
from .wire import (
    C_CH,
    CLASSIC_UDP,
    RCODE_NAMES,
    REFUSED,
    SERVFAIL,
    Malformed,
    Query,
    error_reply,
    parse_query,
    rcode_reply,
    splice,
    splice_parts,
    truncated_reply,
)

TEMPLATE_LIMIT = 10_000
NXDOMAIN_ONLY = BlockResponse.NXDOMAIN
FOREVER = float("inf")


class Sink(Protocol):
    """Where an answer goes: a UDP socket (``addr`` set) or a TCP connection."""

    def send(self, data: bytes | bytearray, addr: Any) -> None: ...


# NamedTuples rather than frozen dataclasses: these are built once per query
# on the hot path, and a tuple is several times cheaper to build.
class Asker(NamedTuple):
    """One question being answered: its bytes, what was read from them, the
    verdict so far, and where it came from and goes back to."""

    data: bytes
    query: Query
    decision: Decision
    client: str
    port: int
    sink: Sink
    addr: Any  # the UDP address to answer, None over TCP


class ViewSource(Protocol):
    view: PolicyView

    def subscribe(self, listener: Callable[[str], None]) -> None: ...


class Resolver:
    def __init__(self, holder: ViewSource, settings: DnsSettings, forwarder: Forwarder,
                 events: EventSink, metrics: NullMetrics | None = None, local: LocalAnswers | None = None,
                 *, clock: Callable[[], float] = time.monotonic):
        self.holder = holder
        self.clock = clock  # the answer cache's and the ready answers' time (tests inject their own)
        self.forwarder = forwarder
        self.metrics = metrics or NullMetrics()
        self.acl = Acl(settings.acl)
        self.block = BlockResponse(settings.block_response)
        self.canary = settings.canary
        self.max_udp = settings.max_udp_size
        self.identity = Identity(settings.server_identity, settings.server_version)
        self.cache = CacheLink(AnswerCache(settings.cache_size), clock)
        self.templates: BoundedMemo[Any, BlockParts] = BoundedMemo(TEMPLATE_LIMIT)
        # One upstream question per Query.key: its size is the number on their way upstream.
        self.coalescer: Coalescer[Asker] = Coalescer()
        self.idle: asyncio.Event | None = None  # set when the last of them settles during ``drain``
        self.verdicts = Verdicts()
        self.closing = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.local = local  # local records, local and forward domains (dns_blocker/local.py)
        self.forward = Forward(forwarder, self.cache, local.forwarder_for if local is not None else no_route)
        names = ClientNames(settings.client_names) if settings.client_names else None
        self.telemetry = Telemetry(self.metrics, events, names, settings.log_all,
                                   settings.client_name_metrics)
        self.name_metrics = self.telemetry.name_metrics
        self.ready = ReadyAnswers(holder, self.telemetry.served,
                                  self.telemetry.arrived if self.name_metrics else None, clock=clock)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Subscribe to policy changes; notices arrive on the holder's thread."""
        self.loop = loop

        def notice(reason: str) -> None:
            loop.call_soon_threadsafe(self.flush, reason)

        self.holder.subscribe(notice)

    def flush(self, reason: str) -> None:
        """A reload or a phase change: drop every table that holds a verdict.

        The answer cache stays: it holds the upstreams' answers, which no
        policy changes, and every lookup decides (and re-judges CNAME chains)
        before it is consulted, so no stale verdict can come out of it.
        Emptying it too made every reload a cache-cold storm upstream (the
        soak bench: 81% misses and SERVFAILs at 5k qps with a reload every 2 s)."""
        self.ready.clear()
        self.templates.clear()
        self.verdicts.clear()
        self.metrics.flushed(reason)

    # --- the chain -------------------------------------------------------------

    # The chain, in order; the one place it is written (docs/dns.md has the same table).
    #   0.  ready answers  chain/ready.py      UDP only, asked by the transport before ``handle``:
    #                                          bytes answered before skip steps 1-6, and the
    #                                          Tally kept with them counts and logs them as
    #                                          step 9 did the first time
    #   1.  RPZ front      rpz.py              --rpz only, wrapped around ``handle`` by serve
    #   2.  ACL            chain/acl.py        REFUSED
    #   3.  question       wire.parse_query    FORMERR, NOTIMP, BADVERS, or silence
    #   4.  CH identity    chain/identity.py   the configured text, or REFUSED
    #   5.  policy         chain/verdict.py    the block answer (built-ins, the canary, included)
    #   5b. local          local.py            a local record, or NXDOMAIN; never forwarded
    #   6.  cache          chain/cache.py      the cached answer, or a block via CNAME
    #   7.  coalescing     chain/coalesce.py   wait behind the same question, or SERVFAIL (shed)
    #   8.  forwarding     chain/forward.py    the upstreams' answer (upstream.py), or SERVFAIL
    #   9.  telemetry      chain/telemetry.py  after each answer is sent: metrics and the event
    def handle(self, data: bytes, client: str, port: int, sink: Sink, addr: Any) -> None:
        """Answer one query: now from bytes, or later from a task (cache miss)."""
        if self.closing:
            return
        if self.name_metrics:
            self.telemetry.arrived(client)
        if not self.acl.allows(client):
            if len(data) >= 12 and not data[2] & 0x80:
                sink.send(error_reply(data, REFUSED), addr)
                self.metrics.query("refused")
            return
        try:
            q = parse_query(data)
        except Malformed as exc:
            sink.send(exc.reply(data), addr)
            self.metrics.query(RCODE_NAMES[exc.rcode].lower())
            return
        if q is None:
            self.metrics.query("dropped")
            return
        udp = addr is not None
        if q.qclass == C_CH:  # checked here first: one comparison, where a call would cost every query
            chaos = self.identity.reply(data, q)
            if chaos is not None:
                sink.send(self._fit(chaos, q, data, udp), addr)
                self.metrics.query("chaos")
                return
        view = self.holder.view
        gv = view.group(client)
        d = self.verdicts.decide(view, gv, q.name, client)
        if d.action is Action.BLOCK:
            # The core's builtin:canary always answers NXDOMAIN (what the canary
            # means to browsers); --no-canary switches it off at this resolver only.
            canary = d.rule == CANARY_RULE
            if not canary or self.canary:
                t = self._template(q, d, NXDOMAIN_ONLY if canary else self.block)
                out, response = splice_parts(t.head, t.tail, data, q.qend), t.response
                served = Served.CANARY if canary else Served.BLOCKED
                self._reply(Asker(data, q, d, client, port, sink, addr), served, self._fit(out, q, data, udp),
                            FOREVER, response, not gv.group.exempt)
                return
            d = ALLOW
        if self.local is not None:  # local records and local domains (dns_blocker/local.py): never forwarded
            here = self.local.answer(data, q)
            if here is not None:
                self._local_reply(here, d, q, data, client, port, sink, addr)
                return
        hit = self.cache.lookup(data, q, gv, d, client)
        if hit is not None:
            if isinstance(hit, ChainVerdict):
                self.metrics.cache(True)
                self._send_chain_block(data, q, hit, client, port, sink, addr)
                return
            out, until, response, d, shared = hit
            self._reply(Asker(data, q, d, client, port, sink, addr), Served.CACHED,
                        self._fit(out, q, data, udp), until, response, shared)
            return
        self.metrics.cache(False)
        asker = Asker(data, q, d, client, port, sink, addr)
        joined = self.coalescer.join(q.key, asker)
        if joined is Join.WAIT:  # the same question is already on its way upstream
            return
        if joined is Join.SHED:
            # Shed load rather than queue without bound when the upstreams are
            # slower than the clients (a dead upstream under a flood of misses).
            sink.send(rcode_reply(data, q, SERVFAIL), addr)
            self.metrics.query("servfail")
            return
        try:
            self.forward.begin(q, lambda result: self._settle(asker, result))
        except Exception:
            # Whatever went wrong, the question is settled (SERVFAIL) rather than left
            # in the coalescer, where every later asker of it would wait in vain.
            self._settle(asker, None)
            raise

    def _settle(self, asker: Asker, result: Forwarded | None) -> None:
        """The question is settled upstream: answer everyone who asked it meanwhile."""
        try:
            askers = self.coalescer.settle(asker.query.key, asker)
            if result is not None:
                self.metrics.cache_size(len(self.cache))
            for one in askers:
                self._answer(result, *one)
        finally:
            if not self.coalescer and self.idle is not None:
                self.idle.set()

    def _answer(self, result: Forwarded | None, data: bytes, q: Query, d: Decision, client: str,
                port: int, sink: Sink, addr: Any) -> None:
        if result is None:
            sink.send(rcode_reply(data, q, SERVFAIL), addr)
            self.telemetry.failed(d, q, client, port)
            return
        answer, info = result
        if info.cnames:
            judged = Verdicts.after_chain(self.holder.view.group(client), info.cnames, d, client)
            if isinstance(judged, ChainVerdict):
                self._send_chain_block(data, q, judged, client, port, sink, addr)
                return
            d = judged
        out = splice(answer, data, q.qend)
        sink.send(self._fit(out, q, data, addr is not None), addr)
        self.telemetry.forwarded(d, q, client, port, RCODE_NAMES.get(info.rcode, str(info.rcode)))

    # --- pieces ------------------------------------------------------------------

    def _local_reply(self, here: LocalAnswer, d: Decision, q: Query, data: bytes, client: str,
                     port: int, sink: Sink, addr: Any) -> None:
        out, response = here
        sink.send(self._fit(out, q, data, addr is not None), addr)
        self.telemetry.local(d, q, client, port, response)

    def _reply(self, asker: Asker, served: Served, out: bytes | bytearray, until: float, response: str,
               shared: bool) -> None:
        """Send an answer made from stored bytes, count and log it, and keep it
        in the hot table of the decision's group when the same query bytes
        would get the same bytes back from any client of that group
        (``shared``)."""
        data, q, d, client, port, sink, addr = asker
        sink.send(out, addr)
        tally = self.telemetry.tally(served, d, q, response)
        if tally is not None:
            self.telemetry.served(tally, client, port)
        if shared and addr is not None:
            self.ready.keep(data, out, until, tally, client, self.holder.view)

    def _send_chain_block(self, data: bytes, q: Query, chained: ChainVerdict, client: str, port: int,
                          sink: Sink, addr: Any) -> None:
        d, target = chained
        t = self._template(q, d, self.block, via=target)
        sink.send(self._fit(splice_parts(t.head, t.tail, data, q.qend), q, data, addr is not None), addr)
        self.telemetry.blocked_via(d, q, client, port, t.response, target)

    def _template(self, q: Query, d: Decision, kind: BlockResponse, via: str | None = None) -> BlockParts:
        """The block answer's template for this question and verdict (the asker's bytes go in it)."""
        # The EXTRA-TEXT names apps and phase, not the rule, so one template
        # serves every name of a 1,000,000-name list (the rule is in the event).
        canary = d.rule == CANARY_RULE
        key = (d.apps, d.phase, d.list_group, kind, template_qtype(q, kind), q.qclass, q.edns, via, canary)
        hit = self.templates.get(key)
        if hit is None:
            text = "egress-filter: DoH canary" if canary else self._ede_text(d, via)
            hit = self.templates.put(key, block_parts(q, kind, text))
        return hit

    def _ede_text(self, d: Decision, via: str | None) -> str:
        apps = self.holder.view.policy.apps
        names = ", ".join(f"{apps[a].name} ({a})" if a in apps else a for a in d.apps) or "-"
        text = f"egress-filter: blocked app {names}, phase {d.phase.value}"
        if d.list_group:
            text += f", opt-in group {d.list_group}"
        return text + (f", via CNAME {via}" if via else "")

    def _fit(self, out: bytes | bytearray, q: Query, query: bytes, udp: bool) -> bytes | bytearray:
        """A UDP answer larger than the asker accepts, or than ``max_udp_size``
        whatever it offers (so a 52-byte query cannot fetch a 64 KB answer at a
        spoofed address), goes out truncated (TC)."""
        n = len(out)
        if udp and n > CLASSIC_UDP and n > (min(q.udp_size, self.max_udp) if q.edns else CLASSIC_UDP):
            return truncated_reply(out, q, query)
        return out

    async def drain(self, timeout: float) -> None:
        """Stop taking queries and let the ones in flight finish."""
        self.closing = True
        self.ready.clear()
        if self.coalescer:
            self.idle = asyncio.Event()
            try:
                await asyncio.wait_for(self.idle.wait(), timeout)
            except TimeoutError:
                pass
