"""The verdict link: the policy's decision for the asking client's group.

Every verdict is decided by the core (``GroupView.decide_name``); this link
only memoises it per (group, name) for one ``PolicyView`` (a new view starts
a new memo, so a reload or a phase change never serves an old verdict) and
picks the strictest verdict on a CNAME chain.  Only the exempt group's
downgrade names the client, so only it is asked again per client.
"""

from __future__ import annotations

from typing import NamedTuple

from policies import Action, Decision, Kind, PolicyView
from policies.bounded import BoundedMemo
from policies.decide import GroupView

MEMO_LIMIT = 50_000  # names per group; the group's memo is cleared when full


class ChainVerdict(NamedTuple):
    """The strictest verdict on a CNAME chain, and the target it is about."""

    decision: Decision
    target: str


class Verdicts:
    def __init__(self) -> None:
        self._memo: dict[GroupView, BoundedMemo[str, Decision]] = {}
        self._view: PolicyView | None = None

    def clear(self) -> None:
        self._memo = {}

    def decide(self, view: PolicyView, gv: GroupView, name: str, client: str) -> Decision:
        """The group's verdict on ``name``, memoised per (group, name) for ``view``."""
        if view is not self._view:
            self._memo = {}
            self._view = view
        memo = self._memo.get(gv)
        if memo is None:
            memo = self._memo[gv] = BoundedMemo(MEMO_LIMIT)
        d = memo.get(name)
        if d is None:
            d = memo.put(name, gv.decide_name(name, Kind.DNS, None))
        if gv.group.exempt and d.enforced is not None:
            return gv.decide_name(name, Kind.DNS, client)
        return d

    @staticmethod
    def judge_chain(gv: GroupView, cnames: tuple[str, ...], client: str) -> ChainVerdict | None:
        """The strictest verdict of the asker's group on the CNAME targets (a block ends the walk)."""
        worst: ChainVerdict | None = None
        for target in cnames:
            d = gv.decide_name(target, Kind.DNS, client)
            stricter = worst is None or d.action.severity > worst.decision.action.severity
            if d.action is not Action.ALLOW and stricter:
                worst = ChainVerdict(d, target)
                if d.action is Action.BLOCK:
                    break
        return worst

    @staticmethod
    def after_chain(gv: GroupView, cnames: tuple[str, ...], d: Decision,
                    client: str) -> Decision | ChainVerdict:
        """What an answer with these CNAME targets gets: a ``ChainVerdict`` when a
        target is blocked, else the verdict to act on (a logged target turns an
        allowed name into a log; the name's own verdict otherwise stands)."""
        chained = Verdicts.judge_chain(gv, cnames, client)
        if chained is None:
            return d
        if chained.decision.action is Action.BLOCK:
            return chained
        return chained.decision if d.action is Action.ALLOW else d
