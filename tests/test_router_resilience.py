"""The router survives its WebSocket dropping and the node restarting without losing an intent."""

from __future__ import annotations

import asyncio

import pytest
from anvil_support import Anvil, free_port
from router_support import balance, mined_nonces, running_router, transfers, wait_for
from rpc_proxy import RpcProxy, WsProxy

from router.errors import NonceTooLow
from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


def test_websocket_drop_with_missed_heads(anvil) -> None:
    intents = transfers(6, tag="wsdrop")

    async def main() -> None:
        async with running_router(anvil) as router:
            handles = [await router.submit(i) for i in intents[:3]]
            for h in handles:
                await h.receipt(timeout=20)
            await router.heads.drop()
            # heads produced while we are not listening: a gap the router must close by hash
            for _ in range(3):
                anvil.rpc("evm_mine")
            handles += [await router.submit(i) for i in intents[3:]]
            await wait_for(lambda: router.heads.stats.connects >= 2, what="re-subscription")
            for h in handles:
                await h.receipt(timeout=20)
            assert all(h.state is TxState.LANDED for h in handles)
            assert router.heads.stats.disconnects >= 1
            assert router.view.tip.number == int(str(anvil.rpc("eth_blockNumber")), 16)

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(6))
    for i in intents:
        assert balance(anvil, i.to) == i.value


def test_node_restart_loses_no_intent(tmp_path) -> None:
    state = tmp_path / "anvil-state.json"
    node = Anvil(port=free_port(), chain_id=31337, args=["--state", str(state)]).start()
    intents = transfers(5, tag="restart")
    try:

        async def main() -> None:
            nonlocal node
            async with running_router(node) as router:
                handles = [await router.submit(i) for i in intents[:2]]
                for h in handles:
                    await h.receipt(timeout=20)
                node.stop()
                # submitted while the node is down: signed, tracked, broadcast deferred
                handles += [await router.submit(i) for i in intents[2:]]
                assert [h.state for h in handles[2:]] == [TxState.PENDING] * 3
                assert router.counters["send_deferred"] >= 3
                await asyncio.sleep(0.5)
                node = Anvil(port=node.port, chain_id=31337, args=["--state", str(state)]).start()
                for h in handles:
                    await h.receipt(timeout=30)
                assert router.heads.stats.connects >= 2

        asyncio.run(main())
        assert sorted(mined_nonces(node)) == list(range(5))
        for i in intents:
            assert balance(node, i.to) == i.value
    finally:
        node.stop()


def test_reorg_during_missed_heads_found_by_ancestor_fetch(anvil) -> None:
    """Heads are lost while a depth-3 reorg replaces blocks holding our transactions; the next
    head we do see has an unknown parent: the router fetches ancestors by hash, finds the fork
    point, and re-lands what was dropped."""
    intents = transfers(3, tag="blind")

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as ws:
            async with running_router(anvil, ws_url=ws.url) as router:
                handles = [await router.submit(i) for i in intents]
                first = [await h.receipt(timeout=20) for h in handles]
                ws.muted = True
                anvil.rpc("anvil_reorg", 3, [])
                anvil.rpc("evm_mine")
                await wait_for(lambda: ws.lost >= 4, what="the reorg's heads lost")
                assert router.counters["reorgs"] == 0
                ws.muted = False
                anvil.rpc("evm_mine")
                await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg found")
                again = [await h.receipt(timeout=20) for h in handles]
                assert {r["blockHash"] for r in again}.isdisjoint(r["blockHash"] for r in first)
                assert router.counters["resigned"] == 3

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == [0, 1, 2]
    for i in intents:
        assert balance(anvil, i.to) == i.value


def test_reorg_beyond_the_ring_rebuilds_and_relands(anvil) -> None:
    """A reorg whose fork point is further back than the header ring (4 here), seen only after
    the heads were missed: the router rebuilds its view from the new head, asks the node for a receipt of every
    transaction it believed landed, and re-sends those the chain no longer holds; each lands
    exactly once."""
    intents = transfers(3, tag="deep")

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as ws:
            async with running_router(anvil, ws_url=ws.url, head_ring=4,
                                      forget_after_blocks=4) as router:
                handles = [await router.submit(i) for i in intents]
                for h in handles:
                    await h.receipt(timeout=20)
                ws.muted = True
                anvil.rpc("anvil_reorg", 3, [])
                anvil.rpc("anvil_mine", hex(10))
                await wait_for(lambda: ws.lost >= 13, what="heads lost")
                ws.muted = False
                anvil.rpc("evm_mine")
                for h in handles:
                    await h.receipt(timeout=20)
                assert router.counters["reorgs"] == 0  # not decided as a plain reorg
                assert router.counters["deep_reorgs"] == 1
                assert router.counters["resent"] >= 3

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == [0, 1, 2]
    for i in intents:
        assert balance(anvil, i.to) == i.value


def test_hanging_endpoint_does_not_hold_anything_up(anvil) -> None:
    """One endpoint accepts eth_sendRawTransaction and never answers: the other's acceptance wins
    at once, and submits do not queue up behind the hung one."""
    intents = transfers(8, tag="hang")

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, hang=frozenset({"eth_sendRawTransaction"})) as hung:
            async with running_router(anvil, rpc_urls=(hung.url, anvil.rpc_url)) as router:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                handles = await asyncio.gather(*(router.submit(i) for i in intents))
                assert loop.time() - t0 < 5
                for h in handles:
                    await h.receipt(timeout=20)
                assert router.broadcaster.counters["accepted"] >= 8
                assert len(hung.sent_nonces) >= 8  # it was asked, too (singly or in batches)
                # a refusal (the live node: already mined) is acted on after a short grace,
                # not after the hung node's full timeout
                t0 = loop.time()
                with pytest.raises(NonceTooLow):
                    await router.broadcaster.send(handles[0].flight.raw, handles[0].flight.hash)
                assert loop.time() - t0 < 3
                assert router.broadcaster.counters["refusal_grace_expired"] >= 1

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(8))
