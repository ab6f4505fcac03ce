"""The ACL link: which clients may ask.  A verdict per client address is
memoised (bounded: cleared when full), since a client asks many times."""

from __future__ import annotations

import ipaddress

from policies.bounded import BoundedMemo

SEEN_LIMIT = 65_536  # client addresses whose verdict is remembered


class Acl:
    """Which clients may ask; per-address verdicts are memoised."""

    def __init__(self, networks: tuple[str, ...]):
        self.networks = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self.seen: BoundedMemo[str, bool] = BoundedMemo(SEEN_LIMIT)

    def allows(self, client: str) -> bool:
        ok = self.seen.get(client)
        if ok is None:
            try:
                ip = ipaddress.ip_address(client.split("%", 1)[0])
            except ValueError:
                ok = False
            else:
                mapped = getattr(ip, "ipv4_mapped", None)
                ip = mapped or ip
                ok = any(ip.version == n.version and ip in n for n in self.networks)
            self.seen.put(client, ok)
        return ok
