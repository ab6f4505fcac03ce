"""Replay on corrupt pcapng files: what is reported, and what is still judged.

A pcapng block carries its total length at both ends.  When the two agree
the framing is intact, so a block whose contents are corrupt (a captured
length past its end, an interface that was never described, a description
that does not parse) is skipped with a warning naming its offset, and the
read goes on.  When they disagree, or the length itself is impossible, no
later block can be found: the read stops there, exit code 4.  No warning
carries internal exception text (the red team saw "IndexError: list index out
of range").

Each case is a file SHB, IDB, packet 1 (www.tiktok.com), the damaged blocks,
then packet N (www.wechat.com).  The names replay reads from it must be
exactly those tshark reads from the same file with the damaged blocks
removed (or, where replay stops, cut at the first of them).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from policies import load_policy
from tests.replay import craft as c
from tests.replay.conftest import DOWNLOADS_DAY, POLICY, need, replay_all
from tests.replay.tshark import replay_names, tshark_names

HEAD = c.pcapng_shb() + c.pcapng_idb()
FIRST = c.pcapng_epb(c.dns_frame("www.tiktok.com", 1))
LAST = c.pcapng_epb(c.dns_frame("www.wechat.com", 3), t=c.T0 + 3)
AT = len(HEAD) + len(FIRST)  # the offset of the first damaged block
MIDDLE = c.pcapng_epb(c.dns_frame("www.google.com", 2), t=c.T0 + 2)  # a good block, damaged below


def patched(block: bytes, offset: int, value: int) -> bytes:
    """``block`` with the 32-bit little-endian field at ``offset`` set to ``value``."""
    return block[:offset] + struct.pack("<I", value) + block[offset + 4 :]


def raw_block(btype: int, body: bytes) -> bytes:
    blen = 12 + len(body)
    return struct.pack("<II", btype, blen) + body + struct.pack("<I", blen)


@dataclass(frozen=True)
class Case:
    id: str
    blocks: list[bytes]  # between FIRST and LAST
    warnings: Callable[[str], list[str]]  # of the file's path
    stops: bool = False
    intact: bool = False  # the blocks are fine: tshark reads them too, and any packet in them counts


def skipped(packet: int | None, what: str, offset: int, problem: str) -> Callable[[str], list[str]]:
    where = f" at packet {packet}" if packet else ""
    return lambda p: [f"{p}{where}: corrupt {what} at offset {offset}: {problem}; skipped"]


CORRUPT_IDB = raw_block(1, struct.pack("<HH", 1, 0))  # linktype, reserved; the snaplen is missing
EPB_ON_1 = c.pcapng_epb(c.dns_frame("www.google.com", 2), iface=1, t=c.T0 + 2)
TSRESOL_EMPTY = raw_block(1, struct.pack("<HHI", 1, 0, 262144) + struct.pack("<HH", 9, 0) + bytes(4))

CASES = [
    Case("control-intact", [MIDDLE], lambda p: [], intact=True),
    Case(
        "epb-captured-length-past-the-block",
        [patched(MIDDLE, 20, 5000)],
        skipped(
            2, "enhanced packet block", AT, f"captured length 5000 runs past the block ({len(MIDDLE)} bytes)"
        ),
    ),
    Case(
        "epb-interface-never-described",  # the red team's "IndexError: list index out of range"
        [patched(MIDDLE, 8, 7)],
        skipped(
            2, "enhanced packet block", AT, "interface 7 is not described in this section (1 interface(s))"
        ),
    ),
    Case(
        "epb-too-short",
        [raw_block(6, bytes(8))],
        skipped(2, "enhanced packet block", AT, "20 bytes is too short"),
    ),
    Case(
        "idb-truncated-then-its-packet",
        [CORRUPT_IDB, EPB_ON_1],
        lambda p: [
            f"{p}: corrupt interface description block at offset {AT}: its fields or options do not parse "
            "(interface 1; its packets are skipped); skipped",
            f"{p} at packet 2: corrupt enhanced packet block at offset {AT + len(CORRUPT_IDB)}: "
            "interface 1's description block was corrupt; skipped",
        ],
    ),
    Case(
        "idb-empty-timestamp-resolution",
        [TSRESOL_EMPTY],
        skipped(
            None,
            "interface description block",
            AT,
            "its fields or options do not parse (interface 1; its packets are skipped)",
        ),
    ),
    Case(
        "two-corrupt-blocks-in-a-row",
        [patched(MIDDLE, 8, 7), patched(MIDDLE, 20, 5000)],
        lambda p: [
            *skipped(
                2,
                "enhanced packet block",
                AT,
                "interface 7 is not described in this section (1 interface(s))",
            )(p),
            *skipped(
                3,
                "enhanced packet block",
                AT + len(MIDDLE),
                f"captured length 5000 runs past the block ({len(MIDDLE)} bytes)",
            )(p),
        ],
    ),
    Case(
        "unknown-block-type", [raw_block(0x0BAD, bytes(8))], lambda p: []
    ),  # skipped silently, as the spec says
    Case(
        "trailing-length-mismatch",
        [patched(MIDDLE, len(MIDDLE) - 4, len(MIDDLE) + 8)],
        lambda p: [
            f"{p} at packet 2: enhanced packet block at offset {AT}: "
            f"the length at its end ({len(MIDDLE) + 8}) differs from "
            f"the length at its start ({len(MIDDLE)}); "
            "stopped here"
        ],
        stops=True,
    ),
    Case(
        "length-not-a-multiple-of-4",
        [patched(MIDDLE, 4, 13)],
        lambda p: [
            f"{p} at packet 2: corrupt block header at offset {AT} (enhanced packet block, length 13); "
            "stopped here"
        ],
        stops=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[x.id for x in CASES])
def test_corrupt_pcapng(case: Case, tmp_path: Path) -> None:
    path = tmp_path / "damaged.pcapng"
    path.write_bytes(HEAD + FIRST + b"".join(case.blocks) + LAST)
    verdicts, rep = replay_all(load_policy(POLICY).view(DOWNLOADS_DAY), path)
    assert [str(d) for d in rep.damage] == case.warnings(str(path))
    assert all(d.stopped == case.stops for d in rep.damage)
    assert all("Error" not in d.message for d in rep.damage)  # no exception names or texts
    names = [v.sighting.value for v in verdicts]
    middle = ["www.google.com"] if case.intact and MIDDLE in case.blocks else []
    assert names == ["www.tiktok.com", *middle] + ([] if case.stops else ["www.wechat.com"])

    # The same names as tshark on the undamaged remainder of the file.
    rest = tmp_path / "intact.pcapng"
    kept = b"".join(case.blocks) if case.intact else b""
    rest.write_bytes(HEAD + FIRST + (b"" if case.stops else kept + LAST))
    assert replay_names(verdicts) == tshark_names(need("tshark"), rest)
