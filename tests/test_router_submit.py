"""Router against a real anvil: many intents at once, each nonce once, no gaps."""

from __future__ import annotations

import asyncio

import pytest
from router_support import balance, mined_nonces, running_router, transfers

from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


def test_many_intents_at_once_all_mined_each_nonce_once(anvil) -> None:
    intents = transfers(40, tag="burst")

    async def main() -> None:
        async with running_router(anvil) as router:
            handles = await asyncio.gather(*(router.submit(i) for i in intents))
            receipts = await asyncio.gather(*(h.receipt(timeout=30) for h in handles))
            assert all(int(r["status"], 16) == 1 for r in receipts)
            assert sorted(h.nonce for h in handles) == list(range(40))
            assert all(h.state is TxState.LANDED for h in handles)
            # idempotent: the same intent id gives back the same handle, nothing re-signed
            again = await router.submit(intents[0])
            assert again is handles[0]
            assert router.counters["submitted"] == 40

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(40))
    for i, intent in enumerate(intents):
        assert balance(anvil, intent.to) == intent.value, i
