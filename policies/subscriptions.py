"""``lists:`` entries that are subscriptions: ``{url: https://..., refresh: 24h, path: ..., ca: ...}``.

    policy YAML ─▶ entry() checks url, refresh, ca; picks the cache path ─▶ Subscription in the Policy
                                                                           │
    the loader reads the cache path like a list file (none yet: no names) ◀┘
    runtime/subscriptions.py (I/O, in the policy holder) downloads into it; the holder's
    file watcher then reloads the policy, so a new copy goes through the same load as a local list.

Pure: no download here.  ``path`` is where the cached copy is kept
(relative to the policy file); without it, ``.lists-cache/<hash of the
url>.txt`` beside the policy.  ``refresh`` is a duration (``30s``, ``15m``,
``24h``, ``7d``), 24h when left out.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from .model import Subscription
from .yaml_walk import Walker

DEFAULT_REFRESH = 86_400.0
MIN_REFRESH = 1.0
CACHE_DIR = ".lists-cache"
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration(text: str) -> float | None:
    m = _DURATION.match(text.strip().lower())
    return float(m.group(1)) * _UNITS[m.group(2)] if m else None


def default_cache(url: str) -> str:
    return f"{CACHE_DIR}/{hashlib.sha256(url.encode()).hexdigest()[:16]}.txt"


def entry(w: Walker, m: dict[str, yaml.Node], field: str, base: Path, exact: bool
          ) -> tuple[Subscription, str] | None:
    """The subscription of a ``lists:`` mapping with a ``url`` and the path (as written, or the
    default) of its cached copy; None after reporting what is wrong."""
    url = w.text(m["url"], f"{field}.url")
    if url is None:
        return None
    parts = urlsplit(url.strip())
    if parts.scheme != "https" or not parts.hostname:
        w.err(m["url"], f"{field}.url", f"'{url}' is not an https:// URL (lists are downloaded over "
                                        "HTTPS only)")
        return None
    refresh = DEFAULT_REFRESH
    if "refresh" in m:
        text = w.text(m["refresh"], f"{field}.refresh")
        got = duration(text) if text is not None else None
        if got is None or got < MIN_REFRESH:
            w.err(m["refresh"], f"{field}.refresh", f"'{text}' is not a duration such as 30s, 15m, 24h or 7d"
                  + (f" of at least {MIN_REFRESH:g}s" if got is not None else ""))
            return None
        refresh = got
    ca: str | None = None
    if "ca" in m:
        ca_text = w.text(m["ca"], f"{field}.ca")
        if ca_text is None:
            return None
        ca = ca_text if os.path.isabs(ca_text) else str(base / ca_text)
    rel = w.text(m["path"], f"{field}.path") if "path" in m else default_cache(url.strip())
    if rel is None:
        return None
    cache = rel if os.path.isabs(rel) else str(base / rel)
    return Subscription(url.strip(), cache, refresh, exact, ca), rel
