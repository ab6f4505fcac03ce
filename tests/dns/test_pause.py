"""``egress-filter pause`` against a real ``egress-filter dns`` with a loopback upstream.

The resolver runs as a process with ``--control`` in the test's directory;
the pause command runs as a process too, so the CLI, the control socket, the
holder's pause and the event path are all the real ones.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.core.test_holder import wait_for

from .authority import Authority
from .conftest import REPO, TEST_DAY, ResolverProcess, addresses, rcode

BLOCKED = "www.tiktok.test"


def pause_cli(sock: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egress_filter.cli", "pause", *args, "--control", str(sock)],
                          cwd=REPO, capture_output=True, text=True, timeout=30)


def raw(sock: Path, data: bytes, *, close_write: bool = True) -> dict[str, Any]:
    """Send bytes as they are and read the one answer line."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(str(sock))
        s.sendall(data)
        if close_write:
            s.shutdown(socket.SHUT_WR)
        buf = b""
        while b"\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    finally:
        s.close()
    out = json.loads(buf)
    assert isinstance(out, dict)
    return out


def of(r: ResolverProcess, action: str) -> list[dict[str, Any]]:
    return [e for e in r.events() if e.get("event", {}).get("action") == action]


@pytest.fixture
def paused_resolver(tmp_path: Path, resolver: Callable[..., ResolverProcess], authority: Authority,
                    write_policy: Callable[..., Path]) -> Callable[..., tuple[ResolverProcess, Path]]:
    def start(settings: str = "", where: Path | None = None) -> tuple[ResolverProcess, Path]:
        sock = (where or tmp_path / "run") / "control.sock"
        r = resolver("--policy", str(write_policy(settings=settings)), "--at", TEST_DAY,
                     "--upstream", authority.address, "--control", str(sock))
        assert f"control socket {sock}" in r.stderr()
        assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
        return r, sock
    return start


@pytest.mark.parametrize("end", [
    pytest.param("expires", id="pause-3s-runs-out"),
    pytest.param("resume", id="pause-then-resume-command"),
    pytest.param("pause-resume", id="pause-then-pause---resume"),
])
def test_pause_monitors_then_enforces_again(paused_resolver: Callable[..., tuple[ResolverProcess, Path]],
                                           end: str) -> None:
    r, sock = paused_resolver()
    st = os.stat(sock)
    assert oct(st.st_mode & 0o777) == "0o600" and oct(os.stat(sock.parent).st_mode & 0o777) == "0o700"
    # 3 s: room for the CLI to exit and the query to go out on a loaded machine, and still short.
    out = pause_cli(sock, "3s" if end == "expires" else "30m")
    assert out.returncode == 0, out.stderr
    assert "enforcement paused until" in out.stdout and "by uid 0 (root)" in out.stdout

    answer = r.ask(BLOCKED)
    assert rcode(answer) == "NOERROR" and addresses(answer) == ["192.0.2.66"], "answered from upstream"
    if end != "expires":  # the CLI's --status (a short pause may have run out by the time it starts)
        status = pause_cli(sock, "--status", "--json")
        assert status.returncode == 0 and json.loads(status.stdout)["paused"] is True

    assert wait_for(lambda: any(e.get("egress", {}).get("value") == BLOCKED and e["egress"]["action"] == "log"
                             for e in r.events()), 5)
    ev = [e for e in r.events() if e.get("egress", {}).get("value") == BLOCKED][-1]
    assert ev["egress"]["action"] == "log"
    assert ev["egress"]["would"] == "block"
    assert ev["event"]["reason"].startswith("enforcement paused until ")
    assert "by uid 0 (root): would be blocked, logged instead" in ev["event"]["reason"]
    started = of(r, "enforcement-paused")
    assert len(started) == 1 and started[0]["user"] == {"id": "0", "name": "root"}
    assert started[0]["egress"]["pause"]["until"] in ev["event"]["reason"]

    if end == "expires":
        assert wait_for(lambda: rcode(r.ask(BLOCKED)) == "NXDOMAIN", 8), "blocked again after the pause"
    else:
        done = pause_cli(sock, "--resume") if end == "pause-resume" else subprocess.run(
            [sys.executable, "-m", "egress_filter.cli", "resume", "--control", str(sock)],
            cwd=REPO, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0 and "enforcing" in done.stdout, done.stderr
        assert rcode(r.ask(BLOCKED)) == "NXDOMAIN", "blocked again at once"
    assert wait_for(lambda: len(of(r, "enforcement-resumed")) == 1, 5)
    resumed = of(r, "enforcement-resumed")[0]
    assert resumed["egress"]["pause"]["ended"] == ("expired" if end == "expires" else "resumed")
    if end != "expires":
        assert resumed["user"]["name"] == "root" and "resumed by uid 0 (root)" in resumed["event"]["reason"]
    after = pause_cli(sock, "--status", "--json")
    assert json.loads(after.stdout)["paused"] is False


def test_allow_pause_false_refuses(paused_resolver: Callable[..., tuple[ResolverProcess, Path]]) -> None:
    r, sock = paused_resolver("settings:\n  allow_pause: false\n")
    out = pause_cli(sock, "5m")
    assert out.returncode == 1
    assert "refused" in out.stderr and "settings.allow_pause: false" in out.stderr
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN", "still enforced"
    assert wait_for(lambda: len(of(r, "pause-refused")) == 1, 5)
    ev = of(r, "pause-refused")[0]
    assert ev["user"]["name"] == "root" and "allow_pause" in ev["event"]["reason"]
    assert not of(r, "enforcement-paused")


@pytest.mark.parametrize("duration, message", [
    pytest.param("0s", "more than 0 s", id="zero"),
    pytest.param("25h", "at most 24 h", id="over-the-maximum"),
    pytest.param("5x", "not a duration", id="unknown-unit"),
    pytest.param("-5m", "-5m", id="negative-read-as-a-flag"),
    pytest.param("5m-", "not a duration", id="trailing-junk"),
    pytest.param("5m5", "", id="ok-bare-seconds-after-minutes"),
])
def test_pause_durations(tmp_path: Path, duration: str, message: str) -> None:
    """Bad durations are exit 2 before anything is sent; a good one reaches for the socket."""
    out = pause_cli(tmp_path / "none.sock", duration)
    if message:
        assert out.returncode == 2 and message in out.stderr, out.stderr
    else:
        assert out.returncode == 1 and "no egress-filter server is listening" in out.stderr


NOBODY = 65534
PROBE = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.settimeout(10)
s.connect(sys.argv[1]); s.sendall(b'{"op":"pause","seconds":60}\\n')
print(s.recv(65536).decode())
"""


@pytest.mark.parametrize("send, error", [
    pytest.param(b"\x00\xff garbage\n", "not one line of JSON", id="garbage"),
    pytest.param(b"[1, 2]\n", "not a JSON object", id="json-array"),
    pytest.param(b"x" * 10_000, "too large", id="oversize-no-newline"),
    pytest.param(b'{"op": "pause", "seconds": 60, "pad": "' + b"y" * 5000 + b'"}\n', "too large",
                 id="oversize-line"),
    pytest.param(b'{"op": "explode"}\n', "unknown op", id="unknown-op"),
    pytest.param(b'{"op": "pause", "seconds": "soon"}\n', "a number", id="seconds-not-a-number"),
    pytest.param(b'{"op": "pause", "seconds": 1e9}\n', "at most 24 h", id="seconds-too-many"),
    pytest.param(b'{"op": "pause"', "not one line of JSON", id="half-a-request"),
    pytest.param(b'{"op": "pause"', "within", id="silent-peer"),
    pytest.param(b"", "wrong-uid", id="wrong-uid-setuid-child"),
])
def test_bad_requests_never_hurt_the_server(paused_resolver: Callable[..., tuple[ResolverProcess, Path]],
                                            send: bytes, error: str) -> None:
    # pytest's own tmp dir is root's alone: the wrong-uid case needs a path others can reach.
    outside = Path(tempfile.mkdtemp(prefix="egress-pause-test-")) if error == "wrong-uid" else None
    try:
        check_bad_request(*paused_resolver(where=outside and outside / "run"), send, error)
    finally:
        if outside is not None:
            shutil.rmtree(outside, ignore_errors=True)


def check_bad_request(r: ResolverProcess, sock: Path, send: bytes, error: str) -> None:
    if error == "wrong-uid":
        # Loosen the modes as a careless admin might: the kernel's peer uid still refuses.
        os.chmod(sock.parent.parent, 0o755)
        os.chmod(sock.parent, 0o755)
        os.chmod(sock, 0o666)
        probe = subprocess.run(["/usr/bin/python3", "-c", PROBE, str(sock)], user=NOBODY, group=NOBODY,
                               capture_output=True, text=True, timeout=30)
        assert probe.returncode == 0, probe.stderr
        reply = json.loads(probe.stdout)
        assert reply["ok"] is False and f"uid {NOBODY} " in reply["error"]
        assert "may not control" in reply["error"]
        assert wait_for(lambda: len(of(r, "pause-refused")) == 1, 5)
        assert of(r, "pause-refused")[0]["user"]["id"] == str(NOBODY)
    else:
        reply = raw(sock, send, close_write=error != "within")
        assert reply["ok"] is False and error in reply["error"], reply
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN", "still answering, still enforcing"
    assert r.proc.poll() is None
    status = pause_cli(sock, "--status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout)["paused"] is False


@pytest.mark.parametrize("workers", [pytest.param(2, id="two-workers")])
def test_pause_reaches_every_worker(tmp_path: Path, resolver: Callable[..., ResolverProcess],
                                    authority: Authority, write_policy: Callable[..., Path],
                                    workers: int) -> None:
    """With --workers the first process relays to each worker's own socket: every one monitors."""
    sock = tmp_path / "run" / "control.sock"
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--control", str(sock), "--workers", str(workers))
    names = {"dns", *(f"worker{i}" for i in range(1, workers))}
    assert wait_for(lambda: set(json.loads(pause_cli(sock, "--status", "--json").stdout)
                                .get("servers", {})) == names, 20), "every worker's socket answers"
    # On a loaded machine (make test on 2 cores) a worker can miss the relay's read deadline
    # once; the relay then says which one, and asking again reaches it (a pause is idempotent).
    for _ in range(3):
        doc = json.loads(pause_cli(sock, "10m", "--json").stdout)
        if doc["ok"]:
            break
    assert doc["ok"] is True, doc
    assert {n: s["paused"] for n, s in doc["servers"].items()} == dict.fromkeys(names, True)
    # Each worker logs its own pause, in its own event file (events.w1.jsonl, ...).
    logs = [r.log_path.with_name(f"{r.log_path.stem}.w{i}{r.log_path.suffix}") for i in range(1, workers)]
    assert wait_for(lambda: all(w.exists() and "enforcement-paused" in w.read_text() for w in logs), 5)
    # Each query comes from a new source port, so SO_REUSEPORT spreads them over the processes.
    assert {rcode(r.ask(BLOCKED)) for _ in range(12)} == {"NOERROR"}
    doc = json.loads(pause_cli(sock, "--resume", "--json").stdout)
    assert doc["ok"] is True and not any(s["paused"] for s in doc["servers"].values())
    assert {rcode(r.ask(BLOCKED)) for _ in range(12)} == {"NXDOMAIN"}


@pytest.mark.parametrize("what", [
    pytest.param("file", id="a-regular-file"),
    pytest.param("symlink", id="a-symlink"),
    pytest.param("world-writable-dir", id="a-world-writable-directory"),
])
def test_control_path_that_is_not_ours_is_left_alone(tmp_path: Path, resolver: Callable[..., ResolverProcess],
                                                   authority: Authority, write_policy: Callable[..., Path],
                                                   what: str) -> None:
    """A --control PATH that is a file, a symlink, or in a directory anyone may write into is
    refused with a warning: nothing is replaced, and the resolver serves on."""
    d = tmp_path / "ctl"
    d.mkdir()
    sock = d / "control.sock"
    keep = tmp_path / "keep.txt"
    keep.write_text("precious\n")
    if what == "file":
        sock.write_text("precious\n")
    elif what == "symlink":
        sock.symlink_to(keep)
    else:
        os.chmod(d, 0o777)
    r = resolver("--policy", str(write_policy()), "--at", TEST_DAY, "--upstream", authority.address,
                 "--control", str(sock))
    assert "warning: no control socket, so no pause" in r.stderr()
    assert rcode(r.ask(BLOCKED)) == "NXDOMAIN"
    assert keep.read_text() == "precious\n"
    if what == "file":
        assert sock.read_text() == "precious\n"
    elif what == "symlink":
        assert sock.is_symlink()
    else:
        assert not sock.exists()
