"""The resolver's settings: defaults < policy ``settings.dns`` < ``--config`` file < CLI flags.

Each layer only overrides the keys it sets.  The result is one ``DnsSettings``
(the core's dataclass), checked here once; a bad value is a ``ConfigError``
naming its source, which the CLI turns into exit code 1.  Settings are read
at start: a policy reload changes rules and phases, not listeners or upstreams.
"""

from __future__ import annotations

import ipaddress
import ssl
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import yaml

from policies import DnsSettings
from policies import upstreams as upstream_forms
from policies.addresses import AddressError, split_hostport
from policies.setting_types import check_value, setting_kind
from policies.upstreams import UpstreamSpec

from .responses import BlockResponse
from .upstream import Channel, Upstream

# Local answers: read by policies/dns_local.py (block_single_label by the generic reader), policy only.
POLICY_ONLY = ("local", "forward", "local_domains", "block_single_label")
KEYS = tuple(f.name for f in fields(DnsSettings) if f.name not in POLICY_ONLY)


class ConfigError(ValueError):
    pass


def parse_hostport(text: str, default_port: int) -> tuple[str, int]:
    """``1.2.3.4``, ``1.2.3.4:53``, ``::1``, ``[::1]:53`` → (host, port)."""
    try:
        return split_hostport(text, default_port, need_ip=True)
    except AddressError as exc:
        raise ConfigError(str(exc)) from exc


def parse_upstream(text: str) -> UpstreamSpec:
    """One ``upstreams`` entry (policies/upstreams.py has the forms)."""
    try:
        return upstream_forms.parse_upstream(text)
    except AddressError as exc:
        raise ConfigError(f"upstreams: {exc}") from exc


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
        if key in POLICY_ONLY:
            raise ConfigError(f"{path}: {key}: set it in the policy's settings.dns, where it is checked")
        if key not in KEYS:
            raise ConfigError(f"{path}: {key}: unknown key (allowed: {', '.join(KEYS)})")
        kind, what = setting_kind(getattr(default, key))
        if kind is tuple:
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{path}: {key}: expected {what}")
            value = tuple(value)
        elif value is not None or kind is not str:
            try:
                value = check_value(kind, value)
            except TypeError as exc:
                raise ConfigError(f"{path}: {key}: expected {what}") from exc
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
        parse_upstream(up)
    if s.upstream_ca is not None:
        try:
            ssl.create_default_context(cafile=s.upstream_ca)
        except (OSError, ssl.SSLError, ValueError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise ConfigError(f"upstream_ca: cannot load '{s.upstream_ca}' as a PEM CA bundle: {why}"
                              ) from exc
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


def upstreams(s: DnsSettings, texts: tuple[str, ...] | None = None) -> list[Upstream | Channel]:
    """The forwarder's upstreams (``texts``, or ``s.upstreams``): plain ones as ``Upstream``,
    encrypted ones as channels (``upstream_tls``, ``upstream_https``, imported only when used)."""
    out: list[Upstream | Channel] = []
    contexts: dict[str, ssl.SSLContext] = {}
    for text in s.upstreams if texts is None else texts:
        spec = parse_upstream(text)
        if spec.scheme == "dns":
            out.append(Upstream(spec.host, spec.port))
            continue
        from .upstream_tls import TlsUpstream, tls_context

        if spec.scheme not in contexts:  # one per kind: httpx sets its ALPN on the one it gets
            contexts[spec.scheme] = tls_context(s.upstream_ca)
        ctx = contexts[spec.scheme]
        if spec.scheme == "tls":
            out.append(TlsUpstream(spec.host, spec.port, spec.name, ctx, spec.text))
        else:
            from .upstream_https import HttpsUpstream

            out.append(HttpsUpstream(str(spec.url), spec.name, ctx, spec.text))
    return out
