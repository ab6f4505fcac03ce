"""What a person reads from the command line: --help without reStructuredText,
help on every run flag, the standalone proxy's banner with its real PID, and
``policy copy`` (the README's recipe, without an activated venv)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from egress_filter.cli import build_parser, main

from .helpers import NotifySocket, free_port, start, stop

RST = [
    pytest.param(r"``", id="double-backticks"),
    pytest.param(r"`[^`\n]+`_?", id="interpreted-text-or-link"),
    pytest.param(r":(?:class|func|meth|mod|ref|doc|attr):", id="roles"),
    pytest.param(r"^\.\. \w+::", id="directives"),
]


Parsers = list[tuple[str, argparse.ArgumentParser]]


def _parsers(parser: argparse.ArgumentParser, path: str = "egress-filter") -> Parsers:
    out = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parsers(sub, f"{path} {name}")
    return out


PARSERS = _parsers(build_parser())


@pytest.mark.parametrize("pattern", RST)
@pytest.mark.parametrize(("path", "parser"), [pytest.param(p, q, id=p) for p, q in PARSERS])
def test_help_has_no_rst_markup(path: str, parser: argparse.ArgumentParser, pattern: str) -> None:
    text = parser.format_help()
    assert not re.search(pattern, text, re.M), f"{path} --help:\n{text}"


def _run_parser() -> argparse.ArgumentParser:
    return dict(PARSERS)["egress-filter run"]


@pytest.mark.parametrize("action", [
    pytest.param(a, id=a.option_strings[0]) for a in _run_parser()._actions
    if a.option_strings and a.help != argparse.SUPPRESS
])
def test_every_run_flag_has_help(action: argparse.Action) -> None:
    assert action.help and len(action.help) > 10, action.option_strings


@pytest.mark.e2e
def test_standalone_proxy_banner_prints_its_real_pid(tmp_path: Path) -> None:
    sink = NotifySocket(tmp_path / "notify")
    port = free_port()
    proc = start(["proxy", "--listen", f"127.0.0.1:{port}", "--log", str(tmp_path / "events.jsonl")],
                 tmp_path, "proxy", env=sink.env())
    try:
        sink.wait_for("READY", while_alive=proc)
        err = (tmp_path / "proxy.err").read_text()
        assert f"egress-filter proxy: listening on 127.0.0.1:{port} (regular)" in err, err
        assert f"reload the policy: kill -HUP {proc.pid}" in err and "<pid>" not in err, err
    finally:
        stop(proc)
        sink.close()


BUNDLE = {"bundled.yaml", "schema.json", "lists/bytedance.txt", "lists/douyin.txt", "lists/tencent-ads.txt"}


@pytest.mark.parametrize(("existing", "force", "code", "says"), [
    pytest.param(None, False, 0, "copied bundled.yaml", id="into-new-dir"),
    pytest.param("other.txt", False, 0, "copied bundled.yaml", id="into-dir-with-other-files"),
    pytest.param("bundled.yaml", False, 1, "nothing was copied (--force replaces them)",
                 id="refuses-overwrite"),
    pytest.param("lists/douyin.txt", False, 1, "already holds lists/douyin.txt", id="refuses-list-overwrite"),
    pytest.param("bundled.yaml", True, 0, "copied bundled.yaml", id="force-overwrites"),
])
def test_policy_copy(tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str | None, force: bool,
                     code: int, says: str) -> None:
    target = tmp_path / "etc" / "egress-filter"
    if existing:
        (target / existing).parent.mkdir(parents=True, exist_ok=True)
        (target / existing).write_text("mine\n")
    assert main(["policy", "copy", str(target), *(["--force"] if force else [])]) == code
    out = capsys.readouterr()
    assert says in out.out + out.err
    copied = {str(p.relative_to(target)) for p in target.rglob("*") if p.is_file()}
    if code == 0:
        assert BUNDLE <= copied
        assert main(["check", str(target / "bundled.yaml")]) == 0  # a valid, self-contained policy
        assert f"{target / 'bundled.yaml'}: OK" in capsys.readouterr().out
        if existing == "other.txt":
            assert (target / "other.txt").read_text() == "mine\n"  # nothing else touched
    else:
        assert copied == {existing} and (target / str(existing)).read_text() == "mine\n"


BIND = "error while attempting to bind on address ('127.0.0.1', 8080): address already in use"


@pytest.mark.parametrize(("message", "shown"), [
    pytest.param(f"[Errno 98] HTTP(S) proxy failed to listen on 127.0.0.1:8080 with [Errno 98] {BIND}\n"
                 "Try specifying a different port by using `--mode regular@8082`.",
                 "HTTP(S) proxy cannot listen on 127.0.0.1:8080 (--listen): address already in use",
                 id="busy-port-from-listen"),
    pytest.param(f"[Errno 98] SOCKS v5 proxy failed to listen on 127.0.0.1:1080 with [Errno 98] {BIND}",
                 "SOCKS v5 proxy cannot listen on 127.0.0.1:1080: address already in use",
                 id="busy-port-from-mode-spec-no-flag"),
    pytest.param("Invalid certificate", "Invalid certificate", id="other-error-kept"),
])
def test_proxy_listen_errors_are_worded_with_our_flags(message: str, shown: str) -> None:
    import logging

    from proxy_addons.cli import ListenErrors

    errors = ListenErrors()
    record = logging.LogRecord("mitmproxy.addons.proxyserver", logging.ERROR, __file__, 1, message,
                               None, None)
    assert errors.filter(record) is True
    assert record.getMessage() == shown and errors.first == shown
    assert "regular@" not in record.getMessage()
