"""Nothing lost, nothing sent twice, nothing stalls (issue 12): each case a firm lost money on,
reproduced against real anvil and the real signer, and the router's journal-backed answer to it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from anvil_support import DEV_KEY_0, ROOT, Anvil, free_port
from router_proc_support import RouterProcess, write_config
from router_support import (
    SENDER,
    balance,
    config_for,
    dest,
    dev_signer,
    mined_nonces,
    running_router,
    transfers,
    wait_for,
)
from rpc_proxy import RpcProxy
from signer_support import running_signer

from enclave.keys import KeyOrigin, SigningKey
from enclave.tx import TX_EIP1559, UnsignedTx, sign_tx
from router.api import ApiClient
from router.core import Router
from router.errors import IntentCancelled, IntentFailed, SignerUnavailable, TransportError
from router.intent import Intent
from router.journal import open_journal
from router.nonces import TxState
from router.signer_client import SignerClient

pytestmark = pytest.mark.timeout(180)


def _tip(anvil: Anvil) -> int:
    return int(str(anvil.rpc("eth_blockNumber")), 16)


def _our_txs(anvil: Anvil) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for n in range(_tip(anvil) + 1):
        block = anvil.rpc("eth_getBlockByNumber", hex(n), True)
        assert isinstance(block, dict)
        out += [t for t in block["transactions"] if t["from"].lower() == SENDER.lower()]
    return out


def _landed_once(anvil: Anvil, intents: list[Intent]) -> None:
    """Each intent's transfer is on the canonical chain exactly once (by destination)."""
    txs = _our_txs(anvil)
    for i in intents:
        hits = [t for t in txs if str(t["to"]).lower() == "0x" + i.to.hex()]
        assert len(hits) == 1, f"{i.id}: {len(hits)} transactions on chain"
        assert int(str(hits[0]["value"]), 16) == i.value
    nonces = sorted(int(str(t["nonce"]), 16) for t in txs)
    assert nonces == list(range(len(nonces))), "nonce gap or duplicate nonce"


# --- 1. restart ---------------------------------------------------------------------------------


@pytest.mark.parametrize("pool_lost", [False, True], ids=["pool-kept", "pool-lost"])
def test_sigkill_restart_keeps_every_intent_once(tmp_path: Path, pool_lost: bool) -> None:
    """SIGKILL the router with 20 intents in the node's pool: after a restart STATUS knows every
    id, a resubmit returns the existing transaction, and each lands exactly once — also when the
    node's pool was lost meanwhile (the router re-broadcasts from its journal)."""
    anvil = Anvil(port=free_port(), chain_id=31337, args=["--no-mining"]).start()
    intents = transfers(20, tag="restart")
    try:
        with running_signer(tmp_path) as signer:
            cfg = write_config(tmp_path, anvil, str(signer.address))
            first = RouterProcess(cfg).start()
            with ApiClient(str(first.sock)) as api:
                sent = {i.id: api.submit(i) for i in intents}
            assert [n for n, _ in sent.values()] == list(range(20))
            first.kill()
            if pool_lost:
                anvil.rpc("anvil_dropAllTransactions")
            with RouterProcess(cfg) as second, ApiClient(str(second.sock)) as api:
                for i in intents:
                    st = api.status(i.id)
                    assert st.state == "pending" and st.nonce == sent[i.id][0]
                    assert api.submit(i) == sent[i.id]  # the existing handle, nothing re-signed
                time.sleep(1.5)  # the recovered router re-broadcasts (the pool may be empty)
                anvil.rpc("evm_mine")
                for i in intents:
                    st = api.wait(i.id, timeout=30)
                    assert st.state == "landed" and st.receipt_status == 1
                    assert st.tx_hash == sent[i.id][1]
                # the CLI, as an operator would use it after the restart
                r = subprocess.run(
                    [sys.executable, "-m", "router", "submit", "--router", f"unix:{second.sock}",
                     "--to", "0x" + intents[3].to.hex(), "--value", str(intents[3].value),
                     "--id", intents[3].id, "--json"],
                    cwd=ROOT, capture_output=True, text=True, timeout=60)
                assert r.returncode == 0, r.stderr
                out = json.loads(r.stdout)
                assert out["state"] == "landed" and out["nonce"] == 3
                assert out["tx_hash"] == "0x" + sent[intents[3].id][1].hex()
            anvil.rpc("evm_mine")
        _landed_once(anvil, intents)
    finally:
        anvil.stop()


def test_restart_after_landing_answers_old_ids(tmp_path: Path, anvil: Anvil) -> None:
    """Landed intents are still known after a restart (STATUS and WAIT), and a resubmit of a
    landed id signs nothing new."""
    intents = transfers(3, tag="old")
    with running_signer(tmp_path) as signer:
        cfg = write_config(tmp_path, anvil, str(signer.address))
        with RouterProcess(cfg) as first, ApiClient(str(first.sock)) as api:
            sent = [api.submit(i) for i in intents]
            for i in intents:
                assert api.wait(i.id, timeout=30).state == "landed"
        with RouterProcess(cfg) as second, ApiClient(str(second.sock)) as api:
            for i, (nonce, tx_hash) in zip(intents, sent, strict=True):
                st = api.wait(i.id, timeout=30)
                assert (st.state, st.nonce, st.tx_hash) == ("landed", nonce, tx_hash)
                assert api.submit(i) == (nonce, tx_hash)
            assert api.stats().get("submitted", 0) == 0
    _landed_once(anvil, intents)


# --- 2. one bad intent --------------------------------------------------------------------------


def test_insufficient_funds_fails_and_nothing_behind_it_waits(anvil: Anvil) -> None:
    """An intent the node refuses for good (value above the balance) ends `failed` with the
    node's reason, and the intents behind it land (its nonce is released or filled)."""
    rich = 2 * 10**22  # 20k ETH: more than anvil's 10k ETH accounts hold (policy: <= 1M)

    async def main() -> None:
        async with running_router(anvil) as router:
            good = transfers(4, tag="funds")
            # concurrent: the bad one sits between good ones, so its nonce must be filled
            handles = await asyncio.gather(
                router.submit(good[0]),
                router.submit(Intent(to=dest(99), value=rich, id="too-rich")),
                *(router.submit(i) for i in good[1:]),
            )
            bad = handles[1]
            with pytest.raises(IntentFailed, match="insufficient"):
                await bad.receipt(timeout=20)
            assert bad.state is TxState.FAILED
            for h in (handles[0], *handles[2:]):
                await h.receipt(timeout=30)
            # sequential: a failed top nonce goes to the next submit
            late = await router.submit(Intent(to=dest(98), value=rich, id="too-rich-2"))
            with pytest.raises(IntentFailed):
                await late.receipt(timeout=20)
            after = await router.submit(Intent(to=dest(97), value=5, id="after"))
            assert after.nonce == late.nonce
            await after.receipt(timeout=20)
            assert router.counters["failed"] == 2

    asyncio.run(main())
    nonces = sorted(mined_nonces(anvil))
    assert nonces == list(range(len(nonces)))
    assert balance(anvil, dest(99)) == 0 and balance(anvil, dest(97)) == 5


# --- 3. signer outage ---------------------------------------------------------------------------


def test_signer_outage_never_freezes_the_loop(tmp_path: Path) -> None:
    """A signer that stops answering (SIGSTOP) makes signing fail with a typed error while the
    event loop keeps following heads; after the outage signing works again."""
    anvil = Anvil(port=free_port(), chain_id=31337, args=["--block-time", "1"]).start()
    key = tmp_path / "dev.key"
    key.write_text(DEV_KEY_0.hex())
    sock = tmp_path / "signer.sock"
    signer = subprocess.Popen(
        [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}",
         "--dev-key-file", str(key), "--policy", str(ROOT / "enclave" / "policy.dev.toml")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        client = SignerClient.connect(f"unix:{sock}", io_timeout=4.0, connect_timeout=20)

        async def main() -> None:
            router = Router(config_for(anvil, presign_replacements=False, signer_cooldown=2.0),
                            client)
            await router.start()
            gaps: list[float] = []

            async def ticker() -> None:
                last = time.monotonic()
                while True:
                    await asyncio.sleep(0.01)
                    now = time.monotonic()
                    gaps.append(now - last)
                    last = now

            tick = asyncio.create_task(ticker())
            try:
                await (await router.submit(Intent(to=dest(1), value=1, id="before"))).receipt(
                    timeout=20)
                signer.send_signal(19)  # SIGSTOP: accepts connections, never answers
                tip0 = router.view.tip.number
                with pytest.raises(TransportError):
                    await router.submit(Intent(to=dest(2), value=2, id="during"))
                # the breaker is open: the next call fails at once, without queueing
                t0 = time.monotonic()
                with pytest.raises(SignerUnavailable):
                    await router.submit(Intent(to=dest(3), value=3, id="during-2"))
                assert time.monotonic() - t0 < 1.0
                await wait_for(lambda: router.view.tip.number >= tip0 + 2, timeout=10,
                               what="heads during the outage")
                # far below the 4 s a blocking signer call would freeze it for
                assert max(gaps) < 1.0, f"event loop froze for {max(gaps):.2f} s"
                signer.send_signal(18)  # SIGCONT
                await asyncio.sleep(router.config.signer_cooldown + 0.1)
                h = await router.submit(Intent(to=dest(2), value=2, id="during"))
                await h.receipt(timeout=20)
            finally:
                tick.cancel()
                await router.close()

        asyncio.run(main())
        client.close()
    finally:
        signer.kill()
        signer.wait()
        anvil.stop()


# --- 4. a node that comes back with a fresh chain -----------------------------------------------


def test_node_back_with_a_fresh_chain_relands_from_the_journal(tmp_path: Path) -> None:
    port = free_port()
    anvil = Anvil(port=port, chain_id=31337).start()
    intents = transfers(10, tag="fresh")

    async def main() -> None:
        nonlocal anvil
        journal = open_journal(str(tmp_path / "j.sqlite"), base_dir=tmp_path, chain_id=31337,
                               sender=SENDER)
        router = Router(config_for(anvil), dev_signer(), journal=journal)
        await router.start()
        try:
            handles = [await router.submit(i) for i in intents]
            for h in handles:
                await h.receipt(timeout=20)
            old_blocks = {h.flight.landed.block_hash for h in handles if h.flight.landed}
            anvil.stop()
            # same port, no state; another genesis time (anvil's blocks are deterministic: one
            # restarted within the same second would rebuild the very same chain)
            anvil = Anvil(port=port, chain_id=31337,
                          args=["--timestamp", str(int(time.time()) + 10_000)]).start()
            # noticed by the genesis check, or as a rewind whose receipts are gone: either way
            # every landed transaction is checked and re-opened
            await wait_for(lambda: router.counters["reopened"] >= len(intents), timeout=60,
                           what="the replaced chain noticed")
            anvil.rpc("evm_mine")
            for h in handles:
                rcpt = await h.receipt(timeout=30)
                assert bytes.fromhex(rcpt["blockHash"][2:]) not in old_blocks
        finally:
            await router.close()

    try:
        asyncio.run(main())
        _landed_once(anvil, intents)
    finally:
        anvil.stop()


# --- 5. a revert deeper than forget_after_blocks ------------------------------------------------


def test_revert_deeper_than_forget_relands_and_never_fills(tmp_path: Path, anvil: Anvil) -> None:
    intents = transfers(5, tag="revert")

    async def main() -> None:
        router = Router(config_for(anvil, head_ring=8, forget_after_blocks=8), dev_signer())
        await router.start()
        try:
            snap = anvil.rpc("evm_snapshot")
            handles = [await router.submit(i) for i in intents]
            for h in handles:
                await h.receipt(timeout=20)
            anvil.rpc("anvil_mine", hex(20))
            await wait_for(lambda: router.view.tip.number >= _tip(anvil), what="tip")
            assert router.nonces.all() == []  # forgotten: buried deeper than forget_after_blocks
            assert anvil.rpc("evm_revert", snap) is True
            anvil.rpc("evm_mine")
            await wait_for(lambda: router.counters["reopened"] >= 5, timeout=30,
                           what="reverted transactions re-opened")
            anvil.rpc("evm_mine")
            for h in handles:
                await h.receipt(timeout=30)
                assert h.state is TxState.LANDED
            assert router.counters["gap_filled"] == 0
        finally:
            await router.close()

    asyncio.run(main())
    _landed_once(anvil, intents)
    assert all(int(str(t["value"]), 16) > 0 for t in _our_txs(anvil))  # no self-transfer fillers


# --- 6. WebSocket down, HTTP up -----------------------------------------------------------------


def test_websocket_down_heads_by_polling(anvil: Anvil) -> None:
    dead_ws = f"ws://127.0.0.1:{free_port()}"

    async def main() -> None:
        async with running_router(anvil, ws_url=dead_ws, poll_interval=0.2) as router:
            h = await router.submit(Intent(to=dest(5), value=55, id="poll"))
            await h.receipt(timeout=20)
            tip = router.view.tip.number
            anvil.rpc("evm_mine")
            await wait_for(lambda: router.view.tip.number > tip, timeout=10, what="polled tip")

    asyncio.run(main())


# --- 7. start-up with an endpoint answering HTTP 502 --------------------------------------------


def test_start_with_one_endpoint_502(anvil: Anvil) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as bad:
            bad.fail_status = 502
            async with running_router(anvil, rpc_urls=(bad.url, anvil.rpc_url)) as router:
                assert any("127.0.0.1" in k for k in router.endpoint_errors)
                h = await router.submit(Intent(to=dest(6), value=66, id="502"))
                await h.receipt(timeout=20)

    asyncio.run(main())


# --- 8. flip-flop -------------------------------------------------------------------------------


def test_flip_flop_cancels_the_moved_copy(anvil: Anvil) -> None:
    """An outside transaction takes our nonce (the intent moves to the next one), then a reorg
    brings back a chain holding our original signature: the copy at the new nonce is cancelled
    and the intent is on chain once."""
    key = SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV)
    intent = Intent(to=dest(7), value=77, id="flip")

    async def main() -> None:
        async with running_router(anvil, signer=dev_signer(), presign_replacements=False) as r:
            n = r.nonces.peek()
            base = r.view.tip.base_fee or 0
            outside = sign_tx(key, UnsignedTx(TX_EIP1559, anvil.chain_id, n, 21_000, dest(8), 1,
                                              b"", 2 * base + 10**9, 10**9))
            anvil.rpc("eth_sendRawTransaction", "0x" + outside.raw.hex())  # automined
            h = await r.submit(intent)
            await h.receipt(timeout=20)
            assert h.nonce == n + 1 and r.counters["nonce_moved"] == 1
            original = h.flight.hashes[0]
            raw = h.flight.sig_raws[original]
            # a reorg replaces the two blocks with one holding our original at nonce n
            anvil.rpc("anvil_reorg", 2, [["0x" + raw.hex(), 0]])
            anvil.rpc("evm_mine")
            await wait_for(lambda: r.counters["flip_flops"] >= 1, timeout=20, what="flip-flop")
            await wait_for(lambda: h.state is TxState.LANDED and h.nonce == n, timeout=20,
                           what="landed at the original nonce")
            for _ in range(3):
                anvil.rpc("evm_mine")
                await asyncio.sleep(0.3)
            assert h.flight.landed is not None and h.flight.landed.tx_hash == original
            assert r.counters["duplicated"] == 0

    asyncio.run(main())
    txs = _our_txs(anvil)
    assert len([t for t in txs if str(t["to"]).lower() == "0x" + dest(7).hex()]) == 1
    nonces = sorted(int(str(t["nonce"]), 16) for t in txs)
    assert nonces == list(range(len(nonces)))


# --- 9. first broadcasts in nonce order under latency -------------------------------------------


def test_first_broadcasts_in_nonce_order_under_rpc_latency() -> None:
    anvil = Anvil(port=free_port(), chain_id=31337, args=["--no-mining"]).start()
    seen: list[int] = []

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as slow:
            slow.delay = 0.02
            async with running_router(anvil, rpc_urls=(slow.url,)) as router:
                intents = transfers(30, tag="order")
                await asyncio.gather(*(router.submit(i) for i in intents))
                seen.extend(slow.sent_nonces)
            anvil.rpc("evm_mine")

    try:
        asyncio.run(main())
        first = list(dict.fromkeys(seen))  # first arrival of each nonce
        assert first == sorted(first) and len(first) == 30, first
        assert sorted(mined_nonces(anvil)) == list(range(30))
    finally:
        anvil.stop()


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_replaces_a_pending_intent(tmp_path: Path) -> None:
    anvil = Anvil(port=free_port(), chain_id=31337, args=["--no-mining"]).start()

    async def main() -> None:
        async with running_router(anvil) as router:
            h = await router.submit(Intent(to=dest(9), value=99, id="to-cancel"))
            keep = await router.submit(Intent(to=dest(10), value=10, id="kept"))
            await router.cancel("to-cancel")
            anvil.rpc("evm_mine")
            with pytest.raises(IntentCancelled):
                await h.receipt(timeout=20)
            assert h.state is TxState.CANCELLED
            await keep.receipt(timeout=20)
            again = await router.cancel("kept")  # landed: nothing to cancel
            assert again.state is TxState.LANDED

    try:
        asyncio.run(main())
        assert balance(anvil, dest(9)) == 0 and balance(anvil, dest(10)) == 10
    finally:
        anvil.stop()
