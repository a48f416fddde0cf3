"""Payload flavours: what the Sentinel payload's `/cmd` does and which files it brings.

The payload flavour is one axis of a build, the kernel (Debian's, or AWS's blobs) the other; PCR2
depends only on the flavour, PCR0/PCR1 on both.

- `development` (default; `nox -s build-eif`, `reproduce`, `boot`): the development policy, anvil's
  public dev key, and the NSM emulator allowed when /dev/nsm is absent (QEMU).
- `production`: the production policy, no dev key, no emulator permission (the signer refuses to
  start without /dev/nsm), and the key from KMS. The image is the same for every fund with the same
  payload config: the parent sends the KMS blob and its AWS credentials at run time over vsock
  (`enclave serve --kms-provision`, `python -m enclave provision`), while the region, the KMS
  endpoint, the vsock-proxy port and optionally the KMS key id are written into `/cmd` here, so PCR2
  covers them. See reproducible/README.md, "Payload flavours".
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from reproducible.errors import BuildError

__all__ = [
    "DEFAULT_PRODUCTION_CONFIG",
    "PAYLOADS",
    "PayloadError",
    "ProductionConfig",
    "load_production_config",
    "production_cmd",
    "production_files",
]

PAYLOADS = ("development", "production")
DEFAULT_PRODUCTION_CONFIG = Path(__file__).with_name("payload") / "production.toml"
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+$")
_KEY_ID = re.compile(r"^[A-Za-z0-9:/_+=.@-]{1,2048}$")
_FIELDS = {"schema", "region", "endpoint", "proxy", "provision_port", "key_id"}


class PayloadError(BuildError):
    """The payload flavour or its configuration is unusable."""


@dataclass(frozen=True)
class ProductionConfig:
    """The production payload's KMS settings (`reproducible/payload/production.toml`)."""

    region: str
    endpoint: str
    proxy: str
    provision_port: int
    key_id: str | None = None
    source: Path = field(default=DEFAULT_PRODUCTION_CONFIG, compare=False)

    @property
    def endpoint_host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def load_production_config(path: Path | None = None) -> ProductionConfig:
    """Parse and check a production payload config.

    Raises:
        PayloadError: unreadable, not TOML, an unknown key, or a value that would make a broken
            /cmd (names the key and what was expected).
    """
    from enclave.errors import TransportError
    from enclave.transport import parse_address

    path = path or DEFAULT_PRODUCTION_CONFIG
    where = f"payload config {path}"
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise PayloadError(f"{where}: cannot read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PayloadError(f"{where}: not TOML ({e})") from None
    unknown = sorted(set(doc) - _FIELDS)
    if unknown:
        raise PayloadError(f"{where}: unknown keys {', '.join(unknown)}")
    if doc.get("schema") != 1:
        raise PayloadError(f"{where}: schema {doc.get('schema')!r}, expected 1")
    region = doc.get("region")
    if not isinstance(region, str) or not _REGION.match(region):
        raise PayloadError(f"{where}: region {region!r} is not an AWS region name (e.g. us-east-1)")
    endpoint = doc.get("endpoint", f"https://kms.{region}.amazonaws.com")
    url = urlsplit(endpoint) if isinstance(endpoint, str) else None
    if (url is None or url.scheme != "https" or not _HOST.match(url.hostname or "") or url.path
            or _is_ip(url.hostname or "")):
        raise PayloadError(
            f"{where}: endpoint {endpoint!r} must be https://HOST with a DNS name (TLS to KMS is "
            "checked against it; the image maps it to the loopback relay)"
        )
    try:
        _ = url.port
    except ValueError:
        raise PayloadError(f"{where}: endpoint {endpoint!r} has a bad port") from None
    proxy = doc.get("proxy")
    try:
        if not isinstance(proxy, str) or parse_address(proxy).kind != "vsock":
            raise TransportError("not vsock")
    except TransportError:
        raise PayloadError(
            f"{where}: proxy {proxy!r} must be vsock:CID:PORT (the parent's vsock-proxy, CID 3)"
        ) from None
    port = doc.get("provision_port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 0xFFFFFFFF:
        raise PayloadError(f"{where}: provision_port {port!r} must be a vsock port number")
    key_id = doc.get("key_id")
    if key_id is not None and (not isinstance(key_id, str) or not _KEY_ID.match(key_id)):
        raise PayloadError(f"{where}: key_id {key_id!r} is not a KMS key id, ARN or alias")
    return ProductionConfig(region, endpoint, proxy, port, key_id, path)


def production_cmd(
    config: ProductionConfig, *, signer_port: int, policy: str
) -> tuple[str, ...]:
    """The production `/cmd`: no dev key, no emulator, the key provisioned at run time via KMS.

    Raises:
        PayloadError: the provisioning port is the signer's port.
    """
    if config.provision_port == signer_port:
        raise PayloadError(
            f"payload config {config.source}: provision_port {signer_port} is the signer's port"
        )
    cmd: tuple[str, ...] = ("/usr/bin/python3", "-m", "enclave", "serve",
           "--listen", f"vsock:any:{signer_port}", "--policy", policy,
           "--kms-provision", f"vsock:any:{config.provision_port}",
           "--kms-region", config.region, "--kms-endpoint-url", config.endpoint,
           "--kms-proxy", config.proxy)  # fmt: skip
    if config.key_id:
        cmd += ("--kms-key-id", config.key_id)
    return cmd


def production_files(config: ProductionConfig) -> dict[str, bytes]:
    """Files the production rootfs adds: the endpoint's host name resolves to the loopback relay
    from /etc/hosts alone (an enclave has no DNS)."""
    hosts = f"127.0.0.1\tlocalhost\n127.0.0.1\t{config.endpoint_host}\n"
    return {"etc/hosts": hosts.encode(), "etc/nsswitch.conf": b"hosts: files\n"}
