"""The router's local API: a Unix socket speaking the signer's binary framing (enclave/wire.py).

Every frame is the signer's 12-byte little-endian header (magic "SN", version 1, opcode, request
id, payload length) and payload; answers echo the request id with `opcode | 0x80`, failures are
ERROR frames (opcode 0xFF: code u16 + ASCII message). Integers little-endian, u256 as 32 bytes.

| op   | name   | request payload                                            | answer payload |
|------|--------|------------------------------------------------------------|----------------|
| 0x01 | PING   | empty                                                      | empty          |
| 0x20 | SUBMIT | to[20] value:u256 gas:u64 flags:u16 id_len:u16 data_len:u32, id, data, options | nonce:u64 tx_hash[32] |
| 0x21 | STATUS | id                                                         | STATUS record  |
| 0x22 | WAIT   | confirmations:u32 timeout_ms:u32, id                       | STATUS record  |
| 0x23 | STATS  | empty                                                      | JSON (UTF-8), for operators |
| 0x24 | CANCEL | id                                                         | STATUS record  |
| 0x25 | WATCH  | id, or empty for every intent                              | a stream: see below |

SUBMIT flags (0 = no options: the original encoding): bit 0 estimate the gas (gas must be 0),
bit 1 max_fee_per_gas, bit 2 max_priority_fee_per_gas, bit 3 deadline; other bits are refused.
The options follow the data, each present one in bit order: max_fee_per_gas u256,
max_priority_fee_per_gas u256, deadline f64 (unix seconds).

WATCH answers at once with an empty frame (`0xA5`, the request's id: subscribed), then one
`0xA5` frame per event (EVENT record) until the client closes the connection. A subscriber too
slow to read (its queue of `EventBus.queue_size` events overflows) gets ERROR 35 (events lost)
and the stream ends; re-read states with STATUS and WATCH again. EVENT record: seq:u64 kind:u8
(0 submitted, 1 signed, 2 broadcast, 3 landed, 4 reorged_out, 5 replaced, 6 failed,
7 cancelled) fields:u8 nonce:u64 time:f64 id_len:u16, id, then each field whose bit is set in
`fields`, in bit order: bit 0 tx_hash[32], bit 1 block_number:u64, bit 2 block_hash[32],
bit 3 confirmations:u32, bit 4 old_hash[32], bit 5 new_hash[32], bit 6 reason_len:u16 reason
(UTF-8).

STATUS record: state:u8 (0 pending, 1 landed, 2 failed, 3 cancelled, 4 replaced)
receipt_status:u8 (0/1, 0xFF unknown)
reserved:u16 nonce:u64 block_number:u64 (2**64-1 if none) tx_hash[32] block_hash[32] (zeros).

Error codes are the signer's (2 bad magic, 3 bad version, 4 unknown opcode, 5 payload too large,
6 bad length, 7 malformed, 8 refused by the signer's policy, 10 unavailable) plus 32 unknown
intent id, 33 timed out, 34 intent failed, 35 events lost (WATCH), 36 gas estimation failed
(the node's message, with its revert reason). A frame with a bad header is answered and, when its
length cannot be trusted, the connection closed; every other error leaves the connection open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from enclave.wire import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_PAYLOAD,
    OP_ERROR,
    RESPONSE_BIT,
    VERSION,
    pack_frame,
)
from enclave.wire import decode_error as _decode_error
from enclave.wire import encode_error as _encode_error

from .core import Router
from .errors import (
    GasEstimationFailed,
    IntentFailed,
    JournalError,
    MalformedInput,
    NonceSourceError,
    RouterError,
    SignerError,
    TransportError,
)
from .events import EventKind, EventsLost, IntentEvent
from .handle import Handle
from .intent import Intent
from .nonces import TxState

log = logging.getLogger(__name__)

OP_PING = 0x01
OP_SUBMIT = 0x20
OP_STATUS = 0x21
OP_WAIT = 0x22
OP_STATS = 0x23
OP_CANCEL = 0x24

E_INTERNAL, E_BAD_MAGIC, E_BAD_VERSION, E_UNKNOWN_OP = 1, 2, 3, 4
E_TOO_LARGE, E_BAD_LENGTH, E_MALFORMED, E_REFUSED, E_UNAVAILABLE = 5, 6, 7, 8, 10
E_NOT_FOUND, E_TIMEOUT, E_FAILED, E_EVENTS_LOST, E_GAS_ESTIMATE = 32, 33, 34, 35, 36
OP_WATCH = 0x25

FLAG_ESTIMATE_GAS, FLAG_MAX_FEE, FLAG_PRIORITY_FEE, FLAG_DEADLINE = 0x1, 0x2, 0x4, 0x8
_FLAGS = FLAG_ESTIMATE_GAS | FLAG_MAX_FEE | FLAG_PRIORITY_FEE | FLAG_DEADLINE
_F64 = struct.Struct("<d")
EVENT_FIXED = struct.Struct("<QBBQdH")
_KIND_CODES = {EventKind.SUBMITTED: 0, EventKind.SIGNED: 1, EventKind.BROADCAST: 2,
               EventKind.LANDED: 3, EventKind.REORGED_OUT: 4, EventKind.REPLACED: 5,
               EventKind.FAILED: 6, EventKind.CANCELLED: 7}
_KINDS = {code: kind for kind, code in _KIND_CODES.items()}
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")

SUBMIT_FIXED = struct.Struct("<20s32sQHHI")
WAIT_FIXED = struct.Struct("<II")
STATUS = struct.Struct("<BBHQQ32s32s")
SUBMITTED = struct.Struct("<Q32s")
_NO_BLOCK = 2**64 - 1
_STATES = {TxState.PENDING: 0, TxState.LANDED: 1, TxState.FAILED: 2, TxState.CANCELLED: 3,
           TxState.REPLACED: 4}
_STATE_NAMES = {code: state.value for state, code in _STATES.items()}
MAX_WAIT_MS = 600_000


class ApiError(RouterError):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def encode_submit(intent: Intent) -> bytes:
    """The SUBMIT payload; an intent without options has the original (flags 0) encoding. An
    intent whose gas the router estimated is encoded as its request (estimate)."""
    ident = intent.id.encode()
    flags = 0
    options = b""
    estimate = intent.gas is None or intent.gas_estimated
    if estimate:
        flags |= FLAG_ESTIMATE_GAS
    if intent.max_fee_per_gas is not None:
        flags |= FLAG_MAX_FEE
        options += intent.max_fee_per_gas.to_bytes(32, "little")
    if intent.max_priority_fee_per_gas is not None:
        flags |= FLAG_PRIORITY_FEE
        options += intent.max_priority_fee_per_gas.to_bytes(32, "little")
    if intent.deadline is not None:
        flags |= FLAG_DEADLINE
        options += _F64.pack(intent.deadline)
    gas = 0 if estimate else intent.gas_limit
    return SUBMIT_FIXED.pack(intent.to, intent.value.to_bytes(32, "little"), gas, flags,
                             len(ident), len(intent.data)) + ident + intent.data + options


def decode_submit(payload: bytes) -> Intent:
    """Raises ApiError(E_BAD_LENGTH / E_MALFORMED) naming the problem."""
    if len(payload) < SUBMIT_FIXED.size:
        raise ApiError(E_BAD_LENGTH, f"SUBMIT payload of {len(payload)} bytes, fixed part is "
                                     f"{SUBMIT_FIXED.size}")
    to, value, gas, flags, id_len, data_len = SUBMIT_FIXED.unpack_from(payload)
    if flags & ~_FLAGS:
        raise ApiError(E_MALFORMED, f"SUBMIT flags 0x{flags:04x}: undefined bits "
                                    f"0x{flags & ~_FLAGS:04x}")
    if flags & FLAG_ESTIMATE_GAS and gas:
        raise ApiError(E_MALFORMED, f"SUBMIT asks for gas estimation but carries gas {gas}")
    opt_len = (32 * bool(flags & FLAG_MAX_FEE) + 32 * bool(flags & FLAG_PRIORITY_FEE)
               + _F64.size * bool(flags & FLAG_DEADLINE))
    expected = SUBMIT_FIXED.size + id_len + data_len + opt_len
    if len(payload) != expected:
        raise ApiError(E_BAD_LENGTH, f"SUBMIT payload of {len(payload)} bytes, its lengths "
                                     f"say {expected} (options included: flags 0x{flags:04x})")
    start = SUBMIT_FIXED.size
    try:
        ident = payload[start:start + id_len].decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(E_MALFORMED, "SUBMIT id is not UTF-8") from e
    if not 0 < len(ident) <= 128:
        raise ApiError(E_MALFORMED, "SUBMIT id must be 1..128 characters")
    pos = start + id_len + data_len
    options: dict[str, object] = {}
    if flags & FLAG_MAX_FEE:
        options["max_fee_per_gas"] = int.from_bytes(payload[pos:pos + 32], "little")
        pos += 32
    if flags & FLAG_PRIORITY_FEE:
        options["max_priority_fee_per_gas"] = int.from_bytes(payload[pos:pos + 32], "little")
        pos += 32
    if flags & FLAG_DEADLINE:
        options["deadline"] = _F64.unpack_from(payload, pos)[0]
    try:
        return Intent(to=to, value=int.from_bytes(value, "little"),
                      gas=None if flags & FLAG_ESTIMATE_GAS else gas,
                      data=bytes(payload[start + id_len:start + id_len + data_len]), id=ident,
                      **options)  # type: ignore[arg-type]
    except MalformedInput as e:
        raise ApiError(E_MALFORMED, str(e)) from e


def encode_event(ev: IntentEvent) -> bytes:
    """The EVENT record of a WATCH frame (layout in the module docstring)."""
    ident = ev.intent_id.encode()
    fields = 0
    tail: list[bytes] = []
    if ev.tx_hash is not None:
        fields |= 0x01
        tail.append(ev.tx_hash)
    if ev.block_number is not None:
        fields |= 0x02
        tail.append(_U64.pack(ev.block_number))
    if ev.block_hash is not None:
        fields |= 0x04
        tail.append(ev.block_hash)
    if ev.confirmations is not None:
        fields |= 0x08
        tail.append(_U32.pack(min(ev.confirmations, 2**32 - 1)))
    if ev.old_hash is not None:
        fields |= 0x10
        tail.append(ev.old_hash)
    if ev.new_hash is not None:
        fields |= 0x20
        tail.append(ev.new_hash)
    if ev.reason is not None:
        fields |= 0x40
        reason = ev.reason.encode()[:4096]
        tail.append(_U16.pack(len(reason)) + reason)
    return (EVENT_FIXED.pack(ev.seq, _KIND_CODES[ev.kind], fields, ev.nonce, ev.time, len(ident))
            + ident + b"".join(tail))


def decode_event(payload: bytes) -> IntentEvent:
    """Parse an EVENT record.

    Raises:
        TransportError: the record is truncated, too long, or names an unknown kind or field.
    """
    try:
        seq, code, fields, nonce, when, id_len = EVENT_FIXED.unpack_from(payload)
        if code not in _KINDS:
            raise TransportError(f"WATCH event of unknown kind {code}")
        if fields & ~0x7F:
            raise TransportError(f"WATCH event with unknown fields 0x{fields:02x}")
        pos = EVENT_FIXED.size
        ident = payload[pos:pos + id_len].decode("utf-8")
        if len(ident.encode()) != id_len:
            raise TransportError("WATCH event truncated in its id")
        pos += id_len
        values: dict[str, object] = {}

        def take(n: int) -> bytes:
            nonlocal pos
            if pos + n > len(payload):
                raise TransportError("WATCH event truncated")
            out = payload[pos:pos + n]
            pos += n
            return out

        if fields & 0x01:
            values["tx_hash"] = take(32)
        if fields & 0x02:
            values["block_number"] = _U64.unpack(take(8))[0]
        if fields & 0x04:
            values["block_hash"] = take(32)
        if fields & 0x08:
            values["confirmations"] = _U32.unpack(take(4))[0]
        if fields & 0x10:
            values["old_hash"] = take(32)
        if fields & 0x20:
            values["new_hash"] = take(32)
        if fields & 0x40:
            values["reason"] = take(_U16.unpack(take(2))[0]).decode("utf-8")
        if pos != len(payload):
            raise TransportError(f"WATCH event has {len(payload) - pos} trailing bytes")
    except (struct.error, UnicodeDecodeError) as e:
        raise TransportError(f"malformed WATCH event: {e}") from e
    return IntentEvent(seq, _KINDS[code], ident, nonce, when, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Status:
    state: str
    receipt_status: int | None
    nonce: int
    block_number: int | None
    tx_hash: bytes
    block_hash: bytes | None

    def to_json(self) -> dict[str, object]:
        return {"state": self.state, "status": self.receipt_status, "nonce": self.nonce,
                "block_number": self.block_number, "tx_hash": "0x" + self.tx_hash.hex(),
                "block_hash": None if self.block_hash is None else "0x" + self.block_hash.hex()}


def _status_record(handle: Handle, receipt_status: int | None = None) -> bytes:
    f = handle.flight
    landed = f.landed
    return STATUS.pack(_STATES[f.state], 0xFF if receipt_status is None else receipt_status, 0,
                       f.nonce, landed.block_number if landed else _NO_BLOCK, handle.tx_hash,
                       landed.block_hash if landed else bytes(32))


def decode_status(payload: bytes) -> Status:
    if len(payload) != STATUS.size:
        raise TransportError(f"STATUS answer of {len(payload)} bytes (expected {STATUS.size})")
    state, rs, _, nonce, number, tx_hash, block_hash = STATUS.unpack(payload)
    if state not in _STATE_NAMES:
        raise TransportError(f"STATUS answer with unknown state {state}")
    return Status(_STATE_NAMES[state], None if rs == 0xFF else rs, nonce,
                  None if number == _NO_BLOCK else number, tx_hash,
                  None if number == _NO_BLOCK else block_hash)


class ApiServer:
    def __init__(self, router: Router, path: str) -> None:
        self.router = router
        self.path = path
        self._server: asyncio.AbstractServer | None = None
        self._conns: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        p = Path(self.path)
        if p.is_socket():
            p.unlink()  # a stale socket from a previous run
        self._server = await asyncio.start_unix_server(self._serve, path=self.path)
        os.chmod(self.path, 0o600)  # the API signs with the fund's key: owner only

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._conns):
                t.cancel()
            await self._server.wait_closed()
            with contextlib.suppress(FileNotFoundError):
                Path(self.path).unlink()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                try:
                    head = await reader.readexactly(HEADER_SIZE)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                magic, version, op, rid, length = HEADER.unpack(head)
                if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD:
                    code, msg = (
                        (E_BAD_MAGIC, f"bad magic 0x{magic.hex()} (expected 0x{MAGIC.hex()})")
                        if magic != MAGIC else
                        (E_BAD_VERSION, f"protocol version {version} (supported: {VERSION})")
                        if version != VERSION else
                        (E_TOO_LARGE, f"payload of {length} bytes (limit {MAX_PAYLOAD})")
                    )
                    writer.write(_encode_error(rid, code, msg))
                    if length > MAX_PAYLOAD or magic != MAGIC:
                        # The length of a frame that is not ours cannot be trusted to resync.
                        await writer.drain()
                        return
                    try:
                        await reader.readexactly(length)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    continue
                try:
                    payload = await reader.readexactly(length)
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                t = asyncio.create_task(
                    self._watch(writer, rid, payload) if op == OP_WATCH
                    else self._answer(writer, op, rid, payload))
                pending.add(t)
                t.add_done_callback(pending.discard)
        finally:
            for t in pending:
                t.cancel()
            writer.close()
            self._conns.discard(task)

    async def _answer(self, writer: asyncio.StreamWriter, op: int, rid: int, payload: bytes) -> None:
        try:
            body = await self._dispatch(op, payload)
            frame = pack_frame(op | RESPONSE_BIT, rid, body)
        except ApiError as e:
            frame = _encode_error(rid, e.code, str(e))
        except MalformedInput as e:
            frame = _encode_error(rid, E_MALFORMED, e.diagnostics())
        except SignerError as e:
            frame = _encode_error(rid, E_REFUSED, e.diagnostics())
        except GasEstimationFailed as e:
            frame = _encode_error(rid, E_GAS_ESTIMATE, e.diagnostics())
        except (TransportError, NonceSourceError, JournalError) as e:
            frame = _encode_error(rid, E_UNAVAILABLE, e.diagnostics())
        except IntentFailed as e:
            frame = _encode_error(rid, E_FAILED, e.diagnostics())
        except RouterError as e:
            frame = _encode_error(rid, E_INTERNAL, e.diagnostics())
        except Exception:  # the API must answer every request and keep serving
            log.exception("API request failed", extra={"op": op})
            frame = _encode_error(rid, E_INTERNAL, "internal error")
        try:
            writer.write(frame)
            await writer.drain()
        except ConnectionError:
            pass

    async def _watch(self, writer: asyncio.StreamWriter, rid: int, payload: bytes) -> None:
        """Stream events until the client goes (the connection task cancels this one) or falls
        too far behind (ERROR 35). A slow reader blocks only this task, never the router: its
        subscription's queue overflows instead."""
        try:
            ident = payload.decode("utf-8") if payload else None
        except UnicodeDecodeError:
            ident = ""
        if ident is not None and not 0 < len(ident) <= 128:
            writer.write(_encode_error(rid, E_MALFORMED, "WATCH id must be UTF-8, 1..128 "
                                                         "characters (or empty for all)"))
            return
        answer = OP_WATCH | RESPONSE_BIT
        sub = self.router.events(ident)
        try:
            writer.write(pack_frame(answer, rid, b""))  # subscribed: nothing before is missed
            await writer.drain()
            async for ev in sub:
                writer.write(pack_frame(answer, rid, encode_event(ev)))
                await writer.drain()
        except EventsLost as e:
            writer.write(_encode_error(rid, E_EVENTS_LOST, e.diagnostics()))
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            sub.close()

    async def _dispatch(self, op: int, payload: bytes) -> bytes:
        if op == OP_PING:
            return b""
        if op == OP_SUBMIT:
            handle = await self.router.submit(decode_submit(payload))
            return SUBMITTED.pack(handle.nonce, handle.flight.hash)
        if op == OP_STATUS:
            return _status_record(self._handle(payload))
        if op == OP_WAIT:
            if len(payload) < WAIT_FIXED.size:
                raise ApiError(E_BAD_LENGTH, f"WAIT payload of {len(payload)} bytes")
            confirmations, timeout_ms = WAIT_FIXED.unpack_from(payload)
            if timeout_ms > MAX_WAIT_MS or confirmations > 10_000:
                raise ApiError(E_MALFORMED, f"WAIT timeout above {MAX_WAIT_MS} ms or "
                                            "confirmations above 10000")
            handle = self._handle(payload[WAIT_FIXED.size:])
            try:
                rcpt = await handle.receipt(max(confirmations, 1), timeout=timeout_ms / 1000)
            except TimeoutError as e:
                raise ApiError(E_TIMEOUT, str(e)) from e
            return _status_record(handle, int(rcpt["status"], 16) if "status" in rcpt else None)
        if op == OP_STATS:
            return json.dumps(self.router.stats(), default=str).encode()
        if op == OP_CANCEL:
            try:
                ident = payload.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ApiError(E_MALFORMED, "intent id is not UTF-8") from e
            if self.router.handle(ident) is None:
                raise ApiError(E_NOT_FOUND, f"no intent with id {ident[:60]!r}")
            return _status_record(await self.router.cancel(ident))
        raise ApiError(E_UNKNOWN_OP, f"unknown opcode 0x{op:02x}")

    def _handle(self, ident: bytes) -> Handle:
        try:
            key = ident.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ApiError(E_MALFORMED, "intent id is not UTF-8") from e
        handle = self.router.handle(key)
        if handle is None:
            raise ApiError(E_NOT_FOUND, f"no intent with id {key[:60]!r}")
        return handle


class ApiClient:
    """Blocking client of the local API (for `python -m router submit` and scripts)."""

    def __init__(self, path: str, *, timeout: float = 10.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError as e:
            self._sock.close()
            raise TransportError(f"router API at unix:{path}: {e.strerror or e}") from e
        self._rid = 0

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, op: int, payload: bytes = b"", *, timeout: float | None = None) -> bytes:
        """One request; raises ApiError for an ERROR answer, TransportError for a broken link."""
        self._rid += 1
        if timeout is not None:
            self._sock.settimeout(timeout)
        try:
            self._sock.sendall(pack_frame(op, self._rid, payload))
        except OSError as e:
            raise TransportError(f"router API: {e}") from e
        return self._answer(op)

    def _answer(self, op: int) -> bytes:
        """Read the answer to request `self._rid` of opcode `op`."""
        try:
            head = self._recv(HEADER_SIZE)
            magic, version, rop, rid, length = HEADER.unpack(head)
            if magic != MAGIC or version != VERSION or length > MAX_PAYLOAD or rid != self._rid:
                raise TransportError("router API answered with a malformed frame")
            body = self._recv(length)
        except OSError as e:
            raise TransportError(f"router API: {e}") from e
        if rop == OP_ERROR:
            code, message = _decode_error(body)
            if code == E_EVENTS_LOST:
                raise EventsLost(message)
            raise ApiError(code, message)
        if rop != op | RESPONSE_BIT:
            raise TransportError(f"router API answered opcode 0x{rop:02x} to 0x{op:02x}")
        return body

    def _recv(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self._sock.recv(n - len(out))
            if not chunk:
                raise TransportError("router API closed the connection")
            out += chunk
        return bytes(out)

    def submit(self, intent: Intent) -> tuple[int, bytes]:
        body = self.call(OP_SUBMIT, encode_submit(intent))
        if len(body) != SUBMITTED.size:
            raise TransportError(f"SUBMIT answer of {len(body)} bytes")
        nonce, tx_hash = SUBMITTED.unpack(body)
        return nonce, tx_hash

    def status(self, intent_id: str) -> Status:
        return decode_status(self.call(OP_STATUS, intent_id.encode()))

    def wait(self, intent_id: str, confirmations: int = 1, timeout: float = 60.0) -> Status:
        payload = WAIT_FIXED.pack(confirmations, int(timeout * 1000)) + intent_id.encode()
        return decode_status(self.call(OP_WAIT, payload, timeout=timeout + 5))

    def cancel(self, intent_id: str) -> Status:
        """Ask the router to cancel a pending intent; the answer is its status right after."""
        return decode_status(self.call(OP_CANCEL, intent_id.encode()))

    def watch(self, intent_id: str | None = None, *, timeout: float | None = None) -> Watch:
        """Subscribe (WATCH) to one intent's events, or to all; returns once subscribed, so
        nothing published afterwards is missed. The connection then carries the stream: stop
        by closing the `Watch` (or this client).

        Args:
            timeout: seconds to wait for each event (None: for ever); TransportError after.

        Raises:
            ApiError: the router refused the request (e.g. a malformed id).
            TransportError: the link broke.
        """
        self.call(OP_WATCH, b"" if intent_id is None else intent_id.encode())
        self._sock.settimeout(timeout)
        return Watch(self)

    def stats(self) -> dict[str, object]:
        # The router writes this JSON object itself (Router.stats); cast at the parsing boundary.
        return cast(dict[str, object], json.loads(self.call(OP_STATS)))


class Watch:
    """The events of a WATCH, as a blocking iterator (from `ApiClient.watch`)."""

    def __init__(self, client: ApiClient) -> None:
        self._client = client

    def __iter__(self) -> Iterator[IntentEvent]:
        return self

    def __next__(self) -> IntentEvent:
        """The next event.

        Raises:
            EventsLost: the router dropped events for this (too slow) subscriber; the stream
                ended.
            TransportError: the connection broke, timed out, or carried a malformed frame.
        """
        return decode_event(self._client._answer(OP_WATCH))

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
