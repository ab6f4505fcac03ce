"""List subscriptions: download each ``lists: {url: https://...}`` into its cache file, on schedule.

    holder.policy.subscriptions ─▶ due? (no cache yet, or older than ``refresh``) ─▶ GET over HTTPS
        ─▶ at most settings.max_file_size bytes ─▶ checked as a local list (policies.loader.list_problems)
        ─▶ good: written beside the cache, fsynced, os.replace'd over it ─▶ the holder's watcher reloads
        ─▶ bad or failed: the last good copy stays, the log says why; retried after RETRY (or refresh)

The policy holder starts one ``Downloader`` (its only hook), whose thread
runs once the policy has a subscription (a reload may add one); nothing
here is in ``policies``, which never does I/O.  The cached copy is what the
loader reads, so at start the last good copy is used until a fresh one
arrives, and an outage never empties the policy.  A download is refused
when it is not valid UTF-8 list text, when a line is not a name, when it
holds no name at all (a captive portal's page, an emptied mirror), or when
it is larger than ``settings.max_file_size``.  Redirects are followed only
to https:// URLs, proxy variables are ignored, and the certificate is always
verified (against the system's CAs plus the entry's ``ca``).
"""

from __future__ import annotations

import logging
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import httpx

from policies import Policy
from policies.loader import list_problems
from policies.model import Subscription

log = logging.getLogger("egress_filter.lists")

TICK = 1.0
RETRY = 300.0  # seconds before a failed download is tried again (or the refresh, if shorter)
TIMEOUT = 30.0
MAX_REDIRECTS = 5


class Holder(Protocol):
    @property
    def policy(self) -> Policy: ...

    def subscribe(self, listener: Callable[[str], None]) -> None: ...


class DownloadError(Exception):
    pass


def fetch(sub: Subscription, limit: int) -> bytes:
    """The body of ``sub.url``, at most ``limit`` bytes; raises ``DownloadError``."""
    ctx = ssl.create_default_context()
    if sub.ca:
        try:
            ctx.load_verify_locations(cafile=sub.ca)
        except (OSError, ssl.SSLError) as exc:
            raise DownloadError(f"cannot load the CA bundle {sub.ca}: {exc}") from exc
    url = sub.url
    try:
        with httpx.Client(verify=ctx, trust_env=False, timeout=TIMEOUT, follow_redirects=False) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url, headers={"accept-encoding": "identity"}) as resp:
                    if resp.is_redirect:
                        target = str(resp.next_request.url) if resp.next_request else ""
                        if not target.startswith("https://"):
                            raise DownloadError(f"redirected to a non-HTTPS URL {target!r}")
                        url = target
                        continue
                    if resp.status_code != 200:
                        raise DownloadError(f"HTTP {resp.status_code}")
                    body = bytearray()
                    for chunk in resp.iter_raw():
                        body += chunk
                        if len(body) > limit:
                            raise DownloadError(f"larger than {limit} bytes (settings.max_file_size)")
                    return bytes(body)
    except httpx.HTTPError as exc:
        raise DownloadError(f"{type(exc).__name__}: {exc}") from exc
    raise DownloadError(f"more than {MAX_REDIRECTS} redirects")


def validate(sub: Subscription, data: bytes) -> str | None:
    """Why ``data`` may not replace the cached copy, or None when it may."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not UTF-8 text (offset {exc.start})"
    names, problems = list_problems(data, sub.exact)
    if problems:
        line, message = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return f"line {line}: {message}{more}"
    if names == 0:
        return "no names in it"
    return None


def swap_in(cache: str, data: bytes) -> None:
    """Write ``data`` beside ``cache`` and rename it over: readers see the old file or the new one."""
    path = Path(cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".download-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Downloader:
    """One daemon thread for all of a holder's subscriptions."""

    def __init__(self, holder: Holder):
        self.holder = holder
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._retry_at: dict[tuple[str, str], float] = {}
        self._listening = False
        self.downloads = 0  # good copies swapped in
        self.failures = 0

    def start(self) -> None:
        """Start the thread once the policy has a subscription; until then, wait for a reload."""
        if not self._listening:
            self._listening = True
            self.holder.subscribe(lambda reason: self.start() if reason == "reload" else None)
        if self._thread is None and self.holder.policy.subscriptions and not self._stop.is_set():
            self._thread = threading.Thread(target=self._run, name="egress-list-downloads", daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(TIMEOUT + 5)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # the thread must outlive any one bad tick
                log.exception("list subscriptions: tick failed")
            self._stop.wait(TICK)

    def due(self, sub: Subscription, now: float) -> bool:
        key = (sub.url, sub.cache)
        if now < self._retry_at.get(key, 0.0):
            return False
        try:
            age = time.time() - os.stat(sub.cache).st_mtime
        except OSError:
            return True  # no copy yet
        return age >= sub.refresh

    def tick(self) -> None:
        policy = self.holder.policy
        now = time.monotonic()
        for sub in policy.subscriptions:
            if self._stop.is_set():
                return
            if self.due(sub, now):
                self.refresh(sub, policy.settings.max_file_size)

    def refresh(self, sub: Subscription, limit: int) -> bool:
        key = (sub.url, sub.cache)
        try:
            data = fetch(sub, limit)
            why = validate(sub, data)
            if why is not None:
                raise DownloadError(f"refused: {why}")
            swap_in(sub.cache, data)
        except (DownloadError, OSError) as exc:
            self.failures += 1
            self._retry_at[key] = time.monotonic() + min(RETRY, sub.refresh)
            kept = ("keeping the last good copy" if os.path.exists(sub.cache)
                    else "no copy yet, so no names from it")
            log.warning("list %s: download failed, %s: %s", sub.url, kept, exc)
            return False
        self._retry_at.pop(key, None)
        self.downloads += 1
        log.info("list %s: new copy in %s (%d bytes)", sub.url, sub.cache, len(data))
        return True
