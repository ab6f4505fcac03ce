"""Opening the policy's files: the one way the loader reads the disk.

    path ─▶ open_regular (stat, then open without blocking, fstat again)
         ─▶ a regular file of at most max_size bytes, or Unreadable("is a FIFO, ...")
         ─▶ read_capped (bounded pieces, never the whole cap at once)

Every file (the YAML and each list file) goes through ``open_regular``:
non-blocking, so a FIFO cannot hang the load, and refused unless it is a
regular file within the size cap.  Reading package data and the policy's own
files is the loader's job (tests/test_layers.py keeps sockets, threads and
processes out of ``policies``).
"""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path


class Unreadable(Exception):
    """A file that must not or cannot be read; the message says why, as the
    rest of a sentence about the file ("is a FIFO, ...", "cannot be read: ...")."""

    def __init__(self, message: str, os_error: str | None = None, too_big: bool = False):
        super().__init__(message)
        self.os_error = os_error  # the system's reason, when the OS refused
        self.too_big = too_big  # over the size cap (the caller names the setting)

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"))


def _not_regular(mode: int) -> str | None:
    for test, kind in _KINDS:
        if test(mode):
            return f"is {kind}, not a regular file"
    return None if stat.S_ISREG(mode) else "is not a regular file"


def open_regular(path: Path, max_size: int) -> io.BufferedReader:
    """The one way this module opens a file: without blocking (a FIFO would
    hang ``open`` until a writer came), and only a regular file of at most
    ``max_size`` bytes (``/dev/zero`` behind a symlink is a character device).
    Raises ``Unreadable``."""
    try:
        st = os.stat(path)  # a socket cannot be opened at all: say what it is first
        problem = _not_regular(st.st_mode)
        if problem:
            raise Unreadable(problem)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise Unreadable(f"cannot be read: {reason}", reason) from exc
    try:
        st = os.fstat(fd)  # what was opened, should the path have changed since
        problem = _not_regular(st.st_mode)
        if problem:
            raise Unreadable(problem)
        if st.st_size > max_size:
            raise Unreadable(f"is {st.st_size} bytes, over the limit of {max_size}", too_big=True)
        return open(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def read_capped(fh: io.BufferedReader, cap: int) -> bytes:
    """At most ``cap + 1`` bytes, read in pieces: ``read(cap + 1)`` would
    allocate the whole cap (1 GiB by default) up front, whatever the file holds."""
    parts: list[bytes] = []
    total = 0
    while total <= cap:
        chunk = fh.read(min(1 << 20, cap + 1 - total))
        if not chunk:
            break
        parts.append(chunk)
        total += len(chunk)
    return b"".join(parts)
