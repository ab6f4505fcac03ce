"""mitmproxy flow files (``mitmdump -w``) → sightings.

Flow: ``mitmproxy.io.FlowReader`` streams flows; each gives what the proxy
addon judged live: the TLS SNI the client sent (``client_conn.sni``), the
HTTP request (URL + Host), and DNS questions of DNS flows.  The verdicts come
from the same ``PolicyView`` calls the addon makes (``decide_name`` for the
SNI, ``decide_http`` for the request), via ``engine``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import BinaryIO

from policies import Kind

from .model import Damage, Sighting

Progress = Callable[[], None]
_TNETSTRING_DICT = re.compile(rb"^\d{1,12}:\d{1,12}:")


def is_flow_file(head: bytes) -> bool:
    return bool(_TNETSTRING_DICT.match(head))


def _addr(address: tuple[str, int] | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    return str(address[0]), int(address[1])


def read_flows(name: str, fh: BinaryIO, progress: Progress | None = None) -> Iterator[Sighting | Damage]:
    from mitmproxy import dns, exceptions, http
    from mitmproxy.io import FlowReader
    from mitmproxy.net.dns import types as dns_types

    number = 0
    try:
        for f in FlowReader(fh).stream():
            number += 1
            client, cport = _addr(f.client_conn.peername)
            server, sport = _addr(f.server_conn.peername or f.server_conn.address)
            at = functools.partial(
                Sighting,
                client=client,
                server=server,
                client_port=cport,
                server_port=sport,
                file=name,
                packet=number,
            )
            ts = f.client_conn.timestamp_start or f.timestamp_created
            if f.client_conn.sni:
                yield at(ts, Kind.SNI, f.client_conn.sni, via="mitm-tls")
            if isinstance(f, http.HTTPFlow):
                req = f.request
                yield at(
                    req.timestamp_start or ts,
                    Kind.HTTP,
                    req.pretty_url,
                    host=req.pretty_host,
                    via="mitm-http",
                )
            elif isinstance(f, dns.DNSFlow):
                for q in f.request.questions:
                    yield at(
                        f.request.timestamp or ts,
                        Kind.DNS,
                        q.name.rstrip("."),
                        via="mitm-dns",
                        qtype=dns_types.to_str(q.type),
                    )
            if progress is not None and not number & 0xFF:
                progress()
    except exceptions.FlowReadException as exc:
        yield Damage(name, number + 1, f"unreadable flow ({exc}); stopped here", unit="flow")
