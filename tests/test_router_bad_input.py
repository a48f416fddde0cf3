"""Bad input from the chain side: malformed JSON-RPC answers, impossible headers, lying nonces.

Every case: a clear, specific error (or a counted, logged rejection) and nothing lost — the
intents submitted around the bad input are all mined exactly once.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from anvil_support import DEV_ADDR_0
from router_support import (
    SENDER,
    balance,
    config_for,
    dev_signer,
    mined_nonces,
    running_router,
    transfers,
    wait_for,
)
from rpc_proxy import RpcProxy, WsProxy

from router.errors import (
    AlreadyKnown,
    MalformedResponse,
    NonceSourceError,
    NonceTooLow,
    ReplacementUnderpriced,
    RpcError,
)
from router.nonces import TxState
from router.rpc import RpcClient, classify

pytestmark = pytest.mark.timeout(120)


def _bad(req: dict[str, Any]) -> dict[str, bytes | dict[str, Any]]:
    rid = req["id"]
    return {
        "not-json": b"<html>502 Bad Gateway</html>",
        "json-array": b"[1, 2]",
        "wrong-version": {"jsonrpc": "1.0", "id": rid, "result": "0x7a69"},
        "wrong-id": {"jsonrpc": "2.0", "id": rid + 1000, "result": "0x7a69"},
        "result-and-error": {"jsonrpc": "2.0", "id": rid, "result": "0x1",
                             "error": {"code": 1, "message": "x"}},
        "error-without-message": {"jsonrpc": "2.0", "id": rid, "error": {"code": -32000}},
        "quantity-not-hex": {"jsonrpc": "2.0", "id": rid, "result": "0xZZ"},
        "quantity-as-number": {"jsonrpc": "2.0", "id": rid, "result": 31337},
        "quantity-too-long": {"jsonrpc": "2.0", "id": rid, "result": "0x" + "f" * 80},
    }


BAD_ANSWERS = {
    "not-json": "not JSON",
    "json-array": "expected a JSON object",
    "wrong-version": "jsonrpc member",
    "wrong-id": "answer id",
    "result-and-error": "exactly one of result/error",
    "error-without-message": "error member",
    "quantity-not-hex": "0x-hex quantity",
    "quantity-as-number": "0x-hex quantity",
    "quantity-too-long": "0x-hex quantity",
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS), ids=sorted(BAD_ANSWERS))
def test_malformed_answer_is_a_clear_error(anvil, case: str) -> None:
    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, lambda m, req, ans: _bad(req)[case]) as proxy:
            rpc = RpcClient(proxy.url)
            try:
                with pytest.raises(MalformedResponse, match=BAD_ANSWERS[case]) as info:
                    await rpc.chain_id()
                assert "eth_chainId" in str(info.value)
                assert "127.0.0.1" in info.value.diagnostics()
            finally:
                await rpc.close()

    asyncio.run(main())


def test_node_refusals_are_classified(anvil) -> None:
    """anvil's own refusal messages map onto the kinds the nonce manager acts on."""
    from router.core import Router  # noqa: F401  (import check: core wires these kinds)

    signer = dev_signer()

    async def main() -> None:
        from router.fees import Fees
        from router.intent import Intent
        from router.signing import build_tx

        rpc = RpcClient(anvil.rpc_url)
        try:
            intent = Intent(to=b"\x11" * 20, value=1)
            a = signer.sign_tx(build_tx(anvil.chain_id, 0, intent, Fees(10**10, 10**9)))
            assert await rpc.send_raw_transaction(a.raw) == a.hash
            # automine answers before the block is sealed; "nonce too low" needs it mined
            await wait_for(lambda: anvil.rpc("eth_getTransactionReceipt", "0x" + a.hash.hex()),
                           what="receipt")
            with pytest.raises(NonceTooLow):  # automine: nonce 0 is already mined
                await rpc.send_raw_transaction(a.raw)
            anvil.rpc("evm_setAutomine", False)
            b = signer.sign_tx(build_tx(anvil.chain_id, 1, intent, Fees(10**10, 10**9)))
            await rpc.send_raw_transaction(b.raw)
            with pytest.raises(AlreadyKnown):
                await rpc.send_raw_transaction(b.raw)
            c = signer.sign_tx(build_tx(anvil.chain_id, 1, Intent(to=b"\x22" * 20), Fees(10**10, 10**9)))
            with pytest.raises(ReplacementUnderpriced):
                await rpc.send_raw_transaction(c.raw)
            with pytest.raises(RpcError, match="decode"):
                await rpc.send_raw_transaction(b"\xde\xad\xbe\xef")
        finally:
            await rpc.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("nonce too low: next nonce 5, tx nonce 3", "nonce-too-low"),
        ("already known", "already-known"),
        ("replacement transaction underpriced", "replacement-underpriced"),
        ("insufficient funds for gas * price + value", "insufficient-funds"),
        ("max fee per gas less than block base fee", "fee-too-low"),
        ("transaction underpriced", "fee-too-low"),
        ("execution reverted", "rpc-error"),
    ],
    ids=["nonce", "known", "replacement", "funds", "basefee", "underpriced", "other"],
)
def test_geth_style_messages_classified(message: str, kind: str) -> None:
    assert classify(message, -32000).kind == kind


def test_lying_broadcast_answer_loses_nothing(anvil) -> None:
    """One endpoint answers eth_sendRawTransaction with a wrong hash; the honest one wins, and
    with only the liar the transactions still land (seen in blocks)."""
    intents = transfers(4, tag="liehash")

    def tamper(method: str, req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any] | None:
        if method == "eth_sendRawTransaction":
            return {"jsonrpc": "2.0", "id": req["id"], "result": "0x" + "ab" * 32}
        return None

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, tamper) as liar:
            async with running_router(anvil, rpc_urls=(liar.url, anvil.rpc_url)) as router:
                handles = [await router.submit(i) for i in intents[:2]]
                for h in handles:
                    await h.receipt(timeout=20)
                await wait_for(lambda: router.broadcaster.counters["wrong-hash"] >= 2,
                               what="liar answers counted")
            async with running_router(anvil, rpc_urls=(liar.url,)) as router:
                handles = [await router.submit(i) for i in intents[2:]]
                assert router.broadcaster.counters["wrong-hash"] == 2
                assert router.counters["send_deferred"] == 2
                for h in handles:
                    await h.receipt(timeout=20)

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(4))
    for i in intents:
        assert balance(anvil, i.to) == i.value


def _header_like(anvil, **changes: Any) -> dict[str, Any]:
    block = anvil.rpc("eth_getBlockByNumber", "latest", False)
    assert isinstance(block, dict)
    header = {k: v for k, v in block.items() if k != "transactions"}
    header.update(changes)
    return header


def test_impossible_headers_are_rejected_and_nothing_lost(anvil, caplog) -> None:
    intents = transfers(4, tag="badhead")

    async def main() -> None:
        async with WsProxy(anvil.ws_url) as ws:
            async with running_router(anvil, ws_url=ws.url) as router:
                handles = [await router.submit(i) for i in intents[:2]]
                for h in handles:
                    await h.receipt(timeout=20)
                tip = router.view.tip
                tip_hex = "0x" + tip.hash.hex()
                fresh = "0x" + "77" * 32
                bad: list[Any] = [
                    "this is not json",
                    json.dumps([1, 2, 3]),
                    {"jsonrpc": "2.0", "method": "eth_subscription",
                     "params": {"subscription": "0xnot-ours", "result": {}}},
                    ws.notification(_header_like(anvil, hash=tip_hex, parentHash=tip_hex)),
                    ws.notification(_header_like(anvil, hash=fresh, parentHash=tip_hex,
                                                 number=hex(tip.number + 1), gasUsed="0x10",
                                                 gasLimit="0x1")),
                    ws.notification(_header_like(anvil, hash=fresh, number="0xZZ")),
                    ws.notification(_header_like(anvil, hash=fresh, parentHash="0x1234")),
                    # claims our tip as parent but skips five numbers
                    ws.notification(_header_like(anvil, hash=fresh, parentHash=tip_hex,
                                                 number=hex(tip.number + 6))),
                    # goes back in time relative to its parent
                    ws.notification(_header_like(anvil, hash=fresh, parentHash=tip_hex,
                                                 number=hex(tip.number + 1), timestamp="0x1")),
                    ws.notification(None),
                ]
                for msg in bad:
                    await ws.inject(msg)
                await wait_for(
                    lambda: router.heads.stats.malformed + router.counters["heads_rejected"]
                    >= len(bad), what="all bad messages rejected")
                assert router.heads.stats.malformed == 8
                assert router.counters["heads_rejected"] == 2
                text = caplog.text
                for expected in ("parentHash equals the block's own hash", "gasUsed 16 is above",
                                 "newHeads.number: expected a 0x-hex quantity",
                                 "newHeads.parentHash: expected 0x-hex of 32 bytes",
                                 "unknown subscription", "(expected #", "is before its parent"):
                    assert expected in text, expected
                assert router.view.tip == tip
                assert router.counters["reorgs"] == 0
                handles += [await router.submit(i) for i in intents[2:]]
                for h in handles:
                    await h.receipt(timeout=20)
                assert router.heads.stats.connects == 1  # the connection survived

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(4))
    for i in intents:
        assert balance(anvil, i.to) == i.value


# --- nonces ---------------------------------------------------------------------------------


def _count_tamper(fn):  # fn(tag, real) -> str answer
    def tamper(method: str, req: dict[str, Any], ans: dict[str, Any]) -> dict[str, Any] | None:
        if method == "eth_getTransactionCount" and "result" in ans:
            return {"jsonrpc": "2.0", "id": req["id"],
                    "result": fn(req["params"][1], int(ans["result"], 16))}
        return None
    return tamper


@pytest.mark.parametrize(
    ("lie", "error", "match"),
    [
        (lambda tag, n: hex(n + 2) if tag == "latest" else hex(n), NonceSourceError,
         "below latest nonce"),
        (lambda tag, n: hex(n + 5000) if tag == "pending" else hex(n), NonceSourceError,
         "more than max_pending"),
        (lambda tag, n: "0x-1", MalformedResponse, "eth_getTransactionCount"),
        (lambda tag, n: hex(n + 3), NonceSourceError, "disagree"),
    ],
    ids=["pending-below-latest", "absurd-pending", "malformed-count", "endpoints-disagree"],
)
def test_nonce_lies_refused_at_start(anvil, lie, error, match) -> None:
    from router.core import Router

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, _count_tamper(lie)) as liar:
            urls = (liar.url, anvil.rpc_url) if match == "disagree" else (liar.url,)
            router = Router(config_for(anvil, rpc_urls=urls), dev_signer())
            try:
                with pytest.raises(error, match=match):
                    await router.start()
                with pytest.raises(NonceSourceError, match="not started"):
                    await router.submit(transfers(1)[0])
            finally:
                await router.close()

    asyncio.run(main())
    assert mined_nonces(anvil) == []


def test_stale_low_nonce_source_moves_intents_without_gaps(anvil) -> None:
    """The endpoint reports nonce 0 although 3 transactions of ours were sent elsewhere: the node
    refuses, the router moves the intents above the real nonce; all land, no gap, no duplicate."""
    for _ in range(3):
        anvil.rpc("eth_sendTransaction", {"from": DEV_ADDR_0, "to": "0x" + "33" * 20, "value": "0x1"})
    intents = transfers(3, tag="stale")

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, _count_tamper(lambda tag, n: "0x0")) as liar:
            async with running_router(anvil, rpc_urls=(liar.url,)) as router:
                handles = [await router.submit(i) for i in intents]
                for h in handles:
                    await h.receipt(timeout=20)
                assert sorted(h.nonce for h in handles) == [3, 4, 5]
                assert router.counters["nonce_moved"] == 3
                assert router.counters["nonce_source_contradiction"] >= 1

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(6))
    for i in intents:
        assert balance(anvil, i.to) == i.value


def test_over_reported_pending_nonce_gap_is_filled(anvil) -> None:
    """The endpoint over-reports the pending nonce by 2: our transactions would wait forever
    behind a gap; the router sees the chain nonce below its lowest pending one and fills the hole
    with zero-value transfers to itself."""
    intents = transfers(2, tag="gap")
    lie = _count_tamper(lambda tag, n: hex(n + 2) if tag == "pending" else hex(n))

    async def main() -> None:
        async with RpcProxy(anvil.rpc_url, lie) as liar:
            async with running_router(anvil, rpc_urls=(liar.url,)) as router:
                handles = [await router.submit(i) for i in intents]
                assert [h.nonce for h in handles] == [2, 3]
                for h in handles:
                    await h.receipt(timeout=20)
                assert router.counters["gap_filled"] == 2
                assert all(h.state is TxState.LANDED for h in handles)

    asyncio.run(main())
    assert sorted(mined_nonces(anvil)) == list(range(4))
    for i in intents:
        assert balance(anvil, i.to) == i.value
    assert SENDER
