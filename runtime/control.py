"""The local control socket: ``egress-filter pause`` talks to a running server here.

An ``AF_UNIX`` stream socket, mode 0600, in a directory of mode 0700
(``default_path``: ``/run/egress-filter/control.sock`` for root, else
``$XDG_RUNTIME_DIR/egress-filter/control.sock`` or
``/tmp/egress-filter-<uid>/control.sock``; ``--control PATH`` elsewhere,
``--control off`` for none).  Each connection is one request and one answer,
both a single JSON object on one line:

    {"op": "pause", "seconds": 300}   {"op": "resume"}   {"op": "status"}

answered ``{"ok": true, "paused": ..., "until": ..., "by": ...}`` or
``{"ok": false, "error": "..."}``.  A request is at most ``MAX_REQUEST``
bytes and must arrive within ``READ_TIMEOUT`` seconds; anything else gets an
error answer and the connection is closed, never the server.

The peer is authenticated by the kernel (``SO_PEERCRED``): only root or the
server's own uid is served.  Such a peer may say whom it relays for
(``"for": {"uid": ..., "user": ..., "via": ...}``: ``egress-filter run``
relaying a pause to its children) or what it relays (``"via": "dashboard token
holder at 127.0.0.1"``); both are recorded beside the peer's own uid.

Connections are served one at a time on one daemon thread: the socket is for
the server's own user, and each is bounded in size and time.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import re
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from policies.events import pause_event, utc_iso

from .holder import MAX_PAUSE, Actor, Pause, PauseRefused, PolicyHolder

log = logging.getLogger("egress_filter.control")

MAX_REQUEST = 4096  # bytes in one request line
READ_TIMEOUT = 2.0  # seconds a peer has to send its request
CLIENT_TIMEOUT = 5.0  # seconds the pause command waits for an answer
BACKLOG = 16
REFUSALS_PER_MINUTE = 10  # refused requests logged as events; the rest are counted
OPS = ("pause", "resume", "status")
OFF = "off"

Request = dict[str, Any]
Reply = dict[str, Any]
Emit = Callable[[dict[str, Any]], None]


class ControlError(Exception):
    """The control socket could not be reached or answered badly; the message says why."""


@dataclass(frozen=True, slots=True)
class Peer:
    """Who is on the other end, as the kernel says."""

    pid: int
    uid: int
    gid: int

    @property
    def user(self) -> str:
        return user_name(self.uid)


Handler = Callable[[Request, Peer], Reply]


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def default_path() -> str:
    """Where servers listen and ``pause`` connects when no ``--control`` is given."""
    if os.geteuid() == 0:
        return "/run/egress-filter/control.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        return os.path.join(runtime, "egress-filter", "control.sock")
    return f"/tmp/egress-filter-{os.geteuid()}/control.sock"


# --- durations ---------------------------------------------------------------------

_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``5m``, ``1h30m``, ``2h`` → seconds; ValueError says what is wrong."""
    s = text.strip().lower()
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise ValueError(f"'{text}' is not a duration (e.g. 90s, 5m, 1h30m)")
        total += float(m.group(1)) * _UNIT[m.group(2)]
        pos = m.end()
    if not s:
        raise ValueError("an empty duration (e.g. 90s, 5m, 1h30m)")
    if not 0 < total <= MAX_PAUSE:
        raise ValueError(f"'{text}': a pause lasts more than 0 s and at most {MAX_PAUSE / 3600:g} h")
    return total


# --- the server --------------------------------------------------------------------


class ControlServer:
    """One listening socket and the thread that serves it."""

    def __init__(self, path: str, handler: Handler, name: str = "control"):
        self.path = path
        self.handler = handler
        self.name = name
        self.served = 0
        self.refused = 0  # requests answered with an error (bad, oversize, unauthorised)
        self._sock: socket.socket | None = None
        self._ino: int | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._me = os.geteuid()

    def start(self) -> None:
        """Bind and serve; raises ``ControlError`` when the path is taken by a
        live server or cannot be made safe."""
        path = Path(self.path)
        _private_dir(path.parent)
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(st.st_mode):  # never replace a file (or a symlink) by mistake
                raise ControlError(f"{self.path} exists and is not a socket: not replaced")
        if _alive(self.path):
            raise ControlError(f"{self.path} is in use by another running server (give it --control PATH)")
        # Bound under a temporary name, narrowed to 0600, then renamed into
        # place: the socket is never reachable with looser permissions.
        tmp = f"{self.path}.{os.getpid()}.tmp"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            if os.path.lexists(tmp):
                os.unlink(tmp)
            sock.bind(tmp)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)  # replaces a stale socket left by a killed server
            sock.listen(BACKLOG)
            sock.settimeout(0.5)  # so close() is noticed
        except OSError as exc:
            sock.close()
            raise ControlError(f"cannot listen on {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock
        self._ino = os.stat(self.path).st_ino
        self._thread = threading.Thread(target=self._serve, name=f"egress-{self.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        try:  # only our own socket: another server may have taken the path since
            if self._ino is not None and os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                time.sleep(0.1)  # EMFILE and the like: do not spin
                continue
            try:
                self._one(conn)
            except Exception:  # one bad connection never ends the thread
                log.exception("control request failed")
            finally:
                conn.close()

    def _one(self, conn: socket.socket) -> None:
        conn.settimeout(READ_TIMEOUT)
        pid, uid, gid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                            struct.calcsize("3i")))
        peer = Peer(pid, uid, gid)
        try:  # read first (bounded), so that the peer is not cut off mid-send
            request = _read_request(conn)
        except ControlError as exc:
            request, bad = {}, str(exc)
        else:
            bad = ""
        if uid not in (0, self._me):
            self.refused += 1
            _send(conn, self.handler({"op": "denied", "_error": (
                f"uid {uid} ({peer.user}) may not control this server: only root or "
                f"uid {self._me} ({user_name(self._me)})")}, peer))
            return
        if bad:
            self.refused += 1
            _send(conn, {"ok": False, "error": bad})
            return
        self.served += 1
        _send(conn, self.handler(request, peer))


def _private_dir(d: Path) -> None:
    """Make ``d`` (mode 0700) if missing; refuse one others could write into."""
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.stat(d)
    except OSError as exc:
        raise ControlError(f"cannot make the control directory {d}: {exc.strerror or exc}") from exc
    if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
        raise ControlError(f"{d} is writable by everyone: put the control socket elsewhere (--control PATH)")


def _alive(path: str) -> bool:
    if not os.path.lexists(path):
        return False
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(0.5)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _read_request(conn: socket.socket) -> Request:
    buf = b""
    deadline = time.monotonic() + READ_TIMEOUT
    while b"\n" not in buf:
        if len(buf) > MAX_REQUEST:
            raise ControlError(f"request too large (more than {MAX_REQUEST} bytes)")
        conn.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
        except TimeoutError as exc:
            raise ControlError(f"no whole request line within {READ_TIMEOUT:g} s") from exc
        if not chunk:
            break
        buf += chunk
    line = buf.split(b"\n", 1)[0]
    if len(line) > MAX_REQUEST:
        raise ControlError(f"request too large (more than {MAX_REQUEST} bytes)")
    try:
        request = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ControlError("the request is not one line of JSON") from exc
    if not isinstance(request, dict):
        raise ControlError("the request is not a JSON object")
    return request


def _send(conn: socket.socket, reply: Reply) -> None:
    try:
        conn.sendall(json.dumps(reply, ensure_ascii=True, separators=(",", ":")).encode("ascii") + b"\n")
    except OSError:
        pass  # the peer left: nothing to tell


# --- what a server does with a request ------------------------------------------------


def actor(request: Request, peer: Peer) -> tuple[Actor, str | None]:
    """Who asked: the peer, or whom a relaying peer says it acts for; and the relay."""
    via = request.get("via")
    via = via[:200] if isinstance(via, str) and via else None
    on = request.get("for")
    if isinstance(on, dict) and isinstance(on.get("uid"), int) and isinstance(on.get("user"), str):
        inner = on.get("via")
        return (Actor(on["uid"], on["user"][:64], inner[:200] if isinstance(inner, str) and inner else None),
                f"uid {peer.uid} ({peer.user})")
    return Actor(peer.uid, peer.user, via), None


def status(holder: PolicyHolder, component: str) -> Reply:
    p = holder.paused
    out: Reply = {"ok": True, "component": component, "paused": p is not None,
                  "allow_pause": holder.policy.settings.allow_pause, "mode": holder.view.mode.value}
    if p is not None:
        out.update(until=utc_iso(p.until), until_epoch=p.until, since=utc_iso(p.since),
                   seconds_left=max(0.0, round(p.deadline - time.monotonic(), 1)), by=p.by.who,
                   reason=p.reason)
    return out


def pause_fields(p: Pause, relay: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"since": utc_iso(p.since), "until": utc_iso(p.until),
                           "seconds": round(p.until - p.since, 3), "by": p.by.who,
                           "uid": p.by.uid, "user": p.by.user}
    if p.ended:
        out["ended"] = p.ended
        if p.ended_by is not None:
            out["ended_by"] = p.ended_by.who
    if relay:
        out["relay"] = relay
    return out


class HolderControl:
    """The handler of a server that holds a policy (``dns``, ``proxy``): pause,
    resume and status on its ``PolicyHolder``; every pause, end and refusal
    goes to ``emit`` as an event (``policies.events.pause_event``)."""

    def __init__(self, holder: PolicyHolder, component: str, emit: Emit):
        self.holder = holder
        self.component = component
        self.emit = emit
        self._here = threading.local()  # .relay: of the request this thread is handling
        self._window = 0.0
        self._logged = 0
        self.unlogged = 0  # refusals past REFUSALS_PER_MINUTE, counted only
        holder.subscribe_pause(self._pause_changed)

    def __call__(self, request: Request, peer: Peer) -> Reply:
        op = request.get("op")
        who, relay = actor(request, peer)
        if op == "denied":
            return self._refuse(str(request.get("_error")), who, relay)
        if op not in OPS:
            return self._refuse(f"unknown op {str(op)[:40]!r}: one of {', '.join(OPS)}", who, relay)
        if op == "status":
            return status(self.holder, self.component)
        if op == "resume":
            self._here.relay = relay
            try:
                ended = self.holder.resume(who)
            finally:
                self._here.relay = None
            return {**status(self.holder, self.component), "resumed": ended is not None}
        seconds = request.get("seconds")
        if not isinstance(seconds, (int, float)) or isinstance(seconds, bool):
            return self._refuse("pause needs \"seconds\": a number", who, relay)
        self._here.relay = relay
        try:
            self.holder.pause(float(seconds), who)
        except PauseRefused as exc:
            return self._refuse(str(exc), who, relay)
        finally:
            self._here.relay = None
        return status(self.holder, self.component)

    def _refuse(self, why: str, who: Actor, relay: str | None) -> Reply:
        log.warning("pause request from %s refused: %s", who.who, why)
        now = time.monotonic()
        if now - self._window > 60:
            self._window, self._logged = now, 0
        if self._logged < REFUSALS_PER_MINUTE:
            self._logged += 1
            fields: dict[str, Any] = {"relay": relay} if relay else {}
            self.emit(pause_event("pause-refused", self.component, reason=why, uid=who.uid, user=who.user,
                                  via=who.via, pause=fields,
                                  message=f"pause request from {who.who} refused: {why}"))
        else:
            self.unlogged += 1
        return {"ok": False, "error": why, "component": self.component}

    def _pause_changed(self, p: Pause) -> None:
        # Told on the thread that asked (a request) or on the holder's timer (no relay then).
        fields = pause_fields(p, getattr(self._here, "relay", None))
        if p.ended is None:
            self.emit(pause_event("enforcement-paused", self.component, reason=p.reason, uid=p.by.uid,
                                  user=p.by.user, via=p.by.via, pause=fields,
                                  message=f"{p.reason}: blocks are logged, not enforced"))
            return
        by = p.ended_by
        how = {"expired": "the pause ran out", "policy": "the reloaded policy sets allow_pause: false",
               "resumed": f"resumed by {by.who if by else '?'}",
               "replaced": f"replaced by a new pause from {by.who if by else '?'}"}.get(p.ended, p.ended)
        self.emit(pause_event("enforcement-resumed", self.component, reason=f"enforcement resumed: {how}",
                              uid=by.uid if by else None, user=by.user if by else None,
                              via=by.via if by else None, pause=fields,
                              message=f"enforcement resumed ({how}); it was {p.reason}"))


class Relay:
    """The handler of ``egress-filter run`` (and of a resolver with workers):
    each request goes on to every child's control socket, for the peer that
    asked, after ``local`` (this process's own handler, if any); the answers
    are combined."""

    def __init__(self, children: dict[str, str], local: Handler | None = None, name: str = "self"):
        self.children = children  # name → socket path
        self.local = local
        self.name = name

    def __call__(self, request: Request, peer: Peer) -> Reply:
        replies: dict[str, Reply] = {}
        if self.local is not None:
            replies[self.name] = self.local(request, peer)
        if request.get("op") == "denied":
            return replies.get(self.name) or {"ok": False, "error": str(request.get("_error"))}
        who, _ = actor(request, peer)
        out = {k: v for k, v in request.items() if k in ("op", "seconds")}
        out["for"] = {"uid": who.uid, "user": who.user, **({"via": who.via} if who.via else {})}
        for name, path in self.children.items():
            try:
                replies[name] = send(path, out, timeout=CLIENT_TIMEOUT)
            except ControlError as exc:
                replies[name] = {"ok": False, "error": str(exc)}
        return combine(replies)


def combine(replies: dict[str, Reply]) -> Reply:
    """Several servers' answers → one: ok only if every one is; fields from the first."""
    ok = all(r.get("ok") for r in replies.values())
    first = next(iter(replies.values()), {})
    out: Reply = {k: v for k, v in first.items() if k not in ("component", "error")}
    out["ok"] = ok
    out["servers"] = replies
    if not ok:
        out["error"] = "; ".join(f"{n}: {r.get('error')}" for n, r in replies.items() if not r.get("ok"))
    return out


# --- the client ---------------------------------------------------------------------


def send(path: str, request: Request, timeout: float = CLIENT_TIMEOUT) -> Reply:
    """One request to the server at ``path``; raises ``ControlError`` with a
    sentence a person can act on."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.settimeout(timeout)
    try:
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ControlError(f"no egress-filter server is listening on {path} (is it running? "
                               "give the path it uses with --control)") from exc
        except PermissionError as exc:
            raise ControlError(f"{path}: permission denied: only root or the server's own user "
                               "may control it") from exc
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        try:
            s.sendall(json.dumps(request, separators=(",", ":")).encode("utf-8") + b"\n")
            buf = b""
            while b"\n" not in buf and len(buf) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from exc
    finally:
        s.close()
    try:
        reply = json.loads(buf.split(b"\n", 1)[0])
    except ValueError as exc:
        raise ControlError(f"{path}: the server's answer is not JSON") from exc
    if not isinstance(reply, dict):
        raise ControlError(f"{path}: the server's answer is not a JSON object")
    return reply


def send_all(paths: Sequence[str], request: Request, timeout: float = CLIENT_TIMEOUT) -> Reply:
    """``send`` to each path; one answer (``combine``d when there are several)."""
    if len(paths) == 1:
        return send(paths[0], request, timeout)
    replies: dict[str, Reply] = {}
    for p in paths:
        try:
            replies[p] = send(p, request, timeout)
        except ControlError as exc:
            replies[p] = {"ok": False, "error": str(exc)}
    return combine(replies)


def start_for(path: str | None, handler: Handler, prog: str, name: str = "control") -> ControlServer | None:
    """Start a control socket at ``path`` (None: ``default_path()``; ``off``:
    none).  A failure is a warning on stderr, not fatal: the server serves on,
    without pause."""
    import sys

    if path == OFF:
        return None
    server = ControlServer(path or default_path(), handler, name)
    try:
        server.start()
    except ControlError as exc:
        print(f"{prog}: warning: no control socket, so no pause: {exc}", file=sys.stderr, flush=True)
        return None
    print(f"{prog}: control socket {server.path} (egress-filter pause)", file=sys.stderr, flush=True)
    return server
