"""Sensor logs → sightings: Zeek ``dns.log``/``ssl.log``/``http.log`` (TSV with a
``#fields`` header, or JSON lines) and Suricata EVE JSON (``dns``, ``tls``,
``http`` events).

Flow: ``lines`` reads one line at a time, at most ``Limits.max_line`` bytes of
it (a longer line is read on in bounded pieces, dropped and warned about, so a
gzip that inflates to one 3 GB line costs no more memory than a short one) →
a dict of fields → the same ``Sighting`` a packet would give (DNS query and
CNAME answers, SNI, HTTP host + URL).  A line that does not parse is counted
and skipped; the first one is named in a ``Damage``.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any, BinaryIO

from policies import Kind
from policies.addresses import is_ip

from .model import DEFAULT_LIMITS, Damage, Limits, Sighting, Skips

Progress = Callable[[], None]
Row = dict[str, Any]
DISCARD_CHUNK = 1 << 20  # the piece size an over-long line is read past in


def lines(fh: BinaryIO, limits: Limits, skips: Skips) -> Iterator[tuple[int, str] | Damage]:
    """(line number, text without its line end) for every line of at most
    ``limits.max_line`` bytes, newline included; a ``Damage`` (via ``skips``)
    for each longer one, whose bytes are read past and never held.

    Binary ``readline(limit)`` is what bounds memory: iterating a text stream
    would build the whole line first.
    """
    readline = fh.readline
    limit = limits.max_line
    number = 0
    while True:
        raw = readline(limit)
        if not raw:
            return
        number += 1
        if len(raw) == limit and raw[-1:] != b"\n":
            rest = readline(DISCARD_CHUNK)
            if rest:  # longer than the limit: drop the rest of it, a bounded piece at a time
                while rest and rest[-1:] != b"\n":
                    rest = readline(DISCARD_CHUNK)
                note = skips.skip(number, f"line longer than {limit} bytes (--max-line); skipped")
                if note is not None:
                    yield note
                continue
        yield number, raw.decode("utf-8", "replace").rstrip("\r\n")


def is_zeek_tsv(head: bytes) -> bool:
    return head.startswith(b"#separator")


def is_json_lines(head: bytes) -> bool:
    return head.lstrip()[:1] == b"{"


def _port(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _time(value: Any) -> float:
    if isinstance(value, int | float):
        return float(value)
    text = str(value)
    try:
        return float(text)
    except ValueError:
        pass
    # Suricata writes "2020-11-13T10:00:00.123456+0000"; Zeek JSON may use ISO 8601 too.
    if len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = text[:-2] + ":" + text[-2:]
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _present(value: Any) -> bool:
    return value not in (None, "", "-", "(empty)")


# --- Zeek -----------------------------------------------------------------


def zeek_kind(row: Row, path: str | None) -> str | None:
    if path in ("dns", "ssl", "http"):
        return path
    if "query" in row and ("qtype_name" in row or "trans_id" in row):
        return "dns"
    if "server_name" in row:
        return "ssl"
    if "uri" in row and "method" in row:
        return "http"
    return None


def zeek_sightings(row: Row, kind: str, file: str, number: int) -> Iterator[Sighting]:
    ts = _time(row.get("ts"))
    client = row.get("id.orig_h") if _present(row.get("id.orig_h")) else None
    server = row.get("id.resp_h") if _present(row.get("id.resp_h")) else None
    cport, sport = _port(row.get("id.orig_p")), _port(row.get("id.resp_p"))
    if kind == "dns":
        query = row.get("query")
        if _present(query):
            qtype = row.get("qtype_name") if _present(row.get("qtype_name")) else None
            yield Sighting(
                ts,
                Kind.DNS,
                str(query).rstrip("."),
                client,
                server,
                cport,
                sport,
                via="zeek-dns",
                qtype=qtype,
                file=file,
                packet=number,
            )
        answers = row.get("answers")
        if isinstance(answers, str):
            answers = [] if not _present(answers) else answers.split(",")
        owner = str(query).rstrip(".") if _present(query) else None
        for answer in answers or ():
            # Zeek lists CNAME targets and addresses together; the names are the chain.
            answer = str(answer).rstrip(".")
            if answer and not is_ip(answer) and answer != owner and " " not in answer:
                yield Sighting(
                    ts,
                    Kind.DNS,
                    answer,
                    client,
                    server,
                    cport,
                    sport,
                    via="cname",
                    qtype="CNAME",
                    file=file,
                    packet=number,
                    cname_of=owner,
                )
    elif kind == "ssl":
        name = row.get("server_name")
        if _present(name):
            yield Sighting(
                ts,
                Kind.SNI,
                str(name),
                client,
                server,
                cport,
                sport,
                via="zeek-ssl",
                file=file,
                packet=number,
            )
        elif server:
            yield Sighting(
                ts, Kind.IP, server, client, server, cport, sport, via="zeek-ssl", file=file, packet=number
            )
    elif kind == "http":
        host = str(row["host"]) if _present(row.get("host")) else server
        uri = str(row.get("uri")) if _present(row.get("uri")) else "/"
        if host:
            url = uri if "://" in uri else f"http://{host}{uri if uri.startswith('/') else '/' + uri}"
            yield Sighting(
                ts,
                Kind.HTTP,
                url,
                client,
                server,
                cport,
                sport,
                host=host,
                via="zeek-http",
                file=file,
                packet=number,
            )


def read_zeek_tsv(
    name: str, fh: BinaryIO, progress: Progress | None = None, limits: Limits = DEFAULT_LIMITS
) -> Iterator[Sighting | Damage]:
    yield from _read_lines(name, fh, limits, progress, _ZeekTsv(name).parse, " as Zeek dns/ssl/http records")


class _ZeekTsv:
    """One TSV log's header state (``#separator``, ``#fields``...), applied to each record after it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sep = "\t"
        self.fields: list[str] = []
        self.path: str | None = None
        self.unset, self.empty = "-", "(empty)"
        self.set_sep = ","

    def parse(self, number: int, line: str) -> Iterator[Sighting]:
        sep = self.sep
        if line.startswith("#"):
            key, _, value = line[1:].partition(sep if not line.startswith("#separator") else " ")
            if key == "separator":
                self.sep = value.strip().encode().decode("unicode_escape") or "\t"  # UnicodeError: a bad line
            elif key == "fields":
                self.fields = value.split(sep)
            elif key == "path":
                self.path = value
            elif key == "unset_field":
                self.unset = value
            elif key == "empty_field":
                self.empty = value
            elif key == "set_separator":
                self.set_sep = value
            return
        if not line:
            return
        values = line.split(sep)
        if len(values) != len(self.fields):
            raise ValueError("not as many values as #fields")
        missing = (self.unset, self.empty)
        row: Row = {k: (None if v in missing else v) for k, v in zip(self.fields, values, strict=True)}
        if isinstance(row.get("answers"), str):
            row["answers"] = row["answers"].split(self.set_sep)
        kind = zeek_kind(row, self.path)
        if kind is None:
            raise ValueError("not a Zeek dns/ssl/http record")
        yield from zeek_sightings(row, kind, self.name, number)


def _read_lines(
    name: str,
    fh: BinaryIO,
    limits: Limits,
    progress: Progress | None,
    parse: Callable[[int, str], Iterator[Sighting]],
    what: str = "",
) -> Iterator[Sighting | Damage]:
    """``parse`` over every line within ``limits``; the lines it raises on are counted as not understood."""
    bad, first_bad = 0, 0
    skips = Skips(name, "line")
    for item in lines(fh, limits, skips):
        if isinstance(item, Damage):
            yield item
            continue
        number, line = item
        try:
            yield from parse(number, line)
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
            bad, first_bad = bad + 1, first_bad or number
        if progress is not None and not number & 0xFFF:
            progress()
    more = skips.summary()
    if more is not None:
        yield more
    if bad:
        why = f"{bad} line(s) not understood{what} (first: line {first_bad})"
        yield Damage(name, first_bad, why, stopped=False, unit="line")


# --- Suricata EVE ----------------------------------------------------------


def _eve_dns(row: Row, base: dict[str, Any]) -> Iterator[Sighting]:
    dns = row.get("dns") or {}
    # EVE v1/v2 log one query or answer per event; v3 (Suricata 7+) nests lists
    # and repeats the queries in the response, so only requests count them.
    request = dns.get("type") in ("query", "request")
    queries: Iterable[Row] = (dns.get("queries") or [dns]) if request else []
    for q in queries:
        if _present(q.get("rrname")):
            yield Sighting(
                kind=Kind.DNS,
                value=str(q["rrname"]).rstrip("."),
                via="suricata-dns",
                qtype=q.get("rrtype"),
                **base,
            )
    answers: list[Row] = list(dns.get("answers") or [])
    if dns.get("type") == "answer" and "rrtype" in dns:
        answers.append(dns)
    for a in answers:
        if a.get("rrtype") == "CNAME" and _present(a.get("rdata")):
            yield Sighting(
                kind=Kind.DNS,
                value=str(a["rdata"]).rstrip("."),
                via="cname",
                qtype="CNAME",
                cname_of=str(a.get("rrname", "")).rstrip(".") or None,
                **base,
            )
    grouped = dns.get("grouped") or {}
    for target in grouped.get("CNAME", ()):
        yield Sighting(
            kind=Kind.DNS,
            value=str(target).rstrip("."),
            via="cname",
            qtype="CNAME",
            cname_of=str(dns.get("rrname", "")).rstrip(".") or None,
            **base,
        )


def eve_sightings(row: Row, file: str, number: int) -> Iterator[Sighting]:
    etype = row.get("event_type")
    if etype not in ("dns", "tls", "http"):
        return
    a, b = row.get("src_ip"), row.get("dest_ip")
    ap, bp = _port(row.get("src_port")), _port(row.get("dest_port"))
    # DNS answers are logged in the server→client direction.
    dns = row.get("dns") or {}
    swap = etype == "dns" and dns.get("type") in ("answer", "response")
    client, server, cport, sport = (b, a, bp, ap) if swap else (a, b, ap, bp)
    base: dict[str, Any] = {
        "time": _time(row.get("timestamp")),
        "client": client,
        "server": server,
        "client_port": cport,
        "server_port": sport,
        "file": file,
        "packet": number,
    }
    if etype == "dns":
        yield from _eve_dns(row, base)
    elif etype == "tls":
        sni = (row.get("tls") or {}).get("sni")
        if _present(sni):
            yield Sighting(kind=Kind.SNI, value=str(sni), via="suricata-tls", **base)
        elif server:
            yield Sighting(kind=Kind.IP, value=str(server), via="suricata-tls", **base)
    else:
        http = row.get("http") or {}
        host = http.get("hostname") or server
        url = str(http.get("url") or "/")
        if host:
            if "://" not in url:
                url = f"http://{host}{url if url.startswith('/') else '/' + url}"
            yield Sighting(kind=Kind.HTTP, value=url, host=str(host), via="suricata-http", **base)


def read_json_lines(
    name: str, fh: BinaryIO, progress: Progress | None = None, limits: Limits = DEFAULT_LIMITS
) -> Iterator[Sighting | Damage]:
    """Suricata EVE or Zeek JSON logs, one object per line (told apart per line)."""
    yield from _read_lines(name, fh, limits, progress, functools.partial(_json_line, name))


def _json_line(name: str, number: int, line: str) -> Iterator[Sighting]:
    line = line.strip()
    if not line:
        return
    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("not an object")
    if "event_type" in row:
        yield from eve_sightings(row, name, number)
    else:
        kind = zeek_kind(row, None)
        if kind is None:
            raise ValueError("neither EVE nor a Zeek dns/ssl/http record")
        yield from zeek_sightings(row, kind, name, number)
