"""A phase change (the clock crossing a schedule date) changes the verdicts at once, while
the upstreams' answers stay cached.

The clock cannot be moved inside a separate process, so this test runs
``dns_blocker.server.serve`` on its own event loop in a thread, with a
``PolicyHolder`` on a clock the test controls, and talks to it over real
sockets on loopback like every other test.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import threading
from collections.abc import Callable
from pathlib import Path

import dns.message
import dns.query
import pytest

from dns_blocker.metrics import NullMetrics
from dns_blocker.server import serve
from policies import DnsSettings
from runtime.eventlog import EventLog
from runtime.holder import PolicyHolder

from .authority import Authority
from .conftest import addresses, ede, rcode

pytestmark = pytest.mark.e2e


def test_phase_change_blocks_and_keeps_answers(authority: Authority, write_policy: Callable[..., Path],
                                         tmp_path: Path) -> None:
    now = [dt.datetime(2020, 11, 1, 12, tzinfo=dt.UTC)]  # TikTok: 'downloads'
    holder = PolicyHolder(write_policy(), clock=lambda: now[0])
    settings = DnsSettings(listen=("127.0.0.1:0",), upstreams=(authority.address,))
    events = EventLog(str(tmp_path / "events.jsonl"))
    lines: list[str] = []
    ready = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        async def main() -> int:
            box["loop"] = asyncio.get_running_loop()
            box["stop"] = stop = asyncio.Event()

            def announce(line: str) -> None:
                lines.append(line)
                if "ready" in line:
                    ready.set()

            return await serve(settings, holder, events, NullMetrics(), reload_interval=3600,
                               announce=announce, stop=stop)
        box["code"] = asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert ready.wait(10), lines
        port = int(re.search(r":(\d+) \(udp", lines[0]).group(1))  # type: ignore[union-attr]

        def ask(name: str) -> dns.message.Message:
            query = dns.message.make_query(name, "A", use_edns=0)
            return dns.query.udp(query, "127.0.0.1", port=port, timeout=3)

        assert addresses(ask("www.tiktok.test")) == ["192.0.2.66"]  # logged, resolved
        ask("www.example.test")
        ask("www.example.test")
        assert authority.count("www.example.test") == 1

        now[0] = dt.datetime(2020, 11, 12, 0, 1, tzinfo=dt.UTC)  # the 'full' date
        assert holder.refresh() is True
        blocked = ask("www.tiktok.test")
        assert rcode(blocked) == "NXDOMAIN"
        assert "phase full" in ede(blocked)[0][1]
        ask("www.example.test")
        # The verdict changed although the name's answer was cached; the answers
        # themselves outlive the change, so no upstream storm follows it.
        assert authority.count("www.example.test") == 1, "the phase change kept the upstream answers"
    finally:
        loop = box.get("loop")
        if isinstance(loop, asyncio.AbstractEventLoop):
            stop = box["stop"]
            assert isinstance(stop, asyncio.Event)
            loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        events.close()
    assert box.get("code") == 0
    actions = [line for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert len(actions) == 2 and '"action":"log"' in actions[0] and '"action":"block"' in actions[1]
