"""What the router needs from a signer, and how it turns an intent into an unsigned transaction.

`TxSigner` is satisfied by `router.signer_client.SignerClient` (the enclave over vsock/unix/tcp)
and by `InProcessSigner` (a key in this process: development and benchmarks only). A `TxSigner`
is a blocking call (the client busy-polls its socket); the router never makes it on its event loop
but on its signer thread (`router.signer_thread.AsyncSigner`), so a slow or absent signer cannot
freeze heads, the API or re-broadcasts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from enclave.errors import ErrorCode
from enclave.tx import TX_EIP1559, UnsignedTx
from enclave.tx import sign_tx as _sign_tx

from .errors import SignerError
from .fees import Fees
from .intent import Intent


class SignedLike(Protocol):
    # Read-only: signed transactions are immutable (`enclave.tx.SignedTx` is a NamedTuple).
    @property
    def raw(self) -> bytes: ...

    @property
    def hash(self) -> bytes: ...


class TxSigner(Protocol):
    def sign_tx(self, tx: UnsignedTx) -> SignedLike: ...


class _DigestSigner(Protocol):
    def sign_digest(self, digest: bytes) -> bytes: ...


class InProcessSigner:
    """Signs with a key held in this process (e.g. `enclave.keys.SigningKey`). Not for production:
    the point of Sentinel is that the key lives in the enclave."""

    def __init__(self, key: _DigestSigner) -> None:
        self._key = key

    def __repr__(self) -> str:
        return "InProcessSigner(<key hidden>)"

    def sign_tx(self, tx: UnsignedTx) -> SignedLike:
        return _sign_tx(self._key, tx)

    def sign_tx_batch(self, txs: Sequence[UnsignedTx]) -> list[SignedLike | SignerError]:
        """Sign each transaction, like `SignerClient.sign_tx_batch`: one result per transaction, in
        order; one that cannot be signed (an unsupported type) is a MALFORMED `SignerError` in its
        place. No policy or rate limit here: those live in the enclave."""
        out: list[SignedLike | SignerError] = []
        for tx in txs:
            try:
                out.append(_sign_tx(self._key, tx))
            except ValueError as e:
                out.append(SignerError(ErrorCode.MALFORMED, ErrorCode.MALFORMED.name, str(e)))
        return out


def build_tx(chain_id: int, nonce: int, intent: Intent, fees: Fees) -> UnsignedTx:
    return UnsignedTx(
        TX_EIP1559,
        chain_id,
        nonce,
        intent.gas_limit,
        intent.to,
        intent.value,
        intent.data,
        fees.max_fee_per_gas,
        fees.max_priority_fee_per_gas,
    )
