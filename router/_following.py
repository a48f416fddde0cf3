"""Following the chain: heads, reorgs, flip-flops, rewound or replaced chains, and rebuilding the
working set from the journal after a restart."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from . import _hex
from ._sending import Sender
from .errors import JournalError, MalformedHeader, MalformedResponse, ReorgTooDeep, RouterError
from .events import EventKind
from .fees import Fees
from .handle import Handle
from .heads import ChainUpdate, Header
from .intent import Intent
from .journal import SignatureRow
from .nonces import InFlight, Landed, TxState
from .recovery import RESIGN, STANDBY, flight_of, sig_of
from .reorg import Resigned

log = logging.getLogger("router.core")


class Follower(Sender):
    async def _recover(self) -> list[InFlight]:
        """Rebuild every intent the journal holds; returns the pending ones to re-send.

        Pending intents are re-attached with all their signatures (any may be the one that
        lands: nothing is signed at a new nonce unless the chain shows the nonce taken by a
        transaction that is not ours). Landed ones within `reconcile_depth` are checked against
        receipts; if the node's genesis changed, all of them are.
        """
        self._quiet = True  # recovery re-attaches; it publishes nothing retroactively
        try:
            return await self._recover_rows()
        finally:
            self._quiet = False

    async def _recover_rows(self) -> list[InFlight]:
        rows = self.journal.load()
        if not rows:
            return []
        stored = self.journal.meta_get("genesis")
        fresh_chain = stored is not None and self._genesis is not None and (
            stored != self._genesis.hex())
        if fresh_chain:
            self.counters["chain_replaced"] += 1
            log.error("the node serves another chain than the journal's (genesis changed); "
                      "re-broadcasting from the journal")
        sigs: dict[str, list[SignatureRow]] = {}
        for s in self.journal.all_signatures():
            sigs.setdefault(s.intent_id, []).append(s)
        tip = self.view.tip.number if self.view.tip else 0
        active: list[InFlight] = []
        check: list[InFlight] = []
        for row in rows:
            flight = flight_of(row, sigs.get(row.intent_id, ()), self.config.sender)
            self._handles[flight.intent.id] = Handle(self, flight)
            for s in sigs.get(row.intent_id, ()):
                # the newest unused standby at its nonce is the reorg path's ready replacement
                if (s.kind == STANDBY and flight.landed is not None and s.nonce == flight.nonce
                        and s.tx_hash != flight.hash):
                    flight.standby = (Fees(s.max_fee_per_gas, s.max_priority_fee_per_gas),
                                      s.raw, s.tx_hash)
            if flight.state is TxState.PENDING:
                active.append(flight)
                if flight.intent.deadline is not None and flight.cancel_intent is None:
                    self._deadlines[flight.intent.id] = flight.intent.deadline
            elif flight.landed is not None and (
                fresh_chain or flight.landed.block_number >= tip - self.config.reconcile_depth
            ):
                check.append(flight)
        self.counters["recovered"] += len(rows)
        for flight in active:
            self._restore(flight)
        reopened = await self._verify_landed(check)
        log.warning("journal recovered", extra={
            "intents": len(rows), "pending": len(active), "checked_landed": len(check),
            "reopened": len(reopened), "next_nonce": self.nonces.next_nonce})
        return active + reopened

    def _restore(self, flight: InFlight) -> None:
        try:
            self.nonces.restore(flight)
        except ValueError as e:
            log.error("journal holds two pending intents at one nonce", extra={
                "intent": flight.intent.id, "nonce": flight.nonce, "error": str(e)})

    async def _verify_landed(self, flights: Sequence[InFlight]) -> list[InFlight]:
        """Ask the node for a receipt of each flight's signatures. A flight none of whose
        signatures the canonical chain holds is pending again (returned, to be re-sent);
        the others are re-pointed at the block the receipt names."""
        sem = asyncio.Semaphore(16)
        reopened: list[InFlight] = []
        changed: list[InFlight] = []
        tip = self.view.tip.number if self.view.tip else 0

        async def one(flight: InFlight) -> None:
            async with sem:
                found = None
                for h in list(flight.hashes):
                    try:
                        rcpt = await self._receipt(h)
                    except RouterError as e:
                        log.warning("receipt lookup failed during reconcile",
                                    extra={"error": e.diagnostics()})
                        return  # unknown: leave as it is, the next reconcile asks again
                    if rcpt is not None:
                        found = (h, rcpt)
                        break
            if found is not None:
                h, rcpt = found
                where = Landed(_hex.quantity(rcpt["blockNumber"], "receipt.blockNumber"),
                               _hex.fixed_bytes(rcpt["blockHash"], "receipt.blockHash", 32), h)
                if where != flight.landed:
                    self._land(flight, where)
                    changed.append(flight)
                elif tip - where.block_number < self.config.forget_after_blocks:
                    self._restore(flight)
                return
            if flight.landed is not None:
                self._emit(EventKind.REORGED_OUT, flight, where=flight.landed)
                self.nonces.unland_blocks([flight.landed.block_hash])
            flight.landed = None
            flight.state = TxState.PENDING
            flight.standby = None
            self._restore(flight)
            reopened.append(flight)
            changed.append(flight)

        await asyncio.gather(*(one(f) for f in flights))
        if reopened:
            self.counters["reopened"] += len(reopened)
            log.error("transactions we recorded as landed are not on the chain; re-sending",
                      extra={"count": len(reopened),
                             "nonces": sorted(f.nonce for f in reopened)[:20]})
        self._record(changed)
        return reopened

    async def _on_header(self, header: Header, received_ns: int) -> None:
        self.counters["heads"] += 1
        self.last_head_ns = received_ns
        try:
            update = await self.tracker.ingest(header)
        except ReorgTooDeep as e:
            log.error("reorg beyond the header ring; reconciling", extra={"error": str(e)})
            await self._reset_chain(header, deep=True)
            return
        except MalformedHeader as e:
            self.counters["heads_rejected"] += 1
            log.warning("header rejected: %s", e.diagnostics(), extra={"error": e.diagnostics()})
            return
        except MalformedResponse as e:
            # The node does not know the header's ancestry: a node that came back with another
            # chain, or a lagging one. Three in a row, or a changed genesis, resets the view.
            self.counters["heads_rejected"] += 1
            self._unlinkable += 1
            log.warning("header rejected: %s", e.diagnostics(), extra={"error": e.diagnostics()})
            if self._unlinkable >= 3 or await self._genesis_changed():
                await self._reset_chain(header, deep=True)
            return
        except RouterError as e:
            self.counters["heads_rejected"] += 1
            log.warning("header rejected: %s", e.diagnostics(), extra={"error": e.diagnostics()})
            return
        self._unlinkable = 0
        if update is None:
            self.counters["heads_duplicate"] += 1
            return
        if update.is_reorg:
            results = await self.reactor.react(update)
            resigned = [r for r in results if r.resigned]
            fresh = [r.flight for r in resigned if not r.from_standby]
            if fresh:
                # New signatures are journaled before they are sent; standbys already were.
                try:
                    self._persist(fresh, [sig_of(f, RESIGN) for f in fresh])
                except JournalError as e:
                    log.error("journal write failed on the reorg path; not re-sending the new "
                              "signatures", extra={"error": e.diagnostics()})
                    self._emit_reorg(results, signed=False)
                    return
            self.decision_us.append((time.perf_counter_ns() - received_ns) / 1000)
            self._emit_reorg(results, signed=True)
            self.counters["reorgs"] += 1
            self.reorg_depths[len(update.removed)] += 1
            self.counters["resigned"] += len(resigned)
            self.counters["resigned_from_standby"] += sum(r.from_standby for r in results)
            log.warning("reorg", extra={
                "depth": len(update.removed), "ancestor": update.ancestor.number
                if update.ancestor else None, "affected": [r.flight.nonce for r in results]})
            # An intent that was moved has signatures at two nonces: the new blocks may hold the
            # old one (a flip-flop), so it is re-sent only after they are scanned.
            moved = [r.flight for r in results if len(set(r.flight.sig_nonces.values())) > 1]
            now = [r.flight for r in results if r.flight not in moved]
            if now:
                self._spawn(self._send_in_order(now))
            self._record([r.flight for r in results if r.from_standby])
        else:
            moved = []
            self.decision_us.append((time.perf_counter_ns() - received_ns) / 1000)
        await self._scan(update)
        if moved:
            self._spawn(self._send_in_order(moved))
        self._after_head()

    def _emit_reorg(self, results: list[Resigned], *, signed: bool) -> None:
        """After the decision (off its timed path): REORGED_OUT for each affected intent, then
        SIGNED and REPLACED for each new signature (standbys included: their use is one)."""
        if not self.bus.subscribers:
            return
        for r in results:
            h = r.removed_from
            if h is not None:
                self._emit(EventKind.REORGED_OUT, r.flight,
                           where=Landed(h.number, h.hash, r.old_hash or r.flight.hash))
        if signed:
            for r in results:
                if r.resigned:
                    self._emit_signed(r.flight, r.old_hash or r.flight.hash)

    def _after_head(self) -> None:
        self._emit_confirmations()
        tip = self.view.tip
        if tip is not None:
            self.nonces.forget_below(tip.number - self.config.forget_after_blocks)
        self._resend_stale(by_heads=True)
        self._notify()

    async def _reset_chain(self, header: Header, *, deep: bool) -> None:
        """The chain moved in a way the header ring cannot follow (a reorg past it, a rewound or
        replaced node): start the view over and check every transaction we believe landed
        against the node's receipts; those it does not hold are re-sent from their signatures."""
        self.counters["deep_reorgs" if deep else "rewinds"] += 1
        await self._seed_view(header)
        self._unlinkable = 0
        genesis_changed = await self._genesis_changed()
        if genesis_changed:
            self.counters["chain_replaced"] += 1
            try:
                self._genesis = await self._genesis_hash()
                self.journal.meta_set("genesis", self._genesis.hex())
            except RouterError as e:
                log.warning("genesis lookup failed", extra={"error": e.diagnostics()})
        suspects = self._landed_suspects(everything=genesis_changed)
        reopened = await self._verify_landed(suspects)
        if reopened:
            self.counters["resent"] += len(reopened)
            self._spawn(self._send_in_order(reopened))
        self._after_head()

    def _landed_suspects(self, *, everything: bool) -> list[InFlight]:
        tip = self.view.tip.number if self.view.tip else 0
        floor = -1 if everything else tip - self.config.reconcile_depth
        seen: dict[int, InFlight] = {}
        for handle in self._handles.values():
            f = handle.flight
            if f.landed is not None and f.landed.block_number >= floor:
                seen[id(f)] = f
        return sorted(seen.values(), key=lambda f: f.nonce)

    async def _scan(self, update: ChainUpdate) -> None:
        """Record which of our transactions the added blocks hold."""
        if not self.nonces.tracks_hashes():
            return
        landed: list[InFlight] = []
        for h in update.added:
            try:
                block = await self._block_by_hash(h.hash)
            except RouterError as e:
                log.warning("block fetch failed", extra={"error": e.diagnostics()})
                continue
            if block is None or not self.view.is_canonical(h.hash):
                continue
            for tx_hash in block.tx_hashes:
                flight = self.nonces.by_hash(tx_hash)
                if flight is None:
                    continue
                if self._land(flight, Landed(h.number, h.hash, tx_hash)):
                    landed.append(flight)
        if landed:
            self._record(landed)
        if self.config.presign_replacements and landed:
            base = self.view.tip.base_fee if self.view.tip else None
            want = [f for f in landed if f.standby is None and f.state is TxState.LANDED]
            done = await self.reactor.presign(want, base)
            self.counters["presigned"] += len(done)
            if done:
                try:
                    # Durable before a reorg can send them (the reorg path then writes nothing
                    # ahead of its broadcast).
                    self._persist(done, [sig_of(f, STANDBY, raw=f.standby[1], tx_hash=f.standby[2],
                                                fees=f.standby[0]) for f in done if f.standby])
                except JournalError:
                    for f in done:
                        f.standby = None

    def _land(self, flight: InFlight, where: Landed) -> bool:
        """Record that one of the flight's signatures is in a canonical block. Handles the truth
        overriding what we thought: a failed intent that landed after all, and an intent moved
        to a new nonce whose earlier signature landed at the old one (the flip-flop case: the
        copy at the new nonce is cancelled). Returns True when something changed."""
        sig_nonce = flight.sig_nonces.get(where.tx_hash, flight.nonce)
        if flight.landed == where:
            return False
        old_hash = flight.hash
        if flight.landed is not None and flight.landed.block_hash != where.block_hash:
            self._emit(EventKind.REORGED_OUT, flight, where=flight.landed)
        if sig_nonce != flight.nonce:
            if flight.landed is not None and flight.landed.tx_hash != where.tx_hash:
                # Two of its signatures at two nonces are both on chain: nothing can undo that.
                self.counters["duplicated"] += 1
                log.error("an intent landed twice (signatures at two nonces both mined)",
                          extra={"intent": flight.intent.id, "nonces": [flight.nonce, sig_nonce]})
                return False
            left = self.nonces.relocate(flight, sig_nonce, where.tx_hash)
            self.counters["flip_flops"] += 1
            log.warning("a moved intent's original signature landed; cancelling its copy",
                        extra={"intent": flight.intent.id, "landed_nonce": sig_nonce,
                               "copy_nonce": left})
            self._spawn(self._cancel_copy(flight, left))
        if flight.state is TxState.FAILED:
            self.counters["failed_then_landed"] += 1
            held = self.nonces.get(sig_nonce)
            if held is None or held is flight or (held.filler and held.landed is None):
                if held is not None and held is not flight:
                    self._settle(held, TxState.REPLACED, None)
                self.nonces.relocate(flight, sig_nonce, where.tx_hash)
            elif held.state is TxState.PENDING:
                # A newer intent got the released nonce; it finds it taken and moves.
                self._spawn(self._send(held))
        self.nonces.mark_landed(flight, where)
        if flight.hash != old_hash:  # relocated: an earlier signature is the current one again
            self._emit(EventKind.REPLACED, flight, old_hash=old_hash, new_hash=flight.hash)
        self._emit_landed(flight, where)
        return True

    async def _cancel_copy(self, flight: InFlight, nonce: int) -> None:
        """Take `nonce` back from the copy of `flight` signed there (it must not land too)."""
        # Priced over the copy's fees, the highest this intent was signed at.
        fees = self.config.fees.for_resign(self._base_fee(), flight.fees, replace=True)
        if fees is None:
            self.counters["copy_not_cancelled"] += 1
            log.error("cannot cancel a duplicate copy: fee cap", extra={"nonce": nonce})
            return
        filler = Intent(to=bytes.fromhex(self.config.sender[2:]), value=0,
                        id=f"cancel-copy:{flight.intent.id}"[:128])
        await self._sign_filler(nonce, filler, fees)

    async def _on_connect(self) -> None:
        """After every (re)subscription or when polling takes over: catch up on missed heads,
        notice a rewound or replaced chain, re-send what is pending (a restarted node has lost
        its pool)."""
        self.counters["ws_connects"] += 1
        try:
            header = await self._latest_header()
        except RouterError as e:
            log.warning("catch-up after reconnect failed", extra={"error": e.diagnostics()})
            return
        tip = self.view.tip
        if await self._genesis_changed():
            await self._reset_chain(header, deep=True)
        elif tip is not None and header.number < tip.number:
            # The node's head is behind ours: it was restarted from older state or reverted.
            await self._reset_chain(header, deep=False)
        else:
            await self._on_header(header, time.perf_counter_ns())
        self._resend_stale(force=True)

    async def _seed_view(self, latest: Header, depth: int = 16) -> None:
        """Start the view at `latest` with a few of its ancestors, so that a shallow reorg just
        after a (re)start finds its common ancestor and is handled as a plain reorg."""
        chain = [latest]
        while len(chain) < depth and chain[-1].number > 0:
            try:
                parent = await self._fetch_header(chain[-1].parent_hash)
            except RouterError:
                break
            if parent is None or parent.number != chain[-1].number - 1:
                break
            chain.append(parent)
        self.view.reset(chain[-1])
        for h in reversed(chain[:-1]):
            self.view.ingest(h)

    async def _genesis_changed(self) -> bool:
        if self._genesis is None:
            return False
        try:
            return await self._genesis_hash() != self._genesis
        except RouterError:
            return False
