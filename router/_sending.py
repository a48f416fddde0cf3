"""Sending: first broadcasts in nonce order, re-sends, and what each refusal of a node means for
the intent (bump, move to a new nonce, fail and release the nonce, fill a gap)."""

from __future__ import annotations

import asyncio
import logging
import time

from . import _hex
from ._base import RouterBase
from .broadcast import Accepted
from .errors import (
    FeeTooLow,
    InsufficientFunds,
    IntentFailed,
    InvalidTransaction,
    JournalError,
    MalformedResponse,
    NonceTooLow,
    ReplacementUnderpriced,
    RouterError,
    RpcError,
    TransportError,
)
from .events import EventKind
from .fees import Fees
from .handle import Handle
from .intent import Intent
from .nonces import TERMINAL, InFlight, Landed, TxState
from .recovery import BUMP, CANCEL, FILLER, MOVE, sig_of
from .signing import SignedLike, build_tx

log = logging.getLogger("router.core")


class Sender(RouterBase):
    async def _first_sender(self) -> None:
        """First broadcasts leave in nonce order, whatever the RPC latency: everything queued is
        sent as one ordered batch, and the next batch waits for this one (a node that sees n+1
        before n parks it; anvil's automine may never promote it)."""
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                await self._broadcast_in_order([f for f, _ in batch])
            except Exception:  # never lose the sender task; the flights are re-sent when stale
                log.exception("first broadcast failed")
            finally:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)

    async def _broadcast_in_order(self, flights: list[InFlight]) -> None:
        todo = sorted((f for f in flights if f.state is TxState.PENDING), key=lambda f: f.nonce)
        if self._fenced is not None or not todo:
            return
        if len(todo) == 1:
            await self._send(todo[0])
            return
        # Flights another task is sending keep that task's marker (it re-checks their bytes).
        mine = {id(f): asyncio.Event() for f in todo if id(f) not in self._sending}
        self._sending.update(mine)
        tip = self.view.tip.number if self.view.tip else -1
        now = time.monotonic()
        for f in todo:
            f.last_sent_head, f.last_sent_time = tip, now
            # Published as it leaves, not on the answer: with automine the block holding it
            # can arrive (LANDED) before the node's answer does.
            self._emit(EventKind.BROADCAST, f, f.hash)
        sent = [f.hash for f in todo]
        try:
            results = await self.broadcaster.send_batch([(f.raw, f.hash, f.nonce) for f in todo])
        except RouterError as e:
            results = [e] * len(todo)
        finally:
            for key, done in mine.items():
                del self._sending[key]
                done.set()
        for f, r, h in zip(todo, results, sent, strict=True):
            if isinstance(r, Accepted):
                f.broadcasts += 1
                if f.hash != h and f.state is TxState.PENDING:
                    await self._send(f)  # re-signed while the batch was out: send the new bytes
            elif f.state is TxState.PENDING:
                await self._send(f)  # act on the refusal (and retry) one by one, in order

    async def _send(self, flight: InFlight) -> None:
        """Broadcast the flight's current bytes and act on the classified outcome. Never raises
        for chain-side trouble: the flight stays pending (re-sent later) or ends terminal."""
        key = id(flight)  # not the nonce: a flight may move to another nonce while being sent
        if self._fenced is not None:
            return
        busy = self._sending.get(key)
        if busy is not None:
            # Another task is sending it; it sends the current bytes before it returns (below),
            # so waiting for it is enough (and a caller such as submit returns only once sent).
            await busy.wait()
            return
        done = self._sending[key] = asyncio.Event()
        try:
            too_low = 0
            for _ in range(self.config.max_resigns):
                if flight.state is not TxState.PENDING:
                    return
                flight.last_sent_head = self.view.tip.number if self.view.tip else -1
                flight.last_sent_time = time.monotonic()
                try:
                    sending = flight.hash
                    self._emit(EventKind.BROADCAST, flight, sending)
                    await self.broadcaster.send(flight.raw, sending, nonce=flight.nonce)
                    flight.broadcasts += 1
                    if flight.hash != sending and flight.state is TxState.PENDING:
                        # Re-signed meanwhile (a cancellation, a bump): its own _send found
                        # this one running and returned, so the new bytes go out now.
                        continue
                    return
                except NonceTooLow:
                    too_low += 1
                    if not await self._nonce_too_low(flight, repeated=too_low > 1):
                        return
                except ReplacementUnderpriced as e:
                    if flight.filler:
                        # The hole is occupied by a pooled transaction after all (e.g. from a
                        # previous run): never outbid it with a filler.
                        self.counters["gap_occupied"] += 1
                        self._settle(flight, TxState.REPLACED, e)
                        return
                    if not await self._bump(flight, e):
                        return
                except FeeTooLow as e:
                    if not await self._bump(flight, e):
                        if self.config.fees.for_resign(self._base_fee(), flight.fees,
                                                       replace=True) is None:
                            await self._fail(flight, IntentFailed(
                                f"fee cap: the base fee needs more than max_fee_cap "
                                f"({e.diagnostics()})"))
                        return
                except (InsufficientFunds, InvalidTransaction) as e:
                    await self._fail(flight, e)
                    return
                except (TransportError, MalformedResponse, RpcError) as e:
                    self.counters["send_deferred"] += 1
                    log.warning("broadcast failed; will re-send",
                                extra={"nonce": flight.nonce, "error": e.diagnostics()})
                    return
        finally:
            del self._sending[key]
            done.set()

    async def _send_in_order(self, flights: list[InFlight]) -> None:
        await self._broadcast_in_order(flights)
        self._notify()

    async def _bump(self, flight: InFlight, why: RouterError) -> bool:
        """Re-sign at fees that replace the pooled transaction; False when the cap forbids it or
        the signer refuses."""
        fees = self.config.fees.for_resign(self._base_fee(), flight.fees, replace=True)
        if fees is None:
            self.counters["bump_capped"] += 1
            log.warning("fee bump would exceed max_fee_cap; keeping the current signature",
                        extra={"nonce": flight.nonce, "error": why.diagnostics()})
            return False
        nonce = flight.nonce
        try:
            signed = await self._sign(
                build_tx(self.config.chain_id, nonce, flight.tx_intent, fees))
        except RouterError as e:
            self.counters["bump_refused"] += 1
            log.warning("signer refused the fee bump", extra={"nonce": flight.nonce,
                                                               "error": e.diagnostics()})
            return False
        if flight.state is not TxState.PENDING or flight.nonce != nonce:
            return False
        self._replace(flight, signed, fees, CANCEL if flight.cancel_intent else BUMP)
        self.counters["bumped"] += 1
        return True

    def _replace(self, flight: InFlight, signed: SignedLike, fees: Fees, kind: str) -> None:
        """A new signature for the flight's nonce, journaled before anyone can send it."""
        old_hash = flight.hash
        self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
        if flight.cancel_intent is not None:
            flight.cancel_hashes.add(signed.hash)
        self._persist([flight], [sig_of(flight, kind)])
        self._emit_signed(flight, old_hash)

    async def _nonce_too_low(self, flight: InFlight, *, repeated: bool = False) -> bool:
        """The chain is past this nonce. Either one of our signatures landed (record it) or the
        nonce was consumed outside the router (move the intent). True: send again."""
        for h in list(flight.hashes):
            try:
                rcpt = await self._receipt(h)
            except RouterError as e:
                log.warning("receipt lookup failed", extra={"error": e.diagnostics()})
                return False
            if rcpt is not None:
                self._land(flight, Landed(
                    _hex.quantity(rcpt["blockNumber"], "receipt.blockNumber"),
                    _hex.fixed_bytes(rcpt["blockHash"], "receipt.blockHash", 32),
                    h,
                ))
                self._notify()
                return False
        if flight.state is not TxState.PENDING:
            return False
        # No receipt: either a reorg took our transaction out after the node refused (the nonce
        # is free again: send again), or the nonce went to a transaction we never signed.
        try:
            chain_nonce = await self._any(
                lambda rpc: rpc.transaction_count(self.config.sender, "latest"))
        except RouterError as e:
            log.warning("nonce lookup failed", extra={"error": e.diagnostics()})
            return False
        if flight.state is not TxState.PENDING:
            return False
        if chain_nonce <= flight.nonce:
            if not repeated:
                return True
            # Refused twice as too low while the endpoint reports the nonce free: the count is
            # not to be trusted; the node's refusal (it checks against its state) is.
            self.counters["nonce_source_contradiction"] += 1
            log.error("node refuses a nonce its endpoint reports as free", extra={
                "nonce": flight.nonce, "reported_chain_nonce": chain_nonce})
        if flight.filler or flight.cancel_intent is not None:
            # A filler's hole, or a cancelled intent's nonce, was taken by another transaction:
            # its purpose is served; moving it would only spend gas.
            self._settle(flight, TxState.REPLACED, None)
            return False
        return await self._move(flight, chain_nonce)

    async def _move(self, flight: InFlight, chain_nonce: int) -> bool:
        """Give the intent the next free nonce (everything below the chain's nonce is taken)."""
        async with self._alloc:
            if flight.state is not TxState.PENDING:
                return False
            old = flight.nonce
            target = max(self.nonces.peek(), chain_nonce)
            try:
                fees = self._fresh_fees(flight.intent)
                signed = await self._sign(
                    build_tx(self.config.chain_id, target, flight.intent, fees))
            except RouterError as e:
                await self._fail(flight, e, fill=False)
                return False
            if flight.state is not TxState.PENDING or flight.nonce != old:
                return False
            self.nonces.move(flight, at_least=target)
            self.counters["nonce_moved"] += 1
            try:
                self._replace(flight, signed, fees, MOVE)
            except JournalError:
                return False
        log.warning("nonce consumed outside the router", extra={
            "intent": flight.intent.id, "old_nonce": old, "nonce": flight.nonce})
        return True

    async def _fail(self, flight: InFlight, error: RouterError, *, fill: bool = True) -> None:
        """The flight can never land: mark it and release its nonce so nothing behind it waits
        (the next submit reuses a top nonce; a hole below pending ones gets a filler)."""
        self._settle(flight, TxState.FAILED, error)
        self.counters["failed"] += 1
        log.error("intent failed", extra={"intent": flight.intent.id, "nonce": flight.nonce,
                                          "error": error.diagnostics()})
        if flight.filler or not fill:
            return
        async with self._alloc:
            if self.nonces.release_top(flight):
                self.counters["nonce_released"] += 1
                return
        if self.config.fill_gaps:
            await self._fill_gap(flight.nonce)

    def _settle(self, flight: InFlight, state: TxState, error: RouterError | None) -> None:
        if state is TxState.FAILED:
            self.nonces.mark_failed(flight, error or IntentFailed("failed"))
            self._emit(EventKind.FAILED, flight,
                       reason=flight.error.diagnostics() if flight.error else "failed")
        else:
            flight.state = state
            flight.error = error
            if state is TxState.REPLACED:
                self._emit(EventKind.CANCELLED, flight,
                           reason="a transaction we did not sign took its nonce")
        self._record([flight])
        self._notify()

    async def _fill_gap(self, nonce: int) -> None:
        filler = Intent(to=bytes.fromhex(self.config.sender[2:]), value=0,
                        id=f"gap-filler-{nonce}-{time.time_ns()}")
        await self._sign_filler(nonce, filler, self.config.fees.fresh(self._base_fee()))

    async def _sign_filler(self, nonce: int, filler: Intent, fees: Fees) -> None:
        try:
            signed = await self._sign(build_tx(self.config.chain_id, nonce, filler, fees))
        except RouterError as e:
            self.counters["gap_unfilled"] += 1
            log.error("cannot fill nonce gap: signer refused",
                      extra={"nonce": nonce, "error": e.diagnostics()})
            return
        held = self.nonces.get(nonce)
        if held is not None and held.state is not TxState.FAILED:
            return  # something of ours holds it again (a failed intent landed after all)
        flight = InFlight(nonce, filler, fees, signed.raw, signed.hash, hashes=[signed.hash],
                          filler=True)
        self.nonces.adopt(flight)
        try:
            self._persist([flight], [sig_of(flight, FILLER)])
        except JournalError:
            return
        self._handles[filler.id] = Handle(self, flight)
        self.counters["gap_filled"] += 1
        await self._send(flight)

    def _resend_stale(self, *, by_heads: bool = False, force: bool = False) -> None:
        tip = self.view.tip.number if self.view.tip else 0
        now = time.monotonic()
        stale = [
            f for f in self.nonces.pending()
            if force
            or (
                by_heads
                and tip - f.last_sent_head >= self.config.rebroadcast_after_heads
                and now - f.last_sent_time >= min(0.5, self.config.rebroadcast_after_seconds)
            )
            or now - f.last_sent_time >= self.config.rebroadcast_after_seconds
        ]
        if not stale:
            return
        self.counters["resent"] += len(stale)
        self._spawn(self._resend(stale))

    async def _resend(self, stale: list[InFlight]) -> None:
        base = self.view.tip.base_fee if self.view.tip else None
        if base:
            for f in stale:
                # Valid but unexecutable: the base fee rose above what it pays. Re-price it
                # (a replacement, so by the bump rule at least) instead of re-sending as is.
                if (f.state is TxState.PENDING and f.fees.max_fee_per_gas < base
                        and await self._bump(f, FeeTooLow(
                            f"max fee {f.fees.max_fee_per_gas} below base fee {base}"))):
                    self.counters["repriced"] += 1
        await self._send_in_order(stale)

    async def _check_gap(self) -> None:
        """If the chain's nonce is below our lowest pending nonce and nothing of ours covers the
        difference (a node over-reported our nonce), fill the hole so our transactions execute."""
        pending = self.nonces.pending()
        if not pending or not self.config.fill_gaps:
            return
        oldest = pending[0]
        if time.monotonic() - oldest.last_sent_time < (
            self.config.rebroadcast_after_seconds
        ) and oldest.broadcasts < 2:
            return
        latest = await self._any(lambda rpc: rpc.transaction_count(self.config.sender, "latest"))
        holes = [n for n in range(latest, oldest.nonce) if self._hole(n)]
        if holes:
            self.counters["gaps_detected"] += 1
            log.error("nonce gap below our pending transactions", extra={
                "chain_nonce": latest, "first_pending": oldest.nonce, "holes": len(holes)})
            for n in holes:
                await self._fill_gap(n)

    def _hole(self, nonce: int) -> bool:
        held = self.nonces.get(nonce)
        return held is None or held.state in TERMINAL
