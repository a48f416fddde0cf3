"""Client of the enclave signer (protocol: enclave/PROTOCOL.md), built for the latency hot path.

One request in flight per connection. A call sends one frame and reads the answer into a
preallocated buffer with a bounded busy-poll of non-blocking reads (`spin_us`) before falling back to
a blocking read; `cpu` pins the *calling* thread, so give signing its own thread and CPU, apart from
the signer's. A broken connection is re-opened with exponential backoff and the request retried once
(signing is deterministic, RFC 6979, so a retry cannot produce a second, different signature).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave import _wire
from enclave._wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    OP_ERROR,
    RESPONSE_BIT,
    VERSION,
    Op,
)
from enclave.errors import EnclaveError, ErrorCode
from enclave.keys import checksum_address
from enclave.transport import Address, connect, parse_address
from enclave.tx import SignedTx, UnsignedTx
from router.errors import MalformedInput, SignerError, TransportError
from router.txjson import parse_tx

__all__ = ["DEFAULT_SPIN_US", "KeyInfo", "SignedTx", "SignerClient"]

logger = logging.getLogger(__name__)

#: Busy-poll window for an answer; covers a signature (~30-50 us) with room for scheduling noise.
DEFAULT_SPIN_US = 500
_BUFFER_SIZE = HEADER_SIZE + MAX_PAYLOAD


@dataclass(frozen=True)
class KeyInfo:
    """The signer's identity: EIP-55 address, its 20 bytes, uncompressed SEC1 public key."""

    address: str
    address_bytes: bytes
    public_key: bytes


class SignerClient:
    """A connection to the signer. Build it with `SignerClient.connect(...)`; thread-safe (calls are
    serialised), though one client per thread is what keeps latency low."""

    def __init__(
        self,
        address: Address,
        *,
        cpu: int | None = None,
        spin_us: int = DEFAULT_SPIN_US,
        connect_timeout: float = 5.0,
        backoff: float = 0.01,
    ) -> None:
        self._address = address
        self._cpu = cpu
        self._spin_ns = max(0, spin_us) * 1000
        self._connect_timeout = connect_timeout
        self._backoff = backoff
        self._sock: socket.socket | None = None
        self._buf = bytearray(_BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        self._next_id = 1
        self._lock = threading.Lock()
        self._key_info: KeyInfo | None = None

    @classmethod
    def connect(
        cls,
        address: str | Address,
        *,
        cpu: int | None = None,
        spin_us: int = DEFAULT_SPIN_US,
        connect_timeout: float = 5.0,
    ) -> SignerClient:
        """Connect to `unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT`, retrying with backoff
        for up to `connect_timeout` seconds (the signer may still be starting).

        Args:
            cpu: pin the calling thread to this CPU (os.sched_setaffinity), or None.

        Raises:
            MalformedInput: the address cannot be parsed.
            TransportError: no connection within `connect_timeout`.
        """
        try:
            addr = parse_address(address) if isinstance(address, str) else address
        except EnclaveError as e:
            raise MalformedInput(str(e)) from e
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as e:
                raise MalformedInput(f"cannot pin to cpu {cpu}: {e.strerror or e}") from e
        client = cls(addr, cpu=cpu, spin_us=spin_us, connect_timeout=connect_timeout)
        client._reconnect()
        return client

    def __repr__(self) -> str:
        return f"SignerClient({self._address})"

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def __enter__(self) -> SignerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- operations -------------------------------------------------------------------------------

    def ping(self) -> None:
        """Round trip an empty frame. Raises SignerError / TransportError."""
        self._call(Op.PING, b"")

    def address(self) -> KeyInfo:
        """The signer's public key and EVM address (cached after the first call)."""
        if self._key_info is None:
            out = self._call(Op.GET_KEY, b"")
            if len(out) != _wire.KEY_INFO_SIZE:
                raise TransportError(f"get-key answer of {len(out)} bytes (expected 85)")
            pub, addr = bytes(out[:65]), bytes(out[65:])
            self._key_info = KeyInfo(checksum_address(addr), addr, pub)
        return self._key_info

    def sign_digest(self, digest: bytes) -> bytes:
        """65 bytes r || s || v (v = y parity 0/1) over a 32-byte digest."""
        if len(digest) != 32:
            raise ValueError(f"digest must be 32 bytes (got {len(digest)})")
        out = self._call(Op.SIGN_DIGEST, bytes(digest))
        if len(out) != _wire.SIGNATURE_SIZE:
            raise TransportError(f"sign-digest answer of {len(out)} bytes (expected 65)")
        return bytes(out)

    def sign_tx(self, tx: UnsignedTx | Mapping[str, Any]) -> SignedTx:
        """Sign a transaction given as `UnsignedTx` or a JSON-RPC field mapping.

        Raises:
            MalformedInput: the mapping or a field value is invalid.
            SignerError: the signer refused (policy denial, malformed, rate limit).
            TransportError: the connection failed twice or the answer is inconsistent.
        """
        if not isinstance(tx, UnsignedTx):
            sender = self.address().address_bytes if "from" in tx else None
            tx = parse_tx(tx, signer_address=sender)
        try:
            payload = _wire.encode_sign_tx(tx)
        except ValueError as e:
            raise MalformedInput(f"transaction: {e}") from e
        out = self._call(Op.SIGN_TX, payload)
        if len(out) <= 32:
            raise TransportError(f"sign-tx answer of {len(out)} bytes is too short")
        return SignedTx(bytes(out[32:]), bytes(out[:32]))

    def attest(
        self,
        *,
        nonce: bytes | None = None,
        user_data: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """The signer's NSM attestation document (raw COSE_Sign1) binding these fields."""
        try:
            payload = _wire.encode_attest(nonce, user_data, public_key)
        except ValueError as e:
            raise MalformedInput(f"attest: {e}") from e
        return bytes(self._call(Op.ATTEST, payload))

    def stats(self) -> _wire.Stats:
        """The signer's counters."""
        out = self._call(Op.STATS, b"")
        try:
            return _wire.Stats.decode(out)
        except EnclaveError as e:
            raise TransportError(f"stats answer: {e}") from e

    # --- transport --------------------------------------------------------------------------------

    def _reconnect(self) -> None:
        self.close()
        self._key_info = None  # a restarted signer may hold another key
        deadline = time.monotonic() + self._connect_timeout
        delay = self._backoff
        while True:
            try:
                self._sock = connect(self._address, timeout=max(0.1, deadline - time.monotonic()))
                return
            except EnclaveError as e:
                if time.monotonic() + delay > deadline:
                    raise TransportError(f"signer at {self._address}: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def _call(self, op: int, payload: bytes) -> memoryview:
        with self._lock:
            try:
                return self._exchange(op, payload)
            except _Broken as e:
                logger.info("signer connection broken (%s); reconnecting", e)
                self._reconnect()
                try:
                    return self._exchange(op, payload)
                except _Broken as e2:
                    self.close()
                    raise TransportError(f"signer at {self._address}: {e2}") from e2

    def _exchange(self, op: int, payload: bytes) -> memoryview:
        """Send one request; return a view of the answer's payload (valid until the next call)."""
        sock = self._sock
        if sock is None:
            raise _Broken("not connected")
        rid = self._next_id
        self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        try:
            sock.sendall(HEADER.pack(MAGIC, VERSION, op, rid, len(payload)) + payload)
        except OSError as e:
            raise _Broken(f"send failed: {e}") from e
        mv, buf = self._mv, self._buf
        end = 0
        while end < HEADER_SIZE:
            end += self._fill(sock, mv, end)
        magic, version, rop, rrid, n = HEADER.unpack_from(buf, 0)
        if magic != MAGIC or version != VERSION or n > MAX_PAYLOAD or rrid != rid:
            self.close()
            raise TransportError(
                f"signer at {self._address} answered out of protocol "
                f"(magic 0x{magic.hex()}, version {version}, id {rrid} for {rid}, length {n})"
            )
        total = HEADER_SIZE + n
        while end < total:
            end += self._fill(sock, mv, end)
        if end != total:
            self.close()
            raise TransportError(f"signer at {self._address} sent {end - total} unexpected bytes")
        body = mv[HEADER_SIZE:total]
        if rop == op | RESPONSE_BIT:
            return body
        if rop == OP_ERROR:
            try:
                code, message = _wire.decode_error(body)
            except EnclaveError as e:
                raise TransportError(f"malformed error frame: {e}") from e
            try:
                name = ErrorCode(code).name
            except ValueError:
                name = f"code {code}"
            raise SignerError(code, name, message)
        self.close()
        raise TransportError(f"signer answered opcode 0x{rop:02x} to request 0x{op:02x}")

    def _fill(self, sock: socket.socket, mv: memoryview, end: int) -> int:
        room = mv[end:]
        try:
            try:
                got = sock.recv_into(room, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                got = -1
                if self._spin_ns:
                    clock = time.monotonic_ns
                    deadline = clock() + self._spin_ns
                    while True:
                        try:
                            got = sock.recv_into(room, 0, socket.MSG_DONTWAIT)
                            break
                        except BlockingIOError:
                            if clock() > deadline:
                                break
                if got < 0:
                    got = sock.recv_into(room)
        except OSError as e:
            raise _Broken(f"receive failed: {e}") from e
        if got == 0:
            raise _Broken("signer closed the connection")
        return got


class _Broken(Exception):
    """The connection failed in a way a reconnect may fix."""
