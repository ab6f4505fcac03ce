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


BAD_VALUES = [
    pytest.param({"max_udp_size": 511}, "max_udp_size: must be between 512 and 65535 bytes",
                 id="udp-too-small"),
    pytest.param({"max_udp_size": 65_536}, "max_udp_size: must be between 512 and 65535 bytes",
                 id="udp-too-big"),
    pytest.param({"tcp_timeout": 0.0}, "tcp_timeout: must be more than 0 seconds", id="tcp-timeout-0"),
    pytest.param({"tcp_connections": 0}, "tcp_connections: must be 1 or more", id="tcp-connections-0"),
    pytest.param({"tcp_per_client": 0}, "tcp_per_client: must be 1 or more", id="tcp-per-client-0"),
    pytest.param({"server_version": "v" * 256}, r"server_version: at most 255 bytes \(one TXT string\)",
                 id="version-too-long"),
]


@pytest.mark.parametrize(("values", "message"), BAD_VALUES)
def test_bad_values(values: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=f"^{message}$"):
        merge(DnsSettings(), values, {})


def test_transport_settings_layer_like_the_others(tmp_path: Path) -> None:
    path = tmp_path / "dns.yaml"
    path.write_text("tcp_per_client: 4\nmax_udp_size: 4096\nserver_identity: ns1\n", encoding="utf-8")
    s = merge(DnsSettings(tcp_per_client=2, tcp_timeout=5.0), read_config_file(str(path)),
              {"tcp_per_client": 8, "server_identity": None})
    assert (s.tcp_per_client, s.max_udp_size, s.tcp_timeout, s.server_identity) == (8, 4096, 5.0, "ns1")
