"""Send a signed transaction to every configured endpoint at once; the first acceptance wins.

"already known" counts as acceptance (the node has exactly these bytes). When every endpoint
refuses, the most actionable classified error is raised (nonce too low beats underpriced beats a
transport failure), so the nonce manager can act on it. Outcomes are counted per endpoint and
logged as structured records carrying only the transaction hash, never the signed bytes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import (
    AlreadyKnown,
    FeeTooLow,
    InsufficientFunds,
    InvalidTransaction,
    MalformedResponse,
    NonceTooLow,
    ReplacementUnderpriced,
    RouterError,
    RpcError,
    TransportError,
)
from .rpc import RpcClient

log = logging.getLogger(__name__)

# Which refusal to report when all endpoints refuse: the first that occurred in this order.
_PRIORITY: tuple[type[RouterError], ...] = (
    NonceTooLow,
    ReplacementUnderpriced,
    FeeTooLow,
    InsufficientFunds,
    InvalidTransaction,
    RpcError,
    MalformedResponse,
    TransportError,
)


@dataclass(frozen=True)
class Accepted:
    endpoint: str
    tx_hash: bytes
    already_known: bool
    micros: float


class Broadcaster:
    def __init__(self, rpcs: Sequence[RpcClient], *, refusal_grace: float = 0.5) -> None:
        if not rpcs:
            raise ValueError("at least one RPC endpoint is needed to broadcast")
        self.rpcs = list(rpcs)
        self.refusal_grace = refusal_grace
        self.counters: Counter[str] = Counter()
        self._background: set[asyncio.Task[object]] = set()

    async def send(self, raw: bytes, tx_hash: bytes, *, nonce: int | None = None) -> Accepted:
        """Broadcast to all endpoints; return at the first acceptance.

        Raises:
            the highest-priority RouterError among the endpoints' refusals when none accepted.
        """
        start = time.perf_counter_ns()
        tasks = [asyncio.ensure_future(self._one(rpc, raw, tx_hash, nonce, start))
                 for rpc in self.rpcs]
        errors: list[RouterError] = []
        try:
            pending = set(tasks)
            while pending:
                # After a first refusal the others get `refusal_grace` seconds, not their full
                # timeout: a hung node must not hold up acting on a refusal.
                done, pending = await asyncio.wait(
                    pending,
                    timeout=self.refusal_grace if errors else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    self.counters["refusal_grace_expired"] += 1
                    break
                for fut in done:
                    exc = fut.exception()
                    if exc is None:
                        return fut.result()
                    if not isinstance(exc, RouterError):
                        raise exc
                    errors.append(exc)
        finally:
            # The slower endpoints still get the transaction (more paths into the network);
            # keep them running, tracked so they are not garbage-collected mid-flight.
            for t in tasks:
                if t.done():
                    if not t.cancelled():
                        t.exception()  # retrieved: counted and logged in _one
                else:
                    self._background.add(t)
                    t.add_done_callback(self._reap)
        self.counters["all_refused"] += 1
        for cls in _PRIORITY:
            for e in errors:
                if isinstance(e, cls):
                    raise e
        raise errors[0]

    def _reap(self, task: asyncio.Task[object]) -> None:
        self._background.discard(task)
        if not task.cancelled():
            task.exception()  # consumed: already counted and logged in _one

    async def _one(
        self, rpc: RpcClient, raw: bytes, tx_hash: bytes, nonce: int | None, start: int
    ) -> Accepted:
        outcome = "accepted"
        try:
            try:
                got = await rpc.send_raw_transaction(raw)
                known = False
            except AlreadyKnown:
                got, known, outcome = tx_hash, True, "already-known"
            if got != tx_hash:
                outcome = "wrong-hash"
                raise MalformedResponse(
                    f"eth_sendRawTransaction from {rpc.label}: returned hash {got.hex()[:16]}.., "
                    f"expected {tx_hash.hex()[:16]}.."
                )
            return Accepted(rpc.label, got, known, (time.perf_counter_ns() - start) / 1000)
        except RpcError as e:
            outcome = e.kind
            raise
        except MalformedResponse:
            outcome = "wrong-hash" if outcome == "wrong-hash" else "malformed"
            raise
        except TransportError:
            outcome = "transport"
            raise
        finally:
            self.counters[f"{rpc.label} {outcome}"] += 1
            self.counters[outcome] += 1
            log.info(
                "broadcast",
                extra={
                    "endpoint": rpc.label,
                    "tx": "0x" + tx_hash.hex(),
                    "nonce": nonce,
                    "outcome": outcome,
                    "us": round((time.perf_counter_ns() - start) / 1000, 1),
                },
            )

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
