"""The dashboard's flags live apart from its server, so other subcommands start without it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from egress_filter import dashboard_cli
from egress_filter.cli import build_parser
from store.db import DEFAULT_PATH


def test_default_db_is_the_stores() -> None:
    assert dashboard_cli.DEFAULT_DB == DEFAULT_PATH
    args = build_parser().parse_args(["dashboard"])
    assert (args.db, args.listen) == (DEFAULT_PATH, dashboard_cli.DEFAULT_LISTEN)
    assert build_parser().parse_args(["run"]).db == DEFAULT_PATH


SERVER_MODULES = ("http.server", "sqlite3", "egress_filter.dashboard")


@pytest.mark.parametrize("module", [pytest.param(m, id=m) for m in SERVER_MODULES])
def test_the_cli_does_not_import_the_server(module: str) -> None:
    code = ("import sys, egress_filter.cli; egress_filter.cli.build_parser(); "
            f"print({module!r} in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"
