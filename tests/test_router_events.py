"""Intent events (issue 16): every step of an intent on the router's event bus, over the Python API
and the local API's WATCH, against real anvil and the real signer."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
from pathlib import Path

import pytest
from anvil_support import ROOT, Anvil
from router_support import running_router, transfers, wait_for
from rpc_proxy import RpcProxy

from router.api import ApiClient, ApiServer, decode_event, encode_event
from router.core import Router
from router.errors import SignerError, TransportError
from router.events import EventKind, EventsLost, IntentEvent, Subscription
from router.intent import Intent
from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)

S, G, B, L, R, X = (EventKind.SUBMITTED, EventKind.SIGNED, EventKind.BROADCAST, EventKind.LANDED,
                    EventKind.REORGED_OUT, EventKind.REPLACED)


class Collector:
    """Reads a subscription into a list on a task (as a real subscriber would)."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub
        self.events: list[IntentEvent] = []
        self.lost: EventsLost | None = None
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for ev in self.sub:
                self.events.append(ev)
        except EventsLost as e:
            self.lost = e

    def of(self, intent_id: str) -> list[IntentEvent]:
        return [e for e in self.events if e.intent_id == intent_id]

    def kinds(self, intent_id: str) -> list[EventKind]:
        return [e.kind for e in self.of(intent_id)]

    async def until(self, pred: object, what: str, timeout: float = 20) -> None:
        await wait_for(pred, timeout=timeout, what=what)

    def close(self) -> None:
        self.sub.close()


def _dedupe_broadcasts(kinds: list[EventKind]) -> list[EventKind]:
    """Re-sends add BROADCAST events (timing-dependent); the order of everything else is fixed."""
    out: list[EventKind] = []
    for k in kinds:
        if not (k is B and out and out[-1] is B):
            out.append(k)
    return out


# --- encoding ------------------------------------------------------------------------------------


def test_event_record_round_trips_every_field() -> None:
    full = IntentEvent(7, EventKind.REPLACED, "id-ü", 3, 1.7e9 + 0.25, tx_hash=b"\x01" * 32,
                       block_number=99, block_hash=b"\x02" * 32, confirmations=4,
                       old_hash=b"\x03" * 32, new_hash=b"\x04" * 32, reason="why: ü")
    bare = IntentEvent(1, EventKind.SUBMITTED, "x", 0, 5.0)
    for ev in (full, bare):
        assert decode_event(encode_event(ev)) == ev
    assert len(encode_event(bare)) == 29  # fixed part + 1-byte id: compact


@pytest.mark.parametrize("mangle", [
    lambda b: b[:10],                      # truncated fixed part
    lambda b: b[:-1],                      # truncated field
    lambda b: b + b"\x00",                 # trailing byte
    lambda b: b[:8] + b"\x09" + b[9:],     # unknown kind
    lambda b: b[:9] + b"\x80" + b[10:],    # unknown field bit
], ids=["short", "cut-field", "trailing", "kind", "field-bit"])
def test_malformed_event_records_are_refused(mangle: object) -> None:
    ev = IntentEvent(7, EventKind.LANDED, "id", 3, 1.0, tx_hash=b"\x01" * 32, block_number=5,
                     block_hash=b"\x02" * 32, confirmations=1)
    with pytest.raises(TransportError):
        decode_event(mangle(encode_event(ev)))  # type: ignore[operator]


# --- Python API -----------------------------------------------------------------------------------


def test_plain_submit_publishes_each_step_and_confirmations_up_to_the_depth(anvil: Anvil) -> None:
    intent = transfers(1, tag="plain")[0]

    async def main() -> None:
        async with running_router(anvil, event_confirmations=3) as router:
            col = Collector(router.events())
            other = Collector(router.events("some-other-id"))
            handle = await router.submit(intent)
            rcpt = await handle.receipt(timeout=20)
            for _ in range(4):
                anvil.rpc("evm_mine")
            await wait_for(lambda: router.view.tip.number >= int(rcpt["blockNumber"], 16) + 4,
                           what="4 more heads")
            await asyncio.sleep(0.2)
            kinds = col.kinds(intent.id)
            assert _dedupe_broadcasts(kinds) == [S, G, B, L, L, L], kinds
            evs = col.of(intent.id)
            assert all(e.nonce == 0 for e in evs)
            assert evs[1].tx_hash == handle.tx_hash == evs[2].tx_hash
            landed = [e for e in evs if e.kind is L]
            assert [e.confirmations for e in landed] == [1, 2, 3]  # and none past the depth
            assert {e.block_hash for e in landed} == {bytes.fromhex(rcpt["blockHash"][2:])}
            assert {e.block_number for e in landed} == {int(rcpt["blockNumber"], 16)}
            seqs = [e.seq for e in col.events]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
            assert other.events == []  # a per-id subscription sees nothing of other intents
            col.close()
            other.close()
            await asyncio.gather(col.task, other.task)
            assert router.bus.subscribers == 0

    asyncio.run(main())


@pytest.mark.parametrize("presign", [True, False], ids=["standby", "cold"])
def test_reorg_publishes_reorged_out_signed_replaced_then_landed(anvil: Anvil, presign: bool) -> None:
    intent = transfers(1, tag=f"reorg-{presign}")[0]

    async def main() -> None:
        async with running_router(anvil, presign_replacements=presign) as router:
            col = Collector(router.events(intent.id))
            handle = await router.submit(intent)
            first = await handle.receipt(timeout=20)
            old_hash = handle.tx_hash
            anvil.rpc("anvil_reorg", 1, [])
            await wait_for(lambda: router.counters["reorgs"] >= 1, what="reorg detection")
            again = await handle.receipt(timeout=20)
            await col.until(lambda: col.kinds(intent.id)[-1] is L, "landed again")
            kinds = _dedupe_broadcasts(col.kinds(intent.id))
            assert kinds == [S, G, B, L, R, G, X, B, L], kinds
            evs = col.of(intent.id)
            out = next(e for e in evs if e.kind is R)
            assert out.block_hash == bytes.fromhex(first["blockHash"][2:])
            assert out.block_number == int(first["blockNumber"], 16)
            rep = next(e for e in evs if e.kind is X)
            assert rep.old_hash == old_hash and rep.new_hash == handle.tx_hash != old_hash
            assert evs[-1].block_hash == bytes.fromhex(again["blockHash"][2:])
            assert evs[-1].tx_hash == bytes.fromhex(again["transactionHash"][2:])
            col.close()

    asyncio.run(main())


def test_node_refusal_publishes_failed_with_the_reason(anvil: Anvil) -> None:
    # within the signer's policy (max 10**24 wei), more than the sender holds (10**22)
    broke = Intent(to=b"\xf1" * 20, value=10**23, id="too-rich")
    refused = Intent(to=b"\xf2" * 20, value=10**30, id="policy-refused")

    async def main() -> None:
        async with running_router(anvil) as router:
            col = Collector(router.events())
            with pytest.raises(SignerError, match="max_value"):
                await router.submit(refused)  # refused before acceptance: no event at all
            handle = await router.submit(broke)
            await wait_for(lambda: handle.state is TxState.FAILED, what="failure")
            await col.until(lambda: EventKind.FAILED in col.kinds(broke.id), "failed event")
            assert col.kinds(broke.id) == [S, G, B, EventKind.FAILED]
            reason = col.of(broke.id)[-1].reason
            assert reason is not None and "insufficient" in reason.lower()
            assert col.of(refused.id) == []
            col.close()

    asyncio.run(main())


def test_cancel_publishes_the_cancellation_and_cancelled(paused_anvil: Anvil) -> None:
    intent = transfers(1, tag="cancel")[0]

    async def main() -> None:
        # no re-send by time: one in flight when cancel() runs would delay the cancellation's
        # send past the evm_mine below (test_a_cancellation_signed_while_..., further down)
        async with running_router(paused_anvil, rebroadcast_after_seconds=600.0) as router:
            col = Collector(router.events())
            handle = await router.submit(intent)
            first_hash = handle.flight.hash
            await router.cancel(intent.id)
            cancel_hash = handle.flight.hash
            paused_anvil.rpc("evm_mine")
            await wait_for(lambda: handle.state is TxState.CANCELLED, what="cancelled")
            await col.until(lambda: EventKind.CANCELLED in col.kinds(intent.id), "event")
            kinds = _dedupe_broadcasts(col.kinds(intent.id))
            assert kinds == [S, G, B, G, X, B, EventKind.CANCELLED], kinds
            evs = col.of(intent.id)
            assert evs[3].tx_hash == cancel_hash
            assert (evs[4].old_hash, evs[4].new_hash) == (first_hash, cancel_hash)
            last = evs[-1]
            assert last.tx_hash == cancel_hash and last.block_number == 1
            assert last.reason is not None and "cancelled on request" in last.reason
            col.close()

    asyncio.run(main())


def test_slow_subscriber_overflows_into_events_lost_while_the_router_goes_on(anvil: Anvil) -> None:
    intents = transfers(3, tag="slow")

    async def main() -> None:
        async with running_router(anvil) as router:
            slow = router.bus.subscribe(maxsize=4)  # never read while the intents go through
            fast = Collector(router.events())
            handles = [await router.submit(i) for i in intents]
            for h in handles:
                await h.receipt(timeout=20)
            assert router.bus.subscribers == 1  # the overflowing one left the bus at once
            got = [await slow.__anext__() for _ in range(4)]
            assert [e.kind for e in got[:3]] == [S, G, B]  # the 4th: its landing or the next
            assert {e.intent_id for e in got[:3]} == {intents[0].id}
            with pytest.raises(EventsLost, match="4 events behind"):
                await slow.__anext__()
            for i in intents:  # the other subscriber lost nothing
                assert _dedupe_broadcasts(fast.kinds(i.id))[:4] == [S, G, B, L]
            fast.close()

    asyncio.run(main())


# --- the local API's WATCH -----------------------------------------------------------------------


def _read_until(watch: object, n_landed: int, out: list[IntentEvent]) -> None:
    seen = 0
    for ev in watch:  # type: ignore[attr-defined]
        out.append(ev)
        if ev.kind is L:
            seen += 1
            if seen == n_landed:
                return


def test_watch_streams_events_over_the_unix_socket(anvil: Anvil, tmp_path: Path) -> None:
    a, b = transfers(2, tag="watch")
    sock = str(tmp_path / "api.sock")

    async def main() -> None:
        async with running_router(anvil) as router:
            async with ApiServer(router, sock):
                await _watch_session(router, sock, a, b)

    asyncio.run(main())


async def _watch_session(router: Router, sock: str, a: Intent, b: Intent) -> None:
    everything: list[IntentEvent] = []
    only_b: list[IntentEvent] = []
    all_client = ApiClient(sock)
    b_client = ApiClient(sock)
    w_all = await asyncio.to_thread(all_client.watch, None, timeout=30)
    w_b = await asyncio.to_thread(b_client.watch, b.id, timeout=30)
    # a client that goes away mid-stream: subscribed, one event read, then its socket closes
    quitter = ApiClient(sock)
    w_quit = await asyncio.to_thread(quitter.watch, None, timeout=30)
    assert router.bus.subscribers == 3
    readers = [
        asyncio.create_task(asyncio.to_thread(_read_until, w_all, 2, everything)),
        asyncio.create_task(asyncio.to_thread(_read_until, w_b, 1, only_b)),
    ]
    first_of_quitter = asyncio.create_task(asyncio.to_thread(next, w_quit))

    def submit_both() -> None:
        with ApiClient(sock) as api:
            api.submit(a)
            api.submit(b)

    await asyncio.to_thread(submit_both)
    assert (await first_of_quitter).kind is S
    w_quit.close()
    await asyncio.wait_for(asyncio.gather(*readers), 30)
    assert {e.intent_id for e in only_b} == {b.id}
    assert _dedupe_broadcasts([e.kind for e in only_b]) == [S, G, B, L]
    for i in (a, b):
        assert _dedupe_broadcasts([e.kind for e in everything if e.intent_id == i.id]) == [
            S, G, B, L]
    assert everything[-1].tx_hash == router.handle(a.id if everything[-1].intent_id == a.id
                                                   else b.id).tx_hash  # type: ignore[union-attr]
    w_all.close()
    w_b.close()
    # the server noticed every departed client and unsubscribed it; it still serves
    await wait_for(lambda: router.bus.subscribers == 0, what="subscriptions closed")

    def still_serving() -> str:
        with ApiClient(sock) as api:
            api.call(0x01)
            return api.status(a.id).state

    assert await asyncio.to_thread(still_serving) == "landed"
    # the CLI, as an operator runs it
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "router", "watch", "--router", f"unix:{sock}", "--id", "cli-1",
        "--json", cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        await wait_for(lambda: router.bus.subscribers == 1, what="CLI subscribed")
        c = Intent(to=b"\xc1" * 20, value=5, id="cli-1")
        await asyncio.to_thread(lambda: ApiClient(sock).submit(c))
        assert proc.stdout is not None
        lines = [json.loads(await asyncio.wait_for(proc.stdout.readline(), 20)) for _ in range(3)]
        assert [x["kind"] for x in lines] == ["submitted", "signed", "broadcast"]
        assert {x["id"] for x in lines} == {"cli-1"} and lines[1]["tx_hash"].startswith("0x")
    finally:
        proc.terminate()
        await proc.wait()


def test_watch_overflow_ends_the_stream_with_events_lost(anvil: Anvil, tmp_path: Path) -> None:
    """A WATCH client that stops reading: its queue overflows, it gets ERROR 35 (EventsLost) once
    it reads again, and the router and the server go on."""
    sock = str(tmp_path / "api.sock")
    intents = transfers(2, tag="wlost")

    async def main() -> None:
        async with running_router(anvil) as router:
            router.bus.queue_size = 3
            async with ApiServer(router, sock):
                client = ApiClient(sock)
                watch = await asyncio.to_thread(client.watch, None, timeout=20)
                # The server drains into the socket, so the overflow needs a reader that is
                # behind: hold the server's writer by not reading while many events arrive.
                gate = threading.Event()
                got: list[IntentEvent] = []
                lost: list[BaseException] = []

                def read() -> None:
                    gate.wait()
                    try:
                        for ev in watch:
                            got.append(ev)
                    except (EventsLost, TransportError) as e:
                        lost.append(e)

                reader = asyncio.create_task(asyncio.to_thread(read))
                # publish more than the queue holds faster than the connection task forwards
                for k in range(50):
                    router.bus.publish(EventKind.SUBMITTED, f"burst-{k}", k)
                gate.set()
                await asyncio.wait_for(reader, 20)
                assert lost and isinstance(lost[0], EventsLost), lost
                assert 0 < len(got) < 50
                watch.close()
                for i in intents:  # the router is unaffected
                    h = await router.submit(i)
                    await h.receipt(timeout=20)

    asyncio.run(main())


def test_watch_refuses_a_malformed_id(anvil: Anvil, tmp_path: Path) -> None:
    sock = str(tmp_path / "api.sock")

    async def main() -> None:
        async with running_router(anvil) as router:
            async with ApiServer(router, sock):
                def bad() -> None:
                    with ApiClient(sock) as api:
                        api.watch("x" * 129)

                from router.api import ApiError
                with pytest.raises(ApiError, match="WATCH id") as e:
                    await asyncio.to_thread(bad)
                assert e.value.code == 7
                assert router.bus.subscribers == 0

    asyncio.run(main())


def test_a_cancellation_signed_while_the_original_is_being_sent_still_goes_out(
        paused_anvil: Anvil) -> None:
    """Cancel while a (slow) send of the original is in flight: the cancellation's own send
    finds the flight busy and returns, so the running send must send the new bytes when it
    is done. Re-sends by time or heads are off here: nothing else would ever send them."""
    intent = transfers(1, tag="busy-cancel")[0]

    async def main() -> None:
        async with RpcProxy(paused_anvil.rpc_url) as proxy, running_router(
                paused_anvil, rpc_urls=(proxy.url,), rebroadcast_after_seconds=600.0,
                rebroadcast_after_heads=10_000) as router:
            handle = await router.submit(intent)
            assert proxy.sent_nonces == [0]
            proxy.delay = 1.0  # the next send stays in flight while the cancellation is signed
            slow = asyncio.create_task(router._send(handle.flight))
            await wait_for(lambda: proxy.sent_nonces == [0, 0], what="the slow re-send")
            await router.cancel(intent.id)
            cancel_hash = handle.flight.hash
            await slow
            proxy.delay = 0.0
            await wait_for(lambda: len(proxy.sent_nonces) == 3, what="the cancellation sent")
            pool = paused_anvil.rpc("txpool_content")
            assert isinstance(pool, dict)
            pooled = [tx["hash"] for txs in pool["pending"].values() for tx in txs.values()]
            assert pooled == ["0x" + cancel_hash.hex()]
            paused_anvil.rpc("evm_mine")
            await wait_for(lambda: handle.state is TxState.CANCELLED, what="cancelled")

    asyncio.run(main())
