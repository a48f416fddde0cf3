"""Reorg rebroadcast: N signed replacements in hand -> all accepted by a local anvil (issue 13).

The time from having the N replacement raw transactions (in nonce order) to the last acceptance
by the node, through the router's own broadcaster: `Broadcaster.send_batch` (one JSON-RPC batch of
eth_sendRawTransaction per endpoint) against the baseline `Broadcaster.send` one transaction after
another (what the router did before), both in the same process, interleaved in blocks.

Anvil runs with --no-mining so that every sample meets the same pool; after each sample a block is
mined outside the timed region (the pool is emptied, the next sample uses the next nonces) and the
account nonce is checked, so every sample's transactions really were accepted and executable. The
replacements are transfers from anvil's prefunded account 0 at fresh nonces, signed in-process
(the signature is not timed: the reorg reaction benchmark covers it). Targets (issue 13):
N = 1 / 10 / 80 within 2 / 5 / 20 ms.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _harness import Record, compare, tail_extra

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from anvil_support import DEV_ADDR_0, DEV_KEY_0, Anvil, start_anvil  # noqa: E402

SIZES = ((1, 200, 2.0), (10, 100, 5.0), (80, 30, 20.0))  # (N, samples of each, target ms)
BLOCKS = 5

Items = list[tuple[bytes, bytes, int]]


class Chain:
    """Signs replacements at the account's next nonces and clears the pool between samples."""

    def __init__(self, node: Anvil) -> None:
        from enclave.keys import KeyOrigin, SigningKey
        from router.fees import Fees
        from router.signing import InProcessSigner

        self.node = node
        self.signer = InProcessSigner(SigningKey(DEV_KEY_0, origin=KeyOrigin.DEV))
        self.fees = Fees(100 * 10**9, 2 * 10**9)
        self.nonce = 0

    def replacements(self, n: int) -> Items:
        from router.intent import Intent
        from router.signing import build_tx

        out = []
        for k in range(self.nonce, self.nonce + n):
            intent = Intent(to=bytes([k % 250 + 1]) * 20, value=10**12 + k)
            tx = self.signer.sign_tx(build_tx(31337, k, intent, self.fees))
            out.append((tx.raw, tx.hash, k))
        self.nonce += n
        return out

    def settle(self) -> None:
        self.node.rpc("evm_mine")
        mined = int(str(self.node.rpc("eth_getTransactionCount", DEV_ADDR_0, "latest")), 16)
        if mined != self.nonce:
            raise AssertionError(f"expected nonce {self.nonce} on chain after the sample, got {mined}")


async def _sample(chain: Chain, n: int, send: Callable[[Items], Awaitable[None]]) -> float:
    items = chain.replacements(n)
    t0 = time.perf_counter_ns()
    await send(items)
    t1 = time.perf_counter_ns()
    chain.settle()
    return (t1 - t0) / 1e6


async def _measure(node: Anvil) -> list[Record]:
    from router.broadcast import Accepted, Broadcaster
    from router.rpc import RpcClient

    chain = Chain(node)
    rpc = RpcClient(node.rpc_url)
    broadcaster = Broadcaster([rpc])

    async def batch(items: Items) -> None:
        out = await broadcaster.send_batch(items)
        if not all(isinstance(r, Accepted) for r in out):
            raise AssertionError(f"batch refused: {out}")

    async def one_by_one(items: Items) -> None:
        for raw, tx_hash, nonce in items:
            await broadcaster.send(raw, tx_hash, nonce=nonce)

    records: list[Record] = []
    try:
        for _ in range(3):  # warm the connection, the JIT-less paths and anvil's pool
            await _sample(chain, 10, batch)
            await _sample(chain, 10, one_by_one)
        for n, count, target in SIZES:
            samples: list[float] = []
            baseline: list[float] = []
            per = max(1, count // BLOCKS)
            for _ in range(BLOCKS):
                baseline += [await _sample(chain, n, one_by_one) for _ in range(per)]
                samples += [await _sample(chain, n, batch) for _ in range(per)]
            records.append(compare(
                f"reorg head -> all replacements accepted by local anvil, N={n} "
                "(raws in hand; one JSON-RPC batch)",
                samples, f"one-by-one Broadcaster.send, N={n}", baseline, unit="ms",
                extra=tail_extra(samples, baseline, target_ms=target),
            ))
    finally:
        await broadcaster.close()
        await rpc.close()
    return records


def run() -> list[Record]:
    node = start_anvil(args=["--no-mining"])
    try:
        return asyncio.run(_measure(node))
    finally:
        node.stop()
