"""The resolver's settings: defaults < policy ``settings.dns`` < ``--config`` file < CLI flags.

Each layer only overrides the keys it sets.  The result is one ``DnsSettings``
(the core's dataclass), checked here once; a bad value is a ``ConfigError``
naming its source, which the CLI turns into exit code 1.  Settings are read
at start: a policy reload changes rules and phases, not listeners or upstreams.
"""

from __future__ import annotations

import ipaddress
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from policies import DnsSettings

from .responses import BlockResponse
from .upstream import Upstream

KEYS = tuple(f.name for f in fields(DnsSettings))


class ConfigError(ValueError):
    pass


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:53``, ``::1``, ``[::1]:53`` → (host, port)."""
    text = text.strip()
    host, port = text, default_port
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ConfigError(f"'{text}': missing ']'")
        host = text[1:end]
        rest = text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"'{text}': expected ':PORT' after ']'")
            port = _port(text, rest[1:])
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = _port(text, p)
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"'{text}': '{host}' is not an IP address") from exc
    return host, port


def _port(text: str, p: str) -> int:
    if not p.isdigit() or not 0 <= int(p) <= 65535:
        raise ConfigError(f"'{text}': '{p}' is not a port")
    return int(p)


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML mapping with the keys of ``settings.dns``; types checked against the defaults."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings.dns keys")
    default = DnsSettings()
    out: dict[str, Any] = {}
    for key, value in data.items():
        if key not in KEYS:
            raise ConfigError(f"{path}: {key}: unknown key (allowed: {', '.join(KEYS)})")
        current = getattr(default, key)
        if isinstance(current, tuple):
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: {key}: expected a list of strings")
            value = tuple(value)
        elif isinstance(current, bool):
            if not isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected true or false")
        elif isinstance(current, int):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected an integer")
        elif isinstance(current, float):
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{path}: {key}: expected a number")
            value = float(value)
        elif value is not None and not isinstance(value, str):
            raise ConfigError(f"{path}: {key}: expected a string")
        out[key] = value
    return out


def merge(policy: DnsSettings, config_file: dict[str, Any], cli: dict[str, Any]) -> DnsSettings:
    """Later layers win, key by key; CLI values of None mean 'not given'."""
    given = {k: v for k, v in cli.items() if v is not None}
    settings = replace(policy, **config_file)
    settings = replace(settings, **given)
    check(settings)
    return settings


def check(s: DnsSettings) -> None:
    if not s.listen:
        raise ConfigError("listen: at least one address is needed")
    for addr in s.listen:
        parse_hostport(addr, 53)
    if not s.upstreams:
        raise ConfigError("upstreams: at least one upstream is needed")
    for up in s.upstreams:
        parse_hostport(up, 53)
    if s.block_response not in {b.value for b in BlockResponse}:
        raise ConfigError(f"block_response: '{s.block_response}' is not nxdomain, null or refused")
    for net in s.acl:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError as exc:
            raise ConfigError(f"acl: '{net}' is not a CIDR") from exc
    if s.metrics:
        parse_hostport(s.metrics, 9153)
    if s.cache_size < 0:
        raise ConfigError("cache_size: must be 0 or more")
    if not s.timeout > 0:
        raise ConfigError("timeout: must be more than 0 seconds")
    if not 1 <= s.workers <= 64:
        raise ConfigError("workers: must be between 1 and 64")
    if not 512 <= s.max_udp_size <= 65_535:
        raise ConfigError("max_udp_size: must be between 512 and 65535 bytes")
    if not s.tcp_timeout > 0:
        raise ConfigError("tcp_timeout: must be more than 0 seconds")
    if s.tcp_connections < 1:
        raise ConfigError("tcp_connections: must be 1 or more")
    if s.tcp_per_client < 1:
        raise ConfigError("tcp_per_client: must be 1 or more")
    from .rpz import check_settings  # here: rpz imports this module

    check_settings(s)
    for key in ("server_identity", "server_version"):
        value = getattr(s, key)
        if value is not None and len(value.encode("utf-8")) > 255:
            raise ConfigError(f"{key}: at most 255 bytes (one TXT string)")


def upstreams(s: DnsSettings) -> list[Upstream]:
    return [Upstream(*parse_hostport(u, 53)) for u in s.upstreams]
