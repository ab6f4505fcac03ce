"""mitmproxy flow files (``mitmdump -w``) → sightings.

Flow: ``mitmproxy.io.FlowReader`` streams flows; each gives what the proxy
addon judged live: the TLS SNI the client sent (``client_conn.sni``), the
HTTP request (URL + Host), and DNS questions of DNS flows.  The verdicts come
from the same ``PolicyView`` calls the addon makes (``decide_name`` for the
SNI, ``decide_http`` for the request), via ``engine``.

A flow file is a sequence of tnetstrings, each ``LENGTH:DATA`` plus a type
byte.  ``records`` reads the length prefix first: a flow over
``Limits.max_record`` is read past in bounded pieces and warned about, never
loaded (mitmproxy's reader would hold all of it, however large it claims to
be); each other flow is handed to ``FlowReader`` alone.
"""

from __future__ import annotations

import functools
import io
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from policies import Kind

from .model import DEFAULT_LIMITS, Damage, Limits, Sighting, Skips

Progress = Callable[[], None]
_TNETSTRING_DICT = re.compile(rb"^\d{1,12}:\d{1,12}:")
SKIP_CHUNK = 1 << 20


class FlowFileError(ValueError):
    """The tnetstring framing is broken: nothing after this point can be read."""


def is_flow_file(head: bytes) -> bool:
    return bool(_TNETSTRING_DICT.match(head))


def _addr(address: tuple[str, int] | None) -> tuple[str | None, int | None]:
    if not address:
        return None, None
    return str(address[0]), int(address[1])


def records(fh: BinaryIO, limits: Limits) -> Iterator[bytes | int]:
    """Each whole tnetstring of the file (at most ``limits.max_record`` bytes of data),
    or, for a longer one, its claimed length once its bytes have been read past."""
    read = fh.read
    while True:
        prefix = read(1)
        if not prefix:
            return
        while prefix[-1:].isdigit() and len(prefix) <= 12:
            c = read(1)
            if not c:
                raise FlowFileError("file ends inside a flow's length prefix")
            prefix += c
        if prefix[-1:] != b":" or len(prefix) < 2:
            raise FlowFileError(f"no tnetstring length prefix ({bytes(prefix[:13])!r})")
        length = int(prefix[:-1])
        if length > limits.max_record:
            left = length + 1  # the data and its type byte
            while left > 0:
                piece = read(min(SKIP_CHUNK, left))
                if not piece:
                    raise FlowFileError(f"file ends inside a flow of {length} bytes")
                left -= len(piece)
            yield length
            continue
        body = read(length + 1)
        if len(body) < length + 1:
            raise FlowFileError(f"file ends inside a flow ({len(body)} of {length + 1} bytes)")
        yield prefix + body


def read_flows(
    name: str, fh: BinaryIO, progress: Progress | None = None, limits: Limits = DEFAULT_LIMITS
) -> Iterator[Sighting | Damage]:
    from mitmproxy import exceptions
    from mitmproxy.io import FlowReader

    number = 0
    skips = Skips(name, "flow")
    try:
        for record in records(fh, limits):
            number += 1
            if isinstance(record, int):
                why = f"flow of {record} bytes is over the {limits.max_record}-byte limit (--max-record)"
                note = skips.skip(number, f"{why}; skipped")
            else:
                try:
                    for f in FlowReader(io.BytesIO(record)).stream():
                        yield from _sightings(f, name, number)
                    note = None
                except exceptions.FlowReadException as exc:
                    # The framing around it is intact, so the next flow is still readable.
                    note = skips.skip(number, f"unreadable flow ({exc}); skipped")
            if note is not None:
                yield note
            if progress is not None and not number & 0xFF:
                progress()
    except FlowFileError as exc:
        yield Damage(name, number + 1, f"unreadable flow ({exc}); stopped here", unit="flow")
    more = skips.summary()
    if more is not None:
        yield more


def _sightings(f: Any, name: str, number: int) -> Iterator[Sighting]:
    """What the addon judged live in one flow: the SNI, the HTTP request, DNS questions."""
    from mitmproxy import dns, http
    from mitmproxy.net.dns import types as dns_types

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
