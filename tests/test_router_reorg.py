"""Reorgs made by anvil_reorg are detected from newHeads and our dropped transactions re-landed.

Every case ends with the chain as the judge: each intended transfer applied exactly once
(balances), each of our nonces mined exactly once, no gaps.
"""

from __future__ import annotations

import asyncio

import pytest
from router_support import balance, mined_nonces, running_router, transfers, wait_for

from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


def _check_chain(anvil, intents, n_nonces: int) -> None:
    assert sorted(mined_nonces(anvil)) == list(range(n_nonces))
    for intent in intents:
        assert balance(anvil, intent.to) == intent.value, intent.id


@pytest.mark.parametrize("presign", [True, False], ids=["standby", "cold"])
@pytest.mark.parametrize("depth", [1, 3], ids=["depth1", "depth3"])
def test_reorg_dropping_our_transactions_resigns_and_relands(anvil, depth: int, presign) -> None:
    intents = transfers(depth, tag=f"drop{depth}")

    async def main() -> None:
        async with running_router(anvil, presign_replacements=presign) as router:
            handles = [await router.submit(i) for i in intents]  # one block each (automine)
            first = [await h.receipt(timeout=20) for h in handles]
            old_blocks = {r["blockHash"] for r in first}
            assert len(old_blocks) == depth
            anvil.rpc("anvil_reorg", depth, [])
            await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
            assert router.counters["resigned"] == depth
            # with presigning the reorg path only picked up replacements signed ahead of time
            assert router.counters["resigned_from_standby"] == (depth if presign else 0)
            again = [await h.receipt(timeout=20) for h in handles]
            assert not old_blocks & {r["blockHash"] for r in again}
            assert all(h.state is TxState.LANDED for h in handles)
            # re-signed with fresh (bumped) fees: a different hash for each
            assert all(len(h.flight.hashes) == 2 for h in handles)
            assert {r["transactionHash"] for r in again}.isdisjoint(
                r["transactionHash"] for r in first)

    asyncio.run(main())
    _check_chain(anvil, intents, depth)


@pytest.mark.parametrize("depth", [1, 3], ids=["depth1", "depth3"])
def test_reorg_not_touching_our_transactions_resigns_nothing(anvil, depth: int) -> None:
    intents = transfers(2, tag=f"keep{depth}")

    async def main() -> None:
        async with running_router(anvil) as router:
            handles = [await router.submit(i) for i in intents]
            for h in handles:
                await h.receipt(timeout=20)
            for _ in range(depth):
                anvil.rpc("evm_mine")
            await wait_for(lambda: router.view.tip.number == 2 + depth, what="empty blocks seen")
            anvil.rpc("anvil_reorg", depth, [])
            await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
            assert router.counters["resigned"] == 0
            assert all(len(h.flight.hashes) == 1 and h.state is TxState.LANDED for h in handles)
            await asyncio.sleep(0.3)
            assert router.broadcaster.counters["accepted"] == 2

    asyncio.run(main())
    _check_chain(anvil, intents, 2)


def test_reorg_whose_new_chain_includes_our_transaction(anvil) -> None:
    """The replacement blocks carry our original bytes: the re-signed copy must not apply twice."""
    intents = transfers(1, tag="reincl")

    async def main() -> None:
        async with running_router(anvil) as router:
            h = await router.submit(intents[0])
            await h.receipt(timeout=20)
            raw = "0x" + h.flight.raw.hex()
            anvil.rpc("anvil_reorg", 1, [[raw, 0]])
            await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
            rcpt = await h.receipt(timeout=20)
            await asyncio.sleep(0.5)
            assert h.state is TxState.LANDED
            assert rcpt["transactionHash"] == "0x" + h.flight.hashes[0].hex()

    asyncio.run(main())
    _check_chain(anvil, intents, 1)


def test_no_secret_or_signed_bytes_in_logs_and_reprs(anvil, caplog) -> None:
    """A reorg cycle with the key in this process: the key never shows in logs or reprs, and logs
    name transactions by hash only (signed bytes stay out of them too)."""
    import logging

    from anvil_support import DEV_KEY_0
    from router_support import dev_signer

    from router._logfmt import JsonFormatter

    signer = dev_signer()
    intents = transfers(2, tag="secret")
    seen: list[str] = []

    async def main() -> None:
        async with running_router(anvil, signer) as router:
            handles = [await router.submit(i) for i in intents]
            for h in handles:
                await h.receipt(timeout=20)
            anvil.rpc("anvil_reorg", 2, [])
            await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
            for h in handles:
                await h.receipt(timeout=20)
            seen.extend(f.raw.hex() for f in router.nonces.all())
            seen.extend([repr(router), repr(signer), repr(handles[0]), repr(handles[0].flight),
                         str(router.stats())])

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    fmt = JsonFormatter()
    logs = "\n".join(fmt.format(r) for r in caplog.records)
    assert '"outcome": "accepted"' in logs and '"msg": "reorg"' in logs
    key = DEV_KEY_0.hex()
    reprs = "\n".join(seen[2:])
    assert key not in logs and key not in reprs and key.upper() not in logs
    for raw in seen[:2]:
        assert raw not in logs and raw not in reprs
