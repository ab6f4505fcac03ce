"""The identity link: CH-class questions (``hostname.bind``, ``version.bind``
and their ``.server`` names, RFC 4892) are about this server, so they are
answered here from the configured texts and never forwarded; a name with no
text, or any other CH question, is REFUSED."""

from __future__ import annotations

from ..wire import C_CH, Query, chaos_answers, chaos_reply


class Identity:
    def __init__(self, identity: str | None, version: str | None):
        self.answers = chaos_answers(identity, version)

    def reply(self, data: bytes, q: Query) -> bytes | None:
        """The answer to a CH question, or None when ``q`` is not one (the next link's)."""
        if q.qclass != C_CH:
            return None
        return chaos_reply(data, q, self.answers.get((q.name, q.qtype)))
