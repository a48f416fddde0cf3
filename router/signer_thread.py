"""Signer calls off the event loop: one dedicated (optionally pinned) thread, and a circuit breaker.

The router's event loop must keep following heads, answering its API and re-broadcasting while the
signer is slow or gone. Every signer call therefore runs on one thread of its own (the signer client
serves one request per connection anyway, and a single thread keeps its busy-poll hot on one CPU);
the loop awaits a future. When a call fails with a transport error the breaker opens: for
`cooldown` seconds further calls fail at once with `SignerUnavailable` instead of queueing behind a
reconnect, so the reorg path can fall back to re-sending old bytes immediately. The first call after
the cooldown goes through and closes the breaker if it succeeds.

Each call's round trip on the signer thread (the blocking call itself, not the queueing) is timed
with `perf_counter_ns` into a per-operation `LatencyHistogram` (`round_trips`), for the metrics
exporter; two clock reads and a bisect, well under a microsecond.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from enclave.tx import UnsignedTx
from enclave.wire import Stats

from .errors import MalformedInput, RouterError, SignerUnavailable, TransportError
from .metrics.latency import LatencyHistogram
from .signing import SignedLike, TxSigner

log = logging.getLogger(__name__)
T = TypeVar("T")

_STOP = object()


class AsyncSigner:
    """Awaitable front of a blocking `TxSigner`; all calls run on one dedicated thread."""

    def __init__(self, signer: TxSigner, *, cpu: int | None = None, cooldown: float = 0.5) -> None:
        self.signer = signer
        self.cooldown = cooldown
        self._cpu = cpu
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._down_until = 0.0
        self._down_reason = ""
        self.calls = 0
        self.failed_fast = 0
        #: The last exchange's transport outcome (a signing call or a STATS poll): True when it
        #: answered (a refusal is an answer), False when it failed, None before the first.
        self.up: bool | None = None
        #: Round trips on the signer thread by operation ("sign_tx", "sign_tx_batch", "stats").
        self.round_trips: dict[str, LatencyHistogram] = {
            op: LatencyHistogram() for op in ("sign_tx", "sign_tx_batch", "stats")}
        self._thread = threading.Thread(target=self._run, name="router-signer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"AsyncSigner({self.signer!r})"

    @property
    def available(self) -> bool:
        """False while the breaker is open (a transport failure within the last `cooldown` s)."""
        return time.monotonic() >= self._down_until

    @property
    def down_reason(self) -> str:
        """Why the last exchange failed ("" while the signer answers)."""
        return self._down_reason if self.up is False or not self.available else ""

    async def sign_tx(self, tx: UnsignedTx) -> SignedLike:
        """Sign on the signer thread. Raises SignerError, TransportError (SignerUnavailable when
        the breaker is open)."""
        return await self._submit(self.signer.sign_tx, tx, op="sign_tx")

    async def sign_tx_batch(self, txs: Sequence[UnsignedTx]) -> list[SignedLike | RouterError]:
        """Sign several transactions in one round trip when the signer supports it; one result
        per transaction, in order (a refusal of one does not refuse the others).

        Raises:
            TransportError: the signer could not be reached (for the whole batch).
        """
        batch = getattr(self.signer, "sign_tx_batch", None)
        if batch is not None:
            out: list[SignedLike | RouterError] = await self._submit(
                batch, list(txs), op="sign_tx_batch")
            return out
        return await self._submit(self._one_by_one, list(txs), op="sign_tx_batch")

    @property
    def has_stats(self) -> bool:
        """Whether the signer answers STATS (the enclave's client does; an in-process key not)."""
        return callable(getattr(self.signer, "stats", None))

    async def stats(self) -> Stats:
        """The signer's counters (its STATS op), fetched on the signer thread.

        Not refused while the breaker is open and not counted in `calls`: the metrics exporter
        polls this to see when a signer that went away answers again (a success closes the
        breaker, a transport failure opens it, as for a signing call).

        Raises:
            MalformedInput: the signer has no STATS operation (`has_stats` is False).
            TransportError: the signer could not be reached.
        """
        fn = getattr(self.signer, "stats", None)
        if not callable(fn):
            raise MalformedInput(f"{self.signer!r} has no STATS operation")
        return await self._enqueue(fn, (), "stats")

    def _one_by_one(self, txs: list[UnsignedTx]) -> list[SignedLike | RouterError]:
        out: list[SignedLike | RouterError] = []
        for tx in txs:
            try:
                out.append(self.signer.sign_tx(tx))
            except TransportError:
                raise
            except RouterError as e:
                out.append(e)
        return out

    async def _submit(self, fn: Callable[..., T], *args: Any, op: str) -> T:
        if not self.available:
            self.failed_fast += 1
            raise SignerUnavailable(
                f"signer unavailable ({self._down_reason}); retrying after "
                f"{max(0.0, self._down_until - time.monotonic()):.2f} s"
            )
        self.calls += 1
        return await self._enqueue(fn, args, op)

    async def _enqueue(self, fn: Callable[..., T], args: tuple[Any, ...], op: str) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._q.put((fn, args, fut, loop, self.round_trips[op]))
        return await fut

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        if self._cpu is not None:
            try:
                os.sched_setaffinity(0, {self._cpu})  # 0: this thread only
            except OSError as e:
                log.warning("cannot pin the signer thread", extra={"cpu": self._cpu,
                                                                  "error": str(e)})
        clock = time.perf_counter_ns  # bound once: this loop times every signer call
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            fn, args, fut, loop, hist = item
            start = clock()
            try:
                result = fn(*args)
            except TransportError as e:
                # Not timed: a timeout or a failed reconnect is not a round trip.
                self._down_until = time.monotonic() + self.cooldown
                self._down_reason = e.diagnostics()[:200]
                self.up = False
                self._deliver(loop, fut, None, e)
            except BaseException as e:  # delivered to the awaiting coroutine, never lost here
                hist.observe_ns(clock() - start)
                if isinstance(e, RouterError):
                    self.up = True  # a refusal is an answer
                self._deliver(loop, fut, None, e)
            else:
                hist.observe_ns(clock() - start)
                self._down_until = 0.0
                self.up = True
                self._deliver(loop, fut, result, None)

    @staticmethod
    def _deliver(loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], result: Any,
                 error: BaseException | None) -> None:
        def settle() -> None:
            if fut.done():  # the awaiting task was cancelled meanwhile
                return
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop closed: nobody is waiting any more
            loop.call_soon_threadsafe(settle)
