"""A loopback TCP port inside the enclave that relays each connection to the parent's vsock-proxy.

An enclave has no network: its only way out is vsock to the parent, where AWS's `vsock-proxy` joins
a vsock port to `kms.<region>.amazonaws.com:443`. boto3 speaks TCP, so `enclave serve --kms-proxy`
listens on 127.0.0.1 at the KMS endpoint's port (the production image maps the endpoint's host name
to 127.0.0.1 in /etc/hosts) and relays bytes both ways. TLS runs end to end between boto3 in the
enclave and KMS, checked against the endpoint's real host name: the parent only ever relays
ciphertext. The relay runs only while the key loads, then closes.

An enclave's loopback interface may start down (nothing documents AWS's init bringing it up), so the relay
brings `lo` up first; the kernel then gives it 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import select
import socket
import struct
import threading

from enclave import transport
from enclave.errors import TransportError

__all__ = ["Forwarder", "ensure_interface_up"]

logger = logging.getLogger(__name__)

_CHUNK = 64 * 1024
# <linux/sockios.h>, <net/if.h>: struct ifreq is the name (16 bytes) and a 24-byte union.
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = struct.Struct("16sH22x")


def ensure_interface_up(name: str = "lo") -> bool:
    """Bring the network interface `name` up unless it is; True when it had to.

    Raises:
        TransportError: no such interface, or not permitted to change it.
    """
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            raw = fcntl.ioctl(s, _SIOCGIFFLAGS, _IFREQ.pack(name.encode(), 0))
            flags = _IFREQ.unpack(raw)[1]
            if flags & _IFF_UP:
                return False
            fcntl.ioctl(s, _SIOCSIFFLAGS, _IFREQ.pack(name.encode(), flags | _IFF_UP))
    except OSError as e:
        raise TransportError(f"cannot bring interface {name!r} up ({e.strerror or e})") from None
    logger.info("brought interface %s up", name)
    return True


class Forwarder:
    """Accepts on `listen` (a loopback TCP address) and joins each connection to `upstream`."""

    def __init__(self, listen: transport.Address | str, upstream: transport.Address | str) -> None:
        self._listen_addr = transport.parse_address(listen) if isinstance(listen, str) else listen
        if self._listen_addr.kind != "tcp":
            raise TransportError(f"forwarder: {self._listen_addr} is not a loopback TCP address")
        self._upstream = (
            transport.parse_address(upstream) if isinstance(upstream, str) else upstream
        )
        self._listener: socket.socket | None = None
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self.address: transport.Address | None = None

    def start(self) -> transport.Address:
        """Listen and start relaying in background threads; returns the bound address.

        Raises:
            TransportError: cannot listen.
        """
        ensure_interface_up("lo")
        self._listener = transport.listen(self._listen_addr)
        self._listener.settimeout(0.2)  # so close() is noticed without waking accept()
        self.address = transport.listening_address(self._listener, self._listen_addr)
        t = threading.Thread(target=self._accept_loop, name="kms-forward", daemon=True)
        t.start()
        self._threads.append(t)
        logger.info("relaying %s to %s", self.address, self._upstream)
        return self.address

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            t = threading.Thread(target=self._relay, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _relay(self, conn: socket.socket) -> None:
        try:
            up = transport.connect(self._upstream, timeout=10.0)
        except TransportError as e:
            logger.warning("kms relay: %s", e)
            conn.close()
            return
        with conn, up:
            pair = {conn: up, up: conn}
            while not self._closed.is_set():
                ready, _, _ = select.select(list(pair), [], [], 0.2)
                for src in ready:
                    try:
                        data = src.recv(_CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    try:
                        pair[src].sendall(data)
                    except OSError:
                        return

    def close(self) -> None:
        """Stop accepting and end every relayed connection."""
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        for t in self._threads:
            t.join(timeout=2.0)

    def __enter__(self) -> Forwarder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
