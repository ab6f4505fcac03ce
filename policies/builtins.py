"""The built-in rules: bypass names and signals every adapter judges alike.

A policy lists apps; these rules close the doors around the filter itself
(public DNS-over-HTTPS/TLS resolvers, Firefox's DoH canary, iCloud Private
Relay, Discovery of Designated Resolvers) and note Encrypted ClientHello.
The loader reads the policy's ``builtins:`` mapping into ``Builtins``; each
``GroupView`` turns the switched-on rules into ready ``Decision`` tables
(``BuiltinTable``) that ``decide_name``/``decide_ip`` consult only when no
policy rule matched, and that ``decide_builtin`` answers for what only an
adapter can see (a DoH-shaped request, an ECH extension).  Blocks go
through the view's ``_enforce`` like every policy block, so monitor mode,
monitoring groups and exempt clients downgrade them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .schema_keys import keys

# Public resolvers' DNS-over-HTTPS/TLS endpoints: an app that reaches one of
# these resolves names past the DNS filter.
DOH_HOSTS = frozenset({
    "dns.google", "dns.google.com", "8888.google", "dns64.dns.google",
    "cloudflare-dns.com", "mozilla.cloudflare-dns.com", "chrome.cloudflare-dns.com",
    "1dot1dot1dot1.cloudflare-dns.com", "one.one.one.one", "security.cloudflare-dns.com",
    "family.cloudflare-dns.com",
    "dns.quad9.net", "dns9.quad9.net", "dns10.quad9.net", "dns11.quad9.net", "dns12.quad9.net",
    "doh.opendns.com", "doh.familyshield.opendns.com", "doh.umbrella.com",
    "dns.adguard.com", "dns.adguard-dns.com", "unfiltered.adguard-dns.com", "family.adguard-dns.com",
    "doh.cleanbrowsing.org", "dns.nextdns.io", "doh.dns.sb", "dns.twnic.tw",
    "doh.mullvad.net", "dns.mullvad.net", "doh.libredns.gr", "freedns.controld.com",
    # Resolvers popular with the apps' own home market.
    "dns.alidns.com", "doh.pub", "doh.360.cn", "dns.pub",
})
# Their anycast addresses, for DoH/DoT spoken to a bare IP (no SNI, IP CONNECT).
DOH_ADDRESSES = frozenset({
    "8.8.8.8", "8.8.4.4", "2001:4860:4860::8888", "2001:4860:4860::8844",
    "1.1.1.1", "1.0.0.1", "2606:4700:4700::1111", "2606:4700:4700::1001",
    "9.9.9.9", "149.112.112.112", "2620:fe::fe", "2620:fe::9",
    "208.67.222.222", "208.67.220.220", "94.140.14.14", "94.140.15.15",
    "223.5.5.5", "223.6.6.6", "1.12.12.12", "120.53.53.53",
})
# The ports encrypted DNS is spoken on (DoH, DoT/DoQ); a connection to one of
# the addresses on another port (a resolver's web page on 80) is not judged.
DOH_PORTS = frozenset({443, 853})
CANARY = "use-application-dns.net"  # Firefox turns its own DoH off on NXDOMAIN
PRIVATE_RELAY_HOSTS = frozenset({"mask.icloud.com", "mask-h2.icloud.com"})  # Apple: NXDOMAIN turns it off
DDR_NAME = "_dns.resolver.arpa"  # RFC 9462: clients ask it to upgrade to encrypted DNS

DOH_RULE = "builtin:doh"
CANARY_RULE = "builtin:canary"
PRIVATE_RELAY_RULE = "builtin:private-relay"
DDR_RULE = "builtin:ddr"
ECH_RULE = "builtin:ech"
ECH_EXTENSION = 0xFE0D  # the TLS encrypted_client_hello extension (draft-ietf-tls-esni): Signal.ECH


class EchAction(StrEnum):
    """What a ClientHello carrying Encrypted ClientHello gets."""

    LOG = "log"
    OFF = "off"


class Signal(StrEnum):
    """What an adapter sees that the core cannot (headers, TLS extensions)."""

    DOH_REQUEST = "doh-request"  # an HTTP request shaped like DoH (media type, path)
    ECH = "ech"  # a ClientHello with the encrypted_client_hello extension


@dataclass(frozen=True, slots=True)
class Builtins:
    """The policy's ``builtins:`` switches.  Left out, ``doh`` follows
    ``settings.proxy.block_doh``, ``canary`` follows ``settings.dns.canary``
    and ``ech`` follows ``settings.proxy.log_ech`` (the older switches)."""

    doh: bool = True
    canary: bool = True
    ech: EchAction = EchAction.LOG
    private_relay: bool = True
    ddr: bool = True


# builtins: key -> required (none is), read from schema.json; a test keeps it equal to Builtins' fields.
BUILTIN_KEYS = keys("properties", "builtins")


@dataclass(frozen=True, slots=True)
class BuiltinRule:
    """One switched-on rule: its id and why it blocks (``{}`` is the subject)."""

    rule: str
    reason: str


_DOH = BuiltinRule(DOH_RULE, "{} is a public DNS-over-HTTPS/TLS resolver; it is blocked so that apps "
                             "cannot resolve names past the DNS filter")
_CANARY = BuiltinRule(CANARY_RULE, "{} is the DoH canary: it answers NXDOMAIN so that browsers keep DNS "
                                   "on this filter, not DoH")
_RELAY = BuiltinRule(PRIVATE_RELAY_RULE, "{} is iCloud Private Relay's entry; it is blocked so that "
                                         "Apple devices do not tunnel past the filter")
_DDR = BuiltinRule(DDR_RULE, "{} is DDR (RFC 9462); it is blocked so that clients do not upgrade to "
                             "encrypted DNS on their own")


def name_rules(b: Builtins) -> dict[str, BuiltinRule]:
    """Every switched-on built-in name (already normalised) and its rule."""
    out: dict[str, BuiltinRule] = {}
    if b.doh:
        out.update(dict.fromkeys(DOH_HOSTS, _DOH))
    if b.canary:
        out[CANARY] = _CANARY
    if b.private_relay:
        out.update(dict.fromkeys(PRIVATE_RELAY_HOSTS, _RELAY))
    if b.ddr:
        out[DDR_NAME] = _DDR
    return out


def address_rules(b: Builtins) -> dict[str, BuiltinRule]:
    """Every switched-on built-in address and its rule."""
    return dict.fromkeys(DOH_ADDRESSES, _DOH) if b.doh else {}


def signal_rule(b: Builtins, signal: Signal) -> BuiltinRule | None:
    if signal is Signal.DOH_REQUEST:
        return _DOH if b.doh else None
    return None  # ECH is a log, built by the view
