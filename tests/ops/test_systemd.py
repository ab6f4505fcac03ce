"""The shipped systemd units (packaging/systemd/): systemd-analyze accepts them,
they carry the hardening they promise, and each ExecStart line, run as a real
process with a real $NOTIFY_SOCKET, reaches READY=1 (Type=notify is true)."""

from __future__ import annotations

import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import NotifySocket, free_dns_port, free_port, start, stop

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "packaging" / "systemd"
NAMES = ("egress-filter-dns.service", "egress-filter-proxy.service", "egress-filter.service")
ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
INSTALLED = "/usr/local/bin/egress-filter"
HERE_BIN = str(Path(sys.executable).with_name("egress-filter"))


def _installed_copy(tmp: Path, name: str) -> Path:
    """The unit with ExecStart pointing at this venv's egress-filter (verify checks it exists)."""
    text = (UNITS / name).read_text().replace(INSTALLED, HERE_BIN)
    out = tmp / name
    out.write_text(text)
    return out


def _verify(paths: list[Path]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANALYZE, "verify", "--man=no", *map(str, paths)],
                          capture_output=True, text=True, timeout=120)


def _about(output: str, paths: list[Path]) -> list[str]:
    return [line for line in output.splitlines() if any(p.name in line or str(p) in line for p in paths)]


def test_systemd_analyze_verify_accepts_the_units(tmp_path: Path) -> None:
    paths = [_installed_copy(tmp_path, n) for n in NAMES]
    done = _verify(paths)
    assert done.returncode == 0, done.stderr
    assert _about(done.stdout + done.stderr, paths) == [], done.stderr


@pytest.mark.parametrize(("name", "edit", "complaint"), [
    pytest.param("egress-filter-dns.service", ("ProtectSystem=strict", "ProtectSystem=stricter"),
                 "protect system value, ignoring: stricter", id="bad-value"),
    pytest.param("egress-filter-proxy.service", ("NoNewPrivileges=yes", "NoNewPrivilege=yes"),
                 "NoNewPrivilege", id="misspelt-key"),
    pytest.param("egress-filter.service", (HERE_BIN, "/nonexistent/egress-filter"),
                 "/nonexistent/egress-filter", id="missing-executable"),
])
def test_verify_would_catch_a_broken_unit(tmp_path: Path, name: str, edit: tuple[str, str],
                                          complaint: str) -> None:
    """The check above can fail: the same call flags each of these mistakes."""
    path = _installed_copy(tmp_path, name)
    assert edit[0] in path.read_text()
    path.write_text(path.read_text().replace(*edit))
    done = _verify([path])
    assert any(complaint in line for line in _about(done.stdout + done.stderr, [path])), done.stderr


def _settings(name: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


COMMON = {
    "Type": "notify", "DynamicUser": "yes", "User": "egress-filter", "StateDirectory": "egress-filter",
    "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
    "PrivateDevices": "yes", "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "ExecReload": "/bin/kill -HUP $MAINPID", "SystemCallArchitectures": "native",
}


@pytest.mark.parametrize(("name", "caps"), [
    pytest.param("egress-filter-dns.service", "CAP_NET_BIND_SERVICE", id="dns-binds-53"),
    pytest.param("egress-filter-proxy.service", "", id="proxy-no-capability"),
    pytest.param("egress-filter.service", "CAP_NET_BIND_SERVICE", id="run-binds-53"),
])
def test_unit_hardening(name: str, caps: str) -> None:
    got = _settings(name)
    for key, value in COMMON.items():
        assert got.get(key) == [value], (key, got.get(key))
    assert got["AmbientCapabilities"] == [caps] and got["CapabilityBoundingSet"] == [caps]
    assert "@system-service" in got["SystemCallFilter"]
    assert all("%S/egress-filter/events.db" in v for v in got["ExecStart"])


def _command(name: str, tmp: Path, ports: dict[str, int]) -> list[str]:
    """ExecStart as systemd would run it: %S and $VAR expanded, ports made free ones."""
    got = _settings(name)
    env = dict(shlex.split(e)[0].split("=", 1) for e in got["Environment"])
    line = got["ExecStart"][0].replace("%S", str(tmp))
    line = re.sub(r"\$(\w+)", lambda m: env.get(m.group(1), ""), line)
    for default, port in (("127.0.0.1:53", ports["dns"]), ("127.0.0.1:8080", ports["proxy"])):
        line = line.replace(default, f"127.0.0.1:{port}")
    argv = shlex.split(line)
    assert argv[0] == INSTALLED
    extra = {"egress-filter-dns.service": ["--upstream", "127.0.0.1:9"],
             "egress-filter.service": ["--upstream", "127.0.0.1:9",
                                       "--dashboard-listen", f"127.0.0.1:{ports['dashboard']}"]}
    return [*argv[1:], *extra.get(name, [])]


@pytest.mark.e2e
@pytest.mark.parametrize("name", [pytest.param(n, id=n.removesuffix(".service")) for n in NAMES])
def test_execstart_reaches_ready(tmp_path: Path, name: str) -> None:
    (tmp_path / "egress-filter").mkdir()  # what StateDirectory= makes
    ports = {"dns": free_dns_port(), "proxy": free_port(), "dashboard": free_port()}
    sink = NotifySocket(tmp_path / "notify")
    proc = start(_command(name, tmp_path, ports), tmp_path, "unit", env=sink.env())
    try:
        sink.wait_for("READY", timeout=90, while_alive=proc)
        assert (tmp_path / "egress-filter" / "events.db").exists()
    finally:
        assert stop(proc) == 0, (tmp_path / "unit.err").read_text()
        sink.close()


PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1  # linux/prctl.h (Linux 6.3+)


def _deny_write_execute() -> None:
    """In the child before exec: the kernel's form of MemoryDenyWriteExecute=yes."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


W_X_MAP = "import mmap; mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)"


def test_write_execute_denial_is_in_force_in_the_child() -> None:
    """The control: under the same prctl a writable+executable mapping is refused."""
    done = subprocess.run([sys.executable, "-c", W_X_MAP], preexec_fn=_deny_write_execute,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "PermissionError" in done.stderr, done.stderr
    assert subprocess.run([sys.executable, "-c", W_X_MAP], timeout=30).returncode == 0


@pytest.mark.e2e
@pytest.mark.parametrize("name", [pytest.param(n, id=n.removesuffix(".service")) for n in NAMES
                                  if _settings(n).get("MemoryDenyWriteExecute") == ["yes"]])
def test_memory_deny_write_execute_units_serve_under_it(tmp_path: Path, name: str) -> None:
    """A unit that promises MemoryDenyWriteExecute=yes answers queries and reloads under it."""
    from .helpers import dns_answers

    (tmp_path / "egress-filter").mkdir()
    ports = {"dns": free_dns_port(), "proxy": free_port(), "dashboard": free_port()}
    sink = NotifySocket(tmp_path / "notify")
    out = (tmp_path / "unit.err").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "egress_filter.cli", *_command(name, tmp_path, ports)],
                            env=sink.env(HOME=str(tmp_path)), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=out, preexec_fn=_deny_write_execute)
    out.close()
    try:
        sink.wait_for("READY", timeout=90, while_alive=proc)
        assert dns_answers(ports["dns"]) is not None
        proc.send_signal(signal.SIGHUP)
        assert sink.wait_for("READY", timeout=60, while_alive=proc)["STATUS"] == "policy reloaded"
        assert dns_answers(ports["dns"]) is not None
    finally:
        assert stop(proc) == 0, (tmp_path / "unit.err").read_text()
        sink.close()
