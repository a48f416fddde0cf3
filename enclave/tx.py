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


def _body(tx: UnsignedTx) -> tuple[bytes, bytes]:
    """(fields encoded once and shared by signing payload and signed tx, signing preimage)."""
    enc_int = rlp_encode_int
    to = (
        _EMPTY
        if tx.to is None
        else _BYTE[0x94] + tx.to
        if len(tx.to) == 20
        else rlp_encode_bytes(tx.to)
    )
    if tx.tx_type == TX_EIP1559:
        fields = b"".join(
            (
                enc_int(tx.chain_id),
                enc_int(tx.nonce),
                enc_int(tx.max_priority_fee_per_gas),
                enc_int(tx.max_fee_per_gas),
                enc_int(tx.gas),
                to,
                enc_int(tx.value),
                rlp_encode_bytes(tx.data),
                _EMPTY_LIST,
            )
        )
        return fields, b"\x02" + rlp_encode_list(fields)
    if tx.tx_type == TX_LEGACY:
        fields = b"".join(
            (
                enc_int(tx.nonce),
                enc_int(tx.max_fee_per_gas),
                enc_int(tx.gas),
                to,
                enc_int(tx.value),
                rlp_encode_bytes(tx.data),
            )
        )
        return fields, rlp_encode_list(fields + enc_int(tx.chain_id) + _EMPTY + _EMPTY)
    raise ValueError(f"unsupported transaction type {tx.tx_type} (expected 0 or 2)")


def signing_hash(tx: UnsignedTx) -> bytes:
    """The 32-byte digest a signer signs for `tx`."""
    return keccak256(_body(tx)[1])


def sign_tx(key: _DigestSigner, tx: UnsignedTx) -> SignedTx:
    """Sign `tx` with `key` (anything with `sign_digest(d32) -> r||s||y_parity`).

    Raises:
        ValueError: unsupported `tx_type` (the wire decoder rejects those before this point).
    """
    fields, preimage = _body(tx)
    sig = key.sign_digest(keccak256(preimage))
    r = _rlp_scalar_bytes(sig[0:32])
    s = _rlp_scalar_bytes(sig[32:64])
    if tx.tx_type == TX_EIP1559:
        raw = b"\x02" + rlp_encode_list(
            b"".join((fields, _BYTE[sig[64]] if sig[64] else _EMPTY, r, s))
        )
    else:
        v = rlp_encode_int(tx.chain_id * 2 + 35 + sig[64])
        raw = rlp_encode_list(b"".join((fields, v, r, s)))
    return SignedTx(raw, keccak256(raw))
