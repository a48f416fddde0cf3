"""Transports behind one interface: AF_VSOCK (production), Unix socket and TCP on loopback (dev, tests).

An address is text: `unix:PATH`, `tcp:HOST:PORT` (HOST must be a loopback literal such as 127.0.0.1
or [::1]) or `vsock:CID:PORT`. For listening, a VSOCK CID of `any` (or -1) binds VMADDR_CID_ANY, which
is what the enclave does: its CID is assigned by the hypervisor. Both sides get plain blocking stream
sockets; busy-polling is the caller's business (`MSG_DONTWAIT` reads), so the same code path serves all
three families.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import stat
import struct
from dataclasses import dataclass
from typing import Literal

from enclave.errors import TransportError

__all__ = [
    "Address",
    "accept",
    "connect",
    "listen",
    "listening_address",
    "parse_address",
    "peer_of",
    "unlink_if_own",
]

VMADDR_CID_ANY = 0xFFFFFFFF
_MAX_PORT_TCP = 65535
_MAX_U32 = 0xFFFFFFFF


@dataclass(frozen=True)
class Address:
    """A parsed transport address; `str()` gives back the canonical text form."""

    kind: Literal["unix", "tcp", "vsock"]
    path: str = ""
    host: str = ""
    port: int = 0
    cid: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        if self.kind == "tcp":
            host = f"[{self.host}]" if ":" in self.host else self.host
            return f"tcp:{host}:{self.port}"
        cid = "any" if self.cid == VMADDR_CID_ANY else str(self.cid)
        return f"vsock:{cid}:{self.port}"


def _port(text: str, address: str, limit: int) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise TransportError(
            f"address {address!r}: port {text!r} is not a decimal number"
        ) from None
    if not 0 <= port <= limit:
        raise TransportError(f"address {address!r}: port {port} out of range 0..{limit}")
    return port


def parse_address(text: str) -> Address:
    """Parse `unix:PATH | tcp:HOST:PORT | vsock:CID:PORT`.

    Raises:
        TransportError: unknown scheme, missing part, non-loopback TCP host, bad number.
    """
    scheme, sep, rest = text.partition(":")
    if not sep or not rest:
        raise TransportError(
            f"address {text!r}: expected unix:PATH, tcp:127.0.0.1:PORT or vsock:CID:PORT"
        )
    if scheme == "unix":
        return Address("unix", path=rest)
    if scheme == "tcp":
        host, sep, port_text = rest.rpartition(":")
        if not sep or not host:
            raise TransportError(f"address {text!r}: expected tcp:HOST:PORT")
        host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            raise TransportError(f"address {text!r}: host must be an IP literal") from None
        if not ip.is_loopback:
            raise TransportError(f"address {text!r}: TCP is for loopback only (got {host})")
        return Address("tcp", host=str(ip), port=_port(port_text, text, _MAX_PORT_TCP))
    if scheme == "vsock":
        cid_text, sep, port_text = rest.partition(":")
        if not sep:
            raise TransportError(f"address {text!r}: expected vsock:CID:PORT")
        if cid_text in ("any", "-1"):
            cid = VMADDR_CID_ANY
        else:
            cid = _port(cid_text, text, _MAX_U32)
        return Address("vsock", cid=cid, port=_port(port_text, text, _MAX_U32))
    raise TransportError(f"address {text!r}: unknown scheme {scheme!r} (unix, tcp or vsock)")


def _family(addr: Address) -> socket.AddressFamily:
    if addr.kind == "unix":
        return socket.AF_UNIX
    if addr.kind == "tcp":
        return socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    family: socket.AddressFamily | None = getattr(socket, "AF_VSOCK", None)
    if family is None:
        raise TransportError("AF_VSOCK is not supported by this Python/kernel")
    return family


def _sockaddr(addr: Address) -> str | tuple[str, int] | tuple[int, int]:
    if addr.kind == "unix":
        return addr.path
    if addr.kind == "tcp":
        return (addr.host, addr.port)
    return (addr.cid, addr.port)


def _tune(sock: socket.socket, addr: Address) -> None:
    if addr.kind == "tcp":
        # Frames are small and latency-bound: never wait for Nagle to coalesce them.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listen(addr: Address | str, *, backlog: int = 16) -> socket.socket:
    """A listening socket on `addr`. A stale Unix socket file at PATH (nobody accepts on it) is
    replaced; a live one, or any other file, is left alone (error): a second server must not take
    the path over from a running one and leave it unreachable.

    Raises:
        TransportError: the family is unavailable, or bind/listen failed.
    """
    if isinstance(addr, str):
        addr = parse_address(addr)
    family = _family(addr)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(f"{addr}: cannot create socket ({e.strerror or e})") from e
    try:
        if addr.kind == "unix":
            _remove_stale_unix_socket(addr.path)
        elif addr.kind == "tcp":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(_sockaddr(addr))
        if addr.kind == "unix":
            os.chmod(
                addr.path, 0o600
            )  # only this user (the parent's router) may ask for signatures
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise TransportError(f"{addr}: cannot listen ({e.strerror or e})") from e
    return sock


def _remove_stale_unix_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise TransportError(f"unix:{path}: exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        pass  # nobody listens: a crashed server's file
    except OSError as e:
        # A full backlog (EAGAIN) or a timeout still means someone listens.
        raise TransportError(
            f"unix:{path}: another server is listening there (probe: {e.strerror or e}); "
            "refusing to take it over"
        ) from None
    else:
        raise TransportError(
            f"unix:{path}: another server is listening there; refusing to take it over"
        )
    finally:
        probe.close()
    # Only the file we probed: if it changed meanwhile, leave it (bind then fails on it).
    unlink_if_own(path, (st.st_dev, st.st_ino))


def unlink_if_own(path: str, inode: tuple[int, int]) -> bool:
    """Remove the Unix socket file at `path` if it is still `inode` (st_dev, st_ino); True if so.

    A server that lost its path to another (removed and re-bound) must not delete the new one's.
    The check and the unlink are two steps; only a process replacing the file in between could
    slip through, and that process owns the directory anyway.
    """
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if (st.st_dev, st.st_ino) != inode:
        return False
    with contextlib.suppress(OSError):
        os.unlink(path)
        return True
    return False


def listening_address(sock: socket.socket, addr: Address) -> Address:
    """`addr` with the port the kernel chose when `addr` asked for port 0."""
    if addr.kind == "unix":
        return addr
    name = sock.getsockname()
    if addr.kind == "tcp":
        return Address("tcp", host=addr.host, port=int(name[1]))
    return Address("vsock", cid=addr.cid, port=int(name[1]))


def connect(addr: Address | str, *, timeout: float | None = 5.0) -> socket.socket:
    """A connected blocking socket to `addr` (the timeout bounds connecting only).

    Raises:
        TransportError: the family is unavailable or the connection failed.
    """
    if isinstance(addr, str):
        addr = parse_address(addr)
    family = _family(addr)
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as e:
        raise TransportError(f"{addr}: cannot create socket ({e.strerror or e})") from e
    try:
        sock.settimeout(timeout)
        sock.connect(_sockaddr(addr))
        sock.settimeout(None)
        _tune(sock, addr)
    except OSError as e:
        with contextlib.suppress(OSError):
            sock.close()
        raise TransportError(f"{addr}: cannot connect ({e.strerror or e})") from e
    return sock


def peer_of(conn: socket.socket, addr: Address) -> object:
    """Who is on the other end, as far as the family tells: a Unix peer's pid (SO_PEERCRED), a
    VSOCK peer's CID (every process of the parent shares CID 3), a TCP peer's host; None if
    unknown. Used to pick which connection to close when the table is full."""
    try:
        if addr.kind == "unix":
            creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            return ("pid", struct.unpack("3i", creds)[0])
        return (addr.kind, conn.getpeername()[0])
    except OSError:
        return None


def accept(listener: socket.socket, addr: Address) -> socket.socket:
    """Accept one connection (blocking); tuned like `connect`'s sockets."""
    conn, _ = listener.accept()
    conn.settimeout(None)
    _tune(conn, addr)
    return conn
