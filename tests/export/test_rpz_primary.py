"""``egress-filter dns --rpz`` as the primary of real secondaries, on loopback.

Our resolver runs as a subprocess on a free loopback port with the export
tests' policy (cases.py) on FULL_DAY; Unbound (``rpz:`` with ``primary:``)
and BIND 9 (a ``type secondary`` zone named in ``response-policy``, with
TSIG) transfer its zone, answer NXDOMAIN for a blocked name and forward an
allowed one to the catch-all loopback upstream.  Then the policy is edited
and our resolver gets SIGHUP: its NOTIFY must bring each engine to the new
verdict within NOTIFY_DEADLINE.  The access rules are one table, asked with
dnspython from 127.0.0.1 and 127.0.0.2; each refusal is one event.
Every process is stopped by PID.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.opcode
import dns.query
import dns.rcode
import dns.rdatatype
import dns.tsigkeyring
import dns.xfr
import dns.zone
import pytest

from policies.export import zone_name

from . import cases
from .test_engines import Engine, ask, free_port, unbound_conf
from .upstream import UPSTREAM_A, CatchAll

NOTIFY_DEADLINE = 10.0
ZONE = zone_name("default") + "."
KEY_NAME = "xfr-key."
SECRET = base64.b64encode(bytes(range(32))).decode()
KEY = f"{KEY_NAME}:hmac-sha256:{SECRET}"
WRONG = base64.b64encode(bytes(range(1, 33))).decode()
FRESH = "fresh.test"  # allowed at first; the edit adds it to the chat app's domains


@pytest.fixture(scope="module")
def upstream() -> Iterator[CatchAll]:
    server = CatchAll()
    yield server
    server.stop()


def write_policy(path: Path, edited: bool) -> Path:
    text = cases.POLICY
    if edited:
        text = text.replace("domains: [chat.test]", f"domains: [chat.test, {FRESH}]")
        assert FRESH in text
    path.write_text(text)
    return path


def start_primary(tmp: Path, up: int, *flags: str, policy: Path | None = None) -> Engine:
    port = free_port()
    policy = policy or write_policy(tmp / "policy.yaml", edited=False)
    argv = [sys.executable, "-m", "egress_filter.cli", "dns", "--policy", str(policy),
            "--at", cases.FULL_DAY.isoformat(), "--listen", f"127.0.0.1:{port}",
            "--upstream", f"127.0.0.1:{up}", "--log", str(tmp / "events.jsonl"), "--rpz",
            "--reload-interval", "3600", *flags]
    return Engine(argv, port, tmp / "primary.log")


def until(deadline: float, check: object, what: str, log: Path | None = None) -> None:
    end = time.monotonic() + deadline
    last = None
    while time.monotonic() < end:
        last = check()  # type: ignore[operator]
        if last is True:
            return
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log is not None else ""
    raise AssertionError(f"{what} not within {deadline} s (last: {last})\n{tail}")


def events(tmp: Path) -> list[dict[str, object]]:
    path = tmp / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def transfer_events(tmp: Path) -> list[dict[str, object]]:
    return [e for e in events(tmp) if str(e["event"]["action"]).startswith("zone-transfer")]  # type: ignore[index]


def edit_and_hup(tmp: Path, primary: Engine) -> None:
    write_policy(tmp / "policy.yaml", edited=True)
    os.kill(primary.proc.pid, signal.SIGHUP)


# --- the access table ---------------------------------------------------------

def xfr(port: int, source: str, key: str | None, rdtype: str = "AXFR",
        udp: bool = False) -> dns.message.Message:
    """The first message of the answer to one transfer query."""
    q = dns.message.make_query(ZONE, rdtype)
    if key is not None:
        q.use_tsig(dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", key)}), KEY_NAME)
    if udp:
        return dns.query.udp(q, "127.0.0.1", port=port, source=source, timeout=3)
    return dns.query.tcp(q, "127.0.0.1", port=port, source=source, timeout=3)


ACCESS = [
    # (id, source, key, over udp, rcode, event reason or None when allowed)
    pytest.param("127.0.0.1", SECRET, False, "NOERROR", None, id="signed-from-allowed"),
    pytest.param("127.0.0.2", SECRET, False, "REFUSED", "source not in rpz_allow",
                 id="signed-from-elsewhere"),
    pytest.param("127.0.0.2", None, False, "REFUSED",
                 "not signed with the TSIG key (and source not in rpz_allow_unsigned)",
                 id="unsigned-from-elsewhere"),
    pytest.param("127.0.0.3", None, False, "NOERROR", None, id="unsigned-from-allowed-unsigned"),
    pytest.param("127.0.0.1", SECRET, True, "REFUSED", "zone transfers are served over TCP only",
                 id="over-udp"),
    pytest.param("127.0.0.1", WRONG, False, "NOTAUTH", "bad TSIG: BadSignature", id="wrong-secret"),
]


@pytest.fixture(scope="module")
def access_primary(tmp_path_factory: pytest.TempPathFactory,
                   upstream: CatchAll) -> Iterator[tuple[Engine, Path]]:
    tmp = tmp_path_factory.mktemp("access")
    primary = start_primary(tmp, upstream.port, "--rpz-allow", "127.0.0.1/32", "--rpz-allow-unsigned",
                            "127.0.0.3/32", "--tsig-key", KEY, "--acl", "127.0.0.1/32")
    yield primary, tmp
    primary.stop()


@pytest.mark.parametrize(("source", "key", "udp", "rcode", "reason"), ACCESS)
def test_transfer_access(access_primary: tuple[Engine, Path], source: str, key: str | None, udp: bool,
                         rcode: str, reason: str | None) -> None:
    primary, tmp = access_primary
    before = len(transfer_events(tmp))
    if rcode == "NOTAUTH":
        # dnspython refuses the unsigned NOTAUTH answer to a signed query; read the raw reply.
        q = dns.message.make_query(ZONE, "AXFR")
        q.use_tsig(dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", key)}), KEY_NAME)
        with socket.create_connection(("127.0.0.1", primary.port), timeout=3,
                                      source_address=(source, 0)) as s:
            w = q.to_wire()
            s.sendall(len(w).to_bytes(2, "big") + w)
            n = int.from_bytes(s.recv(2), "big")
            raw = s.recv(n)
        assert raw[3] & 0x0F == dns.rcode.NOTAUTH
    else:
        r = xfr(primary.port, source, key, udp=udp)
        assert dns.rcode.to_text(r.rcode()) == rcode
        if rcode == "NOERROR":
            assert r.answer[0].rdtype == dns.rdatatype.SOA
    until(5, lambda: len(transfer_events(tmp)) == before + 1, "one transfer event", primary.log)
    ev = transfer_events(tmp)[-1]
    assert ev["source"]["ip"] == source  # type: ignore[index]
    if reason is None:
        assert ev["event"]["action"] == "zone-transfer"  # type: ignore[index]
    else:
        assert ev["event"]["action"] == "zone-transfer-refused"  # type: ignore[index]
        assert ev["event"]["reason"] == reason  # type: ignore[index]
        assert ev["event"]["outcome"] == "failure"  # type: ignore[index]
        assert ev["ecs"]["version"]  # type: ignore[index]


@pytest.mark.parametrize(("source", "rcode"), [
    pytest.param("127.0.0.1", "NOERROR", id="resolver-client"),
    pytest.param("127.0.0.2", "REFUSED", id="neither-client-nor-transfer-source"),
    pytest.param("127.0.0.3", "NOERROR", id="transfer-source-only"),
])
def test_soa_goes_to_clients_and_transfer_sources(access_primary: tuple[Engine, Path], source: str,
                                                  rcode: str) -> None:
    primary, _ = access_primary
    r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=primary.port, source=source,
                      timeout=3)
    assert dns.rcode.to_text(r.rcode()) == rcode
    assert len(r.answer) == (1 if rcode == "NOERROR" else 0)


def test_soa_on_udp_and_full_axfr_is_the_export(access_primary: tuple[Engine, Path]) -> None:
    """SOA over UDP from anyone the resolver serves; the AXFR holds exactly the export's records."""
    primary, _ = access_primary
    r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=primary.port, timeout=3)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & 0x0400  # authoritative
    ns = dns.query.udp(dns.message.make_query(ZONE, "NS"), "127.0.0.1", port=primary.port, timeout=3)
    assert [(rr.name.to_text(), rd.to_text()) for rr in ns.answer for rd in rr] == [(ZONE, "localhost.")]
    keyring = dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", SECRET)})
    zone = dns.zone.Zone(ZONE)
    dns.query.inbound_xfr("127.0.0.1", zone, port=primary.port, timeout=5, lifetime=10,
                          query=_signed_query("AXFR", keyring))
    from policies.export import rpz_zone
    want = rpz_zone(cases.policy(), at=cases.FULL_DAY)
    got = {(n.to_text(), rd.target.to_text()) for n, node in zone.nodes.items()
           for rds in node.rdatasets if rds.rdtype == 5 for rd in rds}
    assert got == {(rec.owner, rec.rdata) for rec in want.records() if rec.rtype == "CNAME"}
    assert zone.get_soa().serial == r.answer[0][0].serial == want.serial


def _signed_query(rdtype: str, keyring: Any) -> dns.message.Message:
    q = dns.message.make_query(ZONE, rdtype)
    q.use_tsig(keyring, KEY_NAME)
    return q


def test_ixfr_after_an_edit_sends_only_the_difference(tmp_path: Path, upstream: CatchAll) -> None:
    primary = start_primary(tmp_path, upstream.port, "--tsig-key", KEY)
    try:
        keyring = dns.tsigkeyring.from_text({KEY_NAME: ("hmac-sha256", SECRET)})
        soa = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=primary.port, timeout=3)
        old = soa.answer[0][0].serial
        edit_and_hup(tmp_path, primary)

        def new_serial() -> bool:
            r = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=primary.port, timeout=3)
            return bool(r.answer[0][0].serial != old)

        until(10, new_serial, "a new serial", primary.log)
        q = dns.message.make_query(ZONE, "IXFR")
        q.authority.append(dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {old} 0 0 0 0"))
        q.use_tsig(keyring, KEY_NAME)
        answers = list(_all_messages(q, primary.port, keyring))
        rrs = [(rr.name.to_text(), rd.to_text()) for m in answers for rr in m.answer for rd in rr]
        types = [rr.rdtype for m in answers for rr in m.answer]
        # SOA new, SOA old, (nothing removed), SOA new, the two added records, SOA new
        assert types == [6, 6, 6, 5, 5, 6]
        assert rrs[3:5] == [(f"{FRESH}.{ZONE}", "."), (f"*.{FRESH}.{ZONE}", ".")]
    finally:
        primary.stop()


def _all_messages(q: dns.message.Message, port: int, keyring: Any) -> Iterator[dns.message.Message]:
    """Every message of a transfer answer, TSIG of each checked by dnspython."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        w = q.to_wire()
        s.sendall(len(w).to_bytes(2, "big") + w)
        ctx = None
        soas = 0
        first = True
        for _ in range(100):
            n = int.from_bytes(_recv(s, 2), "big")
            m = dns.message.from_wire(_recv(s, n), keyring=keyring, request_mac=q.mac, xfr=True,
                                      origin=None, tsig_ctx=ctx, multi=not first, one_rr_per_rrset=True)
            first = False
            ctx = m.tsig_ctx
            yield m
            soas += sum(1 for rr in m.answer if rr.rdtype == 6)
            if soas >= 4:  # one difference sequence: SOA new, SOA old, SOA new, SOA new
                return


def _recv(s: object, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))  # type: ignore[attr-defined]
        if not chunk:
            raise AssertionError("connection closed mid-message")
        buf += chunk
    return buf


def test_transfers_over_the_cap_are_refused(tmp_path: Path, upstream: CatchAll) -> None:
    """With --rpz-transfers 1, a secondary that asks and never reads holds the one slot
    (its transfer waits on the connection's buffer: 10,000 names are 1 MB of zone);
    the next asker gets REFUSED and one event; once the first hangs up the slot is free."""
    from bench import policy_bench

    saved = policy_bench.OUT
    policy_bench.OUT = tmp_path / "big"
    try:
        policy_bench.generate(10_000, 1)
    finally:
        policy_bench.OUT = saved
    primary = start_primary(tmp_path, upstream.port, "--rpz-transfers", "1", "--rpz-allow-unsigned",
                            "127.0.0.1/32", policy=tmp_path / "big" / "policy.yaml")
    try:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", primary.port))
        w = dns.message.make_query(ZONE, "AXFR").to_wire()
        stalled.sendall(len(w).to_bytes(2, "big") + w)
        until(5, lambda: len(transfer_events(tmp_path)) == 1, "the first transfer", primary.log)
        r = xfr(primary.port, "127.0.0.1", None)
        assert dns.rcode.to_text(r.rcode()) == "REFUSED"
        until(5, lambda: len(transfer_events(tmp_path)) == 2, "the refusal's event", primary.log)
        ev = transfer_events(tmp_path)[-1]
        assert (ev["event"]["action"], ev["event"]["reason"]) == (  # type: ignore[index]
            "zone-transfer-refused", "rpz_transfers: 1 already running")
        stalled.close()

        def free_again() -> bool:
            return dns.rcode.to_text(xfr(primary.port, "127.0.0.1", None).rcode()) == "NOERROR"

        until(10, free_again, "the slot freed after the stalled secondary hung up", primary.log)
    finally:
        primary.stop()


def test_phase_change_at_midnight_sends_notify(tmp_path: Path) -> None:
    """The clock cannot be moved inside another process: the holder runs here on
    a clock the test sets, and a real UDP socket stands for the secondary.
    Crossing into a day with no phase change sends nothing; crossing into
    2020-02-01 (chat: downloads -> full) sends a NOTIFY with the new serial."""
    import asyncio
    import datetime as dt

    from dns_blocker.config import merge
    from dns_blocker.rpz import RpzPrimary
    from runtime.holder import PolicyHolder

    now = [dt.datetime(2020, 1, 30, 12, tzinfo=dt.UTC)]
    holder = PolicyHolder(write_policy(tmp_path / "policy.yaml", edited=False), clock=lambda: now[0])
    target = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target.bind(("127.0.0.1", 0))
    target.settimeout(0.5)
    settings = merge(holder.policy.settings.dns, {}, {"rpz": True, "rpz_notify": (
        f"127.0.0.1:{target.getsockname()[1]}",)})

    class NoEvents:
        enabled = False

    lines: list[str] = []

    def received(seconds: float) -> list[dns.message.Message]:
        got = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                data, addr = target.recvfrom(4096)
            except TimeoutError:
                continue
            m = dns.message.from_wire(data)
            got.append(m)
            target.sendto(dns.message.make_response(m).to_wire(), addr)
        return got

    async def main() -> tuple[int, int, list[dns.message.Message], list[dns.message.Message]]:
        primary = RpzPrimary(settings, holder, NoEvents(), lines.append)
        primary.attach(asyncio.get_running_loop())
        before = primary.zones[ZONE].current.serial
        now[0] = dt.datetime(2020, 1, 31, 12, tzinfo=dt.UTC)
        holder.refresh()  # same phases: no notice
        quiet = await asyncio.to_thread(received, 1.0)
        now[0] = dt.datetime(2020, 2, 1, 0, 0, 1, tzinfo=dt.UTC)
        holder.refresh()
        loud = await asyncio.to_thread(received, 3.0)
        after = primary.zones[ZONE].current.serial
        await primary.close()
        return before, after, quiet, loud

    try:
        before, after, quiet, loud = asyncio.run(asyncio.wait_for(main(), 30))
    finally:
        target.close()
    assert quiet == []
    assert after != before
    notifies = {(m.opcode(), m.question[0].name.to_text(), m.answer[0][0].serial) for m in loud}
    assert (dns.opcode.NOTIFY, ZONE, after) in notifies
    assert f"egress-filter dns: rpz: {ZONE} serial {after} (phase)" in lines


# --- the engines ------------------------------------------------------------------

def test_unbound_secondary_follows_notify(tmp_path: Path, upstream: CatchAll) -> None:
    # Unbound 1.17 (Debian 12) cannot sign transfers: its source is allowed unsigned.
    uport = free_port()
    primary = start_primary(tmp_path, upstream.port, "--rpz-allow-unsigned", "127.0.0.1/32",
                            "--rpz-notify", f"127.0.0.1:{uport}")
    try:
        body = f"""rpz:
    name: "{ZONE}"
    primary: 127.0.0.1@{primary.port}
    allow-notify: 127.0.0.1
    zonefile: "{tmp_path / 'unbound-rpz.zone'}"
    rpz-log: yes
server:"""
        engine = Engine(unbound_conf(tmp_path, uport, upstream.port, body, "respip iterator"), uport,
                        tmp_path / "unbound.log")
        try:
            _follows(tmp_path, primary, engine, signed=False)
        finally:
            engine.stop()
    finally:
        primary.stop()


def bind_secondary(tmp: Path, bport: int, up: int, primary_port: int) -> Engine:
    """BIND 9 as a TSIG-signed secondary of our zone, named in its response-policy
    (min-update-interval 0: BIND otherwise applies a new RPZ version at most once a minute)."""
    conf = tmp / "named.conf"
    conf.write_text(f"""key "{KEY_NAME}" {{ algorithm hmac-sha256; secret "{SECRET}"; }};
options {{
    directory "{tmp}";
    listen-on port {bport} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    pid-file none;
    recursion yes;
    allow-query {{ 127.0.0.0/8; }};
    forwarders {{ 127.0.0.1 port {up}; }};
    forward only;
    dnssec-validation no;
    max-cache-ttl 1;
    max-ncache-ttl 1;
    response-policy {{ zone "{ZONE.rstrip('.')}" log yes min-update-interval 0; }};
}};
controls {{ }};
zone "{ZONE.rstrip('.')}" {{
    type secondary;
    primaries {{ 127.0.0.1 port {primary_port} key "{KEY_NAME}"; }};
    file "secondary.db";
    allow-notify {{ 127.0.0.1; }};
}};
""")
    check = subprocess.run(["named-checkconf", str(conf)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    return Engine(["named", "-g", "-c", str(conf), "-n", "1"], bport, tmp / "named.log")


def test_bind_secondary_with_tsig_follows_notify(tmp_path: Path, upstream: CatchAll) -> None:
    bport = free_port()
    primary = start_primary(tmp_path, upstream.port, "--tsig-key", KEY, "--rpz-notify", f"127.0.0.1:{bport}")
    try:
        engine = bind_secondary(tmp_path, bport, upstream.port, primary.port)
        try:
            _follows(tmp_path, primary, engine, signed=True)
            # The edit came as an IXFR: SOA, SOA old, SOA new, the 2 added records, SOA.
            assert "Transfer completed: 1 messages, 6 records" in engine.log.read_text()
            # dig, as an operator would check: with the key the zone comes, without it REFUSED.
            signed = subprocess.run(["dig", "-y", f"hmac-sha256:{KEY_NAME}:{SECRET}", "-p", str(primary.port),
                                     "@127.0.0.1", ZONE, "AXFR"], capture_output=True, text=True, timeout=20)
            assert f"*.{FRESH}.{ZONE}" in signed.stdout, signed.stdout
            assert "Transfer failed." not in signed.stdout, signed.stdout
            unsigned = subprocess.run(["dig", "-p", str(primary.port), "@127.0.0.1", ZONE, "AXFR"],
                                      capture_output=True, text=True, timeout=20)
            assert "Transfer failed." in unsigned.stdout and FRESH not in unsigned.stdout, unsigned.stdout
        finally:
            engine.stop()
    finally:
        primary.stop()


def _follows(tmp: Path, primary: Engine, engine: Engine, signed: bool) -> None:
    log = engine.log
    until(15, lambda: ask(engine.port, "video.test") == "blocked",
          "the transferred zone blocking video.test", log)
    assert ask(engine.port, "www.chat.test") == "blocked"
    assert ask(engine.port, "ok.video.test") == UPSTREAM_A  # allow-listed below a blocked domain
    assert ask(engine.port, FRESH) == UPSTREAM_A
    for builtin in ("use-application-dns.net", "dns.google", "mask.icloud.com"):  # transferred builtin: rules
        assert ask(engine.port, builtin) == "blocked", builtin
    edit_and_hup(tmp, primary)
    until(NOTIFY_DEADLINE, lambda: ask(engine.port, FRESH) == "blocked",
          f"{FRESH} blocked after the edit and NOTIFY", log)
    assert ask(engine.port, f"www.{FRESH}") == "blocked"
    assert ask(engine.port, "ok.video.test") == UPSTREAM_A
    assert "no answer to NOTIFY" not in primary.log.read_text()
    transfers = transfer_events(tmp)
    assert transfers, "no transfer was logged"
    assert {(e["event"]["action"], e["egress"]["rpz"]["signed"]) for e in transfers} == {  # type: ignore[index]
        ("zone-transfer", signed)}


def test_powerdns_recursor_secondary_with_tsig_follows(tmp_path: Path, upstream: CatchAll) -> None:
    """PowerDNS Recursor 4.8 (Debian 12) does not act on a NOTIFY for an RPZ:
    it asks for IXFR deltas every ``refresh`` seconds (here 1), so the edit
    reaches it by the SOA poll instead."""
    pport = free_port()
    primary = start_primary(tmp_path, upstream.port, "--tsig-key", KEY)
    try:
        lua = tmp_path / "rpz.lua"
        lua.write_text(f'rpzPrimary("127.0.0.1:{primary.port}", "{ZONE}", {{refresh=1, '
                       f'tsigname="{KEY_NAME}", tsigalgo="hmac-sha256", tsigsecret="{SECRET}"}})\n')
        (tmp_path / "recursor.conf").write_text(f"""local-address=127.0.0.1
local-port={pport}
forward-zones-recurse=.=127.0.0.1:{upstream.port}
lua-config-file={lua}
socket-dir={tmp_path}
daemon=no
write-pid=no
disable-syslog=yes
dnssec=off
dont-query=
max-cache-ttl=1
disable-packetcache=yes
threads=1
loglevel=6
""")
        engine = Engine(["pdns_recursor", f"--config-dir={tmp_path}"], pport, tmp_path / "pdns.log")
        try:
            _follows(tmp_path, primary, engine, signed=True)
        finally:
            engine.stop()
    finally:
        primary.stop()
