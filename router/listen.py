"""A local service's bind address, `HOST:PORT`, and the rule that keeps it on loopback.

The gateway signs for anyone who reaches it, and the metrics tell whoever reads them the sender,
the nonce and when the router is in trouble: both bind to a loopback address unless the operator
opts in (`<service>_allow_remote = true`). Only literal IP addresses (and `localhost`, read as
127.0.0.1) are accepted, so the rule never depends on what a name resolves to.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["ListenAddress", "parse_listen"]


@dataclass(frozen=True)
class ListenAddress:
    host: str  # a literal IPv4 or IPv6 address (no brackets)
    port: int  # 0: any free port (tests)

    @property
    def loopback(self) -> bool:
        return ipaddress.ip_address(self.host).is_loopback

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_listen(value: object, *, service: str, allow_remote: bool = False,
                 example: str = "127.0.0.1:8645") -> ListenAddress:
    """`"127.0.0.1:8645"`, `"[::1]:8645"`, `"localhost:8645"` (or any address with `allow_remote`).

    Args:
        service: the configuration key (`gateway`, `metrics`): errors name it and its
            `<service>_allow_remote` flag.

    Raises:
        ConfigError: not a string, no port, a host that is not a literal IP address, a port out of
            0..65535, or a non-loopback address without `allow_remote`.
    """
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{service}: must be a string HOST:PORT, e.g. \"{example}\"")
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"{service}: {value[:60]!r} is not HOST:PORT (e.g. \"{example}\")")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"{service}: an IPv6 address needs brackets: \"[::1]:{port_text[:6]}\"")
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"{service}: host {host[:60]!r} is not an IP address (names are not accepted: the "
            "loopback rule must not depend on what a name resolves to)") from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"{service}: port {port_text[:20]!r} is not a number in 0..65535")
    if not ip.is_loopback and not allow_remote:
        raise ConfigError(
            f"{service}: {value[:60]!r} is not a loopback address; {service} stays on this host "
            f"unless {service}_allow_remote = true")
    return ListenAddress(str(ip), int(port_text))
