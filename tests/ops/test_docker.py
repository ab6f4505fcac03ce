"""The Dockerfile, checked without a Docker daemon (none here: the image was
never built): a slim base, a non-root user, every COPY source in the repo and
not ignored, the ports exposed, and its HEALTHCHECK command run for real
against a running ``egress-filter dns`` (and proxy port)."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from egress_filter.cli import main

from .helpers import NotifySocket, free_dns_port, free_port, start, stop

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
IGNORED = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
           if line.strip() and not line.startswith("#")]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined, comments dropped."""
    kept = "\n".join(ln for ln in DOCKERFILE.splitlines() if not ln.lstrip().startswith("#"))
    joined = re.sub(r"\\\n", " ", kept)
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _all(name: str) -> list[str]:
    return [rest for word, rest in _instructions() if word == name]


def _daemon() -> bool:
    docker = shutil.which("docker")
    if docker is None:
        return False
    return subprocess.run([docker, "info"], capture_output=True, timeout=60).returncode == 0


@pytest.mark.e2e
def test_image_builds_and_turns_healthy_where_a_daemon_runs() -> None:
    """With a Docker daemon: build the image, run it, wait for HEALTHCHECK to say healthy.
    Without one (as where this was written): the README must say the image was not built."""
    if not _daemon():
        readme = " ".join((REPO / "README.md").read_text().split())
        assert "The Docker image was **not built here**" in readme
        return
    tag = "egress-filter-test:latest"
    subprocess.run(["docker", "build", "-t", tag, str(REPO)], check=True, timeout=1800)
    cid = subprocess.run(["docker", "run", "-d", "--rm", tag], check=True, capture_output=True, text=True,
                         timeout=120).stdout.strip()
    try:
        deadline = time.monotonic() + 240
        state = ""
        while time.monotonic() < deadline and state != "healthy":
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                                   capture_output=True, text=True, timeout=30).stdout.strip()
            time.sleep(2)
        assert state == "healthy", state
        user = subprocess.run(["docker", "exec", cid, "id", "-u"], capture_output=True, text=True,
                              timeout=30).stdout.strip()
        assert user not in ("", "0"), user
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, timeout=60)


@pytest.mark.parametrize(("check", "why"), [
    pytest.param(lambda: re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", _all("FROM")[0]) is not None,
                 "a slim Python base", id="slim-base"),
    pytest.param(lambda: len(_all("FROM")) == 1, "one stage", id="one-stage"),
    pytest.param(lambda: _all("USER")[-1].split(":")[0] not in ("root", "0", ""), "non-root", id="non-root"),
    pytest.param(lambda: len(_all("HEALTHCHECK")) == 1 and " CMD " in f" {_all('HEALTHCHECK')[0]}",
                 "one HEALTHCHECK with a command", id="healthcheck"),
    pytest.param(lambda: set(_all("EXPOSE")[0].split()) == {"5353/udp", "5353/tcp", "8080/tcp"},
                 "DNS (UDP and TCP) and proxy ports", id="exposed-ports"),
    pytest.param(lambda: "0.0.0.0:5353" in _all("CMD")[0] and "0.0.0.0:8080" in _all("CMD")[0],
                 "the servers listen where EXPOSE says", id="cmd-matches-expose"),
    pytest.param(lambda: json.loads(_all("ENTRYPOINT")[0]) == ["egress-filter"], "exec form",
                 id="entrypoint"),
])
def test_dockerfile_static(check, why: str) -> None:  # type: ignore[no-untyped-def]
    assert check(), why


def _copy_sources() -> list[str]:
    sources = []
    for rest in _all("COPY"):
        parts = [p for p in rest.split() if not p.startswith("--")]
        sources += parts[:-1]
    return sources


@pytest.mark.parametrize("source", [pytest.param(s, id=s) for s in _copy_sources()])
def test_every_copy_source_exists_and_is_not_ignored(source: str) -> None:
    assert (REPO / source).exists(), source
    assert not any(fnmatch.fnmatch(source, pat) or source == pat for pat in IGNORED), source


def test_image_copies_every_package_the_wheel_needs() -> None:
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert set(packages) | {"pyproject.toml", readme} <= set(_copy_sources())


def _healthcheck_argv(dns_port: int, proxy_port: int) -> list[str]:
    cmd = json.loads(_all("HEALTHCHECK")[0].split(" CMD ", 1)[1])
    assert cmd[0] == "egress-filter"
    ports = {"127.0.0.1:5353": f"127.0.0.1:{dns_port}", "127.0.0.1:8080": f"127.0.0.1:{proxy_port}"}
    return [ports.get(a, a) for a in cmd[1:]]


@pytest.mark.e2e
def test_the_healthcheck_command_against_real_servers(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Healthy while dns answers and the proxy accepts; unhealthy (1) when either is gone."""
    dns_port, proxy_port = free_dns_port(), free_port()
    argv = _healthcheck_argv(dns_port, proxy_port)
    assert main(argv) == 1  # nothing running yet
    assert "no answer" in capsys.readouterr().err
    dns_ready, proxy_ready = NotifySocket(tmp_path / "dns.notify"), NotifySocket(tmp_path / "proxy.notify")
    dns = start(["dns", "--listen", f"127.0.0.1:{dns_port}", "--upstream", "127.0.0.1:9"], tmp_path, "dns",
                env=dns_ready.env())
    proxy = start(["proxy", "--listen", f"127.0.0.1:{proxy_port}", "--log", str(tmp_path / "events.jsonl")],
                  tmp_path, "proxy", env=proxy_ready.env())
    try:
        dns_ready.wait_for("READY", while_alive=dns)
        proxy_ready.wait_for("READY", while_alive=proxy)
        assert main(argv) == 0, capsys.readouterr().err
        stop(proxy)
        assert main(argv) == 1
        assert f"tcp 127.0.0.1:{proxy_port}: no connection" in capsys.readouterr().err
        stop(dns)
        assert main(["health", "--dns", f"127.0.0.1:{dns_port}", "--timeout", "0.5"]) == 1
    finally:
        stop(dns)
        stop(proxy)
        dns_ready.close()
        proxy_ready.close()


@pytest.mark.parametrize(("argv", "code", "says"), [
    pytest.param(["health"], 2, "give --dns", id="no-check"),
    pytest.param(["health", "--dns", "localhost:53"], 2, "is not an IP address", id="bad-address"),
])
def test_health_usage_errors(argv: list[str], code: int, says: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == code
    assert says in capsys.readouterr().err
