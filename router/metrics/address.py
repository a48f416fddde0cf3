"""The exporter's bind address, `HOST:PORT`, and the rule that keeps it on loopback.

Metrics tell whoever can read them the sender, the nonce and when the router is in trouble: the
exporter binds to a loopback address unless the operator opts in (`metrics_allow_remote = true`).
Only literal IP addresses (and `localhost`, read as 127.0.0.1) are accepted, so the rule never
depends on what a name resolves to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ..errors import ConfigError

__all__ = ["MetricsAddress", "parse_metrics_address"]


@dataclass(frozen=True)
class MetricsAddress:
    host: str  # a literal IPv4 or IPv6 address (no brackets)
    port: int  # 0: any free port (tests)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_metrics_address(value: object, *, allow_remote: bool = False,
                          where: str = "metrics") -> MetricsAddress:
    """`"127.0.0.1:9464"`, `"[::1]:9464"`, `"localhost:9464"` (or any address with
    `allow_remote`).

    Raises:
        ConfigError: not a string, no port, a host that is not a literal IP address, a port out of
            0..65535, or a non-loopback address without `allow_remote`.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: must be a string HOST:PORT, e.g. \"127.0.0.1:9464\"")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{where}: {value[:60]!r} is not HOST:PORT (e.g. \"127.0.0.1:9464\")")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{where}: an IPv6 address needs brackets: \"[::1]:9464\"")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{where}: host {host[:60]!r} is not an IP address (names are not accepted: the "
            "loopback rule must not depend on what a name resolves to)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{where}: port {port_text[:20]!r} is not a number in 0..65535")
    if not ip.is_loopback and not allow_remote:
        raise ConfigError(
            f"{where}: {value[:60]!r} is not a loopback address; metrics stay on this host unless "
            "metrics_allow_remote = true")
    return MetricsAddress(str(ip), int(port_text))
