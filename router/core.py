"""The router: intents in, transactions landed exactly once, through reorgs, drops, faults and restarts.

One `Router` owns one sender. `submit(intent)` signs at the next nonce, writes the signature to the
journal, then broadcasts; a restarted router rebuilds every intent from the journal (recovery.py)
and checks it against the chain. Heads come from every WebSocket endpoint, or by polling when none
is up; a reorg re-signs the dropped transactions in one signer round trip (reorg.py) and
re-broadcasts them in nonce order; a rewound or replaced chain is reconciled receipt by receipt.
Signing runs on its own thread (signer_thread.py): a slow or absent signer never freezes the loop.
Everything else runs on one event loop; nonce allocation is serialised by one lock held across the
signer call, so a refused signature never leaves a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import _hex
from ._base import RouterConfig
from ._following import Follower
from .errors import (
    GasEstimationFailed,
    JournalError,
    LeaseLost,
    MalformedInput,
    NonceSourceError,
    RouterError,
    RpcError,
    TransportError,
)
from .events import EventKind, Subscription
from .handle import Handle
from .intent import MAX_GAS, MIN_GAS, Intent
from .nonces import InFlight, TxState
from .recovery import CANCEL, FIRST, cancel_intent_for, sig_of
from .rpc import probe
from .signing import build_tx

__all__ = ["GAS_MARGIN_PERCENT", "Router", "RouterConfig", "gas_with_margin"]

log = logging.getLogger(__name__)

#: Added to the node's gas estimate of an intent submitted without `gas`.
GAS_MARGIN_PERCENT = 20
#: Seconds between two tries to cancel an intent past its deadline when a try failed.
DEADLINE_RETRY = 5.0


def gas_with_margin(estimate: int) -> int:
    """The gas limit for a node's estimate: +GAS_MARGIN_PERCENT (ceil), 21000 kept as is.

    Raises:
        GasEstimationFailed: the estimate is above the intent maximum (30,000,000).
    """
    if estimate > MAX_GAS:
        raise GasEstimationFailed(f"the node estimates {estimate} gas, above the intent maximum "
                                  f"{MAX_GAS}", reason="estimate above the maximum")
    if estimate <= MIN_GAS:
        return MIN_GAS
    return min(-(-estimate * (100 + GAS_MARGIN_PERCENT) // 100), MAX_GAS)


class Router(Follower):
    """One sender's router. Build it with a `RouterConfig`, a signer and (optionally) a journal;
    `await start()`, then `submit`, `cancel`, `handle`; `await close()`."""

    async def start(self, *, wait_connected: float = 10.0) -> None:
        """Check the endpoints' chain, recover the journal, read the nonce, follow heads.

        An endpoint that does not answer (down, HTTP 5xx, garbage) is skipped and reported in
        `stats()`; it still gets broadcasts and may come back. One that answers must serve the
        configured chain.

        Raises:
            ConfigError: an endpoint serves another chain.
            TransportError: no endpoint answers.
            NonceSourceError, MalformedResponse: from the endpoints.
            JournalError: the journal cannot be read or is not ours (LeaseHeld: another router
                holds this sender).
        """
        healthy, failed = await probe(self.rpcs, self.config.chain_id)
        for rpc, err in failed:
            self.endpoint_errors[rpc.label] = err.diagnostics()
            log.warning("endpoint not answering at start; retried in the background",
                        extra={"endpoint": rpc.label, "error": err.diagnostics()})
        if not healthy:
            raise TransportError(
                f"none of the {len(self.rpcs)} RPC endpoints is reachable "
                f"({'; '.join(f'{r.label}: {e.diagnostics()}' for r, e in failed)})"
            )
        # Healthy ones first: every "first answer wins" lookup then skips the dead at once.
        self.rpcs.sort(key=lambda r: r not in healthy)
        await self.nonces.sync(healthy)
        await self._seed_view(await self._latest_header())
        self._genesis = await self._genesis_hash()
        resend = await self._recover()
        self.journal.meta_set("genesis", self._genesis.hex())
        self._tasks = [
            asyncio.create_task(self.heads.run(), name="router-heads"),
            asyncio.create_task(self._maintenance(), name="router-maintenance"),
            asyncio.create_task(self._first_sender(), name="router-first-broadcasts"),
        ]
        self._started = True
        if resend:
            self._spawn(self._send_in_order(resend))
        try:
            await asyncio.wait_for(self.heads.connected.wait(), wait_connected)
        except TimeoutError:
            log.warning("no head source connected yet; continuing",
                        extra={"endpoint": self.heads.label})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        # Submits waiting for their first broadcast return (their intents are journaled and
        # pending: the next start re-sends them).
        while not self._outbox.empty():
            _, sent = self._outbox.get_nowait()
            if not sent.done():
                sent.set_result(None)
        await self.broadcaster.close()
        for rpc in self.rpcs:
            await rpc.close()
        if self._owns_signer:
            await asyncio.get_running_loop().run_in_executor(None, self.signer.close)
        self.journal.close()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(self, intent: Intent) -> Handle:
        """Sign the intent at the next nonce, journal it, broadcast it; returns its Handle.

        A second submit with the same `intent.id` returns the first handle (nothing re-signed),
        also after a restart (the journal knows every id). With `intent.gas` None the gas limit
        is estimated first (`estimate_gas`); the handle's intent carries it and still equals
        the request. Publishes SUBMITTED, SIGNED, then BROADCAST (events.py). Chain-side trouble after signing
        (unreachable nodes, drops, refusals) is the router's to resolve: the handle ends in a
        terminal state the caller can see. Raises only when nothing was broadcast:

        Raises:
            SignerError: the signer (its policy) refused; no nonce was consumed.
            TransportError: the signer is unreachable (SignerUnavailable: it failed moments
                ago); no nonce was consumed.
            NonceSourceError: the router has no trustworthy nonce yet.
            MalformedInput: the id was already used for a different intent (other options
                count), its deadline has passed, or a fee override is above the policy's cap
                (nothing signed).
            GasEstimationFailed: `gas` is None and the node refused to estimate (the call
                reverts; its reason is in the message); nothing signed.
            JournalError: the journal could not be written (LeaseLost: another router now owns
                this sender); nothing was broadcast.
        """
        if not self._started:
            raise NonceSourceError("router not started")
        existing = self._existing(intent)
        if existing is not None:
            return existing
        if intent.deadline is not None and intent.deadline <= time.time():
            raise MalformedInput(f"intent {intent.id[:60]!r}: its deadline {intent.deadline} "
                                 "has already passed")
        self._fresh_fees(intent)  # refuse an override above the cap before any I/O
        if intent.gas is None:
            intent = intent.with_estimated_gas(
                await self.estimate_gas(intent.to, intent.value, intent.data))
        async with self._alloc:
            existing = self._existing(intent)  # the same id may have been submitted meanwhile
            if existing is not None:
                return existing
            nonce = self.nonces.peek()
            fees = self._fresh_fees(intent)
            signed = await self._sign(build_tx(self.config.chain_id, nonce, intent, fees))
            flight = InFlight(nonce, intent, fees, signed.raw, signed.hash,
                              last_sent_head=self.view.tip.number if self.view.tip else -1,
                              last_sent_time=time.monotonic())  # not stale while queued
            self.nonces.commit(flight)
            try:
                self._persist([flight], [sig_of(flight, FIRST)])
            except JournalError:
                self.nonces.uncommit(flight)
                raise
            handle = Handle(self, flight)
            self._handles[intent.id] = handle
            self.counters["submitted"] += 1
            if intent.deadline is not None:
                self._deadlines[intent.id] = intent.deadline
            if self.bus.subscribers:
                self._emit(EventKind.SUBMITTED, flight)
                self._emit(EventKind.SIGNED, flight, flight.hash)
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Queued under the lock: the outbox holds first broadcasts in nonce order.
            self._outbox.put_nowait((flight, sent))
        await asyncio.shield(sent)
        return handle

    async def estimate_gas(self, to: bytes, value: int = 0, data: bytes = b"") -> int:
        """The gas limit the router signs an intent with when it has no `gas`: the node's
        eth_estimateGas (from the sender, to, value, data) plus GAS_MARGIN_PERCENT (state may
        change between estimate and inclusion), except that an estimate of exactly 21000 (a
        plain transfer, whose cost cannot vary) is kept; capped at the intent maximum.

        Raises:
            MalformedInput: `to` is not 20 bytes or `value` is out of range.
            GasEstimationFailed: the node refused to estimate (the call reverts: its revert
                reason is in the message), or the estimate is above the intent maximum.
            TransportError, MalformedResponse: no endpoint answered usefully.
        """
        if not isinstance(to, bytes) or len(to) != 20:
            raise MalformedInput(f"estimate_gas: 'to' must be 20 bytes, got {to!r:.60}")
        if not isinstance(value, int) or not 0 <= value < 2**256:
            raise MalformedInput("estimate_gas: value out of range")
        call = {"from": self.config.sender, "to": _hex.to_hex(to), "value": hex(value),
                "data": _hex.to_hex(data)}
        try:
            result = await self._any(lambda rpc: rpc.call("eth_estimateGas", call))
        except RpcError as e:
            raise GasEstimationFailed(
                f"gas estimation for a call to 0x{to.hex()} failed: {e} (JSON-RPC code {e.code})",
                reason=str(e), code=e.code) from e
        estimate = _hex.quantity(result, "eth_estimateGas", max_value=2**63 - 1)
        return gas_with_margin(estimate)

    def _existing(self, intent: Intent) -> Handle | None:
        existing = self._handles.get(intent.id)
        if existing is not None and existing.intent != intent:
            raise MalformedInput(f"intent id {intent.id!r} was already used for a different intent")
        return existing

    def handle(self, intent_id: str) -> Handle | None:
        return self._handles.get(intent_id)

    def events(self, intent_id: str | None = None) -> Subscription:
        """Intent events from now on (one intent's, or all); `async for ev in router.events():`."""
        return self.bus.subscribe(intent_id)

    async def cancel(self, intent_id: str) -> Handle:
        """Replace a pending intent's transaction with a zero-value transfer to ourselves at the
        same nonce (fees bumped so nodes accept the replacement). The handle ends `cancelled`
        when the cancellation lands, or `landed` when the original won the race. Cancelling an
        intent that is no longer pending changes nothing.

        Raises:
            MalformedInput: no intent with that id, or it is one of the router's own fillers.
            SignerError, TransportError: the cancellation could not be signed.
            RouterError: the fee cap forbids a replacement.
            JournalError: as for submit.
        """
        return await self._cancel(intent_id, "cancelled on request (our cancellation took its "
                                             "nonce)")

    async def _cancel(self, intent_id: str, reason: str) -> Handle:
        handle = self._handles.get(intent_id)
        if handle is None:
            raise MalformedInput(f"no intent with id {intent_id[:60]!r}")
        flight = handle.flight
        if flight.filler:
            raise MalformedInput(f"{intent_id[:60]!r} is the router's own gap filler")
        if flight.state is not TxState.PENDING or flight.cancel_intent is not None:
            return handle
        async with self._alloc:  # no move of this flight while its cancel is being signed
            nonce = flight.nonce
            fees = self.config.fees.for_resign(self._base_fee(), flight.fees, replace=True)
            if fees is None:
                raise RouterError(
                    f"cannot cancel {intent_id[:60]!r}: a replacement would exceed max_fee_cap")
            cancel = cancel_intent_for(flight.intent, self.config.sender)
            signed = await self._sign(build_tx(self.config.chain_id, nonce, cancel, fees))
            if flight.state is not TxState.PENDING or flight.nonce != nonce:
                return handle  # landed (or moved) while the signer worked
            flight.cancel_intent = cancel
            flight.cancel_hashes.add(signed.hash)
            old_hash = flight.hash
            self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
            self._persist([flight], [sig_of(flight, CANCEL)])
            self._cancel_reasons[intent_id] = reason
            self._emit_signed(flight, old_hash)
        self.counters["cancel_requested"] += 1
        await self._send(flight)
        self._notify()
        return handle

    async def _maintenance(self) -> None:
        """Time-driven work: keep the lease, re-send pending transactions, look for nonce gaps,
        retry endpoints that were down at start."""
        while True:
            await asyncio.sleep(min(1.0, self.config.rebroadcast_after_seconds / 2))
            try:
                if self._fenced is None:
                    self.journal.renew()
                    self._check_deadlines()
                    self._resend_stale()
                    await self._check_gap()
                if self.endpoint_errors:
                    await self._retry_endpoints()
            except LeaseLost as e:
                self._fence(e)
            except RouterError as e:
                log.warning("maintenance round failed", extra={"error": e.diagnostics()})
            except Exception:  # keep the time-driven work alive whatever one round hit
                log.exception("maintenance round failed")
            self._prune_handles()

    def _check_deadlines(self) -> None:
        """Cancel (as `cancel` does) every intent whose deadline passed while it is pending.
        Checked each maintenance round (at most 1 s apart); a cancellation that cannot be made
        now (signer down, fee cap) is tried again DEADLINE_RETRY seconds later."""
        if not self._deadlines:
            return
        now = time.time()
        for intent_id, deadline in list(self._deadlines.items()):
            if deadline > now:
                continue
            del self._deadlines[intent_id]
            handle = self._handles.get(intent_id)
            if (handle is not None and handle.flight.state is TxState.PENDING
                    and handle.flight.cancel_intent is None):
                self._spawn(self._cancel_at_deadline(intent_id, deadline))

    async def _cancel_at_deadline(self, intent_id: str, deadline: float) -> None:
        try:
            await self._cancel(intent_id, f"cancelled: its deadline {deadline} passed while it "
                                          "was pending")
            self.counters["deadline_cancelled"] += 1
        except RouterError as e:
            self.counters["deadline_cancel_failed"] += 1
            log.warning("cannot cancel an intent past its deadline; trying again",
                        extra={"intent": intent_id, "error": e.diagnostics()})
            self._deadlines[intent_id] = time.time() + DEADLINE_RETRY

    async def _retry_endpoints(self) -> None:
        down = [r for r in self.rpcs if r.label in self.endpoint_errors]
        healthy, failed = await probe(down, self.config.chain_id)
        for rpc in healthy:
            del self.endpoint_errors[rpc.label]
            log.warning("endpoint answers again", extra={"endpoint": rpc.label})
        for rpc, err in failed:
            self.endpoint_errors[rpc.label] = err.diagnostics()

    def _prune_handles(self, keep: int = 100_000) -> None:
        """Forget the oldest settled handles beyond `keep` (a long-running service)."""
        excess = len(self._handles) - keep
        if excess <= 0:
            return
        for key in [k for k, h in self._handles.items()
                    if h.flight.state is not TxState.PENDING][:excess]:
            del self._handles[key]

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.counters)
        out["broadcast"] = dict(self.broadcaster.counters)
        out["watcher"] = vars(self.heads.stats).copy()
        out["next_nonce"] = self.nonces.next_nonce
        out["endpoints_down"] = dict(self.endpoint_errors)
        out["signer"] = {"available": self.signer.available, "calls": self.signer.calls,
                         "failed_fast": self.signer.failed_fast}
        out["journal"] = {"durable": self.journal.durable,
                          "lease_remaining": min(self.journal.lease_remaining(), 1e9),
                          "fenced": self._fenced is not None}
        out["pending"] = len(self.nonces.pending())
        out["tip"] = self.view.tip.number if self.view.tip else None
        if self.decision_us:
            ordered = sorted(self.decision_us)
            out["decision_us_p50"] = round(ordered[len(ordered) // 2], 1)
            out["decision_us_max"] = round(ordered[-1], 1)
        return out
