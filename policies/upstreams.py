"""The forms an upstream resolver can be written in, checked without any I/O.

    "9.9.9.9" | "[::1]:5300" | "tls://9.9.9.9:853#dns.quad9.net" | "https://dns.google/dns-query"
        └──────────────── parse_upstream ────────────────┘
                           UpstreamSpec (scheme dns | tls | https, host, port, pinned name, URL)

Pure, so the policy loader can check ``settings.dns.forward`` entries at
load (``file:line: field: message``) and the resolver's settings layer
(dns_blocker/config.py) can check ``upstreams`` with the same rules; the
resolver builds its transports from the spec.  Every error names the entry
and lists the supported forms.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from .addresses import AddressError, is_ip, split_hostport

UPSTREAM_FORMS = ("IP[:PORT] (plain DNS over UDP and TCP, port 53), tls://HOST[:PORT][#NAME] "
                  "(DNS-over-TLS, port 853), https://HOST[:PORT]/PATH[#NAME] (DNS-over-HTTPS, port 443)")
_LABEL = r"[a-z0-9_]([a-z0-9-]{0,61}[a-z0-9])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$)({_LABEL}\.)*{_LABEL}$")


@dataclass(frozen=True, slots=True)
class UpstreamSpec:
    """One upstream, checked: ``scheme`` is ``dns``, ``tls`` or ``https``; ``name`` the pinned
    certificate name (``#NAME``); ``url`` the DoH URL without the fragment."""

    text: str
    scheme: str
    host: str
    port: int
    name: str | None = None
    url: str | None = None


def is_hostname(name: str) -> bool:
    return bool(_HOSTNAME.match(name))


def parse_upstream(text: str) -> UpstreamSpec:
    """``9.9.9.9``, ``tls://9.9.9.9:853#dns.quad9.net``, ``https://dns.example/dns-query`` → a spec;
    anything else is an ``AddressError`` that names the entry and lists the supported forms."""
    t = text.strip()
    scheme, sep, _ = t.partition("://")
    if not sep:
        try:
            host, port = split_hostport(t, 53, need_ip=True)
        except AddressError as exc:
            raise AddressError(f"{exc}; supported forms: {UPSTREAM_FORMS}") from exc
        return UpstreamSpec(t, "dns", host, port)
    scheme = scheme.lower()
    if scheme not in ("tls", "https"):
        raise AddressError(f"'{t}': unsupported scheme '{scheme}://'; supported forms: {UPSTREAM_FORMS}")

    def bad(why: str) -> AddressError:
        return AddressError(f"'{t}': {why}; supported forms: {UPSTREAM_FORMS}")

    try:
        parts = urlsplit(t)
        given = parts.port
    except ValueError as exc:
        raise bad(f"not a valid URL ({exc})") from exc
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise bad("no host")
    if parts.username is not None or parts.password is not None:
        raise bad("a user name or password does not belong in an upstream")
    if not is_ip(host) and not is_hostname(host):
        raise bad(f"'{host}' is neither an IP address nor a host name")
    name = parts.fragment.lower().rstrip(".") or None
    if name is not None and not is_hostname(name):
        raise bad(f"'#{parts.fragment}' is not a host name to check the certificate against")
    if scheme == "tls":
        if parts.path not in ("", "/") or parts.query:
            raise bad("DNS-over-TLS takes no path or query")
        return UpstreamSpec(t, "tls", host, given or 853, name)
    path = parts.path or "/dns-query"
    where = f"[{host}]" if ":" in host else host
    url = f"https://{where}:{given or 443}{path}" + (f"?{parts.query}" if parts.query else "")
    return UpstreamSpec(t, "https", host, given or 443, name, url)
