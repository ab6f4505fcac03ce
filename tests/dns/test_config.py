"""Settings: addresses, the --config file, and which layer wins."""

from __future__ import annotations

from pathlib import Path

import pytest

from dns_blocker.config import ConfigError, merge, parse_hostport, read_config_file
from policies import DnsSettings

ADDRESSES = [
    ("127.0.0.1", ("127.0.0.1", 53)),
    ("127.0.0.1:5353", ("127.0.0.1", 5353)),
    ("::1", ("::1", 53)),
    ("[::1]:5353", ("::1", 5353)),
    ("[2001:db8::1]", ("2001:db8::1", 53)),
    ("0.0.0.0:0", ("0.0.0.0", 0)),
]


@pytest.mark.parametrize(("text", "want"), ADDRESSES, ids=[a for a, _ in ADDRESSES])
def test_parse_hostport(text: str, want: tuple[str, int]) -> None:
    assert parse_hostport(text, 53) == want


BAD_ADDRESSES = ["dns.google", "1.2.3.4:dns", "[::1", "[::1]x", "1.2.3.4:70000"]


@pytest.mark.parametrize("text", BAD_ADDRESSES, ids=BAD_ADDRESSES)
def test_parse_hostport_rejects(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_hostport(text, 53)


BAD_FILES = [
    ("[1, 2]", "expected a mapping"),
    ("listen: 5", "expected a list of strings"),
    ("canary: 'yes'", "expected true or false"),
    ("cache_size: 1.5", "expected an integer"),
    ("workers: true", "expected an integer"),
    ("timeout: fast", "expected a number"),
    ("upstream: [1.1.1.1]", "unknown key"),
    ("listen: [", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m for _, m in BAD_FILES])
def test_bad_config_file(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "dns.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_config_file(str(path))


LAYERS = [
    # (policy settings, config file, CLI, expected block_response, expected upstreams)
    ({}, {}, {}, "nxdomain", ("1.1.1.1:53", "9.9.9.9:53")),
    ({"block_response": "refused"}, {}, {}, "refused", ("1.1.1.1:53", "9.9.9.9:53")),
    ({"block_response": "refused"}, {"block_response": "null"}, {}, "null", ("1.1.1.1:53", "9.9.9.9:53")),
    ({"block_response": "refused"}, {"block_response": "null"}, {"block_response": "nxdomain"},
     "nxdomain", ("1.1.1.1:53", "9.9.9.9:53")),
    ({}, {"upstreams": ("10.0.0.1",)}, {"block_response": None, "upstreams": None}, "nxdomain",
     ("10.0.0.1",)),
    ({"upstreams": ("10.0.0.1",)}, {}, {"upstreams": ("127.0.0.1:5300",)}, "nxdomain", ("127.0.0.1:5300",)),
]


@pytest.mark.parametrize(("policy", "config", "cli", "block", "ups"), LAYERS,
                         ids=["defaults", "policy", "config-over-policy", "cli-over-all",
                              "unset-cli-flags-do-not-override", "cli-upstreams"])
def test_precedence(policy: dict[str, object], config: dict[str, object], cli: dict[str, object],
                    block: str, ups: tuple[str, ...]) -> None:
    s = merge(DnsSettings(**policy), config, cli)  # type: ignore[arg-type]
    assert (s.block_response, s.upstreams) == (block, ups)
