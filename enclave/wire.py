"""Sentinel signer wire protocol: the frame codec (hazardous layer; `enclave/PROTOCOL.md` is the spec).

Every frame is a 12-byte little-endian header followed by `length` payload bytes. Requests and
responses share the header; a response echoes the request id and sets the top bit of the opcode, and
any failure is answered with an ERROR frame (code + short ASCII message) instead. A frame is always
exactly 12 + length bytes, whatever its content, so a bad frame never desynchronises the stream: the
server consumes it, answers with an error frame, and keeps the connection.

Fixed layouts are read with precompiled `struct.Struct.unpack_from` on a memoryview of the receive
buffer: no intermediate copies of the frame. Functions here raise `ProtocolError` for malformed input
and `ValueError` for caller misuse when encoding.
"""

from __future__ import annotations

import struct
from dataclasses import astuple, dataclass, fields
from enum import IntEnum

from enclave.errors import ErrorCode, ProtocolError
from enclave.tx import TX_EIP1559, TX_LEGACY, UINT256_MAX, UnsignedTx

__all__ = [
    "ATTEST_FIXED",
    "BATCH_COUNT",
    "BATCH_ITEM",
    "BATCH_RESULT",
    "MAX_BATCH",
    "SIGNED_TX_OVERHEAD",
    "HEADER",
    "HEADER_SIZE",
    "KEY_INFO_SIZE",
    "MAGIC",
    "MAX_ATTEST_NONCE",
    "MAX_ATTEST_PUBLIC_KEY",
    "MAX_ATTEST_USER_DATA",
    "MAX_ERROR_MESSAGE",
    "MAX_PAYLOAD",
    "MAX_TX_DATA",
    "OP_ERROR",
    "RESPONSE_BIT",
    "SIGNATURE_SIZE",
    "STATS_STRUCT",
    "TX_FIXED",
    "TX_FIXED_SIZE",
    "TX_FLAG_HAS_TO",
    "VERSION",
    "Op",
    "Stats",
    "check_header",
    "decode_attest",
    "decode_error",
    "decode_sign_tx",
    "decode_sign_tx_batch",
    "decode_sign_tx_batch_answer",
    "encode_batch_error",
    "encode_batch_signed",
    "encode_attest",
    "encode_error",
    "encode_sign_tx",
    "encode_sign_tx_batch",
    "expect_length",
    "pack_frame",
]

MAGIC = b"SN"
VERSION = 1
#: magic[2] version:u8 opcode:u8 request_id:u32 length:u32
HEADER = struct.Struct("<2sBBII")
HEADER_SIZE = HEADER.size  # 12
#: Largest payload either side accepts (requests and responses); the receive buffer's size.
MAX_PAYLOAD = 128 * 1024
RESPONSE_BIT = 0x80
OP_ERROR = 0xFF
SIGNATURE_SIZE = 65
#: Largest calldata SIGN_TX accepts: leaves room for the RLP fields, signature and hash (under 300
#: bytes) so that the answer also fits in MAX_PAYLOAD.
MAX_TX_DATA = MAX_PAYLOAD - 1024
KEY_INFO_SIZE = 65 + 20
MAX_ERROR_MESSAGE = 200
# NSM limits (AWS nitro-enclaves-nsm-api): user_data and nonce 512 bytes, public_key 1024 bytes.
MAX_ATTEST_NONCE = 512
MAX_ATTEST_USER_DATA = 512
MAX_ATTEST_PUBLIC_KEY = 1024
_U64_MAX = (1 << 64) - 1


class Op(IntEnum):
    """Request opcodes; the response to `op` carries `op | RESPONSE_BIT`."""

    PING = 0x01
    GET_KEY = 0x02
    SIGN_DIGEST = 0x03
    SIGN_TX = 0x04
    ATTEST = 0x05
    STATS = 0x06
    SIGN_TX_BATCH = 0x07


#: tx_type:u8 flags:u8 reserved:u16 data_len:u32 chain_id:u64 nonce:u64 gas:u64
#: value:u256 max_fee_per_gas:u256 max_priority_fee_per_gas:u256 to[20], then data[data_len]
TX_FIXED = struct.Struct("<BBHIQQQ32s32s32s20s")
TX_FIXED_SIZE = TX_FIXED.size  # 148
TX_FLAG_HAS_TO = 0x01
_NO_TO = bytes(20)

#: Most transactions one SIGN_TX_BATCH frame may carry.
MAX_BATCH = 256
#: count:u16 reserved:u16, the head of a batch request and of its answer.
BATCH_COUNT = struct.Struct("<HH")
#: length:u32 of one request item (a SIGN_TX payload) that follows.
BATCH_ITEM = struct.Struct("<I")
#: status:u16 (0 = signed, else an ErrorCode) length:u32 of the answer item that follows.
BATCH_RESULT = struct.Struct("<HI")
#: Upper bound of len(raw signed tx) - len(data): EIP-1559 with every field at its wire maximum
#: (RLP: chain id, nonce, gas 9 bytes each; three u256 33 each; to 21; data prefix 4; access list,
#: y parity 1 each; r, s 33 each; list header 4; type byte 1). Legacy is smaller (188).
SIGNED_TX_OVERHEAD = 224
#: Upper bound of one answer item beyond its calldata: result header, hash, signed tx overhead
#: (an error item, 6 + at most MAX_ERROR_MESSAGE bytes, is smaller).
_BATCH_ANSWER_ITEM = BATCH_RESULT.size + 32 + SIGNED_TX_OVERHEAD

#: nonce_len:u16 user_data_len:u16 public_key_len:u16 reserved:u16, then the three fields in order
ATTEST_FIXED = struct.Struct("<HHHH")

_ERROR_CODE = struct.Struct("<H")
_pack_header = HEADER.pack
_unpack_tx = TX_FIXED.unpack_from
_pack_tx = TX_FIXED.pack
_from_bytes = int.from_bytes
_tuple_new = tuple.__new__


def pack_frame(op: int, request_id: int, payload: bytes = b"") -> bytes:
    """One frame: header + payload (payload length is checked by the caller's limits)."""
    return _pack_header(MAGIC, VERSION, op, request_id, len(payload)) + payload


def check_header(magic: bytes, version: int, length: int) -> None:
    """Validate the framing fields of a header (opcodes are the dispatcher's business).

    Raises:
        ProtocolError: BAD_MAGIC, BAD_VERSION or PAYLOAD_TOO_LARGE, checked in that order.
    """
    if magic != MAGIC:
        raise ProtocolError(
            ErrorCode.BAD_MAGIC, f"bad magic 0x{magic.hex()} (expected 0x{MAGIC.hex()})"
        )
    if version != VERSION:
        raise ProtocolError(
            ErrorCode.BAD_VERSION, f"protocol version {version} (supported: {VERSION})"
        )
    if length > MAX_PAYLOAD:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"payload of {length} bytes (limit {MAX_PAYLOAD})"
        )


def expect_length(op_name: str, payload_len: int, expected: int) -> None:
    """Raises ProtocolError(BAD_LENGTH) unless a fixed-size payload has its size."""
    if payload_len != expected:
        raise ProtocolError(
            ErrorCode.BAD_LENGTH, f"{op_name} payload: got {payload_len} bytes, expected {expected}"
        )


# --- errors -----------------------------------------------------------------------------------------


def encode_error(request_id: int, code: int, message: str) -> bytes:
    """An ERROR frame; the message is cut to MAX_ERROR_MESSAGE ASCII bytes."""
    text = message.encode("ascii", "replace")[:MAX_ERROR_MESSAGE]
    return pack_frame(OP_ERROR, request_id, _ERROR_CODE.pack(code) + text)


def decode_error(payload: bytes | memoryview) -> tuple[int, str]:
    """(code, message) of an ERROR frame's payload.

    Raises:
        ProtocolError: the payload is shorter than its 2-byte code.
    """
    if len(payload) < _ERROR_CODE.size:
        raise ProtocolError(ErrorCode.BAD_LENGTH, "error frame shorter than its code")
    (code,) = _ERROR_CODE.unpack_from(payload, 0)
    return code, bytes(payload[_ERROR_CODE.size :]).decode("ascii", "replace")


# --- sign-tx ----------------------------------------------------------------------------------------


def encode_sign_tx(tx: UnsignedTx) -> bytes:
    """The SIGN_TX request payload for `tx`.

    Raises:
        ValueError: a field out of its wire range, `to` not 20 bytes, data too large.
    """
    try:
        # Fast path (this is on the client's hot path): struct and int.to_bytes enforce the ranges.
        tx_type, chain_id, nonce, gas, to, value, data, max_fee, prio = tx
        if (tx_type != TX_EIP1559 and tx_type != TX_LEGACY) or (to is not None and len(to) != 20):
            raise ValueError
        if len(data) > MAX_TX_DATA:
            raise ValueError
        return b"".join((_pack_tx(
            tx_type, TX_FLAG_HAS_TO if to is not None else 0, 0, len(data), chain_id, nonce, gas,
            value.to_bytes(32, "little"), max_fee.to_bytes(32, "little"),
            prio.to_bytes(32, "little"), _NO_TO if to is None else to,
        ), data))  # fmt: skip
    except (ValueError, OverflowError, struct.error, TypeError, AttributeError):
        _explain_sign_tx(tx)
        raise


def _explain_sign_tx(tx: UnsignedTx) -> None:
    """Raise the ValueError that says which field of `tx` cannot be encoded."""
    if tx.tx_type not in (TX_LEGACY, TX_EIP1559):
        raise ValueError(f"tx_type must be 0 (legacy) or 2 (EIP-1559), got {tx.tx_type}")
    if tx.to is not None and len(tx.to) != 20:
        raise ValueError(f"to must be 20 bytes or None (got {len(tx.to)} bytes)")
    if len(tx.data) > MAX_TX_DATA:
        raise ValueError(f"data of {len(tx.data)} bytes (limit {MAX_TX_DATA})")
    for name, limit in (("chain_id", _U64_MAX), ("nonce", _U64_MAX), ("gas", _U64_MAX),
                        ("value", UINT256_MAX), ("max_fee_per_gas", UINT256_MAX),
                        ("max_priority_fee_per_gas", UINT256_MAX)):  # fmt: skip
        v = getattr(tx, name)
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= limit:
            raise ValueError(f"{name} must be an integer in 0..{limit} (got {v!r})")


def _malformed(message: str) -> ProtocolError:
    return ProtocolError(ErrorCode.MALFORMED, message)


def decode_sign_tx(payload: memoryview) -> UnsignedTx:
    """Decode and validate a SIGN_TX payload (validity rules, not policy).

    Raises:
        ProtocolError: BAD_LENGTH if the sizes disagree, MALFORMED if a field is invalid.
    """
    n = len(payload)
    if n < TX_FIXED_SIZE:
        raise ProtocolError(
            ErrorCode.BAD_LENGTH,
            f"sign-tx payload: got {n} bytes, expected at least {TX_FIXED_SIZE}",
        )
    (tx_type, flags, reserved, data_len, chain_id, nonce, gas, value, max_fee, prio, to) = (
        _unpack_tx(payload, 0)
    )
    if data_len != n - TX_FIXED_SIZE:
        raise ProtocolError(
            ErrorCode.BAD_LENGTH,
            f"sign-tx data_len {data_len} but {n - TX_FIXED_SIZE} bytes follow the fixed part",
        )
    if data_len > MAX_TX_DATA:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE, f"sign-tx data of {data_len} bytes (limit {MAX_TX_DATA})"
        )
    if tx_type != TX_EIP1559 and tx_type != TX_LEGACY:
        raise _malformed(f"tx_type {tx_type} (supported: 0 legacy, 2 EIP-1559)")
    if flags & ~TX_FLAG_HAS_TO or reserved:
        raise _malformed(f"unknown flags 0x{flags:02x} or reserved 0x{reserved:04x} set")
    if not flags:
        if to != _NO_TO:
            raise _malformed("to must be zero when the has-to flag is clear (contract creation)")
        to = None
    if chain_id == 0:
        raise _malformed("chain_id 0 (EIP-155 replay protection needs a chain id)")
    if nonce == _U64_MAX:
        raise _malformed("nonce 2**64-1 (EIP-2681 caps nonces below it)")
    max_fee = _from_bytes(max_fee, "little")
    prio = _from_bytes(prio, "little")
    if tx_type == TX_LEGACY:
        if prio:
            raise _malformed("legacy transaction with a max_priority_fee_per_gas (must be 0)")
    elif prio > max_fee:
        raise _malformed(f"max_priority_fee_per_gas {prio} above max_fee_per_gas {max_fee}")
    # tuple.__new__: the NamedTuple's own __new__ is a Python function with defaults, slower.
    return _tuple_new(UnsignedTx, (
        tx_type, chain_id, nonce, gas, to, _from_bytes(value, "little"),
        bytes(payload[TX_FIXED_SIZE:]), max_fee, prio,
    ))  # fmt: skip


# --- sign-tx batch ---------------------------------------------------------------------------------


def _batch_answer_bound(count: int, data_total: int) -> int:
    return BATCH_COUNT.size + count * _BATCH_ANSWER_ITEM + data_total


def encode_sign_tx_batch(txs: list[UnsignedTx] | tuple[UnsignedTx, ...]) -> bytes:
    """The SIGN_TX_BATCH request payload for `txs` (1..MAX_BATCH transactions).

    Raises:
        ValueError: no transaction, too many, one that `encode_sign_tx` refuses (its index is
            named), or a batch whose answer could exceed MAX_PAYLOAD.
    """
    n = len(txs)
    if not 1 <= n <= MAX_BATCH:
        raise ValueError(f"a batch carries 1..{MAX_BATCH} transactions (got {n})")
    parts = [BATCH_COUNT.pack(n, 0)]
    data_total = 0
    for i, tx in enumerate(txs):
        try:
            item = encode_sign_tx(tx)
        except ValueError as e:
            raise ValueError(f"transaction {i}: {e}") from None
        data_total += len(item) - TX_FIXED_SIZE
        parts.append(BATCH_ITEM.pack(len(item)))
        parts.append(item)
    bound = _batch_answer_bound(n, data_total)
    if bound > MAX_PAYLOAD:
        raise ValueError(
            f"the answer to this batch could reach {bound} bytes (limit {MAX_PAYLOAD}): "
            "send fewer transactions or less calldata per frame"
        )
    return b"".join(parts)


def decode_sign_tx_batch(payload: memoryview) -> list[memoryview]:
    """Split a SIGN_TX_BATCH payload into its items (each a SIGN_TX payload, decoded by the caller
    one at a time so that one bad transaction refuses only itself).

    Raises:
        ProtocolError: MALFORMED for a framing fault (empty or oversized count, reserved field set,
            truncated item, bytes after the last item), PAYLOAD_TOO_LARGE if the answer could
            exceed MAX_PAYLOAD.
    """
    total = len(payload)
    if total < BATCH_COUNT.size:
        raise _malformed(f"sign-tx-batch payload of {total} bytes has no count")
    count, reserved = BATCH_COUNT.unpack_from(payload, 0)
    if reserved:
        raise _malformed(f"sign-tx-batch reserved field 0x{reserved:04x} set")
    if count == 0:
        raise _malformed("sign-tx-batch of 0 transactions")
    if count > MAX_BATCH:
        raise _malformed(f"sign-tx-batch of {count} transactions (limit {MAX_BATCH})")
    items: list[memoryview] = []
    o = BATCH_COUNT.size
    item_size = BATCH_ITEM.size
    data_total = 0
    for i in range(count):
        if o + item_size > total:
            raise _malformed(
                f"sign-tx-batch truncated: {count} transactions declared, {i} present"
            )
        (length,) = BATCH_ITEM.unpack_from(payload, o)
        o += item_size
        if length > total - o:
            raise _malformed(
                f"sign-tx-batch truncated: transaction {i} declares {length} bytes, "
                f"{total - o} remain"
            )
        items.append(payload[o : o + length])
        data_total += max(0, length - TX_FIXED_SIZE)
        o += length
    if o != total:
        raise _malformed(
            f"sign-tx-batch: {total - o} bytes after the {count} declared transactions"
        )
    bound = _batch_answer_bound(count, data_total)
    if bound > MAX_PAYLOAD:
        raise ProtocolError(
            ErrorCode.PAYLOAD_TOO_LARGE,
            f"the answer to this batch could reach {bound} bytes (limit {MAX_PAYLOAD})",
        )
    return items


def encode_batch_signed(tx_hash: bytes, raw: bytes) -> bytes:
    """One answer item: a signed transaction (status 0, hash[32] || raw)."""
    return BATCH_RESULT.pack(0, 32 + len(raw)) + tx_hash + raw


def encode_batch_error(code: int, message: str) -> bytes:
    """One answer item: a refusal (status = error code, ASCII message cut to MAX_ERROR_MESSAGE)."""
    text = message.encode("ascii", "replace")[:MAX_ERROR_MESSAGE]
    return BATCH_RESULT.pack(code, len(text)) + text


def decode_sign_tx_batch_answer(
    payload: bytes | memoryview, expected: int
) -> list[tuple[int, bytes]]:
    """(status, body) of each answer item, in request order: status 0 with hash[32] || raw, or
    an error code with its ASCII message.

    Raises:
        ProtocolError: MALFORMED if the count is not `expected`, an item is truncated, a signed
            item has no transaction, or bytes follow the last item.
    """
    total = len(payload)
    if total < BATCH_COUNT.size:
        raise _malformed(f"sign-tx-batch answer of {total} bytes has no count")
    count, reserved = BATCH_COUNT.unpack_from(payload, 0)
    if count != expected or reserved:
        raise _malformed(f"sign-tx-batch answer carries {count} results for {expected} requests")
    out: list[tuple[int, bytes]] = []
    o = BATCH_COUNT.size
    size = BATCH_RESULT.size
    for i in range(count):
        if o + size > total:
            raise _malformed(f"sign-tx-batch answer truncated at result {i}")
        status, length = BATCH_RESULT.unpack_from(payload, o)
        o += size
        if length > total - o:
            raise _malformed(f"sign-tx-batch answer truncated in result {i}")
        if status == 0 and length <= 32:
            raise _malformed(f"sign-tx-batch result {i}: {length} bytes is no signed transaction")
        out.append((status, bytes(payload[o : o + length])))
        o += length
    if o != total:
        raise _malformed(f"sign-tx-batch answer: {total - o} bytes after the last result")
    return out


# --- attest -----------------------------------------------------------------------------------------


def encode_attest(
    nonce: bytes | None = None, user_data: bytes | None = None, public_key: bytes | None = None
) -> bytes:
    """The ATTEST request payload; an absent field is sent with length 0.

    Raises:
        ValueError: a field longer than the NSM accepts.
    """
    parts = [b"" if x is None else bytes(x) for x in (nonce, user_data, public_key)]
    for name, part, limit in zip(
        ("nonce", "user_data", "public_key"),
        parts,
        (MAX_ATTEST_NONCE, MAX_ATTEST_USER_DATA, MAX_ATTEST_PUBLIC_KEY),
        strict=True,
    ):
        if len(part) > limit:
            raise ValueError(f"{name} of {len(part)} bytes (NSM limit {limit})")
    return ATTEST_FIXED.pack(len(parts[0]), len(parts[1]), len(parts[2]), 0) + b"".join(parts)


def decode_attest(payload: memoryview) -> tuple[bytes | None, bytes | None, bytes | None]:
    """(nonce, user_data, public_key) of an ATTEST payload; empty fields are None.

    Raises:
        ProtocolError: BAD_LENGTH if the lengths disagree with the payload, MALFORMED if a field
            exceeds the NSM's limit or the reserved field is set.
    """
    n = len(payload)
    if n < ATTEST_FIXED.size:
        raise ProtocolError(
            ErrorCode.BAD_LENGTH,
            f"attest payload: got {n} bytes, expected at least {ATTEST_FIXED.size}",
        )
    ln, lu, lk, reserved = ATTEST_FIXED.unpack_from(payload, 0)
    if reserved:
        raise _malformed("attest reserved field set")
    if ln > MAX_ATTEST_NONCE or lu > MAX_ATTEST_USER_DATA or lk > MAX_ATTEST_PUBLIC_KEY:
        raise _malformed(
            f"attest field too long (limits: nonce {MAX_ATTEST_NONCE}, user_data "
            f"{MAX_ATTEST_USER_DATA}, public_key {MAX_ATTEST_PUBLIC_KEY})"
        )
    if ATTEST_FIXED.size + ln + lu + lk != n:
        raise ProtocolError(
            ErrorCode.BAD_LENGTH,
            f"attest lengths sum to {ATTEST_FIXED.size + ln + lu + lk} bytes, payload has {n}",
        )
    o = ATTEST_FIXED.size
    out: list[bytes | None] = []
    for length in (ln, lu, lk):
        out.append(bytes(payload[o : o + length]) if length else None)
        o += length
    return out[0], out[1], out[2]


# --- stats ------------------------------------------------------------------------------------------


@dataclass
class Stats:
    """Server counters (u64 each on the wire, in this order).

    The first eight are protocol version 1's original record; later counters are appended, and a
    decoder accepts any whole number of counters from eight up (missing ones read 0, unknown
    trailing ones are ignored), so old and new peers still understand each other's records.
    """

    requests: int = 0
    errors: int = 0
    denials: int = 0
    signed_digests: int = 0
    signed_txs: int = 0
    attestations: int = 0
    connections_open: int = 0
    connections_total: int = 0
    #: Presignatures ready now (0 when presigning is off).
    presign_ready: int = 0
    #: Signatures made from a presignature.
    presigned: int = 0
    #: Signatures made with RFC 6979 while presigning is on (pool empty or an edge-case digest).
    presign_fallbacks: int = 0

    def encode(self) -> bytes:
        return STATS_STRUCT.pack(*(min(v, _U64_MAX) for v in astuple(self)))

    @classmethod
    def decode(cls, payload: bytes | memoryview) -> Stats:
        """Raises ProtocolError(BAD_LENGTH) unless the payload is a whole number of u64 counters,
        at least the original eight."""
        n = len(payload)
        if n < _STATS_V1_SIZE or n % 8:
            raise ProtocolError(
                ErrorCode.BAD_LENGTH,
                f"stats payload: got {n} bytes, expected a multiple of 8, at least {_STATS_V1_SIZE}",
            )
        count = min(n // 8, len(fields(cls)))
        return cls(*struct.unpack_from("<" + "Q" * count, payload, 0))


STATS_STRUCT = struct.Struct("<" + "Q" * len(fields(Stats)))
_STATS_V1_SIZE = 8 * 8
