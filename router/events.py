"""What happens to intents, as a stream: one `IntentEvent` per step, to any number of subscribers.

The router publishes; the Python API (`Router.events()`), the local API's WATCH op, the JSON-RPC
gateway's `eth_subscribe("sentinel_intents")` and the metrics exporter all read the same stream.
A subscriber that cannot keep up is not allowed to slow the router down or to miss events
silently: its queue is bounded, and when it overflows the subscription ends with `EventsLost`
(the subscriber re-reads the intents' states with STATUS and subscribes again).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum

from .errors import RouterError

__all__ = ["EventBus", "EventKind", "EventsLost", "IntentEvent", "Subscription"]


class EventKind(Enum):
    SUBMITTED = "submitted"  # accepted, nonce allocated (before signing)
    SIGNED = "signed"  # a signature was made and journaled (first, re-sign, replacement)
    BROADCAST = "broadcast"  # sent to the endpoints (first send and every re-send; published as
    #                          it leaves: a refusal shows as FAILED, a re-sign or a re-send)
    LANDED = "landed"  # in a canonical block; again with more confirmations as heads arrive
    REORGED_OUT = "reorged_out"  # its block left the canonical chain
    REPLACED = "replaced"  # its transaction hash changed (re-sign: old_hash -> new_hash)
    FAILED = "failed"  # terminal: cannot be landed; `reason` says why
    CANCELLED = "cancelled"  # terminal: our cancellation (or another tx) took its nonce


class EventsLost(RouterError):
    """The subscriber fell behind by more than its queue holds; events were dropped for it."""


@dataclass(frozen=True)
class IntentEvent:
    """One step in an intent's life. Fields that do not apply to a kind are None."""

    seq: int  # strictly increasing per bus: a subscriber sees a gap only through EventsLost
    kind: EventKind
    intent_id: str
    nonce: int
    time: float  # time.time() when published
    tx_hash: bytes | None = None
    block_number: int | None = None
    block_hash: bytes | None = None
    confirmations: int | None = None
    old_hash: bytes | None = None
    new_hash: bytes | None = None
    reason: str | None = None

    def to_json(self) -> dict[str, object]:
        """The event as JSON-ready values (hashes 0x-hex); absent fields are left out."""
        out: dict[str, object] = {"seq": self.seq, "kind": self.kind.value,
                                  "id": self.intent_id, "nonce": self.nonce, "time": self.time}
        for name in ("tx_hash", "block_hash", "old_hash", "new_hash"):
            v = getattr(self, name)
            if v is not None:
                out[name] = "0x" + v.hex()
        for name in ("block_number", "confirmations", "reason"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out


class Subscription:
    """An async iterator of events; `close()` (or leaving `async with`) unsubscribes."""

    def __init__(self, bus: EventBus, intent_id: str | None, maxsize: int) -> None:
        self._bus = bus
        self.intent_id = intent_id
        self._queue: asyncio.Queue[IntentEvent | None] = asyncio.Queue(maxsize)
        self._lost = False
        self.closed = False

    def _offer(self, event: IntentEvent) -> None:
        if self.closed or self._lost:
            return
        if self.intent_id is not None and event.intent_id != self.intent_id:
            return
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self._lost = True
            self._bus._subs.discard(self)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._bus._subs.discard(self)
            try:
                self._queue.put_nowait(None)  # wakes a reader blocked in __anext__
            except asyncio.QueueFull:
                pass

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> AsyncIterator[IntentEvent]:
        return self

    async def __anext__(self) -> IntentEvent:
        """The next event.

        Raises:
            StopAsyncIteration: the subscription was closed.
            EventsLost: the queue overflowed; events after the last one returned were dropped.
        """
        if self.closed and self._queue.empty():
            raise StopAsyncIteration
        if self._lost and self._queue.empty():
            raise EventsLost(f"subscriber fell more than {self._queue.maxsize} events behind")
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event


class EventBus:
    """Fan-out of intent events. `publish` never blocks and never raises."""

    def __init__(self, *, queue_size: int = 10_000) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()
        self._seq = itertools.count(1)

    def subscribe(self, intent_id: str | None = None, *, maxsize: int | None = None) -> Subscription:
        """Events from now on, for one intent or (None) for all."""
        sub = Subscription(self, intent_id, maxsize or self.queue_size)
        self._subs.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def publish(self, kind: EventKind, intent_id: str, nonce: int, **fields: object) -> IntentEvent:
        """Build the event (seq, time) and hand it to every matching subscriber."""
        event = IntentEvent(next(self._seq), kind, intent_id, nonce, time.time(),
                            **fields)  # type: ignore[arg-type]
        if self._subs:
            for sub in tuple(self._subs):  # a copy: an overflowing subscriber leaves the set
                sub._offer(event)
        return event
