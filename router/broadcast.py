"""Send a signed transaction to every configured endpoint at once; the first acceptance wins.

"already known" counts as acceptance (the node has exactly these bytes). When every endpoint
refuses, the most actionable classified error is raised (nonce too low beats underpriced beats a
transport failure), so the nonce manager can act on it. Outcomes are counted per endpoint and
logged as structured records carrying only the transaction hash, never the signed bytes.

`send_batch` sends several transactions (a reorg's replacements, first broadcasts in nonce order)
as one JSON-RPC batch per endpoint, in nonce order, and decides each item by the same rules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from . import _hex
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


def _most_actionable(errors: Sequence[RouterError]) -> RouterError:
    for cls in _PRIORITY:
        for e in errors:
            if isinstance(e, cls):
                return e
    return errors[0]


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
        raise _most_actionable(errors)

    async def send_batch(
        self, items: Sequence[tuple[bytes, bytes, int]]
    ) -> list[Accepted | RouterError]:
        """Broadcast `items` (raw, tx_hash, nonce), in nonce order, as one JSON-RPC batch of
        `eth_sendRawTransaction` to every endpoint at once.

        Per item, as `send` decides one transaction: the first acceptance wins ("already known"
        counts); when every endpoint refused it (or the others let `refusal_grace` pass after the
        first refusal), the most actionable refusal. An endpoint's transport failure or malformed
        batch answer is that endpoint's refusal of every item. Nothing is raised for an endpoint's
        answer: the outcome of item k is element k of the result.
        """
        if not items:
            return []
        start = time.perf_counter_ns()
        tasks = [asyncio.ensure_future(self._one_batch(rpc, items, start)) for rpc in self.rpcs]
        accepted: list[Accepted | None] = [None] * len(items)
        errors: list[list[RouterError]] = [[] for _ in items]
        open_items = len(items)
        try:
            pending = set(tasks)
            while pending and open_items:
                done, pending = await asyncio.wait(
                    pending,
                    timeout=self.refusal_grace if any(errors) else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:
                    self.counters["refusal_grace_expired"] += 1
                    break
                for fut in done:
                    for k, outcome in enumerate(fut.result()):
                        if accepted[k] is not None:
                            continue
                        if isinstance(outcome, Accepted):
                            accepted[k] = outcome
                            open_items -= 1
                        else:
                            errors[k].append(outcome)
        finally:
            for t in tasks:
                if t.done():
                    if not t.cancelled():
                        t.exception()
                else:
                    self._background.add(t)
                    t.add_done_callback(self._reap)
        out: list[Accepted | RouterError] = []
        for acc, errs in zip(accepted, errors, strict=True):
            if acc is not None:
                out.append(acc)
            else:
                self.counters["all_refused"] += 1
                out.append(_most_actionable(errs))
        return out

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

    async def _one_batch(
        self, rpc: RpcClient, items: Sequence[tuple[bytes, bytes, int]], start: int
    ) -> list[Accepted | RouterError]:
        """One endpoint's verdict on every item; never raises a RouterError."""
        calls = [("eth_sendRawTransaction", [_hex.to_hex(raw)]) for raw, _, _ in items]
        try:
            answers: list[object] = await rpc.batch(calls)
        except RouterError as e:
            answers = [e] * len(items)
        micros = (time.perf_counter_ns() - start) / 1000
        out: list[Accepted | RouterError] = []
        for (_, tx_hash, nonce), answer in zip(items, answers, strict=True):
            result, outcome = self._judge(rpc, tx_hash, answer, micros)
            self._count(rpc, tx_hash, nonce, outcome, micros)
            out.append(result)
        return out

    @staticmethod
    def _judge(rpc: RpcClient, tx_hash: bytes, answer: object, micros: float
               ) -> tuple[Accepted | RouterError, str]:
        """(verdict, outcome label) for one endpoint's answer to one item, as `_one` decides."""
        if isinstance(answer, AlreadyKnown):
            return Accepted(rpc.label, tx_hash, True, micros), "already-known"
        if isinstance(answer, RpcError):
            return answer, answer.kind
        if isinstance(answer, MalformedResponse):
            return answer, "malformed"
        if isinstance(answer, RouterError):
            return answer, "transport"
        where = f"eth_sendRawTransaction from {rpc.label}"
        try:
            got = _hex.fixed_bytes(answer, where, 32)
        except RouterError as e:
            return e, "malformed"
        if got != tx_hash:
            return MalformedResponse(f"{where}: returned hash {got.hex()[:16]}.., expected "
                                     f"{tx_hash.hex()[:16]}.."), "wrong-hash"
        return Accepted(rpc.label, got, False, micros), "accepted"

    def _count(self, rpc: RpcClient, tx_hash: bytes, nonce: int, outcome: str,
               micros: float) -> None:
        self.counters[f"{rpc.label} {outcome}"] += 1
        self.counters[outcome] += 1
        log.info("broadcast", extra={"endpoint": rpc.label, "tx": "0x" + tx_hash.hex(),
                                     "nonce": nonce, "outcome": outcome, "us": round(micros, 1),
                                     "batch": True})

    async def close(self) -> None:
        for t in list(self._background):
            t.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
