"""Router against a real anvil: many intents at once, each nonce once, no gaps."""

from __future__ import annotations

import asyncio

import pytest
from anvil_support import free_port
from router_support import (
    balance,
    config_for,
    mined_nonces,
    running_router,
    transfers,
    wait_for,
)

from router.errors import ConfigError, MalformedInput
from router.intent import Intent
from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("mining", ["automine", "interval"])
def test_many_intents_at_once_all_mined_each_nonce_once(anvil, mining: str) -> None:
    """40 intents at once; with interval mining many of ours share a block. A second, dead
    endpoint is configured too: broadcasts go to both, the live one wins."""
    intents = transfers(40, tag="burst")
    if mining == "interval":
        anvil.rpc("evm_setAutomine", False)
        anvil.rpc("evm_setIntervalMining", 1)
    dead = f"http://127.0.0.1:{free_port()}"

    async def main() -> None:
        async with running_router(anvil, rpc_urls=(dead, anvil.rpc_url)) as router:
            handles = await asyncio.gather(*(router.submit(i) for i in intents))
            receipts = await asyncio.gather(*(h.receipt(timeout=30) for h in handles))
            assert all(int(r["status"], 16) == 1 for r in receipts)
            assert sorted(h.nonce for h in handles) == list(range(40))
            assert all(h.state is TxState.LANDED for h in handles)
            # idempotent: the same intent id gives back the same handle, nothing re-signed
            again = await router.submit(intents[0])
            assert again is handles[0]
            with pytest.raises(MalformedInput, match="already used for a different intent"):
                await router.submit(Intent(to=intents[0].to, value=1, id=intents[0].id))
            assert router.counters["submitted"] == 40
            assert router.broadcaster.counters[f"{dead} transport"] >= 40
            blocks = {h.flight.landed.block_hash for h in handles if h.flight.landed}
            if mining == "interval":
                assert len(blocks) < 40  # several of ours per block

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(40))
    for i, intent in enumerate(intents):
        assert balance(anvil, intent.to) == intent.value, i


def test_no_reachable_endpoint_is_a_clear_error() -> None:
    from anvil_support import Anvil
    from router_support import config_for, dev_signer

    from router.core import Router
    from router.errors import TransportError

    ghost = Anvil(port=free_port(), chain_id=31337)  # never started

    async def main() -> None:
        router = Router(config_for(ghost), dev_signer())
        try:
            with pytest.raises(TransportError, match="none of the 1 RPC endpoints is reachable"):
                await router.start()
        finally:
            await router.close()

    asyncio.run(main())


def test_receipt_of_a_transaction_older_than_the_ring(anvil) -> None:
    """After 150 more blocks the landing block has left the header ring (and the flight was
    forgotten); the receipt is still answered, checked against the receipt's block hash. Tracking
    shallower than the ring is refused."""

    async def main() -> None:
        async with running_router(anvil, head_ring=32, forget_after_blocks=32) as router:
            h = await router.submit(transfers(1, tag="old")[0])
            first = await h.receipt(timeout=20)
            anvil.rpc("anvil_mine", hex(150))
            await wait_for(lambda: router.view.tip.number >= 151, what="150 heads")
            assert router.nonces.all() == []  # forgotten: buried deep enough
            again = await h.receipt(confirmations=100, timeout=10)
            assert again["blockHash"] == first["blockHash"]
        with pytest.raises(ConfigError, match="at least head_ring"):
            config_for(anvil, head_ring=32, forget_after_blocks=16)

    asyncio.run(main())


def test_transaction_priced_out_by_base_fee_is_repriced(anvil) -> None:
    """The base fee jumps above what a pending transaction pays: it stays valid but can never be
    mined. The router re-signs it at fresh fees (a replacement) and it lands, once."""
    intent = transfers(1, tag="priced-out")[0]

    async def main() -> None:
        anvil.rpc("evm_setAutomine", False)
        async with running_router(anvil) as router:
            h = await router.submit(intent)
            low = h.flight.fees.max_fee_per_gas
            anvil.rpc("anvil_setNextBlockBaseFeePerGas", hex(low * 10))
            anvil.rpc("evm_mine")  # our transaction does not fit under this base fee
            await wait_for(lambda: router.counters["repriced"] >= 1, timeout=20, what="reprice")
            assert h.flight.fees.max_fee_per_gas > low * 10
            await asyncio.sleep(0.3)  # let the replacement reach the pool
            anvil.rpc("evm_mine")
            rcpt = await h.receipt(timeout=20)
            assert rcpt["transactionHash"] == "0x" + h.flight.hash.hex()
            assert len(h.flight.hashes) == 2

    asyncio.run(main())
    assert mined_nonces(anvil) == [0]
    assert balance(anvil, intent.to) == intent.value
