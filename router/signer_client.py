"""Client of the enclave signer (protocol: enclave/PROTOCOL.md), built for the latency hot path.

One request in flight per connection. A call sends one frame and reads the answer into a
preallocated buffer with a bounded busy-poll of non-blocking reads (`spin_us`) before falling back to
waiting in poll(2); `cpu` pins the *calling* thread, so give signing its own thread and CPU, apart
from the signer's.

Deadline: every call (send and whole answer) must finish within `io_timeout` seconds of its start,
or it raises `SignerTimeout` and the connection is dropped. Dropping it is what keeps a late answer
from ever being read as the answer to a later request (request ids are checked as well, and keep
counting across connections); the next call reconnects. The deadline is only looked at once the
busy-poll has given up, so the hot path pays one clock read per call for it.

Retries: a *broken* connection (reset, EOF, refused send) is re-opened with exponential backoff and
the request re-sent once. A *timed-out* request is not re-sent by the client: the deadline bounds the
whole call, and a signer that stalled once is likely to stall again, which would double the time
the caller is frozen. Re-sending is safe, but not because signatures repeat: with presignatures
(policy `presign_pool` > 0) every signature has a fresh random k, so a sign request sent twice yields
two different signatures and two different transaction hashes for the same nonce. What keeps that
safe is that a call returns at most one answer: an answer lost with its connection never leaves the
signer's socket, and a late answer on a dropped connection is never read, so the caller only ever
holds, journals and broadcasts the one transaction it was given (both are valid; the chain accepts
one per nonce). Callers must not assume a re-sign reproduces an earlier hash (enclave/PROTOCOL.md,
"Signing"); with `presign_pool = 0` it does (RFC 6979).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from enclave import wire
from enclave.errors import EnclaveError, ErrorCode
from enclave.keys import checksum_address
from enclave.transport import Address, connect, parse_address
from enclave.tx import SignedTx, UnsignedTx
from enclave.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    OP_ERROR,
    RESPONSE_BIT,
    VERSION,
    Op,
)
from router.errors import MalformedInput, SignerError, SignerTimeout, TransportError
from router.txjson import parse_tx

__all__ = ["DEFAULT_IO_TIMEOUT", "DEFAULT_SPIN_US", "KeyInfo", "OnConnect", "SignedTx",
           "SignerClient", "parse_signer_address"]

logger = logging.getLogger(__name__)

#: Busy-poll window for an answer; covers a signature (~30-50 us) with room for scheduling noise.
DEFAULT_SPIN_US = 500
#: Deadline of one call once connected, in seconds. A signature takes tens of microseconds and an
#: attestation milliseconds; seconds leave room for a slow (emulated, TCG) guest and still unfreeze
#: a router whose signer stopped answering.
DEFAULT_IO_TIMEOUT = 5.0
_BUFFER_SIZE = HEADER_SIZE + MAX_PAYLOAD
_encode_sign_tx = wire.encode_sign_tx
_OP_SIGN_TX = int(Op.SIGN_TX)  # a plain int: IntEnum arithmetic and formatting are slower
_tuple_new = tuple.__new__
_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_monotonic_ns = time.monotonic_ns
_DONTWAIT = socket.MSG_DONTWAIT


@dataclass(frozen=True)
class KeyInfo:
    """The signer's identity: EIP-55 address, its 20 bytes, uncompressed SEC1 public key."""

    address: str
    address_bytes: bytes
    public_key: bytes


#: Called with the client on every new connection, before it is used (e.g. an attestation check).
#: It may make calls on the client; raising refuses the connection (the error propagates).
OnConnect = Callable[["SignerClient"], None]


def parse_signer_address(address: str) -> Address:
    """`unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT`. Raises MalformedInput."""
    try:
        return parse_address(address)
    except EnclaveError as e:
        raise MalformedInput(str(e)) from e


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
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        backoff: float = 0.01,
        on_connect: OnConnect | None = None,
    ) -> None:
        if not 0 < io_timeout < float("inf"):
            raise ValueError(f"io_timeout must be a positive number of seconds (got {io_timeout!r})")
        self._address = address
        self._cpu = cpu
        self._spin_ns = max(0, spin_us) * 1000
        self._connect_timeout = connect_timeout
        self._io_timeout = io_timeout
        self._io_ns = int(io_timeout * 1e9)
        self._backoff = backoff
        self._on_connect = on_connect
        self._sock: socket.socket | None = None
        self._poller: select.poll | None = None
        self._buf = bytearray(_BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        self._next_id = 1
        # Re-entrant: an `on_connect` check makes calls from inside the reconnect of a call.
        self._lock = threading.RLock()
        self._checking = False
        self._key_info: KeyInfo | None = None

    @classmethod
    def connect(
        cls,
        address: str | Address,
        *,
        cpu: int | None = None,
        spin_us: int = DEFAULT_SPIN_US,
        connect_timeout: float = 5.0,
        io_timeout: float = DEFAULT_IO_TIMEOUT,
        on_connect: OnConnect | None = None,
    ) -> SignerClient:
        """Connect to `unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT`, retrying with backoff
        for up to `connect_timeout` seconds (the signer may still be starting).

        Args:
            cpu: pin the calling thread to this CPU (os.sched_setaffinity), or None.
            io_timeout: deadline of each call once connected, in seconds (see the module doc).
            on_connect: run on this and every later connection before it is used; e.g.
                `router.attest.SignerCheck`, so that a reconnect cannot reach another signer.

        Raises:
            MalformedInput: the address cannot be parsed, or `io_timeout` is not a positive number.
            TransportError: no connection within `connect_timeout` (`SignerTimeout`: a check by
                `on_connect` got no answer within `io_timeout`).
            Whatever `on_connect` raises (the connection is closed first).
        """
        try:
            addr = parse_address(address) if isinstance(address, str) else address
        except EnclaveError as e:
            raise MalformedInput(str(e)) from e
        if isinstance(io_timeout, bool) or not 0 < io_timeout < float("inf"):
            raise MalformedInput(f"timeout must be a positive number of seconds (got {io_timeout!r})")
        if cpu is not None:
            try:
                os.sched_setaffinity(0, {cpu})
            except OSError as e:
                raise MalformedInput(f"cannot pin to cpu {cpu}: {e.strerror or e}") from e
        client = cls(addr, cpu=cpu, spin_us=spin_us, connect_timeout=connect_timeout,
                     io_timeout=io_timeout, on_connect=on_connect)
        with client._lock:
            client._reconnect()
        return client

    def __repr__(self) -> str:
        return f"SignerClient({self._address})"

    @property
    def io_timeout(self) -> float:
        """The per-call deadline, in seconds."""
        return self._io_timeout

    def close(self) -> None:
        self._poller = None
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
            if len(out) != wire.KEY_INFO_SIZE:
                raise TransportError(f"get-key answer of {len(out)} bytes (expected 85)")
            pub, addr = bytes(out[:65]), bytes(out[65:])
            self._key_info = KeyInfo(checksum_address(addr), addr, pub)
        return self._key_info

    def sign_digest(self, digest: bytes) -> bytes:
        """65 bytes r || s || v (v = y parity 0/1) over a 32-byte digest."""
        if len(digest) != 32:
            raise ValueError(f"digest must be 32 bytes (got {len(digest)})")
        out = self._call(Op.SIGN_DIGEST, bytes(digest))
        if len(out) != wire.SIGNATURE_SIZE:
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
            payload = _encode_sign_tx(tx)
        except ValueError as e:
            raise MalformedInput(f"transaction: {e}") from e
        out = self._call(_OP_SIGN_TX, payload)
        if len(out) <= 32:
            raise TransportError(f"sign-tx answer of {len(out)} bytes is too short")
        answer = out.tobytes()  # one copy out of the receive buffer, then hash and raw from it
        return _tuple_new(SignedTx, (answer[32:], answer[:32]))

    def sign_tx_batch(self, txs: Sequence[UnsignedTx]) -> list[SignedTx | SignerError]:
        """Sign up to `enclave.wire.MAX_BATCH` transactions in one round trip (SIGN_TX_BATCH).

        The signer applies its policy and rate limit to each transaction on its own: the result
        list has one entry per transaction, in order, either its `SignedTx` or the `SignerError`
        that refused it (returned, not raised).

        Raises:
            MalformedInput: no transaction, too many, one that cannot be encoded, or a batch
                whose answer could exceed the frame limit.
            SignerError: the signer refused the whole frame (a framing fault).
            TransportError: the connection failed twice or the answer is inconsistent.
        """
        try:
            payload = wire.encode_sign_tx_batch(tuple(txs))
        except (ValueError, TypeError) as e:
            raise MalformedInput(f"batch: {e}") from e
        out = self._call(Op.SIGN_TX_BATCH, payload)
        try:
            results = wire.decode_sign_tx_batch_answer(out, len(txs))
        except EnclaveError as e:
            raise TransportError(f"sign-tx-batch answer: {e}") from e
        signed: list[SignedTx | SignerError] = []
        for status, body in results:
            if status == 0:
                signed.append(_tuple_new(SignedTx, (body[32:], body[:32])))
            else:
                signed.append(SignerError(status, _code_name(status), body.decode("ascii", "replace")))
        return signed

    def attest(self, *, nonce: bytes | None = None, user_data: bytes | None = None) -> bytes:
        """The signer's NSM attestation document (raw COSE_Sign1) with this nonce and user data;
        its `public_key` is the signer's own key (PROTOCOL.md, "Key binding"). Verify it with
        `router.attest.check_signer`, which also checks that binding."""
        try:
            payload = wire.encode_attest(nonce, user_data, None)
        except ValueError as e:
            raise MalformedInput(f"attest: {e}") from e
        return bytes(self._call(Op.ATTEST, payload))

    def stats(self) -> wire.Stats:
        """The signer's counters."""
        out = self._call(Op.STATS, b"")
        try:
            return wire.Stats.decode(out)
        except EnclaveError as e:
            raise TransportError(f"stats answer: {e}") from e

    # --- transport --------------------------------------------------------------------------------

    def _reconnect(self) -> None:
        """Open a new connection (caller holds the lock) and run the `on_connect` check on it."""
        self.close()
        self._key_info = None  # a restarted signer may hold another key
        deadline = time.monotonic() + self._connect_timeout
        delay = self._backoff
        while True:
            try:
                sock = connect(self._address, timeout=max(0.1, deadline - time.monotonic()))
                break
            except EnclaveError as e:
                if time.monotonic() + delay > deadline:
                    raise TransportError(f"signer at {self._address}: {e}") from e
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        self._sock = sock
        self._poller = select.poll()
        self._poller.register(sock, select.POLLIN)
        if self._on_connect is not None:
            self._checking = True
            try:
                self._on_connect(self)
            except BaseException:
                self.close()
                raise
            finally:
                self._checking = False

    def _call(self, op: int, payload: bytes) -> memoryview:
        with self._lock:
            try:
                return self._exchange(op, payload)
            except _Broken as e:
                if self._checking:  # a call of the on_connect check: never reconnect from inside
                    self.close()
                    raise TransportError(f"signer at {self._address}: {e}") from e
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
        deadline = _monotonic_ns() + self._io_ns
        rid = self._next_id
        self._next_id = rid + 1 if rid < 0xFFFFFFFF else 1
        frame = _pack_header(MAGIC, VERSION, op, rid, len(payload)) + payload
        try:
            sent = sock.send(frame, _DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as e:
            raise _Broken(f"send failed: {e}") from e
        if sent != len(frame):
            self._send_rest(sock, memoryview(frame)[sent:], deadline, op)
        mv, buf = self._mv, self._buf
        end = 0
        while end < HEADER_SIZE:
            end += self._fill(sock, mv, end, deadline, op)
        magic, version, rop, rrid, n = _unpack_header(buf, 0)
        if magic != MAGIC or version != VERSION or n > MAX_PAYLOAD or rrid != rid:
            self.close()
            raise TransportError(
                f"signer at {self._address} answered out of protocol "
                f"(magic 0x{magic.hex()}, version {version}, id {rrid} for {rid}, length {n})"
            )
        total = HEADER_SIZE + n
        while end < total:
            end += self._fill(sock, mv, end, deadline, op)
        if end != total:
            self.close()
            raise TransportError(f"signer at {self._address} sent {end - total} unexpected bytes")
        body = mv[HEADER_SIZE:total]
        if rop == op | RESPONSE_BIT:
            return body
        if rop == OP_ERROR:
            try:
                code, message = wire.decode_error(body)
            except EnclaveError as e:
                raise TransportError(f"malformed error frame: {e}") from e
            raise SignerError(code, _code_name(code), message)
        self.close()
        raise TransportError(f"signer answered opcode 0x{rop:02x} to request 0x{op:02x}")

    def _fill(self, sock: socket.socket, mv: memoryview, end: int, deadline: int, op: int) -> int:
        room = mv[end:]
        try:
            try:
                got = sock.recv_into(room, 0, _DONTWAIT)
            except BlockingIOError:
                got = -1
                if self._spin_ns:
                    clock = _monotonic_ns
                    recv_into = sock.recv_into
                    spin_end = clock() + self._spin_ns
                    while True:
                        try:
                            got = recv_into(room, 0, _DONTWAIT)
                            break
                        except BlockingIOError:
                            if clock() > spin_end:
                                break
                if got < 0:
                    got = self._wait_recv(sock, room, deadline, op)
        except OSError as e:
            raise _Broken(f"receive failed: {e}") from e
        if got == 0:
            raise _Broken("signer closed the connection")
        return got

    def _wait_recv(self, sock: socket.socket, room: memoryview, deadline: int, op: int) -> int:
        """Slow path: wait in poll(2) for readable data until the call's deadline."""
        poller = self._poller
        if poller is None:  # close() from another thread
            raise _Broken("connection closed")
        while True:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                self._timed_out(op)
            if poller.poll(-(-left // 1_000_000)):  # ms, rounded up: never wake early forever
                try:
                    return sock.recv_into(room, 0, socket.MSG_DONTWAIT)
                except BlockingIOError:  # woken without data; wait again
                    continue

    def _send_rest(self, sock: socket.socket, rest: memoryview, deadline: int, op: int) -> None:
        """Slow path: the socket buffer is full (the signer is not reading); send until the
        deadline."""
        poller = select.poll()
        poller.register(sock, select.POLLOUT)
        while rest:
            left = deadline - time.monotonic_ns()
            if left <= 0:
                self._timed_out(op)
            if not poller.poll(-(-left // 1_000_000)):
                continue
            try:
                rest = rest[sock.send(rest, socket.MSG_DONTWAIT) :]
            except BlockingIOError:
                continue
            except OSError as e:
                raise _Broken(f"send failed: {e}") from e

    def _timed_out(self, op: int) -> None:
        """Drop the connection (its answer, if it ever comes, must not be read) and raise."""
        self.close()
        try:
            name = Op(op).name.lower().replace("_", "-")
        except ValueError:
            name = f"opcode 0x{op:02x}"
        logger.warning("signer at %s did not answer %s within %g s; connection dropped",
                       self._address, name, self._io_timeout)
        raise SignerTimeout(name, self._io_timeout, str(self._address))


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"code {code}"


class _Broken(Exception):
    """The connection failed in a way a reconnect may fix."""
