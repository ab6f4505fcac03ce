"""The proxy auto-config file: ``/proxy.pac`` and ``/wpad.dat`` on a listener of their own.

Browsers find it by DHCP option 252 or the DNS name ``wpad`` (docs/proxy.md),
or are given its URL.  ``FindProxyForURL`` sends internal destinations
``DIRECT`` and everything else to the proxy, with no ``DIRECT`` fallback (a
client that cannot reach the proxy must not bypass it):

* single-label hosts (``intranet``) and ``localhost``;
* IP literals in loopback, RFC 1918 and link-local networks, IPv6 loopback,
  unique-local and link-local (``::1``, ``fc00::/7``, ``fe80::/10``) and every
  ``egress_pac_direct`` CIDR;
* names under every ``egress_pac_direct`` domain.

Names are never resolved by the script (``dnsResolve`` in a PAC file stalls
every page load on a DNS lookup); a name that only resolves to an internal
address goes to the proxy, which reaches it.  Options: ``egress_pac_listen``
(off unless set; a bare port listens on loopback), ``egress_pac_proxy`` (the
address advertised; default the proxy's own listen address, or, when that is
a wildcard, the host the client fetched the file from) and
``egress_pac_direct``.  Everything written into the script is validated
first and written as JSON strings.
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import logging
import re
import socket
import threading
from collections.abc import Sequence
from typing import Any

from mitmproxy import ctx

from .decisions import options_error

log = logging.getLogger(__name__)

PAC_PATHS = ("/proxy.pac", "/wpad.dat")
PAC_MEDIA_TYPE = "application/x-ns-proxy-autoconfig"
INTERNAL_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                     "::1/128", "fc00::/7", "fe80::/10")
_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_DOMAIN = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(\.{_LABEL})*$")
_HOST = re.compile(r"^[A-Za-z0-9.\-]{1,253}$|^\[[0-9A-Fa-f:.]{2,45}\]$")
WILDCARDS = ("", "0.0.0.0", "::", "[::]")

_SCRIPT = """\
// egress-filter proxy auto-config: internal destinations DIRECT, everything else through the proxy.
var EGRESS_PROXY = %(proxy)s;
var DIRECT_DOMAINS = %(domains)s;
var DIRECT_NETS4 = %(nets4)s;
var DIRECT_NETS6 = %(nets6)s;

function egressIsIPv4(host) {
  return /^[0-9]{1,3}(\\.[0-9]{1,3}){3}$/.test(host);
}

function egressInNet6(host, net) {
  // host and the network's prefix as 128-bit hex strings; compare the prefix's bits.
  function expand(a) {
    var halves = a.split("::"), head = halves[0] ? halves[0].split(":") : [];
    var tail = halves.length > 1 && halves[1] ? halves[1].split(":") : [];
    if (tail.length && tail[tail.length - 1].indexOf(".") >= 0) return null;
    var fill = 8 - head.length - tail.length, groups = head.slice();
    if (halves.length > 2 || fill < 0 || (halves.length === 1 && fill !== 0)) return null;
    for (var i = 0; i < fill; i++) groups.push("0");
    groups = groups.concat(tail);
    var bits = "";
    for (var j = 0; j < 8; j++) {
      if (!/^[0-9a-f]{1,4}$/.test(groups[j])) return null;
      var n = parseInt(groups[j], 16);
      for (var k = 15; k >= 0; k--) bits += (n >> k) & 1;
    }
    return bits;
  }
  var h = expand(host), p = expand(net[0]);
  return h !== null && p !== null && h.substring(0, net[1]) === p.substring(0, net[1]);
}

function FindProxyForURL(url, host) {
  host = host.toLowerCase();
  if (host.charAt(host.length - 1) === ".") host = host.substring(0, host.length - 1);
  if (host.charAt(0) === "[") host = host.substring(1, host.length - 1);
  if (host.indexOf(":") >= 0) {
    for (var i = 0; i < DIRECT_NETS6.length; i++) {
      if (egressInNet6(host, DIRECT_NETS6[i])) return "DIRECT";
    }
    return EGRESS_PROXY;
  }
  if (egressIsIPv4(host)) {
    for (var j = 0; j < DIRECT_NETS4.length; j++) {
      if (isInNet(host, DIRECT_NETS4[j][0], DIRECT_NETS4[j][1])) return "DIRECT";
    }
    return EGRESS_PROXY;
  }
  if (isPlainHostName(host) || host === "localhost") return "DIRECT";
  for (var k = 0; k < DIRECT_DOMAINS.length; k++) {
    var d = DIRECT_DOMAINS[k];
    if (host === d || dnsDomainIs(host, "." + d)) return "DIRECT";
  }
  return EGRESS_PROXY;
}
"""


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_direct(entries: Sequence[str]) -> tuple[list[Network], list[str]]:
    """``egress_pac_direct`` entries: CIDRs (or addresses) and domains, validated."""
    nets: list[Network] = []
    domains: list[str] = []
    for entry in entries:
        text = entry.strip().lower().rstrip(".").removeprefix("*.").lstrip(".")
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
            continue
        except ValueError:
            pass
        if not _DOMAIN.match(text):
            raise options_error(f"egress_pac_direct: '{entry}' is neither a CIDR nor a domain name")
        domains.append(text)
    return nets, domains


def render(proxy: str, direct: Sequence[str]) -> str:
    """The PAC script sending ``direct`` and the internal networks DIRECT, the rest to ``proxy``."""
    nets, domains = parse_direct(direct)
    all_nets = [ipaddress.ip_network(n) for n in INTERNAL_NETWORKS] + nets
    nets4 = [[str(n.network_address), str(n.netmask)] for n in all_nets if n.version == 4]
    nets6 = [[str(n.network_address.exploded), n.prefixlen] for n in all_nets if n.version == 6]
    return _SCRIPT % {"proxy": json.dumps(f"PROXY {proxy}"), "domains": json.dumps(domains),
                      "nets4": json.dumps(nets4), "nets6": json.dumps(nets6)}


def parse_address(option: str, text: str, *, default_host: str | None) -> tuple[str, int]:
    """``HOST:PORT`` (or a bare ``PORT`` when ``default_host`` is given)."""
    host, sep, port = text.strip().rpartition(":")
    if not sep and default_host is not None:
        host, port = default_host, text.strip()
    if not port.isdigit() or not 0 <= int(port) < 65536 or (host and not _HOST.match(host)):
        raise options_error(f"{option}: '{text}' is not HOST:PORT")
    return host.strip("[]") or (default_host or ""), int(port)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _PacServer
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path not in PAC_PATHS:
            self._send(404, "text/plain; charset=utf-8", b"not found: try /proxy.pac or /wpad.dat\n")
            return
        self._send(200, PAC_MEDIA_TYPE, self.server.script_for(self.headers.get("host")).encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def _send(self, status: int, media_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=300")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("egress-filter pac: %s " + format, self.client_address[0], *args)


class _PacServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], proxy: str | None, proxy_port: int, direct: list[str]):
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)
        self.advertise(proxy, proxy_port, direct)

    def advertise(self, proxy: str | None, proxy_port: int, direct: list[str]) -> None:
        self.proxy_port, self.direct = proxy_port, direct
        self._fixed = render(proxy, direct) if proxy else None

    def script_for(self, host_header: str | None) -> str:
        if self._fixed is not None:
            return self._fixed
        # The proxy listens on every address: advertise the one the client reached us by.
        host = (host_header or "").strip()
        name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0] if host else ""
        if not name or not _HOST.match(name if ":" not in name else f"[{name}]"):
            name = "127.0.0.1"
        name = f"[{name}]" if ":" in name else name
        return render(f"{name}:{self.proxy_port}", self.direct)


class PacServer:
    """Serves the PAC file while ``egress_pac_listen`` is set."""

    def __init__(self) -> None:
        self._server: _PacServer | None = None
        self._thread: threading.Thread | None = None
        self._config: tuple[Any, ...] | None = None

    def load(self, loader: Any) -> None:
        loader.add_option("egress_pac_listen", str | None, None,
                          "Serve the proxy auto-config file (/proxy.pac, /wpad.dat) on HOST:PORT "
                          "(a bare PORT listens on 127.0.0.1). Default: off.")
        loader.add_option("egress_pac_proxy", str | None, None,
                          "The proxy address the PAC file points browsers at (HOST:PORT). Default: "
                          "the proxy's listen address, or the host the PAC was fetched from when "
                          "the proxy listens on every address.")
        loader.add_option("egress_pac_direct", Sequence[str], [],
                          "CIDRs and domains the PAC file sends DIRECT, besides loopback, RFC 1918, "
                          "link-local and single-label hosts (repeatable).")

    def configure(self, updated: set[str]) -> None:
        opts = ctx.options
        if not updated & {"egress_pac_listen", "egress_pac_proxy", "egress_pac_direct", "listen_host",
                          "listen_port"}:
            return
        if not opts.egress_pac_listen:
            self.stop()
            return
        address = parse_address("egress_pac_listen", opts.egress_pac_listen, default_host="127.0.0.1")
        direct = list(opts.egress_pac_direct)
        parse_direct(direct)  # raise OptionsError before anything changes
        listen_port = getattr(opts, "listen_port", None) or 8080
        if opts.egress_pac_proxy:
            host, port = parse_address("egress_pac_proxy", opts.egress_pac_proxy, default_host=None)
            if not host:
                raise options_error(f"egress_pac_proxy: '{opts.egress_pac_proxy}' has no host")
            proxy: str | None = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        else:
            listen_host = getattr(opts, "listen_host", "") or ""
            proxy = None if listen_host in WILDCARDS else (
                f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"{listen_host}:{listen_port}")
        config = (address, proxy, listen_port, tuple(direct))
        if config == self._config:
            return
        if self._server is not None and self._config is not None and self._config[0] == address:
            self._server.advertise(proxy, listen_port, direct)  # same listener, new contents
            self._config = config
            return
        try:
            server = _PacServer(address, proxy, listen_port, direct)
        except OSError as exc:
            where = opts.egress_pac_listen
            raise options_error(f"egress_pac_listen: cannot listen on {where}: {exc}") from exc
        self.stop()
        self._server, self._config = server, config
        self._thread = threading.Thread(target=server.serve_forever, name="egress-pac", daemon=True)
        self._thread.start()
        log.info("egress-filter: PAC file on http://%s:%d/proxy.pac (and /wpad.dat), proxy %s",
                 address[0], server.server_address[1], proxy or f"<the PAC's host>:{listen_port}")

    @property
    def port(self) -> int | None:
        return int(self._server.server_address[1]) if self._server is not None else None

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._config = None

    def done(self) -> None:
        self.stop()
