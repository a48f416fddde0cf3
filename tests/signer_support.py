"""Helpers for the signer tests: an in-process signer on a real socket, raw frame I/O."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from anvil_support import DEV_KEY_0

from enclave import wire
from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import Policy, load_policy
from enclave.server import SignerServer

ROOT = Path(__file__).resolve().parents[1]
DEV_POLICY = ROOT / "enclave" / "policy.dev.toml"


def dev_key() -> SigningKey:
    return SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)


@contextmanager
def running_signer(
    tmp_path: Path,
    *,
    policy: Policy | None = None,
    key: SigningKey | None = None,
    nsm: object | None = None,
    listen: str | None = None,
    spin_us: int = 0,
) -> Iterator[SignerServer]:
    """A SignerServer serving on a Unix socket in tmp_path (or `listen`) from a background thread.

    Busy-polling is off by default: the tests share two cores with everything else."""
    server = SignerServer(
        key or dev_key(),
        policy or load_policy(DEV_POLICY),
        nsm=nsm,
        spin_us=spin_us,  # type: ignore[arg-type]
    )
    server.bind(listen or f"unix:{tmp_path / 'signer.sock'}")
    server.start()
    try:
        yield server
    finally:
        server.close()


def raw_connect(server: SignerServer, timeout: float = 10.0) -> socket.socket:
    from enclave.transport import connect

    assert server.address is not None
    sock = connect(server.address)
    sock.settimeout(timeout)
    return sock


def read_frame(sock: socket.socket) -> tuple[int, int, bytes]:
    """(opcode, request_id, payload) of the next frame; asserts the header is well formed."""
    header = recv_exact(sock, wire.HEADER_SIZE)
    magic, version, op, rid, n = wire.HEADER.unpack(header)
    assert magic == wire.MAGIC and version == wire.VERSION and n <= wire.MAX_PAYLOAD
    return op, rid, recv_exact(sock, n)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError(f"connection closed after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


def error_of(payload: bytes) -> tuple[int, str]:
    code, message = wire.decode_error(payload)
    return code, message


def header(op: int, rid: int, length: int, *, magic: bytes = b"SN", version: int = 1) -> bytes:
    return struct.pack("<2sBBII", magic, version, op, rid, length)
