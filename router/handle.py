"""What `Router.submit` returns: an intent's live state and an awaitable receipt."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from . import _hex
from .errors import IntentCancelled, IntentFailed, RouterError
from .nonces import InFlight, TxState

if TYPE_CHECKING:
    from ._base import RouterBase

log = logging.getLogger(__name__)


class Handle:
    """What `submit` returns: the intent's current state and an awaitable receipt."""

    def __init__(self, router: RouterBase, flight: InFlight) -> None:
        self._router = router
        self.flight = flight
        self.intent = flight.intent

    def __repr__(self) -> str:
        return f"Handle({self.flight!r})"

    @property
    def nonce(self) -> int:
        return self.flight.nonce

    @property
    def tx_hash(self) -> bytes:
        return self.flight.landed.tx_hash if self.flight.landed else self.flight.hash

    @property
    def state(self) -> TxState:
        return self.flight.state

    async def receipt(self, confirmations: int = 1, timeout: float | None = None) -> dict[str, Any]:
        """The receipt once the transaction is in a canonical block `confirmations` deep.

        Raises:
            IntentFailed: the intent can no longer be landed (cause chained); IntentCancelled
                when it was cancelled or its nonce went to another transaction.
            TimeoutError: not landed within `timeout` seconds.
        """
        router = self._router
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            f = self.flight
            if f.state is TxState.FAILED:
                raise IntentFailed(f"intent {self.intent.id} (nonce {f.nonce}) failed: "
                                   f"{f.error.diagnostics() if f.error else 'unknown'}") from f.error
            if f.state in (TxState.CANCELLED, TxState.REPLACED):
                raise IntentCancelled(
                    f"intent {self.intent.id} (nonce {f.nonce}) was {f.state.value}: "
                    + ("our cancellation took its nonce" if f.state is TxState.CANCELLED
                       else "a transaction we did not sign took its nonce"))
            tip = router.view.tip
            landed = f.landed
            if (
                f.state is TxState.LANDED
                and landed is not None
                and tip is not None
                and tip.number - landed.block_number + 1 >= confirmations
                and (
                    router.view.is_canonical(landed.block_hash)
                    # outside what the header ring holds (older, or from before a restart):
                    # the receipt's block hash is the judge
                    or router.view.canonical(landed.block_number) is None
                    or tip.number - landed.block_number >= router.config.forget_after_blocks
                )
            ):
                try:
                    rcpt = await router._receipt(landed.tx_hash)
                except RouterError as e:
                    log.warning("receipt lookup failed", extra={"error": e.diagnostics()})
                    rcpt = None
                if rcpt is not None and rcpt["blockHash"] == _hex.to_hex(landed.block_hash):
                    return rcpt
            event = router._changed
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"intent {self.intent.id} not landed within {timeout} s")
            try:
                await asyncio.wait_for(event.wait(), 0.5 if remaining is None else min(remaining, 0.5))
            except TimeoutError:
                pass
