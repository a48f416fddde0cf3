"""Ask a running Sentinel signer for an attestation document (the ATTEST request).

Only the standard library's sockets and the signer's public wire codec (`enclave.wire`,
`enclave.transport`) are needed, so a customer's install without the `router` extra can fetch and
verify in one step (`python -m verify attestation --signer ADDR`). The answer is not trusted
here: it is the raw COSE_Sign1 bytes, verified by `verify.attestation` afterwards.
"""

from __future__ import annotations

import contextlib
import socket
import time

from enclave import wire
from enclave.errors import EnclaveError
from enclave.transport import connect, parse_address
from verify.errors import MalformedInput, TransportError

__all__ = ["DEFAULT_TIMEOUT", "fetch_document"]

DEFAULT_TIMEOUT = 10.0  # seconds: connecting plus the NSM's answer (tens of ms on Nitro)


def fetch_document(
    address: str,
    *,
    nonce: bytes | None = None,
    user_data: bytes | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> bytes:
    """The signer's attestation document (raw COSE_Sign1) over `nonce` and `user_data`.

    Args:
        address: `vsock:CID:PORT`, `unix:PATH` or `tcp:127.0.0.1:PORT` (as the router takes).

    Raises:
        MalformedInput: the address does not parse, or nonce/user_data exceed the NSM's limits.
        TransportError: cannot connect, no answer within `timeout`, an answer out of protocol, or
            the signer's error answer (for example no Secure Module to attest with).
    """
    if not timeout > 0:
        raise MalformedInput(f"timeout must be a positive number of seconds, got {timeout}")
    try:
        addr = parse_address(address)
        payload = wire.encode_attest(nonce, user_data, None)
    except EnclaveError as e:
        raise MalformedInput(f"signer address {address!r}: {e.diagnostics()}") from e
    except ValueError as e:
        raise MalformedInput(f"attest request: {e}") from e
    deadline = time.monotonic() + timeout
    try:
        sock = connect(addr, timeout=timeout)
    except EnclaveError as e:
        raise TransportError(f"signer {address}: {e.diagnostics()}") from e
    with contextlib.closing(sock):
        try:
            sock.sendall(wire.pack_frame(wire.Op.ATTEST, 1, payload))
            header = _recv_exact(sock, wire.HEADER_SIZE, deadline)
            magic, version, op, request_id, length = wire.HEADER.unpack(header)
            try:
                wire.check_header(magic, version, length)
            except EnclaveError as e:
                raise TransportError(
                    f"signer {address} answered out of protocol: {e.diagnostics()}"
                ) from e
            body = _recv_exact(sock, length, deadline)
        except TimeoutError as e:
            raise TransportError(f"signer {address}: no answer within {timeout:g} s") from e
        except OSError as e:
            raise TransportError(f"signer {address}: {e.strerror or e}") from e
    if request_id != 1:
        raise TransportError(f"signer {address} answered request {request_id}, not 1")
    if op == wire.OP_ERROR:
        try:
            code, message = wire.decode_error(body)
        except EnclaveError as e:
            raise TransportError(f"signer {address}: malformed error answer ({e})") from e
        raise TransportError(f"signer {address} refused to attest (error {code}): {message}")
    if op != wire.Op.ATTEST | wire.RESPONSE_BIT:
        raise TransportError(f"signer {address} answered opcode 0x{op:02x} to ATTEST")
    return body


def _recv_exact(sock: socket.socket, n: int, deadline: float) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise OSError(f"the signer closed the connection after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)
