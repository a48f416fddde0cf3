"""The specialised transaction encoder (enclave/tx.py `_sign`) against independent references.

Every signing preimage and raw transaction is rebuilt with the `rlp` package from the same fields
and the signature the key returned, and must be byte-identical; signatures made from presignatures
(random k) must recover to the signer's address with eth-account. Fields range over zero, one-byte,
55/56-byte boundary and maximal values, empty and long calldata, and contract creation.
"""

from __future__ import annotations

import pytest
import rlp
from anvil_support import DEV_KEY_0
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave._keccak import keccak256
from enclave.keys import KeyOrigin, SigningKey, checksum_address
from enclave.presign import PresignPool
from enclave.tx import (
    TX_EIP1559,
    TX_LEGACY,
    UnsignedTx,
    sign_tx,
    sign_tx_answer,
    signing_hash,
)

U256_MAX = 2**256 - 1
U64_MAX = 2**64 - 1


def _edgy(limit: int) -> st.SearchStrategy[int]:
    """Integers in 0..limit, with the RLP boundaries (0, 0x7f, 0x80, byte-length steps) favoured."""
    edges = [0, 1, 0x7F, 0x80, 0xFF, 0x100, limit, limit - 1]
    edges += [(1 << (8 * k)) - 1 for k in range(1, 33) if (1 << (8 * k)) - 1 <= limit]
    edges += [1 << (8 * k) for k in range(1, 32) if 1 << (8 * k) <= limit]
    return st.one_of(st.sampled_from(sorted(set(edges))), st.integers(0, limit))


def _data() -> st.SearchStrategy[bytes]:
    # 0, 1 (below and above 0x80), 55/56 (short/long string prefix), 255/256 (1/2-byte length).
    sizes = st.sampled_from([0, 1, 2, 55, 56, 57, 255, 256, 1000, 70_000])
    return st.one_of(
        st.binary(max_size=300),
        st.just(b"\x7f"),
        st.just(b"\x80"),
        st.just(b"\x00"),
        sizes.map(lambda n: bytes((i * 7 + 3) % 256 for i in range(n))),
    )


@st.composite
def transactions(draw: st.DrawFn) -> UnsignedTx:
    tx_type = draw(st.sampled_from([TX_EIP1559, TX_LEGACY]))
    max_fee = draw(_edgy(U256_MAX))
    prio = draw(st.integers(0, max_fee)) if tx_type == TX_EIP1559 else 0
    to = draw(st.one_of(st.none(), st.binary(min_size=20, max_size=20)))
    # Legacy v = chain_id * 2 + 36 must stay a u256 for eth-account; the wire caps it at u64 anyway.
    chain_id = draw(st.integers(1, U64_MAX) | st.sampled_from([1, 0x3F, 0x40, 0x7F, 0x80, 31337]))
    return UnsignedTx(
        tx_type=tx_type,
        chain_id=chain_id,
        nonce=draw(_edgy(U64_MAX - 1)),
        gas=draw(_edgy(U64_MAX)),
        to=to,
        value=draw(_edgy(U256_MAX)),
        data=draw(_data()),
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=prio,
    )


def _reference_preimage(tx: UnsignedTx) -> bytes:
    to = tx.to if tx.to is not None else b""
    if tx.tx_type == TX_EIP1559:
        return b"\x02" + rlp.encode([
            tx.chain_id, tx.nonce, tx.max_priority_fee_per_gas, tx.max_fee_per_gas, tx.gas, to,
            tx.value, tx.data, [],
        ])  # fmt: skip
    return rlp.encode([tx.nonce, tx.max_fee_per_gas, tx.gas, to, tx.value, tx.data, tx.chain_id,
                       0, 0])  # fmt: skip


def _reference_raw(tx: UnsignedTx, sig: bytes) -> bytes:
    to = tx.to if tx.to is not None else b""
    r, s, y = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:64], "big"), sig[64]
    if tx.tx_type == TX_EIP1559:
        return b"\x02" + rlp.encode([
            tx.chain_id, tx.nonce, tx.max_priority_fee_per_gas, tx.max_fee_per_gas, tx.gas, to,
            tx.value, tx.data, [], y, r, s,
        ])  # fmt: skip
    return rlp.encode([tx.nonce, tx.max_fee_per_gas, tx.gas, to, tx.value, tx.data,
                       tx.chain_id * 2 + 35 + y, r, s])  # fmt: skip


class _Recording:
    """A real key (or a fixed signature) that remembers what it was asked to sign."""

    def __init__(self, key: SigningKey | None = None, fixed: bytes | None = None) -> None:
        self.key, self.fixed = key, fixed
        self.digests: list[bytes] = []
        self.sigs: list[bytes] = []

    def sign_digest(self, digest: bytes) -> bytes:
        self.digests.append(digest)
        sig = self.fixed if self.fixed is not None else self.key.sign_digest(digest)  # type: ignore[union-attr]
        self.sigs.append(sig)
        return sig


@pytest.fixture(scope="module")
def presigned_key() -> SigningKey:
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    pool = PresignPool(64)
    key.use_presignatures(pool)
    return key


def _check(signer: _Recording, tx: UnsignedTx) -> tuple[bytes, bytes]:
    signed = sign_tx(signer, tx)
    (digest,), (sig,) = signer.digests, signer.sigs
    preimage = _reference_preimage(tx)
    assert digest == keccak256(preimage) == signing_hash(tx)
    assert signed.raw == _reference_raw(tx, sig)
    assert signed.hash == keccak256(signed.raw)
    return signed.raw, sig


@settings(deadline=None, max_examples=300)  # timing is not the property; CI machines are shared
@given(transactions())
def test_fast_encoder_matches_rlp_and_recovers(presigned_key: SigningKey, tx: UnsignedTx) -> None:
    pool = presigned_key.presign_pool
    assert pool is not None
    if len(pool) < 4:
        pool.fill()
    signer = _Recording(presigned_key)
    raw, _ = _check(signer, tx)
    assert Account.recover_transaction(raw) == presigned_key.address
    # The SIGN_TX answer carries the same transaction (another presignature: another signature).
    answer = sign_tx_answer(_Recording(presigned_key), tx)
    assert answer[:32] == keccak256(answer[32:])
    assert Account.recover_transaction(answer[32:]) == presigned_key.address


def test_presignatures_were_used(presigned_key: SigningKey) -> None:
    """The property test above signs with random k, not RFC 6979 (so it covers the pool's path)."""
    pool = presigned_key.presign_pool
    assert pool is not None
    pool.fill()
    before = pool.presigned
    tx = UnsignedTx(TX_EIP1559, 1, 0, 21_000, bytes(20), 1, b"", 2, 1)
    a, b = sign_tx(presigned_key, tx), sign_tx(presigned_key, tx)
    assert pool.presigned == before + 2
    assert a.raw != b.raw
    assert Account.recover_transaction(a.raw) == Account.recover_transaction(b.raw)


@pytest.mark.parametrize("tx_type", [TX_EIP1559, TX_LEGACY])
@pytest.mark.parametrize(
    ("r", "s"),
    [
        (bytes(1) + b"\x81" * 31, b"\x82" * 32),  # r has a leading zero byte
        (b"\x81" * 32, bytes(2) + b"\x05" * 30),  # s has two
        (bytes(31) + b"\x7f", bytes(31) + b"\x80"),  # both shrink to one byte (above/below 0x80)
    ],
)
@pytest.mark.parametrize("parity", [0, 1])
def test_scalars_with_leading_zeros(tx_type: int, r: bytes, s: bytes, parity: int) -> None:
    """The common case takes r and s as 32 bytes; the rest must strip them like RLP integers."""
    tx = UnsignedTx(tx_type, 5, 3, 21_000, b"\x11" * 20, 0, b"\x01\x02",
                    10, 1 if tx_type == TX_EIP1559 else 0)  # fmt: skip
    signer = _Recording(fixed=r + s + bytes([parity]))
    raw, _ = _check(signer, tx)
    assert sign_tx_answer(_Recording(fixed=r + s + bytes([parity])), tx) == keccak256(raw) + raw


def test_rfc6979_signatures_unchanged() -> None:
    """Without a pool the raw transaction is eth-account's, byte for byte (deterministic k)."""
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    tx = UnsignedTx(TX_EIP1559, 31337, 7, 60_000, b"\xa0" * 20, 10**18, b"\xa9\x05\x9c\xbb" * 17,
                    30 * 10**9, 10**9)  # fmt: skip
    signed = sign_tx(key, tx)
    ref = Account.sign_transaction(
        {"type": 2, "chainId": tx.chain_id, "nonce": tx.nonce, "gas": tx.gas,
         "to": checksum_address(b"\xa0" * 20), "value": tx.value, "data": tx.data,
         "maxFeePerGas": tx.max_fee_per_gas, "maxPriorityFeePerGas": tx.max_priority_fee_per_gas},
        "0x" + DEV_KEY_0.hex(),
    )  # fmt: skip
    assert signed.raw == bytes(ref.raw_transaction)
    assert signed.hash == bytes(ref.hash)


@pytest.mark.parametrize(
    "field", ["chain_id", "nonce", "gas", "value", "max_fee_per_gas", "max_priority_fee_per_gas"]
)
def test_negative_field_refused(field: str) -> None:
    values = {"chain_id": 1, "nonce": 1, "gas": 1, "value": 1, "max_fee_per_gas": 1,
              "max_priority_fee_per_gas": 1, field: -1}  # fmt: skip
    tx = UnsignedTx(tx_type=TX_EIP1559, to=None, data=b"", **values)
    with pytest.raises(ValueError, match="non-negative"):
        sign_tx(_Recording(fixed=b"\x81" * 64 + b"\x00"), tx)
    with pytest.raises(ValueError, match="non-negative"):
        signing_hash(tx)


def test_unsupported_type_refused_by_every_entry_point() -> None:
    tx = UnsignedTx(1, 1, 1, 1, None, 1, b"", 1, 0)
    for call in (signing_hash, lambda t: sign_tx(_Recording(fixed=bytes(65)), t),
                 lambda t: sign_tx_answer(_Recording(fixed=bytes(65)), t)):  # fmt: skip
        with pytest.raises(ValueError, match="unsupported transaction type 1"):
            call(tx)
