"""Signer calls off the event loop: one dedicated (optionally pinned) thread, and a circuit breaker.

The router's event loop must keep following heads, answering its API and re-broadcasting while the
signer is slow or gone. Every signer call therefore runs on one thread of its own (the signer client
serves one request per connection anyway, and a single thread keeps its busy-poll hot on one CPU);
the loop awaits a future. When a call fails with a transport error the breaker opens: for
`cooldown` seconds further calls fail at once with `SignerUnavailable` instead of queueing behind a
reconnect, so the reorg path can fall back to re-sending old bytes immediately. The first call after
the cooldown goes through and closes the breaker if it succeeds.
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

from .errors import RouterError, SignerUnavailable, TransportError
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
        self._thread = threading.Thread(target=self._run, name="router-signer", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        return f"AsyncSigner({self.signer!r})"

    @property
    def available(self) -> bool:
        """False while the breaker is open (a transport failure within the last `cooldown` s)."""
        return time.monotonic() >= self._down_until

    async def sign_tx(self, tx: UnsignedTx) -> SignedLike:
        """Sign on the signer thread. Raises SignerError, TransportError (SignerUnavailable when
        the breaker is open)."""
        return await self._submit(self.signer.sign_tx, tx)

    async def sign_tx_batch(self, txs: Sequence[UnsignedTx]) -> list[SignedLike | RouterError]:
        """Sign several transactions in one round trip when the signer supports it; one result
        per transaction, in order (a refusal of one does not refuse the others).

        Raises:
            TransportError: the signer could not be reached (for the whole batch).
        """
        batch = getattr(self.signer, "sign_tx_batch", None)
        if batch is not None:
            out: list[SignedLike | RouterError] = await self._submit(batch, list(txs))
            return out
        return await self._submit(self._one_by_one, list(txs))

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

    async def _submit(self, fn: Callable[..., T], *args: Any) -> T:
        if not self.available:
            self.failed_fast += 1
            raise SignerUnavailable(
                f"signer unavailable ({self._down_reason}); retrying after "
                f"{max(0.0, self._down_until - time.monotonic()):.2f} s"
            )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self.calls += 1
        self._q.put((fn, args, fut, loop))
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
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            fn, args, fut, loop = item
            try:
                result = fn(*args)
            except TransportError as e:
                self._down_until = time.monotonic() + self.cooldown
                self._down_reason = e.diagnostics()[:200]
                self._deliver(loop, fut, None, e)
            except BaseException as e:  # delivered to the awaiting coroutine, never lost here
                self._deliver(loop, fut, None, e)
            else:
                self._down_until = 0.0
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
