"""JSON-RPC batches against real anvil: order, per-item errors, malformed batch answers, HTTP error
pages (issue 12 #7), the start-up probe, and Broadcaster.send_batch with one endpoint down."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from anvil_support import DEV_ADDR_0, DEV_KEY_0, Anvil, free_port, start_anvil
from rpc_proxy import RpcProxy

from enclave.keys import KeyOrigin, SigningKey
from router.broadcast import Accepted, Broadcaster
from router.errors import (
    ConfigError,
    InvalidTransaction,
    MalformedResponse,
    NonceTooLow,
    RouterError,
    TransportError,
)
from router.fees import Fees
from router.intent import Intent
from router.rpc import RpcClient, probe
from router.signing import InProcessSigner, build_tx

pytestmark = pytest.mark.timeout(120)

SIGNER = InProcessSigner(SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV))
FEES = Fees(50 * 10**9, 10**9)


def signed(nonce: int, value: int = 1, to: int = 0x42) -> tuple[bytes, bytes, int]:
    tx = SIGNER.sign_tx(build_tx(31337, nonce, Intent(to=bytes([to]) * 20, value=value), FEES))
    return tx.raw, tx.hash, nonce


def chain_nonces(node: Anvil) -> list[tuple[int, int]]:
    """(block number, nonce) of every transaction on chain, in chain order."""
    out = []
    for b in range(1, int(str(node.rpc("eth_blockNumber")), 16) + 1):
        block: Any = node.rpc("eth_getBlockByNumber", hex(b), True)
        out += [(b, int(t["nonce"], 16)) for t in block["transactions"]]
    return out


async def until(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def test_anvil_executes_a_batch_in_order(anvil: Anvil) -> None:
    """The premise of send_batch: ten nonces in one batch with automine all land, in order."""
    items = [signed(n, value=n + 1) for n in range(10)]

    async def main() -> list[Any]:
        rpc = RpcClient(anvil.rpc_url)
        try:
            return await rpc.batch(
                [("eth_sendRawTransaction", ["0x" + raw.hex()]) for raw, _, _ in items]
            )
        finally:
            await rpc.close()

    answers = asyncio.run(main())
    assert answers == ["0x" + h.hex() for _, h, _ in items]
    for _ in range(200):
        if len(chain_nonces(anvil)) == 10:
            break
        asyncio.run(asyncio.sleep(0.02))
    landed = chain_nonces(anvil)
    assert [n for _, n in landed] == list(range(10))
    assert [b for b, _ in landed] == sorted(b for b, _ in landed)


def test_batch_results_in_order_with_a_classified_item_error(anvil: Anvil) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as proxy:
            # the node's answer reversed: items must still be matched by id
            proxy.batch_tamper = lambda req, ans: list(reversed(ans))
            rpc = RpcClient(proxy.url)
            try:
                out = await rpc.batch([
                    ("eth_chainId", []),
                    ("eth_sendRawTransaction", ["0x02dead"]),
                    ("eth_getTransactionCount", [DEV_ADDR_0, "latest"]),
                ])
            finally:
                await rpc.close()
        assert proxy.calls == ["batch:eth_chainId,eth_sendRawTransaction,eth_getTransactionCount"]
        assert out[0] == hex(31337)
        assert isinstance(out[1], InvalidTransaction) and out[1].endpoint == rpc.label
        assert out[2] == "0x0"
        assert await RpcClient(anvil.rpc_url).batch([]) == []

    asyncio.run(main())


def _drop_first_id(req: list[Any], ans: list[Any]) -> object:
    return ans[1:]


def _duplicate_id(req: list[Any], ans: list[Any]) -> object:
    return [ans[0], {**ans[1], "id": ans[0]["id"]}]


def _foreign_id(req: list[Any], ans: list[Any]) -> object:
    return [ans[0], {**ans[1], "id": 999_999}]


def _not_a_list(req: list[Any], ans: list[Any]) -> object:
    return {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch too large"}}


def _bad_item(req: list[Any], ans: list[Any]) -> object:
    return [ans[0], {"jsonrpc": "1.0", "id": ans[1]["id"], "result": "0x1"}]


@pytest.mark.parametrize(
    ("tamper", "error", "match"),
    [
        (_not_a_list, MalformedResponse, "expected a JSON list .*got dict: batch too large"),
        (_drop_first_id, MalformedResponse, r"no answer for id \d+ \(1 of 2 missing\)"),
        (_duplicate_id, MalformedResponse, r"id \d+ answered twice"),
        (_foreign_id, MalformedResponse, "id 999999, which no request carried"),
        (_bad_item, MalformedResponse, "jsonrpc member is '1.0'"),
        (lambda req, ans: b"{not json", MalformedResponse, r"not JSON \(HTTP 200"),
    ],
    ids=["not-a-list", "missing-id", "duplicate-id", "foreign-id", "bad-item", "not-json"],
)
def test_malformed_batch_answers(
    anvil: Anvil, tamper: Callable[[list[Any], Any], object], error: type[RouterError], match: str
) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as proxy:
            proxy.batch_tamper = tamper
            rpc = RpcClient(proxy.url)
            try:
                with pytest.raises(error, match=match) as info:
                    await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
                assert not isinstance(info.value, TransportError)
            finally:
                await rpc.close()

    asyncio.run(main())


def test_http_502_is_a_transport_error_for_calls_and_batches(anvil: Anvil) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as proxy:
            proxy.fail_status = 502
            rpc = RpcClient(proxy.url)
            try:
                with pytest.raises(TransportError, match=r"eth_chainId to .*: HTTP 502 \(.*not JSON"):
                    await rpc.chain_id()
                with pytest.raises(TransportError, match=r"batch of 2 .*HTTP 502"):
                    await rpc.batch([("eth_chainId", []), ("eth_blockNumber", [])])
                proxy.fail_status = None  # the gateway's node is back
                assert await rpc.chain_id() == 31337
            finally:
                await rpc.close()

    asyncio.run(main())


def test_probe_keeps_the_healthy_endpoint(anvil: Anvil) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as bad, RpcProxy(
            anvil.rpc_url, hang=frozenset({"eth_chainId"})
        ) as hung:
            bad.fail_status = 502
            rpcs = [RpcClient(bad.url), RpcClient(anvil.rpc_url),
                    RpcClient(f"http://127.0.0.1:{free_port()}"), RpcClient(hung.url)]
            try:
                healthy, failed = await probe(rpcs, 31337, timeout=1.0)
            finally:
                for r in rpcs:
                    await r.close()
        assert healthy == [rpcs[1]]
        assert [r for r, _ in failed] == [rpcs[0], rpcs[2], rpcs[3]]
        assert all(isinstance(e, TransportError) for _, e in failed)
        assert "HTTP 502" in str(failed[0][1]) and "within 1 s" in str(failed[2][1])

    asyncio.run(main())


def test_probe_refuses_an_endpoint_on_another_chain(anvil: Anvil) -> None:
    other = start_anvil(chain_id=5)
    try:
        async def main() -> None:
            rpcs = [RpcClient(anvil.rpc_url), RpcClient(other.rpc_url)]
            try:
                with pytest.raises(ConfigError, match=r"serves chain id 5; configured chain id 31337"):
                    await probe(rpcs, 31337)
            finally:
                for r in rpcs:
                    await r.close()

        asyncio.run(main())
    finally:
        other.stop()


def test_send_batch_with_one_endpoint_down(anvil: Anvil) -> None:
    items = [signed(n, value=1000 + n) for n in range(10)]

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url) as down:
            down.fail_status = 502
            b = Broadcaster([RpcClient(down.url), RpcClient(anvil.rpc_url)])
            try:
                out = await b.send_batch(items)
                assert all(isinstance(r, Accepted) for r in out), out
                assert [r.tx_hash for r in out if isinstance(r, Accepted)] == [h for _, h, _ in items]
                assert b.counters["accepted"] == 10
                # the slower endpoint still gets the batch, in the background
                await until(lambda: b.counters[f"{down.url} transport"] == 10, "502 counted")
                # the same bytes again: "already known" (or, once mined, nonce too low) per item
                again = await b.send_batch(items[-1:])
                assert isinstance(again[0], (Accepted, NonceTooLow))
            finally:
                await b.close()
                for r in b.rpcs:
                    await r.close()

    asyncio.run(main())
    for _ in range(200):
        if len(chain_nonces(anvil)) == 10:
            break
        asyncio.run(asyncio.sleep(0.02))
    assert [n for _, n in chain_nonces(anvil)] == list(range(10))


def test_send_batch_reports_a_refusal_for_that_item_only() -> None:
    node = start_anvil(args=["--no-mining"])
    try:
        first = signed(0, value=1)

        async def main() -> None:
            b = Broadcaster([RpcClient(node.rpc_url), RpcClient(f"http://127.0.0.1:{free_port()}")])
            try:
                assert isinstance(await b.send(first[0], first[1], nonce=0), Accepted)
                node.rpc("evm_mine")
                # item 0 is another transaction at the mined nonce 0: nonce too low, which beats
                # the dead endpoint's transport error; items 1.. are fine
                items = [signed(0, value=2)] + [signed(n) for n in range(1, 4)]
                out = await b.send_batch(items)
                assert isinstance(out[0], NonceTooLow), out[0]
                assert all(isinstance(r, Accepted) for r in out[1:]), out
                assert b.counters["all_refused"] == 1
                assert b.counters["nonce-too-low"] == 1
                pooled: Any = node.rpc("txpool_content")
                mine = {a.lower(): txs for a, txs in pooled["pending"].items()}[DEV_ADDR_0.lower()]
                assert sorted(int(n) for n in mine) == [1, 2, 3]
            finally:
                await b.close()
                for r in b.rpcs:
                    await r.close()

        asyncio.run(main())
    finally:
        node.stop()


def test_send_batch_refusal_grace_with_a_hung_endpoint(anvil: Anvil) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, hang=frozenset({"eth_sendRawTransaction"})) as hung:
            b = Broadcaster([RpcClient(hung.url), RpcClient(anvil.rpc_url)], refusal_grace=0.2)
            try:
                loop = asyncio.get_running_loop()
                t0 = loop.time()
                out = await b.send_batch([(b"\x02\xde\xad", b"\x11" * 32, 0), signed(0)])
                assert loop.time() - t0 < 5  # not the hung endpoint's 10 s timeout
                assert isinstance(out[0], InvalidTransaction)
                assert isinstance(out[1], Accepted)
                assert b.counters["refusal_grace_expired"] == 1
            finally:
                await b.close()
                for r in b.rpcs:
                    await r.close()

    asyncio.run(main())
