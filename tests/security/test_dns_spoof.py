"""Cache poisoning by an off-path spoofer (issue 8, high): forged answers race the real upstream.

The spoofer knows what any attacker knows: the upstream's address and port,
the names it makes the resolver ask (it sends the queries itself), and the
source ports the resolver used lately (the attacker's own authoritative
server sees them: here, probe queries seen by the test upstream).  It forges
answers from the upstream's address with raw sockets (``IPPROTO_RAW``, so
the source is whatever it writes) and sprays them at guessed ports and IDs
while the slow upstream (``Authority.delay``) holds the real answer back.
Before the fix (four fixed source ports, case-blind matching) the focused
sweep poisoned most attempts; now no attempt may succeed, and a second
client must never be served the forged record.

Then each check alone: a forgery right in every field but one is dropped and
counted under that one reason (``egress_dns_upstream_rejected``), and the
answer is the real one; a forgery right in every field is accepted, so the
others were judged, not missed.  Last, the scrubber: records outside the
question's CNAME chain and zone never reach the client.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import re
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import dns.message
import dns.rcode
import httpx
import pytest
from dnslib import QTYPE, RR, A, DNSHeader, DNSQuestion, DNSRecord

from tests.dns.authority import Authority
from tests.dns.conftest import OUTSIDER, REPO, ResolverProcess, addresses, policy_text, rcode
from tests.dns.conftest import authority as authority
from tests.dns.conftest import resolver as resolver
from tests.dns.conftest import write_policy as write_policy

Start = Callable[..., ResolverProcess]
Addr = tuple[str, int]
FORGED = "10.66.66.66"
EPHEMERAL = (32768, 60999)


def ip_udp(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4/UDP packet; the kernel fills in the IP checksum, UDP's is left out (0)."""
    total = 28 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, 17, 0,
                     socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
    return ip + struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def forged_answer(name: str, qid: int = 0) -> bytes:
    rec = DNSRecord(DNSHeader(id=qid, qr=1, aa=1, rd=1, ra=1), q=DNSQuestion(name, QTYPE.A))
    rec.add_answer(RR(name, QTYPE.A, rdata=A(FORGED), ttl=3600))
    return bytes(rec.pack())


class Raid(NamedTuple):
    upstream: tuple[str, int]
    names: tuple[str, ...]
    ports: tuple[int, ...]  # ports seen lately at the attacker's server
    sweep: bool  # every ID on every learned port (focused), or random ports and IDs (flood)
    seconds: float


def spoofer(raid: Raid, ready: Any, sent: Any) -> None:
    """Forge answers for ``raid.seconds`` (a separate process, so the client keeps its core)."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    bodies = [forged_answer(n.lower())[2:] for n in raid.names]
    rng = random.Random(os.urandom(8))
    dst = "127.0.0.1"
    n = 0
    ready.set()
    deadline = time.monotonic() + raid.seconds
    try:
        if raid.sweep:
            body = bodies[0]
            heads = [ip_udp(raid.upstream, (dst, p), bytes(2) + body)[:28] for p in raid.ports]
            for qid in rng.sample(range(65536), 65536):
                if n & 255 == 0 and time.monotonic() > deadline:
                    break
                tail = qid.to_bytes(2, "big") + body
                for head in heads:
                    raw.sendto(head + tail, (dst, 0))
                    n += 1
        else:
            while time.monotonic() < deadline:
                for _ in range(256):
                    body = rng.choice(bodies)
                    learned = raid.ports and rng.random() < 0.5
                    port = rng.choice(raid.ports) if learned else rng.randint(*EPHEMERAL)
                    raw.sendto(ip_udp(raid.upstream, (dst, port), rng.randbytes(2) + body), (dst, 0))
                    n += 1
    finally:
        sent.value = n
        raw.close()


def ask_all(r: ResolverProcess, names: list[str], source: str, timeout: float
            ) -> dict[str, dns.message.Message]:
    """Ask every name at once from one socket; the answers by name (bounded by ``timeout``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        ids: dict[int, str] = {}
        for i, name in enumerate(names):
            q = dns.message.make_query(name, "A")
            q.id = i
            ids[i] = name
            sock.sendto(q.to_wire(), (r.host, r.port))
        got: dict[str, dns.message.Message] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(names) and time.monotonic() < deadline:
            if not select.select([sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                break
            data, addr = sock.recvfrom(65535)
            if addr != (r.host, r.port):  # the spray reaches the client's port too
                continue
            msg = dns.message.from_wire(data)
            got[ids[msg.id]] = msg
        return got


def learned_ports(authority: Authority, r: ResolverProcess, tag: str, probes: int) -> tuple[int, ...]:
    """The source ports the resolver used for a few fresh names, as the attacker's server sees them."""
    ask_all(r, [f"probe{i}-{tag}.example.test" for i in range(probes)], "127.0.0.1", 3.0)
    return tuple(sorted({addr[1] for addr, data in list(authority.seen)
                         if f"-{tag}." in str(DNSRecord.parse(data).q.qname).lower()}))


def poisoned(msg: dns.message.Message | None) -> bool:
    return msg is not None and FORGED in addresses(msg)


def race(workdir: Path, attempts: int, batch: int, sweep: bool, delay: float) -> dict[str, Any]:
    """The whole race, in a network namespace of its own (``main``): a resolver, a slow
    upstream, a spoofer per batch, and two clients asking every name."""
    policy = workdir / "policy.yaml"
    policy.write_text(policy_text(), encoding="utf-8")
    authority = Authority()
    r = ResolverProcess(["--policy", str(policy), "--upstream", authority.address, "--timeout", "4"], workdir)
    ctx = multiprocessing.get_context("fork")
    hits, sent_total, answered = 0, 0, 0
    started = time.monotonic()
    try:
        for b in range(0, attempts, batch):
            authority.delay = 0.0
            ports = learned_ports(authority, r, f"b{b}", 16)
            names = [f"n{i}-{os.urandom(3).hex()}.spoof.example.test" for i in range(b, b + batch)]
            authority.delay = delay
            ready, sent = ctx.Event(), ctx.Value("q", 0)
            raid = Raid(("127.0.0.1", authority.port), tuple(names), ports, sweep, delay)
            proc = ctx.Process(target=spoofer, args=(raid, ready, sent))
            proc.start()
            try:
                if not ready.wait(10):
                    raise RuntimeError("the spoofer did not start")
                first = ask_all(r, names, "127.0.0.1", delay + 3.0)
            finally:
                proc.join(delay + 10)
                if proc.is_alive():
                    proc.kill()  # SIGKILL to its PID
                    proc.join(5)
            sent_total += sent.value
            # The second client is served from the cache: the forged record must not be there either.
            authority.delay = 0.0
            second = ask_all(r, names, OUTSIDER, 3.0)
            hits += sum(poisoned(first.get(n)) or poisoned(second.get(n)) for n in names)
            answered += sum(1 for n in names if n in first and rcode(first[n]) == "NXDOMAIN"
                            and n in second and rcode(second[n]) == "NXDOMAIN")
    finally:
        r.stop()
        authority.stop()
    return {"hits": hits, "answered": answered, "sent": sent_total, "seconds": time.monotonic() - started}


# (attempts, names per batch, spoofer strategy, upstream delay in seconds, minimum forgeries sent)
RACES = [
    pytest.param(1000, 250, False, 0.6, 10_000, id="flood-1000-names"),
    pytest.param(8, 1, True, 1.5, 40_000, id="focused-sweep-of-learned-ports"),
]


@pytest.mark.parametrize(("attempts", "batch", "sweep", "delay", "min_sent"), RACES)
def test_spoofer_race_never_poisons(tmp_path: Path, attempts: int, batch: int, sweep: bool, delay: float,
                                    min_sent: int) -> None:
    # A namespace of its own: forgeries sprayed at random loopback ports must not reach other programs.
    cmd = (f"ip link set lo up && exec {sys.executable} -m tests.security.test_dns_spoof {tmp_path} "
           f"{attempts} {batch} {int(sweep)} {delay}")
    done = subprocess.run(["unshare", "--net", "sh", "-c", cmd], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["hits"] == 0, f"{result['hits']} of {attempts} attempts poisoned the cache"
    assert result["answered"] == attempts, "every name got the real answer (NXDOMAIN), first and second time"
    assert result["sent"] >= min_sent, f"the spoofer sent only {result['sent']} forgeries"
    assert result["seconds"] < 60


# Each check alone: (forgery, reason it is dropped under, or None when it must be accepted).
def wrong_port(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return (up[0], up[1] + 1), forged_answer(str(query.q.qname), query.header.id)


def wrong_address(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return ("127.0.0.2", up[1]), forged_answer(str(query.q.qname), query.header.id)


def wrong_id(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return up, forged_answer(str(query.q.qname), query.header.id ^ 0x5A5A)


def wrong_case(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return up, forged_answer(str(query.q.qname).swapcase(), query.header.id)


def wrong_name(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return up, forged_answer("www.bank.test", query.header.id)


def all_right(addr: Addr, up: Addr, query: DNSRecord) -> tuple[Addr, bytes]:
    return up, forged_answer(str(query.q.qname), query.header.id)


Forgery = Callable[[tuple[str, int], tuple[str, int], DNSRecord], tuple[Addr, bytes]]
CHECKS = [
    pytest.param(wrong_port, "port", id="wrong-source-port"),
    pytest.param(wrong_address, "address", id="wrong-source-address"),
    pytest.param(wrong_id, "id", id="wrong-id"),
    pytest.param(wrong_case, "case", id="wrong-0x20-case"),
    pytest.param(wrong_name, "question", id="wrong-question"),
    pytest.param(all_right, None, id="control-right-in-every-field-is-accepted"),
]
REJECTED = re.compile(r'^egress_dns_upstream_rejected_total\{reason="([a-z-]+)"\} ([0-9.]+)$', re.M)


def rejected(r: ResolverProcess) -> dict[str, float]:
    assert r.metrics_url
    return {k: float(v) for k, v in REJECTED.findall(httpx.get(r.metrics_url, timeout=5).text)}


@pytest.mark.parametrize(("forgery", "reason"), CHECKS)
def test_each_check_drops_and_counts(resolver: Start, authority: Authority,
                                     write_policy: Callable[..., Path],
                                     forgery: Forgery, reason: str | None) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--metrics", "127.0.0.1:0")
    # Warm-up: the upstream echoes the mixed-case name, so from now on its case is checked.
    assert rcode(r.ask("warm-up-the-case-check.example.test")) == "NXDOMAIN"
    raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    up = ("127.0.0.1", authority.port)

    def forge(addr: tuple[str, int], data: bytes, real: bytes | None) -> None:
        query = DNSRecord.parse(data)
        if str(query.q.qname).lower().startswith("www.example.test"):
            src, payload = forgery(addr, up, query)
            raw.sendto(ip_udp(src, addr, payload), (addr[0], 0))

    authority.delay = 0.3  # the real answer comes after the forgery
    authority.forge = forge
    try:
        msg = r.ask("www.example.test")
    finally:
        authority.forge = None
        raw.close()
    if reason is None:
        assert addresses(msg) == [FORGED], "a forgery right in every field wins the race"
        assert rejected(r) == {}
    else:
        assert addresses(msg) == ["192.0.2.1"]
        assert rejected(r) == {reason: 1.0}
        assert addresses(r.ask("www.example.test", source=OUTSIDER)) == ["192.0.2.1"], "the cache is clean"


# 0x20 and upstreams that do not keep case: (keeps case at first, then, rcodes of five questions
# asked one after the other with a 0.5 s budget, "case" rejections counted).
CASE_UPSTREAMS = [
    pytest.param(False, False, ["NXDOMAIN"] * 5, 0.0, id="never-keeps-case-not-penalised"),
    pytest.param(True, True, ["NXDOMAIN"] * 5, 0.0, id="keeps-case-all-along"),
    pytest.param(True, False, ["SERVFAIL"] * 3 + ["NXDOMAIN"] * 2, 3.0,
                 id="stops-keeping-case-held-to-it-three-times-then-not"),
]


@pytest.mark.parametrize(("before", "after", "want", "case_rejects"), CASE_UPSTREAMS)
def test_upstream_case_keeping_is_learned(resolver: Start, authority: Authority,
                                          write_policy: Callable[..., Path], before: bool, after: bool,
                                          want: list[str], case_rejects: float) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--metrics", "127.0.0.1:0",
                 "--timeout", "0.5")
    authority.lower_case = not before
    assert rcode(r.ask("first-question.example.test")) == "NXDOMAIN"
    authority.lower_case = not after
    got = [rcode(r.ask(f"question{i}.example.test", timeout=3)) for i in range(5)]
    assert got == want
    assert rejected(r).get("case", 0.0) == case_rejects


# The scrubber: (name, the answer's records, authority, additional, records counted as scrubbed).
SCRUB = [
    pytest.param("stuffed.example.test", ["stuffed.example.test. 300 IN A 192.0.2.9"], [], [],
                 {"scrubbed-answer": 2.0}, id="answer-records-off-the-cname-chain"),
    pytest.param("glue.example.test", ["glue.example.test. 300 IN A 192.0.2.10"],
                 ["example.test. 300 IN NS ns1.example.test.", "example.test. 300 IN NS ns.bank.test."],
                 ["ns1.example.test. 300 IN A 192.0.2.53"],
                 {"scrubbed-authority": 2.0, "scrubbed-additional": 2.0},
                 id="out-of-bailiwick-authority-and-additional"),
    pytest.param("fine.example.test", ["fine.example.test. 300 IN CNAME www.example.test.",
                                       "www.example.test. 300 IN A 192.0.2.1"], [], [], {},
                 id="cname-chain-kept-whole"),
]


def lines(section: list[Any]) -> list[str]:
    return sorted(line for rrset in section for line in rrset.to_text().splitlines())


@pytest.mark.parametrize(("name", "answer", "authority_rrs", "additional", "counted"), SCRUB)
def test_scrubber_removes_what_the_question_did_not_ask(
        resolver: Start, authority: Authority, write_policy: Callable[..., Path],
        name: str, answer: list[str], authority_rrs: list[str], additional: list[str],
        counted: dict[str, float]) -> None:
    r = resolver("--policy", str(write_policy()), "--upstream", authority.address, "--metrics", "127.0.0.1:0")
    for _ in range(2):  # forwarded, then from the cache
        msg = r.ask(name)
        assert rcode(msg) == "NOERROR"
        assert lines(msg.answer) == sorted(answer)
        assert lines(msg.authority) == sorted(authority_rrs)
        assert lines(msg.additional) == sorted(additional)
    assert authority.count(name) == 1
    assert rejected(r) == counted


if __name__ == "__main__":
    out = race(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5]))
    print(json.dumps(out))
