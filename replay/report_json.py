"""Verdicts → JSON lines (the shared event schema) or one JSON document, streamed.

Each event is ``report.event`` (``build_event``, the one definition of the
schema) encoded by orjson: compact, UTF-8, keys in the order built.  orjson
plus ``build_event`` costs ~12 µs an event against ~10 µs for the templated
encoder it replaced (measured on the bench machine, loaded), within the
replay-vs-tshark target (bench/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import IO, Any

import orjson

from .model import Finding
from .report import event, row
from .summary import Summary

WRITE_CHARS = 1 << 16  # characters gathered for one write


def line(v: Finding) -> str:
    return orjson.dumps(event(v)).decode() + "\n"


def write_jsonl(verdicts: Iterable[Finding], out: IO[str], summary: Summary) -> None:
    """One event per line, each verdict counted into ``summary``."""

    def lines() -> Iterator[str]:
        for v in verdicts:
            summary.add(v)
            yield line(v)

    write_lines(lines(), out)


def write_lines(lines: Iterable[str], out: IO[str]) -> None:
    """Lines already written (``line``, in replay's workers or here), in writes of about
    ``WRITE_CHARS``; what is built is written even when a reader fails part-way."""
    batch: list[str] = []
    size = 0
    try:
        for text in lines:  # a line, or a worker's run of them
            batch.append(text)
            size += len(text)
            if size >= WRITE_CHARS:
                out.write("".join(batch))
                batch.clear()
                size = 0
    finally:
        out.write("".join(batch))


def write_json(verdicts: Iterable[Finding], out: IO[str], summary: Summary) -> None:
    """Opens the document, streams the verdict array; ``finish_json`` closes it."""
    out.write('{"verdicts": [')
    sep = "\n  "
    for v in verdicts:
        summary.add(v)
        out.write(sep + orjson.dumps(row(v)).decode())
        sep = ",\n  "
    out.write("\n]")


def finish_json(meta: dict[str, Any], out: IO[str]) -> None:
    for key, value in meta.items():
        text = orjson.dumps(value, option=orjson.OPT_INDENT_2).decode()
        out.write(f",\n{orjson.dumps(key).decode()}: {text}")
    out.write("\n}\n")
