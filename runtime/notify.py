"""sd_notify(3) without libsystemd: tell a service manager the server's state.

systemd (``Type=notify``) and ``egress-filter run`` both hand a server the
address of an AF_UNIX datagram socket in ``$NOTIFY_SOCKET`` (a path, or
``@name`` for Linux's abstract namespace) and wait for ``READY=1`` before
they call it started.  The protocol is one datagram of ``KEY=VALUE`` lines:

* ``READY=1`` once every listener is bound and serving;
* ``RELOADING=1`` with ``MONOTONIC_USEC=`` when a SIGHUP reload starts, and
  ``READY=1`` again when it is over (what ``Type=notify-reload`` expects);
* ``STOPPING=1`` when shutdown begins;
* ``STATUS=...`` a one-line state or error, shown by ``systemctl status``
  and by ``run`` when a server fails to start.

With ``$NOTIFY_SOCKET`` unset (started by hand) every call is a no-op that
returns False.  A send never raises: a gone manager must not stop a server.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

ENV = "NOTIFY_SOCKET"
MAX_STATUS = 400  # characters of STATUS= kept; systemd shows one line anyway


def address(raw: str) -> str | bytes | None:
    """The sendto() address for a ``$NOTIFY_SOCKET`` value, or None for a form
    not supported here (``vsock:``, a relative path)."""
    if raw.startswith("@") and len(raw) > 1:
        return b"\0" + raw[1:].encode()
    if raw.startswith("/"):
        return raw
    return None


def notify(*fields: str) -> bool:
    """Send ``fields`` (``KEY=VALUE`` each) as one datagram; True if it was sent."""
    raw = os.environ.get(ENV)
    if not raw:
        return False
    target = address(raw)
    if target is None:
        return False
    message = "\n".join(fields).encode("utf-8", "replace")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, target)
    except OSError:
        return False
    return True


def one_line(text: str) -> str:
    """``text`` fit for ``STATUS=``: one line, bounded."""
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_STATUS else flat[: MAX_STATUS - 1] + "…"


def ready(status: str | None = None) -> bool:
    return notify("READY=1", *([f"STATUS={one_line(status)}"] if status else []))


def status(text: str) -> bool:
    return notify(f"STATUS={one_line(text)}")


def stopping() -> bool:
    return notify("STOPPING=1")


def reloading() -> bool:
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def around_reload(reload: Callable[[], bool]) -> Callable[[], bool]:
    """``reload`` wrapped in ``RELOADING=1`` … ``READY=1``; the status says whether
    the new policy was taken (a refused one leaves the old one serving)."""
    def wrapped() -> bool:
        reloading()
        ok = False
        try:
            ok = reload()
        finally:
            ready("policy reloaded" if ok else "policy not reloaded (see the log); the one in force stays")
        return ok
    return wrapped


def parse(datagram: bytes) -> dict[str, str]:
    """The fields of one notification (what ``run`` reads from its servers)."""
    out: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out
