"""The gateway's listen address: `HOST:PORT`, loopback only unless the operator says otherwise."""

from __future__ import annotations

import ipaddress

from router.errors import ConfigError

__all__ = ["DEFAULT_GATEWAY", "parse_listen"]

DEFAULT_GATEWAY = "127.0.0.1:8645"


def parse_listen(listen: str, *, allow_remote: bool = False) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`) -> (host, port); loopback only unless `allow_remote`.

    Raises:
        ConfigError: not HOST:PORT, a port outside 0..65535, a name instead of an IP address, or
            a non-loopback address without `allow_remote`.
    """
    host, sep, port_text = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(f"gateway must be HOST:PORT (e.g. 127.0.0.1:8645), got {listen[:60]!r}")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"gateway host must be an IP address, got {host[:60]!r}") from None
    if not ip.is_loopback and not allow_remote:
        raise ConfigError(f"gateway {listen}: not a loopback address; the gateway signs for "
                          "anyone who reaches it (set gateway_allow_remote = true to mean it)")
    return host, int(port_text)
