"""The policy holder both servers share: load, hot reload, phase changes.

Readers take ``holder.view`` (a ``PolicyView``) per request: one attribute
read.  A reload or a change of day builds a new view off the hot path and
swaps the reference; a bad file keeps the last good policy.  Subscribers are
told after every swap (``"reload"``) and when some app's effective phase
changes (``"phase"``), so caches can be flushed.

Files are read with no lock held (the loader never blocks on a FIFO, but a
slow disk must not stall phase changes either); the lock only guards the
swap.  One reload runs at a time: a reload asked for meanwhile (another
SIGHUP) runs once more after it, rather than piling up threads.  A reload
that would block nothing the policy in force blocks (a gutted file) is
refused unless ``allow_empty`` or the new file's ``settings.allow_empty``.
Every reload logs what it changed (runtime/changes.py: apps and rules
before -> after, the phases that moved) and, after ``report_to``, emits it
as an event; a failed one names the policy it keeps.

A pause (``egress-filter pause``, the dashboard's switch) is holder state too:
``pause`` swaps in a view built with ``paused`` set, in which every group
monitors and each downgraded reason says who paused enforcement and until
when; its end (``resume``, the deadline, or a reload to a policy with
``settings.allow_pause: false``) swaps the plain view back.  Every adapter
decides through ``holder.view``, so none has its own pause logic; pause
listeners are told of each start and end (the control socket logs them).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from policies import (
    LegalStatus,
    Mode,
    Phase,
    Policy,
    PolicyError,
    PolicyIssue,
    PolicyView,
    blocks_anything,
    load_policy,
    policy_warnings,
)
from policies.events import utc_iso

from . import changes, notify

if TYPE_CHECKING:
    from .subscriptions import Downloader

log = logging.getLogger("egress_filter.policy")

Listener = Callable[[str], None]
T = TypeVar("T")
MAX_PAUSE = 24 * 3600.0  # seconds: the longest pause one request may ask for


class PauseRefused(Exception):
    """A pause the policy or its bounds do not allow; the message says why."""


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: the uid and user name the control socket authenticated, and
    ``via`` what said it relays for whom (``dashboard token holder at
    127.0.0.1``), never in place of the uid."""

    uid: int
    user: str
    via: str | None = None

    @property
    def who(self) -> str:
        me = f"uid {self.uid} ({self.user})"
        return f"{self.via} via {me}" if self.via else me


@dataclass(frozen=True, slots=True)
class Pause:
    """One pause of enforcement: since and until (wall clock, epoch seconds),
    the deadline on the monotonic clock, and who asked for it."""

    since: float
    until: float
    deadline: float
    by: Actor
    ended: str | None = None  # "resumed", "replaced", "expired" or "policy"; None while in force
    ended_by: Actor | None = None  # who resumed or replaced it

    @property
    def reason(self) -> str:
        return f"enforcement paused until {utc_iso(self.until)} by {self.by.who}"


PauseListener = Callable[[Pause], None]


class EventSink(Protocol):
    """Where reload events go (runtime.eventlog.EventLog)."""

    @property
    def enabled(self) -> bool: ...

    def emit(self, event: dict[str, Any]) -> None: ...


class PolicyHolder:
    def __init__(self, path: str | os.PathLike[str] | None = None, *, at: dt.date | None = None,
                 phase: Phase | None = None, mode: Mode | None = None,
                 clock: Callable[[], dt.datetime] | None = None, allow_empty: bool = False,
                 legal_status: LegalStatus | None = None):
        """Load the policy now; a bad first policy raises ``PolicyError``.
        ``allow_empty`` accepts reloads that block nothing (``--allow-empty``);
        ``legal_status`` (``--legal-status``) wins over every group's setting."""
        self.path = Path(path) if path is not None else None
        self.at = at
        self.phase = phase
        self.mode = mode
        self.legal_status = legal_status
        self.allow_empty = allow_empty
        self._clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.downloader: Downloader | None = None  # list subscriptions (httpx is imported only then)
        self.last_error: PolicyError | None = None
        self.last_change: changes.Change | None = None  # what the last successful reload changed
        self.events: EventSink | None = None  # set by ``report_to``: reloads become events
        self.component = "policy"
        self.reloads = 0
        self._loading = False  # a reload is reading files (guarded by _lock)
        self._again = False  # another reload was asked for meanwhile
        self._pause: Pause | None = None
        self._pause_timer: threading.Timer | None = None
        self._pause_listeners: list[PauseListener] = []
        self.policy: Policy = load_policy(self.path)
        self._stamps = self._file_stamps()
        self.view: PolicyView = self._make_view(self.policy)
        self._warn(self.policy, self.view)

    # --- what readers use -----------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def report_to(self, events: EventSink, component: str) -> None:
        """Emit an event for every reload (``policy-reload``, ``policy-reload-failed``) to ``events``."""
        self.events, self.component = events, component

    def subscribe_pause(self, listener: PauseListener) -> None:
        """Told every pause that starts and every one that ends (``ended`` set)."""
        self._pause_listeners.append(listener)

    @property
    def paused(self) -> Pause | None:
        """The pause in force, if any (one that has run out is ended here)."""
        p = self._pause
        if p is not None and time.monotonic() >= p.deadline:
            self._end(p, "expired")
            return None
        return self._pause

    def day(self, policy: Policy | None = None) -> dt.date:
        return self.at or (policy or self.policy).today(self._clock())

    # --- changes ----------------------------------------------------------------

    def reload(self) -> bool:
        """Load the files again; on success swap and notify, on failure keep
        the old policy.  False also when a reload already in progress will
        run once more for this call."""
        with self._lock:
            if self._loading:
                self._again = True
                return False
            self._loading = True
        try:
            while True:
                ok = self._reload_once()
                with self._lock:
                    if not self._again:
                        self._loading = False  # in the same hold: no request can slip in between
                        return ok
                    self._again = False
        except BaseException:
            with self._lock:
                self._loading = False
            raise

    def _reload_once(self) -> bool:
        # Stamped before reading: a file that changes while it is being
        # loaded then differs on the next tick and is loaded again.
        before = {s[0]: s for s in self._file_stamps(self._watched())}
        try:
            policy = load_policy(self.path)
            view = self._make_view(policy)
            self._refuse_gutted(policy, view)
        except PolicyError as exc:
            with self._lock:
                self.last_error = exc
                # Wait on what the bad load read (a missing list file too), so
                # that fixing any of it reloads, and the same bad state does not
                # retry every tick.
                self._stamps = self._file_stamps(exc.files) if exc.files else tuple(before.values())
            kept = self.policy
            log.error("policy reload failed, keeping the last good policy (%s, digest %s):\n%s",
                      kept.source, (kept.digest or "-")[:12], exc)
            self._emit(False, f"policy reload failed, keeping the last good policy ({kept.source}): "
                       f"{len(exc.issues)} problem(s)", kept, {"problems": [str(i) for i in exc.issues]})
            return False
        stamps = tuple(before.get(s[0], s) for s in self._file_stamps(policy.files))
        with self._lock:
            old = self.view
            self.policy = policy
            self._stamps = stamps
            self.view = self._make_view(policy) if self._overrides_changed(view) else view
            self.last_error = None
            self.reloads += 1
            done = self.last_change = changes.change(old, self.view)
            pause = self._pause
        message = f"policy reloaded from {policy.source}: {done.describe()}"
        log.info("%s", message)
        self._emit(True, message, policy, done.as_dict())
        self._warn(policy, view)
        self._notify("reload")
        if pause is not None and not policy.settings.allow_pause:
            self._end(pause, "policy")
        return True

    def _overrides_changed(self, view: PolicyView) -> bool:
        """set_overrides ran while the files were read: the view is stale."""
        return ((view.at, view.phase_override, view.mode, view.legal_status, view.paused)
                != (self.day(view.policy), self.phase, self._mode(view.policy), self.legal_status,
                    self._paused_reason()))

    def _refuse_gutted(self, policy: Policy, view: PolicyView) -> None:
        """A reload that would turn every block into an allow needs consent."""
        if self.allow_empty or policy.settings.allow_empty:
            return
        old = self.view
        if (any(blocks_anything(old.policy, g.phases) for g in old.groups.values())
                and not any(blocks_anything(policy, g.phases) for g in view.groups.values())):
            raise PolicyError([PolicyIssue(
                policy.source or "<policy>", 0, "(policy)",
                f"the new policy blocks nothing on {view.at}, where the one in force blocks; "
                "refused (start with --allow-empty, or set settings.allow_empty: true, to accept it)")],
                policy.files)

    def _warn(self, policy: Policy, view: PolicyView) -> None:
        for warning in policy_warnings(policy, view.at, self.phase, view.mode):
            log.warning("%s: warning: %s", policy.source, warning)

    def set_overrides(self, *, at: dt.date | None = None, phase: Phase | None = None,
                      mode: Mode | None = None, legal_status: LegalStatus | None = None) -> None:
        with self._lock:
            self.at, self.phase, self.mode, self.legal_status = at, phase, mode, legal_status
            self.view = self._make_view(self.policy)
        self._notify("reload")

    # --- pause -------------------------------------------------------------------

    def pause(self, seconds: float, by: Actor) -> Pause:
        """Monitor instead of enforcing for ``seconds``; a pause in force is
        replaced (its end logged as ``resumed``).  Raises ``PauseRefused`` when
        the policy says ``settings.allow_pause: false`` or the length is out of bounds."""
        if not self.policy.settings.allow_pause:
            raise PauseRefused(f"pausing is disabled by the policy (settings.allow_pause: false in "
                               f"{self.policy.source or 'the policy'})")
        if not 0 < seconds <= MAX_PAUSE:
            raise PauseRefused(f"a pause lasts more than 0 s and at most {MAX_PAUSE / 3600:g} h, "
                               f"not {seconds:g} s")
        now = time.time()
        new = Pause(now, now + seconds, time.monotonic() + seconds, by)
        with self._lock:
            old, self._pause = self._pause, new
            self.view = self._make_view(self.policy)
            self._arm(new, seconds)
        if old is not None:
            self._tell(replace(old, ended="replaced", ended_by=by))
        log.warning("%s", new.reason)
        self._notify("pause")
        self._tell(new)
        return new

    def resume(self, by: Actor) -> Pause | None:
        """End the pause in force now; returns it, ended (None: none was in force)."""
        p = self.paused
        if p is None:
            return None
        return self._end(p, "resumed", by)

    def _arm(self, pause: Pause, seconds: float) -> None:
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        timer = threading.Timer(seconds, self._expire, args=(pause,))
        timer.name = "egress-pause-timer"
        timer.daemon = True
        timer.start()
        self._pause_timer = timer

    def _expire(self, pause: Pause) -> None:
        # A Timer can fire a hair early on a loaded machine: wait out the rest.
        left = pause.deadline - time.monotonic()
        if left > 0:
            time.sleep(min(left, 1.0))
        self._end(pause, "expired")

    def _end(self, pause: Pause, how: str, by: Actor | None = None) -> Pause | None:
        """End ``pause`` if it is still the one in force; returns it as ended."""
        with self._lock:
            if self._pause is not pause:
                return None
            self._pause = None
            if self._pause_timer is not None:
                self._pause_timer.cancel()
                self._pause_timer = None
            self.view = self._make_view(self.policy)
        ended = replace(pause, ended=how, ended_by=by)
        log.warning("enforcement resumed (%s; it was %s)", how, pause.reason)
        self._notify("pause")
        self._tell(ended)
        return ended

    def _tell(self, pause: Pause) -> None:
        _call_each(self._pause_listeners, pause, "pause")

    def _paused_reason(self) -> str | None:
        return self._pause.reason if self._pause is not None else None

    def _mode(self, policy: Policy) -> Mode:
        return Mode.MONITOR if self._pause is not None else self.mode or policy.mode

    def refresh(self) -> bool:
        """Re-read the clock; swap in a new view if the day changed, and tell
        subscribers when any app's effective phase changed. Returns that."""
        _ = self.paused  # ends a pause whose timer was missed
        old = self.view
        day = self.day()
        if day == old.at:
            return False
        with self._lock:
            new = self._make_view(self.policy)
            self.view = new
        changed = new.fingerprint != old.fingerprint
        if changed:
            log.info("app phases changed on %s: %s", day, changes.change(old, new).moves())
            self._notify("phase")
        return changed

    def changed_on_disk(self) -> bool:
        return self._file_stamps(self._watched()) != self._stamps

    # --- background watching -------------------------------------------------

    def start(self, interval: float = 1.0) -> None:
        """Watch the policy files and the clock from a daemon thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._watch, args=(interval,), name="egress-policy-watch",
                                        daemon=True)
        self._thread.start()
        # The one hook for list subscriptions (runtime/subscriptions.py): it downloads into
        # the cache files the loader reads, and this watcher reloads when one changes.
        from .subscriptions import Downloader as Fetcher

        self.downloader = Fetcher(self)
        self.downloader.start()

    def stop(self) -> None:
        self._stop.set()
        if self._pause_timer is not None:
            self._pause_timer.cancel()
        if self.downloader is not None:
            self.downloader.stop()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def install_sighup(self) -> None:
        """Reload on SIGHUP (main thread only). The reload runs on a helper
        thread so that a signal never stalls the event loop."""
        reload = notify.around_reload(self.reload)  # RELOADING=1 ... READY=1 to a service manager

        def handler(signum: int, frame: object) -> None:
            threading.Thread(target=reload, name="egress-policy-sighup", daemon=True).start()
        signal.signal(signal.SIGHUP, handler)

    def _watch(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                if self.changed_on_disk():
                    self.reload()
                self.refresh()
            except Exception:  # the watcher must outlive any one bad tick
                log.exception("policy watcher tick failed")

    # --- internals -------------------------------------------------------------

    def _make_view(self, policy: Policy) -> PolicyView:
        return policy.view(self.day(policy), self.phase, self.mode, self.legal_status, self._paused_reason())

    def _watched(self) -> tuple[str, ...]:
        return tuple(stamp[0] for stamp in self._stamps)

    def _file_stamps(self, files: tuple[str, ...] | None = None) -> tuple[tuple[str, int, int, int], ...]:
        if files is None:
            files = self.policy.files
        out = []
        for f in files:
            try:
                st = os.stat(f)
                out.append((f, st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append((f, 0, 0, 0))
        return tuple(out)

    def _emit(self, ok: bool, message: str, policy: Policy, detail: dict[str, Any]) -> None:
        sink = self.events
        if sink is not None and sink.enabled:
            try:
                sink.emit(changes.event(self.component, ok, message, policy, detail))
            except Exception:  # a reload is never undone by its report
                log.exception("policy reload event failed")

    def _notify(self, reason: str) -> None:
        _call_each(self._listeners, reason, "policy")


def _call_each(listeners: list[Callable[[T], None]], arg: T, what: str) -> None:
    """Tell every listener; one that fails is logged, and the others are still told."""
    for listener in list(listeners):
        try:
            listener(arg)
        except Exception:
            log.exception("%s listener failed", what)
