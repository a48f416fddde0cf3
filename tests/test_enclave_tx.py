"""Transaction encoding: our RLP against the `rlp` package, signatures against eth-account."""

from __future__ import annotations

import pytest
import rlp
from anvil_support import DEV_ADDR_0, DEV_KEY_0
from eth_account import Account
from hypothesis import given, settings
from hypothesis import strategies as st
from signer_support import dev_key

from enclave.keys import checksum_address
from enclave.tx import (
    TX_EIP1559,
    TX_LEGACY,
    UnsignedTx,
    rlp_encode_bytes,
    rlp_encode_int,
    rlp_encode_list,
    sign_tx,
    signing_hash,
)

u256 = st.integers(min_value=0, max_value=2**256 - 1)
u64 = st.integers(min_value=0, max_value=2**64 - 2)


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(st.binary(max_size=300))
def test_rlp_bytes_matches_reference(b: bytes) -> None:
    assert rlp_encode_bytes(b) == rlp.encode(b)


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(u256)
def test_rlp_int_matches_reference(i: int) -> None:
    assert rlp_encode_int(i) == rlp.encode(i)


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(st.lists(st.one_of(st.binary(max_size=80), u256), max_size=12))
def test_rlp_list_matches_reference(items: list[bytes | int]) -> None:
    enc = b"".join(rlp_encode_int(x) if isinstance(x, int) else rlp_encode_bytes(x) for x in items)
    assert rlp_encode_list(enc) == rlp.encode(items)


def test_rlp_negative_int_refused() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        rlp_encode_int(-1)


def _eth_account_dict(tx: UnsignedTx) -> dict[str, object]:
    d: dict[str, object] = {
        "chainId": tx.chain_id,
        "nonce": tx.nonce,
        "gas": tx.gas,
        "value": tx.value,
        "data": tx.data,
        "to": checksum_address(tx.to) if tx.to is not None else b"",
    }
    if tx.tx_type == TX_EIP1559:
        d.update(
            type=2,
            maxFeePerGas=tx.max_fee_per_gas,
            maxPriorityFeePerGas=tx.max_priority_fee_per_gas,
        )
    else:
        d["gasPrice"] = tx.max_fee_per_gas
    return d


txs = st.builds(
    lambda t, chain, nonce, gas, to, value, data, fee, prio: UnsignedTx(
        t, chain, nonce, gas, to, value, data, fee, min(prio, fee) if t == TX_EIP1559 else 0
    ),
    st.sampled_from([TX_LEGACY, TX_EIP1559]),
    st.integers(min_value=1, max_value=2**32),
    u64,
    st.integers(min_value=21000, max_value=2**63),
    st.one_of(st.none(), st.binary(min_size=20, max_size=20)),
    st.integers(min_value=0, max_value=2**200),
    st.binary(max_size=200),
    st.integers(min_value=0, max_value=2**100),
    st.integers(min_value=0, max_value=2**100),
)


@settings(max_examples=60, deadline=None)
@given(txs)
def test_signed_tx_is_byte_identical_to_eth_account(tx: UnsignedTx) -> None:
    """RFC 6979 signatures are deterministic, so an independent implementation must produce the
    same bytes; eth-account also recovers our sender from our raw transaction."""
    signed = sign_tx(dev_key(), tx)
    ref = Account.sign_transaction(_eth_account_dict(tx), DEV_KEY_0)
    assert signed.raw == bytes(ref.raw_transaction)
    assert signed.hash == bytes(ref.hash)
    assert Account.recover_transaction(signed.raw) == DEV_ADDR_0


@pytest.mark.parametrize("tx_type", [TX_LEGACY, TX_EIP1559], ids=["legacy", "eip1559"])
def test_sender_recovered_and_type_prefix(tx_type: int) -> None:
    tx = UnsignedTx(tx_type, 1, 0, 21000, b"\x22" * 20, 1, b"", 10**9, 10**9 if tx_type else 0)
    signed = sign_tx(dev_key(), tx)
    assert Account.recover_transaction(signed.raw) == DEV_ADDR_0
    assert (signed.raw[0] == 0x02) == (tx_type == TX_EIP1559)
    assert len(signing_hash(tx)) == 32


def test_legacy_v_is_eip155() -> None:
    tx = UnsignedTx(TX_LEGACY, 31337, 3, 21000, b"\x22" * 20, 1, b"", 10**9)
    decoded = rlp.decode(sign_tx(dev_key(), tx).raw)
    v = int.from_bytes(decoded[6], "big")
    assert v in (31337 * 2 + 35, 31337 * 2 + 36)


def test_unsupported_type_refused() -> None:
    with pytest.raises(ValueError, match="unsupported transaction type 1"):
        sign_tx(dev_key(), UnsignedTx(1, 1, 0, 21000, None, 0, b"", 1))
