"""EVM transaction encoding and signing: EIP-1559 (type 2) and legacy EIP-155 (type 0).

RLP is hand-written here (about forty lines, differential-tested against the `rlp` package in
tests/test_enclave_tx.py) rather than imported: the `rlp` package pulls eth-utils and its dependency
tree into the measured enclave payload, which CONTRACTS.md restricts to stdlib + cbor2, cryptography,
coincurve and pycryptodome, and its generic sedes machinery costs ~19 us per transaction on this
machine, almost the price of the signature itself (~26-46 us). We only ever *encode* a fixed shape of
integers and byte strings, never decode untrusted RLP, which keeps the surface small.

Layouts (Ethereum yellow paper appendix B, EIP-155, EIP-1559, EIP-2718):
- legacy signing hash: keccak(rlp([nonce, gasPrice, gas, to, value, data, chainId, 0, 0]))
  signed: rlp([nonce, gasPrice, gas, to, value, data, v, r, s]), v = chainId * 2 + 35 + y_parity
- type 2 signing hash: keccak(0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas,
  to, value, data, accessList]))
  signed: 0x02 || rlp([chainId, nonce, maxPriorityFeePerGas, maxFeePerGas, gas, to, value, data,
  accessList, yParity, r, s])
Access lists are always empty in this version (the wire format has no field for them).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from enclave._keccak import keccak256

__all__ = [
    "TX_EIP1559",
    "TX_LEGACY",
    "SignedTx",
    "UnsignedTx",
    "rlp_encode_bytes",
    "rlp_encode_int",
    "rlp_encode_list",
    "sign_tx",
    "sign_tx_answer",
    "signing_hash",
]

TX_LEGACY = 0
TX_EIP1559 = 2
UINT256_MAX = (1 << 256) - 1


class UnsignedTx(NamedTuple):
    """A transaction to sign. A NamedTuple, not a dataclass: it is built once per request on the hot
    path, where tuple construction is several times cheaper than a frozen dataclass.

    `max_fee_per_gas` is `gasPrice` for legacy transactions, whose `max_priority_fee_per_gas` is 0.
    `to` is None for contract creation. Values are unsigned integers below 2**256 (validated by the
    wire decoder and the JSON parser, not here).
    """

    tx_type: int
    chain_id: int
    nonce: int
    gas: int
    to: bytes | None
    value: int
    data: bytes
    max_fee_per_gas: int
    max_priority_fee_per_gas: int = 0


class SignedTx(NamedTuple):
    """The raw signed transaction (what `eth_sendRawTransaction` takes) and its hash."""

    raw: bytes
    hash: bytes


class _DigestSigner(Protocol):
    def sign_digest(self, digest: bytes) -> bytes: ...


# Single-byte encodings, precomputed: bytes((x,)) allocates on every call.
_BYTE = tuple(bytes((i,)) for i in range(256))
_EMPTY = b"\x80"  # rlp(b"") == rlp(0)
_EMPTY_LIST = b"\xc0"


def _length_prefix(n: int, short_base: int) -> bytes:
    if n <= 55:
        return _BYTE[short_base + n]
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return _BYTE[short_base + 55 + len(ln)] + ln


def rlp_encode_bytes(b: bytes) -> bytes:
    """RLP of a byte string."""
    n = len(b)
    if n == 1 and b[0] < 0x80:
        return bytes(b)
    return _length_prefix(n, 0x80) + b


def rlp_encode_int(i: int) -> bytes:
    """RLP of a non-negative integer (big-endian, no leading zeros; 0 is the empty string)."""
    if i < 0x80:
        if i < 0:
            raise ValueError("RLP integers are non-negative")
        return _BYTE[i] if i else _EMPTY
    b = i.to_bytes((i.bit_length() + 7) // 8, "big")
    return _length_prefix(len(b), 0x80) + b


def rlp_encode_list(encoded_items: bytes) -> bytes:
    """RLP list header + the concatenation of already-encoded items."""
    return _length_prefix(len(encoded_items), 0xC0) + encoded_items


def _rlp_scalar_bytes(b: bytes) -> bytes:
    # r and s are integers: strip leading zeros instead of a bytes -> int -> bytes round trip.
    return rlp_encode_bytes(b.lstrip(b"\x00"))


# The hot path below is `rlp_encode_*` specialised for the two fixed transaction shapes: integers
# and short strings take their one-byte prefix from a table, every encoding is built by one
# `bytes.join`, the fields are encoded once for both the signing preimage and the raw transaction,
# and nothing is built that the answer does not carry. tests/test_enclave_tx_fast.py checks it
# byte for byte against the generic encoders above, the `rlp` package and eth-account.
_SMALL_INT = (_EMPTY, *_BYTE[1:0x80])  # rlp(i) for 0 <= i < 0x80
_SHORT_STR = _BYTE[0x80 : 0x80 + 56]  # prefix of a string of 0..55 bytes
_SHORT_LIST = _BYTE[0xC0 : 0xC0 + 56]  # prefix of a list payload of 0..55 bytes
_TYPE2 = b"\x02"
_ADDRESS = b"\x94"  # prefix of a 20-byte string
_SCALAR = b"\xa0"  # prefix of a 32-byte string
_tuple_new = tuple.__new__


def _uint(i: int) -> bytes:
    """`rlp_encode_int`, common cases first."""
    if i < 0x80:
        if i < 0:
            raise ValueError("RLP integers are non-negative")
        return _SMALL_INT[i]
    n = (i.bit_length() + 7) >> 3
    if n <= 55:
        return _SHORT_STR[n] + i.to_bytes(n, "big")
    return rlp_encode_int(i)


def _list_prefix(n: int) -> bytes:
    return _SHORT_LIST[n] if n <= 55 else _length_prefix(n, 0xC0)


def _to_and_data(to: bytes | None, data: bytes) -> tuple[bytes, bytes, bytes]:
    """(rlp(to), prefix of rlp(data), data or its one-byte encoding): `data` is not copied."""
    enc_to = _EMPTY if to is None else _ADDRESS + to if len(to) == 20 else rlp_encode_bytes(to)
    n = len(data)
    if n == 1 and data[0] < 0x80:
        return enc_to, b"", bytes(data)
    return enc_to, _SHORT_STR[n] if n <= 55 else _length_prefix(n, 0x80), data


def _rs(sig: bytes) -> tuple[bytes, bytes, bytes, bytes]:
    """(prefix, r, prefix, s) of the RLP of r and s, whose leading zero bytes are dropped."""
    if sig[0] and sig[32]:  # all but ~1 signature in 128: both scalars take 32 bytes
        return _SCALAR, sig[0:32], _SCALAR, sig[32:64]
    return b"", _rlp_scalar_bytes(sig[0:32]), b"", _rlp_scalar_bytes(sig[32:64])


def _sign(key: _DigestSigner, tx: UnsignedTx) -> tuple[bytes, bytes]:
    """(raw signed transaction, its hash)."""
    tx_type, chain_id, nonce, gas, to, value, data, max_fee, prio = tx
    enc_to, data_prefix, data = _to_and_data(to, data)
    if tx_type == TX_EIP1559:
        # Small integers inline (no call): chain id, nonce, value and fees are often one byte.
        small = _SMALL_INT
        fields = b"".join((
            small[chain_id] if 0 <= chain_id < 0x80 else _uint(chain_id),
            small[nonce] if 0 <= nonce < 0x80 else _uint(nonce),
            small[prio] if 0 <= prio < 0x80 else _uint(prio),
            small[max_fee] if 0 <= max_fee < 0x80 else _uint(max_fee),
            small[gas] if 0 <= gas < 0x80 else _uint(gas),
            enc_to,
            small[value] if 0 <= value < 0x80 else _uint(value),
            data_prefix, data, _EMPTY_LIST,
        ))  # fmt: skip
        n = len(fields)
        sig = key.sign_digest(keccak256(b"".join((_TYPE2, _list_prefix(n), fields))))
        pr, r, ps, s = _rs(sig)
        v = _BYTE[sig[64]] if sig[64] else _EMPTY
        n += 1 + len(pr) + len(r) + len(ps) + len(s)
        raw = b"".join((_TYPE2, _list_prefix(n), fields, v, pr, r, ps, s))
    elif tx_type == TX_LEGACY:
        fields = b"".join((_uint(nonce), _uint(max_fee), _uint(gas), enc_to, _uint(value),
                           data_prefix, data))  # fmt: skip
        n = len(fields)
        chain = _uint(chain_id)
        sig = key.sign_digest(keccak256(b"".join(
            (_list_prefix(n + len(chain) + 2), fields, chain, _EMPTY, _EMPTY)
        )))  # fmt: skip
        pr, r, ps, s = _rs(sig)
        v = _uint(chain_id * 2 + 35 + sig[64])
        n += len(v) + len(pr) + len(r) + len(ps) + len(s)
        raw = b"".join((_list_prefix(n), fields, v, pr, r, ps, s))
    else:
        raise ValueError(f"unsupported transaction type {tx_type} (expected 0 or 2)")
    return raw, keccak256(raw)


def _preimage(tx: UnsignedTx) -> bytes:
    tx_type, chain_id, nonce, gas, to, value, data, max_fee, prio = tx
    enc_to, data_prefix, data = _to_and_data(to, data)
    if tx_type == TX_EIP1559:
        fields = b"".join((_uint(chain_id), _uint(nonce), _uint(prio), _uint(max_fee), _uint(gas),
                           enc_to, _uint(value), data_prefix, data, _EMPTY_LIST))  # fmt: skip
        return b"".join((_TYPE2, _list_prefix(len(fields)), fields))
    if tx_type == TX_LEGACY:
        fields = b"".join((_uint(nonce), _uint(max_fee), _uint(gas), enc_to, _uint(value),
                           data_prefix, data, _uint(chain_id), _EMPTY, _EMPTY))  # fmt: skip
        return _list_prefix(len(fields)) + fields
    raise ValueError(f"unsupported transaction type {tx_type} (expected 0 or 2)")


def signing_hash(tx: UnsignedTx) -> bytes:
    """The 32-byte digest a signer signs for `tx`.

    Raises:
        ValueError: unsupported `tx_type`, or a negative integer field.
    """
    return keccak256(_preimage(tx))


def sign_tx(key: _DigestSigner, tx: UnsignedTx) -> SignedTx:
    """Sign `tx` with `key` (anything with `sign_digest(d32) -> r||s||y_parity`).

    Raises:
        ValueError: unsupported `tx_type` (the wire decoder rejects those before this point), or
            a negative integer field.
    """
    return _tuple_new(SignedTx, _sign(key, tx))


def sign_tx_answer(key: _DigestSigner, tx: UnsignedTx) -> bytes:
    """`hash || raw` of `tx` signed with `key`: the SIGN_TX answer, built without a `SignedTx`.

    Raises:
        ValueError: as `sign_tx`.
    """
    raw, tx_hash = _sign(key, tx)
    return tx_hash + raw
