"""Client names: which name an asking address has, from a hosts file or a dnsmasq leases file.

    settings.dns.client_names: FILE ─▶ read at start, and again when its mtime or size changes
                                       (looked at no more than once every RECHECK seconds)
        │
        └─▶ {address: name} ─▶ events (source.domain) and, opt-in, egress_dns_client_queries_total{client}

Either format, line by line: a hosts-file line (``192.168.1.23 laptop-anna
[aliases...]``, the first name wins) or a dnsmasq lease (``EXPIRY MAC
ADDRESS NAME CLIENT-ID``; a name of ``*`` means none).  Comments (``#``) and
lines that are neither are skipped and counted.  The file is read without
blocking (a FIFO is not read) and at most ``MAX_BYTES`` of it, at most
``MAX_ENTRIES`` names, each at most 63 characters of ``[A-Za-z0-9._-]``,
so a hostile leases file (a DHCP client picks its own name) cannot inject
markup into events or blow up the metrics' label set.  A file that cannot
be read keeps the names last read, and says so once in the log.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
import time
from collections.abc import Callable

log = logging.getLogger("egress_filter.dns")

RECHECK = 5.0
MAX_BYTES = 8 << 20
MAX_ENTRIES = 100_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


def _address(text: str) -> str | None:
    """The address in the form recvfrom gives (IPv4 for an IPv4-mapped one), or None."""
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).compressed


def parse(text: str) -> tuple[dict[str, str], int]:
    """(address → name, lines skipped)."""
    names: dict[str, str] = {}
    skipped = 0
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        addr: str | None = None
        name = ""
        if len(parts) >= 4 and parts[0].isdigit() and _address(parts[2]):  # dnsmasq: EXPIRY MAC IP NAME ...
            addr, name = _address(parts[2]), parts[3]
        elif len(parts) >= 2 and _address(parts[0]):  # hosts: IP NAME [ALIAS...]
            addr, name = _address(parts[0]), parts[1]
        if addr is None or name == "*" or not _NAME.match(name):
            skipped += 1
            continue
        if len(names) >= MAX_ENTRIES:
            skipped += 1
            continue
        names.setdefault(addr, name.lower())
    return names, skipped


class ClientNames:
    def __init__(self, path: str, *, clock: Callable[[], float] = time.monotonic):
        self.path = path
        self.clock = clock  # when the file is looked at again (tests inject their own)
        self.names: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None
        self._checked = -RECHECK
        self._failing = False
        self.refresh(force=True)

    def get(self, client: str) -> str | None:
        now = self.clock()
        if now - self._checked >= RECHECK:
            self.refresh()
        return self.names.get(client) or self.names.get(_address(client) or "")

    def refresh(self, force: bool = False) -> None:
        self._checked = self.clock()
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError as exc:
            self._fail(f"cannot open: {exc.strerror or exc}")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._fail("not a regular file")
                return
            stamp = (st.st_mtime_ns, st.st_size)
            if stamp == self._stamp and not force:
                return
            data = os.read(fd, MAX_BYTES)
        except OSError as exc:
            self._fail(f"cannot read: {exc.strerror or exc}")
            return
        finally:
            os.close(fd)
        names, skipped = parse(data.decode("utf-8", "replace"))
        self.names, self._stamp, self._failing = names, stamp, False
        log.info("client names: %d from %s%s", len(names), self.path,
                 f" ({skipped} lines skipped)" if skipped else "")

    def _fail(self, why: str) -> None:
        if not self._failing:
            log.warning("client names: %s: %s; keeping the %d names last read", self.path, why,
                        len(self.names))
        self._failing = True
