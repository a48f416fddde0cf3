"""The signer's policy has the last word: the router never gets a refused transaction signed,
a refusal never consumes a nonce, and a refused re-signature falls back to the old bytes."""

from __future__ import annotations

import asyncio

import pytest
from router_support import (
    balance,
    mined_nonces,
    running_router,
    signer_over_unix,
    transfers,
    wait_for,
)

from enclave.policy import Policy
from router.errors import SignerError
from router.intent import Intent
from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


def _policy(max_value: int, max_fee: int) -> Policy:
    return Policy.from_toml(f"""
schema = 1
mode = "development"
chain_ids = [31337]
max_value = "{max_value}"
max_fee_per_gas = "{max_fee}"
max_gas = 100000
sign_digest = false
allow_create = false
any_destination = true
[rate_limit]
per_second = 100000
burst = 100000
""")


def test_refused_intent_consumes_no_nonce(anvil) -> None:
    ok = transfers(2, tag="pol")
    too_big = Intent(to=b"\x55" * 20, value=10**7, id="too-big")

    async def main() -> None:
        with signer_over_unix(_policy(10**6, 10**12)) as signer:
            async with running_router(anvil, signer) as router:
                first = await router.submit(ok[0])
                with pytest.raises(SignerError, match="value"):
                    await router.submit(too_big)
                second = await router.submit(ok[1])
                assert (first.nonce, second.nonce) == (0, 1)
                assert router.handle("too-big") is None
                for h in (first, second):
                    await h.receipt(timeout=20)

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == [0, 1]
    assert balance(anvil, too_big.to) == 0
    for i in ok:
        assert balance(anvil, i.to) == i.value


def test_refused_resignature_after_reorg_resends_the_old_bytes(anvil) -> None:
    """The bumped fee after a reorg is above the policy's max fee: the signer refuses, and the
    router re-sends the signature it already has, which lands again."""
    intent = transfers(1, tag="polreorg")[0]

    async def main() -> None:
        with signer_over_unix(_policy(10**18, 3_200_000_000)) as signer:
            async with running_router(anvil, signer) as router:
                h = await router.submit(intent)
                first = await h.receipt(timeout=20)
                assert h.flight.fees.max_fee_per_gas <= 3_200_000_000
                anvil.rpc("anvil_reorg", 1, [])
                await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
                assert router.counters["resigned"] == 0
                again = await h.receipt(timeout=20)
                assert again["blockHash"] != first["blockHash"]
                assert again["transactionHash"] == first["transactionHash"]
                assert h.state is TxState.LANDED and len(h.flight.hashes) == 1

    asyncio.run(main())
    assert mined_nonces(anvil) == [0]
    assert balance(anvil, intent.to) == intent.value
