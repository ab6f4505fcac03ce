"""Shared test material for the proxy tests: a test policy, hand-built
ClientHellos (so malformed ones can be built too), and a certificate
authority made with ``cryptography`` for the local HTTPS origin."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import struct
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

# TikTok: downloads from 2020-09-20, full from 2020-11-12. WeChat: downloads only.
POLICY = """\
version: 1
mode: {mode}
timezone: UTC
sources:
  eo13942: "Executive Order 13942, 85 FR 48637"
  test: "written by the proxy tests"
exempt_clients: [{exempt}]
apps:
  - id: tiktok
    name: TikTok
    owner: ByteDance
    legal_basis: {{order: "Executive Order 13942", citation: "85 FR 48637",
                   url: "https://www.federalregister.gov/d/2020-17699"}}
    schedule:
      - {{from: 2020-09-20, phase: downloads, source: eo13942}}
      - {{from: 2020-11-12, phase: full, source: eo13942}}
    domains: [tiktok.com, tiktokv.com]
    sni: ["*.tiktokcdn.com"]
    downloads:
      - {{host: dl.shared-cdn.example, path: /tiktok/, source: test}}
    store: {{apple: [835599320], google_play: [com.zhiliaoapp.musically]}}
    networks: [192.0.2.0/24]
  - id: wechat
    name: WeChat
    owner: Tencent
    legal_basis: {{order: "Executive Order 13943", citation: "85 FR 48641"}}
    schedule:
      - {{from: 2020-09-20, phase: downloads, source: test}}
    domains: [wechat.com]
    store: {{apple: [414478124]}}
"""
BEFORE = "2020-09-01"  # nothing enforced yet
DOWNLOADS = "2020-10-01"  # TikTok and WeChat in downloads
FULL = "2020-12-01"  # TikTok in full, WeChat in downloads

TIKTOK_STORE_URL = "https://apps.apple.com/us/app/tiktok/id835599320"
OTHER_STORE_URL = "https://apps.apple.com/us/app/signal-private-messenger/id874139669"


def write_policy(
    directory: Path, *, mode: str = "enforce", exempt: str = "", name: str = "policy.yaml"
) -> Path:
    path = directory / name
    path.write_text(POLICY.format(mode=mode, exempt=exempt), encoding="utf-8")
    return path


# --- ClientHello -------------------------------------------------------------------


def _u16(n: int) -> bytes:
    return struct.pack("!H", n)


def client_hello_body(
    sni: str | None = None, *, extensions: tuple[tuple[int, bytes], ...] = (), raw_sni: bytes | None = None
) -> bytes:
    """The ClientHello handshake message body (what ``mitmproxy.tls.ClientHello`` takes)."""
    exts = b""
    name = raw_sni if raw_sni is not None else (sni.encode() if sni is not None else None)
    if name is not None:
        entry = b"\x00" + _u16(len(name)) + name
        exts += _u16(0) + _u16(len(entry) + 2) + _u16(len(entry)) + entry
    # supported_versions (TLS 1.3, 1.2) so real servers would accept it
    exts += _u16(43) + _u16(5) + b"\x04\x03\x04\x03\x03"
    for kind, data in extensions:
        exts += _u16(kind) + _u16(len(data)) + data
    return (
        b"\x03\x03" + os.urandom(32) + b"\x00" + _u16(2) + b"\x13\x01" + b"\x01\x00" + _u16(len(exts)) + exts
    )


def client_hello_record(body: bytes) -> bytes:
    """Wrap a ClientHello body in its handshake header and one TLS record."""
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + _u16(len(handshake)) + handshake


QUIC_EXT = (0x39, b"\x04\x04\x80\x10\x00\x00")  # quic_transport_parameters: initial_max_data
ECH_EXT = (0xFE0D, b"\x00\x00\x01\x00\x01\x2a\x00\x20" + bytes(32) + _u16(16) + bytes(16))


# --- certificates ---------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    cert: Path
    key: Path
    fingerprint: bytes  # SHA-256 of the origin's leaf certificate (DER)


def make_pki(directory: Path, names: list[str]) -> Pki:
    """A CA and one leaf certificate for ``names`` (plus 127.0.0.1)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "egress-filter test origin CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pki = Pki(
        directory / "origin-ca.pem",
        directory / "origin.pem",
        directory / "origin-key.pem",
        leaf.fingerprint(hashes.SHA256()),
    )
    pki.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


def stop(process: subprocess.Popen[bytes]) -> None:
    """Stop a server we started, by PID: politely first, then for sure."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def run(tctx: Any, addon: Any, name: str, *args: Any) -> None:
    """Call the hook ``name`` on ``addon`` and its sub-addons, in the order
    mitmproxy calls them (``hooks.all_hooks`` maps names to hook classes on
    mitmproxy 11 and 12 alike)."""
    from mitmproxy import hooks

    tctx.master.addons.invoke_addon_sync(addon, hooks.all_hooks[name](*args))


@contextlib.contextmanager
def addon_context(tmp_path: Path, *addons: Any, **options: Any) -> Iterator[Any]:
    """A taddons context with ``addons`` loaded, in order, and configured on
    the test policy; their ``done`` runs at the end."""
    from mitmproxy.test import taddons

    policy = write_policy(tmp_path, mode=options.pop("policy_mode", "enforce"))
    with taddons.context(*addons) as tctx:  # type: ignore[no-untyped-call]
        tctx.configure(addons[0], egress_policy=str(policy), egress_reload_interval=0,  # type: ignore[no-untyped-call]
                       **options)
        try:
            yield tctx
        finally:
            for addon in addons:
                run(tctx, addon, "done")
