"""The one seam between egress-filter and the mitmproxy that is installed.

``pyproject.toml`` allows mitmproxy 11 (the last release for Python 3.11)
and 12 (Python 3.12+).  Every mitmproxy API the addon and its tests use was
checked against the changelog from 11.0 to 12.x; the ones that differ are
resolved here, once, at import time, by looking for the feature itself
(``getattr`` on the module), never by comparing version numbers, so a
backport or a vendor build is judged by what it has.  Everything else
imports these names instead of reaching for the changed API directly.

Resolved here:

* ``DNSMessage``: mitmproxy 12 renamed ``mitmproxy.dns.Message`` to
  ``mitmproxy.dns.DNSMessage`` (#7670), without an alias.  ``unpack_dns``
  decodes a wire-format message (a DoH body) with whichever class exists.
* ``QUIC_PASSTHROUGH``: whether ``ignore_connection`` set in
  ``tls_clienthello`` relays a QUIC connection.  It does not in 11.0 through
  12.3.1 (mitmproxy#8338: ``ClientQuicLayer`` swaps in a ``UDPLayer`` whose
  ``start`` state stays pinned, so the next datagram raises "Unexpected event
  type at UDPLayer.start" and nothing reaches the origin).  mitmproxy#8295
  (12.3) fixed a different QUIC stall, the one with ``ignore_hosts`` set,
  and left this path as it was.  The flag is read off the code that would
  relay (``_quic_passthrough``), so the addon's ``egress_quic`` default
  follows a fixed mitmproxy without a release of egress-filter;
  tests/proxy/test_quic_passthrough.py checks the flag against a real relay.

Checked and unchanged from 11.0 to 12.x, so used directly:
``dns.ResourceRecord`` (its ``https_ech``/``https_alpn`` properties),
``dns.Question``, ``dns.DNSFlow``, ``net.dns.types``/``classes``/``https_records``,
``tls.ClientHello``/``ClientHelloData`` (``ignore_connection``,
``establish_server_tls_first``), ``connection.ConnectionState`` and
``Client``/``Server``, ``proxy.mode_specs``, ``proxy.server_hooks``, the
``connection_strategy`` option, ``Flow.metadata`` (saved by ``mitmproxy.io``
only with plain values, hence the verdict's summary), nested ``addons``
lists, and, in the tests, ``hooks.all_hooks`` and the
``taddons``/``tflow``/``tutils`` helpers (whose DNS ones build the renamed class).
"""

from __future__ import annotations

import inspect
from types import ModuleType
from typing import Any, Protocol

from mitmproxy import dns


class DnsMessage(Protocol):
    """What the addon uses of a DNS message, on either mitmproxy."""

    questions: list[dns.Question]
    answers: list[dns.ResourceRecord]

    @property
    def packed(self) -> bytes: ...


def _first(module: ModuleType, *names: str) -> Any:
    """The first of ``names`` that ``module`` has: newest spelling first."""
    for name in names:
        found = getattr(module, name, None)
        if found is not None:
            return found
    raise ImportError(f"{module.__name__} has none of {', '.join(names)}: "
                      "a mitmproxy this version of egress-filter does not know")


DNSMessage: Any = _first(dns, "DNSMessage", "Message")


def unpack_dns(data: bytes) -> DnsMessage:
    """A wire-format DNS message.  Raises what mitmproxy's codec raises on bad
    input (``ValueError``, ``struct.error``, ``IndexError``)."""
    message: DnsMessage = DNSMessage.unpack(data)
    return message


def _quic_passthrough() -> bool:
    """Whether an ignored QUIC connection is relayed, read from the code that
    relays it.  The broken path hands the parent layer a bound method of the
    replacement ``UDPLayer`` (``parent_layer._handle_event =
    replacement_layer._handle_event``) while that layer is still in its
    ``start`` state; ``UDPLayer.start`` then moves only the replacement on to
    ``relay_messages``, never the parent.  A mitmproxy that no longer makes
    that assignment has changed the path the bug lives in; whether the new
    one relays is what tests/proxy/test_quic_passthrough.py proves end to end."""
    # Unsure is "no": refusing QUIC costs a client one retry over TCP, while
    # passing it to a mitmproxy that stalls it costs a timeout.  A restructured
    # mitmproxy that relays QUIC makes test_quic_passthrough.py fail, which is
    # the signal to teach this function its new shape.
    try:
        from mitmproxy.proxy.layers.quic import _stream_layers

        source = inspect.getsource(_stream_layers.ClientQuicLayer.receive_handshake_data)
    except (ImportError, OSError, TypeError, AttributeError):  # moved, or no source shipped (frozen)
        return False
    return "parent_layer._handle_event = replacement_layer._handle_event" not in source


QUIC_PASSTHROUGH: bool = _quic_passthrough()
