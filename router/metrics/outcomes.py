"""Intents by terminal state, counted from the router's event bus (no hook on the router's paths).

`landed` may be published again as confirmations grow and after a reorg re-lands the intent, so
each (intent, terminal state) pair is counted once; a bounded memory of counted pairs keeps that
true for the last `remember` intents (older ones would be counted again only if they changed
state after that many newer intents settled). Every event is also counted by kind, as published.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict

from ..events import EventBus, EventKind, EventsLost, IntentEvent

__all__ = ["TERMINAL_KINDS", "IntentOutcomes"]

log = logging.getLogger(__name__)

#: The event kinds that end an intent (a landed one may still be reorged out and land again).
TERMINAL_KINDS = (EventKind.LANDED, EventKind.FAILED, EventKind.CANCELLED)


class IntentOutcomes:
    """Counts the bus's events; `start()` subscribes (on the running loop), `close()` stops."""

    def __init__(self, bus: EventBus, *, remember: int = 100_000) -> None:
        self.bus = bus
        self.remember = remember
        #: Intents by terminal state ("landed", "failed", "cancelled"), each intent once per state.
        self.terminal: Counter[str] = Counter({k.value: 0 for k in TERMINAL_KINDS})
        #: Every event by kind, as published (landed again with more confirmations included).
        self.events: Counter[str] = Counter({k.value: 0 for k in EventKind})
        #: Times the subscription fell behind and was renewed (events in between are uncounted).
        self.lost = 0
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()

    async def start(self) -> None:
        """Subscribe; events published after this returns are counted."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="metrics-intent-outcomes")
            await self._subscribed.wait()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def count(self, event: IntentEvent) -> None:
        self.events[event.kind.value] += 1
        if event.kind not in TERMINAL_KINDS:
            return
        key = (event.intent_id, event.kind.value)
        if key in self._seen:
            return
        self._seen[key] = None
        if len(self._seen) > self.remember:
            self._seen.popitem(last=False)
        self.terminal[event.kind.value] += 1

    async def _run(self) -> None:
        while True:
            async with self.bus.subscribe() as sub:
                self._subscribed.set()
                try:
                    async for event in sub:
                        self.count(event)
                    return  # closed
                except EventsLost:
                    self.lost += 1
                    log.warning("metrics fell behind the event bus; some intent events uncounted")
