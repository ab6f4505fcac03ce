"""DNS-over-HTTPS upstreams (RFC 8484): ``https://HOST[:PORT]/PATH[#NAME]``.

    clean query (ID 0) ─▶ POST application/dns-message ─▶ httpx, HTTP/2 (h2), one pooled connection
                                                                                         │
    answer (ID 0) ◀─ at most 65,535 bytes ◀─ 200 and application/dns-message only ◀──────┘

httpx keeps the connection open and multiplexes concurrent queries as
HTTP/2 streams on it (HTTP/1.1 when the server offers no h2, with up to
``MAX_CONNECTIONS`` connections).  At most ``MAX_PENDING`` queries are in
flight per upstream; beyond that it is ``busy`` and the forwarder asks the
next upstream.  The query keeps ID 0 as RFC 8484 section 4.1 asks (so HTTP
caches can share answers); the answer must carry ID 0 too.  A body larger
than a DNS message can be, or any other status or content type, is a
failure of this upstream; the body is read with ``Accept-Encoding:
identity``, so nothing is decompressed.  Proxy variables in the
environment are ignored (``trust_env=False``): a resolver connects where its
configuration says.

The certificate is verified against ``NAME`` when one is pinned
(``https://9.9.9.9/dns-query#dns.quad9.net`` connects to 9.9.9.9, sends SNI
and Host dns.quad9.net), else against the URL's host.  The time budget is
the forwarder's (it cancels the request), so httpx's own timeouts are off.
"""

from __future__ import annotations

import ssl

import httpx

from .upstream import ChannelError, Rejecter

MAX_CONNECTIONS = 4
MAX_PENDING = 256
IDLE = 20.0  # seconds an unused connection stays open
MAX_ANSWER = 65_535
MEDIA = "application/dns-message"


def _tls_cause(exc: BaseException) -> ssl.SSLError | None:
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 8:  # a short chain; bounded
        if isinstance(cur, ssl.SSLError):
            return cur
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None


class HttpsUpstream:
    """One DoH upstream and its httpx client (made on first use, inside the loop)."""

    def __init__(self, url: str, name: str | None, context: ssl.SSLContext, label: str):
        self.url = url
        self.name = name
        self.context = context
        self._label = label
        self._client: httpx.AsyncClient | None = None
        self.inflight = 0

    @property
    def label(self) -> str:
        return self._label

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                http2=True, verify=self.context, trust_env=False, follow_redirects=False, timeout=None,
                limits=httpx.Limits(max_connections=MAX_CONNECTIONS,
                                    max_keepalive_connections=MAX_CONNECTIONS, keepalive_expiry=IDLE))
        return self._client

    async def exchange(self, query: bytes, reject: Rejecter) -> bytes:
        if self.inflight >= MAX_PENDING:
            raise ChannelError(f"{self.label}: {MAX_PENDING} queries in flight", "busy")
        headers = {"content-type": MEDIA, "accept": MEDIA, "accept-encoding": "identity"}
        extensions: dict[str, str] = {}
        if self.name:
            headers["host"] = self.name
            extensions["sni_hostname"] = self.name
        self.inflight += 1
        try:
            async with self._http().stream("POST", self.url, content=query, headers=headers,
                                           extensions=extensions) as resp:
                if resp.status_code != 200:
                    raise ChannelError(f"{self.label}: HTTP {resp.status_code}", "http-status")
                ctype = resp.headers.get("content-type", "").split(";", 1)[0].strip().lower()
                if ctype != MEDIA:
                    raise ChannelError(f"{self.label}: content type {ctype!r}, not {MEDIA}", "http-type")
                body = bytearray()
                async for chunk in resp.aiter_raw():
                    body += chunk
                    if len(body) > MAX_ANSWER:
                        reject("oversize", 1)
                        raise ChannelError(f"{self.label}: answer larger than {MAX_ANSWER} bytes",
                                           "bad-answer")
        except httpx.HTTPError as exc:
            tls = _tls_cause(exc)
            if tls is not None:
                raise ChannelError(f"{self.label}: TLS: {tls.reason or tls}", "tls") from exc
            reason = "connect" if isinstance(exc, httpx.ConnectError) else "http"
            raise ChannelError(f"{self.label}: {type(exc).__name__}: {exc}", reason) from exc
        finally:
            self.inflight -= 1
        if len(body) < 12 or body[:2] != b"\0\0":
            reject("id", 1)
            raise ChannelError(f"{self.label}: the answer does not carry ID 0", "bad-answer")
        return bytes(body)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
