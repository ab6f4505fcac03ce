"""A real ``egress-filter dashboard`` process on a free loopback port, stopped by PID."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]


class DashboardProcess:
    def __init__(self, workdir: Path, *args: str):
        self.stderr_path = workdir / f"dashboard-{time.monotonic_ns()}.err"
        self._err = open(self.stderr_path, "w")
        cmd = [sys.executable, "-m", "egress_filter.cli", "dashboard", *args]
        if "--listen" not in args:
            cmd += ["--listen", "127.0.0.1:0"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self._err)
        self.url = ""
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = re.search(r"on (http://\S+/)", self.stderr())
            if m:
                self.url = m.group(1)
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"dashboard did not start:\n{self.stderr()}")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return httpx.get(self.url + path.lstrip("/"), timeout=10, **kw)

    def poll_events(self, params: dict[str, str], expect: int = 1,
                    timeout: float = 2.0) -> list[dict[str, Any]]:
        """``/api/events`` until it holds ``expect`` events, for at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        events: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            events = self.get("/api/events", params=params).json()["events"]
            if len(events) >= expect:
                break
            time.sleep(0.05)
        return events

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()
