"""HeadSources against real anvil behind real proxies: several WebSockets at once, losing one,
losing all (HTTP polling takes over), WebSockets coming back (polling stops), and the duplicate
filter (one delivery per head, but a head that returns after a flip-flop is delivered again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from anvil_support import Anvil
from rpc_proxy import RpcProxy, WsProxy

from router.heads import Header, HeadSources
from router.rpc import RpcClient

pytestmark = pytest.mark.timeout(120)

FAST = {"poll_interval": 0.1, "backoff": (0.05, 0.2)}


@dataclass
class Sink:
    """What HeadSources handed over: headers (number, hash) and on_connect calls, in order."""

    heads: list[tuple[int, bytes]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    busy: bool = False
    overlapped: int = 0

    async def on_header(self, header: Header, received_ns: int) -> None:
        assert received_ns > 0
        self.overlapped += self.busy  # the owner must see one header at a time
        self.busy = True
        await asyncio.sleep(0)
        self.heads.append((header.number, header.hash))
        self.events.append(f"head {header.number}")
        self.busy = False

    async def on_connect(self) -> None:
        self.events.append("connect")

    def numbers(self) -> list[int]:
        return [n for n, _ in self.heads]

    def connects(self) -> int:
        return self.events.count("connect")


async def until(pred: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def mine(anvil: Anvil) -> int:
    await asyncio.to_thread(anvil.rpc, "evm_mine")
    return int(str(await asyncio.to_thread(anvil.rpc, "eth_blockNumber")), 16)


@contextlib.asynccontextmanager
async def running(sources: HeadSources) -> AsyncIterator[HeadSources]:
    task = asyncio.create_task(sources.run())
    try:
        yield sources
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def test_two_websockets_lose_one_and_heads_keep_coming(anvil: Anvil) -> None:
    sink = Sink()

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as a, WsProxy(anvil.ws_url) as b:
            rpc = RpcClient(anvil.rpc_url)
            src = HeadSources([a.url, b.url], [rpc], sink.on_header, on_connect=sink.on_connect,
                              **FAST)  # type: ignore[arg-type]
            assert src.label == f"{a.url} +1 ws, poll fallback"
            async with running(src):
                await until(lambda: src.stats.connects == 2, "both subscribed")
                assert src.connected.is_set() and sink.connects() == 2
                tip = await mine(anvil)
                await until(lambda: tip in sink.numbers(), "a head")
                await until(lambda: src.stats.duplicates >= 1, "the second copy")
                assert sink.numbers().count(tip) == 1  # both sent it; handed over once
                # one endpoint goes away for good
                a.refuse = True
                await a.kick()
                await until(lambda: src.stats.disconnects == 1, "the drop noticed")
                for _ in range(3):
                    tip = await mine(anvil)
                    await until(lambda t=tip: t in sink.numbers(), f"head {tip} from the other ws")
                stats = src.stats
                assert not stats.polling_active and stats.polls == 0 and stats.takeovers == 0
                assert stats.sources[f"{b.url} #1"]["subscribed"] is True
                assert stats.sources[f"{a.url} #0"]["subscribed"] is False
                await until(lambda: src.stats.sources[f"{a.url} #0"]["errors"] >= 1, "refused", 3)
            await rpc.close()
        assert sink.overlapped == 0
        assert sink.numbers() == sorted(set(sink.numbers()))

    asyncio.run(main())


def test_all_websockets_down_polling_moves_the_tip_until_one_returns(anvil: Anvil) -> None:
    sink = Sink()

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as a, WsProxy(anvil.ws_url) as b, RpcProxy(
            anvil.rpc_url
        ) as http:
            rpc = RpcClient(http.url)
            src = HeadSources([a.url, b.url], [rpc], sink.on_header, on_connect=sink.on_connect,
                              **FAST)  # type: ignore[arg-type]
            async with running(src):
                await until(lambda: src.stats.connects == 2, "both subscribed")
                await asyncio.sleep(0.3)
                assert src.stats.polls == 0  # no polling while a WebSocket is up
                # every WebSocket down, HTTP up
                for p in (a, b):
                    p.refuse = True
                    await p.kick()
                await until(lambda: src.stats.polling_active, "polling takes over")
                await until(lambda: sink.connects() == 3, "on_connect after the takeover")
                for _ in range(3):
                    tip = await mine(anvil)
                    await until(lambda t=tip: t in sink.numbers(), f"head {tip} by polling")
                assert src.connected.is_set()
                assert src.stats.takeovers == 1
                assert http.calls.count("eth_getBlockByNumber") >= 3
                # one WebSocket comes back: polling stops, on_connect runs for it
                b.refuse = False
                await until(lambda: src.stats.connects == 3, "re-subscribed")
                await until(lambda: not src.stats.polling_active, "polling stops")
                assert sink.connects() == 4
                await asyncio.sleep(0.15)  # a poll in flight at the switch may still finish
                polls = src.stats.polls
                tip = await mine(anvil)
                await until(lambda: tip in sink.numbers(), "head from the returned ws")
                await asyncio.sleep(0.4)
                assert src.stats.polls == polls
                assert src.stats.sources[f"{b.url} #1"]["heads"] >= 1
            await rpc.close()
        assert sink.overlapped == 0

    asyncio.run(main())


def test_polling_only_and_a_failing_endpoint(anvil: Anvil) -> None:
    sink = Sink()

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as bad:
            bad.fail_status = 502
            rpcs = [RpcClient(bad.url), RpcClient(anvil.rpc_url)]
            src = HeadSources([], rpcs, sink.on_header, on_connect=sink.on_connect, poll_interval=0.1)
            assert src.label == f"polling {bad.url} +1"
            async with running(src):
                await until(src.connected.is_set, "first poll answered")
                tip = await mine(anvil)
                await until(lambda: tip in sink.numbers(), "polled head")
                await asyncio.sleep(0.3)
                stats = src.stats
                assert stats.polling_active and stats.takeovers == 1
                assert stats.sources[f"poll {bad.url} #0"]["errors"] >= 2
                assert stats.sources[f"poll {anvil.rpc_url} #1"]["answers"] >= 2
                assert sink.connects() == 1
                # the same latest block polled again and again is handed over once
                assert sink.numbers().count(tip) == 1 and stats.duplicates >= 1
            for r in rpcs:
                await r.close()

    asyncio.run(main())


def _header(number: int, tag: int) -> dict[str, Any]:
    return {"number": hex(number), "hash": "0x" + (bytes([tag]) * 32).hex(),
            "parentHash": "0x" + (bytes([tag + 1]) * 32).hex(), "timestamp": hex(10**9 + number),
            "gasLimit": "0x1c9c380", "gasUsed": "0x0", "baseFeePerGas": "0x1"}


def test_duplicate_filter_lets_a_flip_flop_through(anvil: Anvil) -> None:
    sink = Sink()

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as a, WsProxy(anvil.ws_url) as b:
            src = HeadSources([a.url, b.url], [], sink.on_header, **FAST)  # type: ignore[arg-type]
            async with running(src):
                await until(lambda: src.stats.connects == 2 and len(a.sub_ids) == 1
                            and len(b.sub_ids) == 1, "both subscribed")
                await src.drop()  # every WebSocket reconnects
                await until(lambda: src.stats.connects == 4 and len(a.sub_ids) == 2
                            and len(b.sub_ids) == 2, "both re-subscribed")
                assert src.stats.disconnects == 2 and src.stats.polls == 0
                x, y = _header(10**6, 0xA0), _header(10**6, 0xB0)
                await a.inject(a.notification(x))
                await b.inject(b.notification(x))  # the same head from the other source
                await a.inject(a.notification(y))  # a reorg to y at the same height
                await b.inject(b.notification(y))
                await b.inject(b.notification(x))  # and back to x: must be delivered again
                await until(lambda: src.stats.duplicates == 2 and len(sink.heads) == 3, "all five")
                await asyncio.sleep(0.1)
        assert [h[:1] for _, h in sink.heads] == [b"\xa0", b"\xb0", b"\xa0"]

    asyncio.run(main())


def test_bad_arguments() -> None:
    async def nothing(h: Header, t: int) -> None:
        return None

    with pytest.raises(ValueError, match="no head source"):
        HeadSources([], [], nothing)
    with pytest.raises(ValueError, match="poll_interval must be positive"):
        HeadSources(["ws://127.0.0.1:1"], [], nothing, poll_interval=0)
