"""IP literals and ``host:port`` text: the one reader and writer every component uses.

    "1.2.3.4" | "1.2.3.4:53" | "::1" | "[::1]:53" | "localhost:8080" | ":3128"
        └──────────── split_hostport(text, default_port, ...) ────────────┘
                        (host, port), or AddressError naming the text

    (host, port) ── join_hostport ──▶ "1.2.3.4:53" | "[::1]:53"
    Host header ─── authority_host ─▶ the name an origin serves (lenient, never raises)

The rules, in one place:

- a bracketed host (``[::1]``, ``[::1]:53``) is read up to its ``]``; only
  ``:PORT`` may follow it;
- text with exactly one colon is ``HOST:PORT``;
- text with more colons and no brackets is a bare IPv6 address: it takes the
  default port, and is an error where a port is required (write ``[::1]:53``);
- a port is digits in 0..65535;
- an empty host is an error unless the caller names a default host.

Pure: the policy loader, the resolver's settings, the proxy's and the
dashboard's flags all call it, so one address is read one way everywhere.
"""

from __future__ import annotations

import ipaddress


class AddressError(ValueError):
    """Not an address, or not an upstream in a supported form."""


def is_ip(text: str) -> bool:
    """An IP literal (IPv4, or IPv6 with an optional ``%scope``).  Brackets are
    not part of an address: strip them first where they may appear."""
    # Cheap pre-check, exact: an IPv4 literal ends in a digit and an IPv6 one
    # holds a colon; names on the hot path rarely do either.
    if not text or not (text[-1].isdigit() or ":" in text):
        return False
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def split_hostport(text: str, default_port: int | None = None, *, default_host: str | None = None,
                   need_ip: bool = False) -> tuple[str, int]:
    """``HOST[:PORT]`` → (host, port), by the rules of the module docstring.

    ``default_port`` None means the port is required; ``default_host`` is what
    an empty host (``:3128``) stands for (None: an empty host is an error);
    ``need_ip`` rejects host names."""
    text = text.strip()
    host, port_text = text, None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise AddressError(f"'{text}': missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise AddressError(f"'{text}': expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text and default_port is None:
        raise AddressError(f"'{text}': an IPv6 address with a port is written [ADDRESS]:PORT")
    if port_text is not None:
        port = _port(text, port_text)
    elif default_port is None:
        raise AddressError(f"'{text}': expected HOST:PORT")
    else:
        port = default_port
    if not host:
        if default_host is None:
            raise AddressError(f"'{text}': no host")
        host = default_host
    if need_ip and not is_ip(host):
        raise AddressError(f"'{text}': '{host}' is not an IP address")
    return host, port


def _port(text: str, p: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise AddressError(f"'{text}': '{p}' is not a port")
    return int(p)


def join_hostport(host: str, port: int) -> str:
    """(host, port) → ``host:port``, an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def authority_host(piece: str) -> str:
    """The host of one ``Host`` header or ``:authority`` value, port and
    brackets removed; never raises.  An unbracketed name is cut at its first
    colon, which is what an origin that splits there serves."""
    if piece.startswith("["):
        return piece[1:].split("]", 1)[0]
    if is_ip(piece):
        return piece
    return piece.split(":", 1)[0]
