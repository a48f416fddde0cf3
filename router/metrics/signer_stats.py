"""The enclave's counters, polled through its STATS op every few seconds, off the hot path.

The signer inside the enclave has no network: its counters reach the exporter only this way. The
poll goes through the router's signer thread (`AsyncSigner.stats`), like any signer call, so it
never blocks the event loop and never runs concurrently with a signature on the one connection;
it costs one STATS round trip (tens of µs) every `interval` seconds, which a signing call that
arrives at that moment waits behind. A failed poll also tells the router's breaker and readiness
that the signer is gone; a successful one, that it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from enclave.wire import Stats

from ..errors import RouterError
from ..signer_thread import AsyncSigner

__all__ = ["SignerStatsPoller"]

log = logging.getLogger(__name__)


class SignerStatsPoller:
    """`last` is the latest STATS answer, None while the signer is down or has no STATS."""

    def __init__(self, signer: AsyncSigner, *, interval: float = 2.0) -> None:
        if not 0 < interval < 3600:
            raise ValueError(f"stats interval must be in (0, 3600) seconds, got {interval}")
        self.signer = signer
        self.interval = interval
        self.last: Stats | None = None
        #: time.monotonic() of the latest successful poll.
        self.last_at: float | None = None
        self.error: str | None = None
        self.polls = 0
        self.failures = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def supported(self) -> bool:
        return self.signer.has_stats

    def start(self) -> None:
        if self._task is None and self.supported:
            self._task = asyncio.create_task(self._run(), name="metrics-signer-stats")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll(self) -> Stats | None:
        """One STATS round trip; never raises for a signer-side problem (it is recorded)."""
        self.polls += 1
        try:
            stats = await self.signer.stats()
        except RouterError as e:
            self.failures += 1
            if self.last is not None or self.error is None:
                log.warning("signer STATS poll failed", extra={"error": e.diagnostics()})
            self.last, self.error = None, e.diagnostics()[:200]
            return None
        self.last, self.last_at, self.error = stats, time.monotonic(), None
        return stats

    async def _run(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(self.interval)
