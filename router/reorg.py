"""Reorg reaction: which of our transactions a chain update dropped, and their re-signatures.

This is the latency-critical path (timed by tests/bench/bench_reorg.py): from a ChainUpdate in hand
to re-signed raw transactions, in nonce order, in one signer round trip (a batch), with fees from the new head's base
fee (bumped over the previous signature when the policy says the old one may still be pooled).
Broadcasting is the caller's next step.
"""

from __future__ import annotations

import logging
from itertools import repeat
from typing import NamedTuple

from .errors import RouterError
from .fees import FeePolicy, Fees
from .heads import ChainUpdate, Header
from .nonces import InFlight, NonceManager
from .signer_thread import AsyncSigner
from .signing import SignedLike, build_tx

log = logging.getLogger(__name__)


class Resigned(NamedTuple):
    flight: InFlight
    resigned: bool  # False: the old bytes are re-sent (fee cap reached or the signer refused)
    error: RouterError | None = None
    from_standby: bool = False
    #: The flight's hash before this decision (its REPLACED event's old_hash).
    old_hash: bytes | None = None
    #: The removed block the flight sat in (its REORGED_OUT event).
    removed_from: Header | None = None


class ReorgReactor:
    def __init__(
        self, nonces: NonceManager, signer: AsyncSigner, policy: FeePolicy, chain_id: int
    ) -> None:
        self.nonces = nonces
        self.signer = signer
        self.policy = policy
        self.chain_id = chain_id

    def affected(self, update: ChainUpdate) -> list[InFlight]:
        """Our transactions that sat in the blocks `update` removed (now pending again)."""
        return self.affected_blocks(update)[0]

    def affected_blocks(self, update: ChainUpdate) -> tuple[list[InFlight], list[Header]]:
        """`affected`, and the removed block each sat in (same order: nonce order)."""
        removed = update.removed
        if not removed:
            return [], []
        if len(removed) == 1:  # the common case: no pairing or second sort needed
            h = removed[0]
            flights = self.nonces.unland_blocks((h.hash,))
            return flights, [h] * len(flights)
        pairs = [(f, h) for h in removed for f in self.nonces.unland_blocks((h.hash,))]
        pairs.sort(key=lambda p: p[0].nonce)
        return [f for f, _ in pairs], [h for _, h in pairs]

    async def resign(self, flights: list[InFlight], base_fee: int | None,
                     blocks: list[Header] | None = None) -> list[Resigned]:
        """Re-sign each flight (in nonce order) with fresh fees; never raises per flight.

        Standbys signed ahead of time are taken without I/O; the others go to the signer in one
        batch (one round trip). A signer that is down or refuses leaves the old bytes in place:
        they were valid under policy when signed, and re-sending them keeps the nonce filled.
        """
        out: list[Resigned] = []
        todo: list[tuple[int, InFlight, Fees]] = []
        policy = self.policy
        base = base_fee or 0
        replace = policy.bump_on_reorg
        for_resign = policy.for_resign
        for flight, block in zip(flights, blocks if blocks is not None else repeat(None),
                                 strict=False):  # repeat() is endless
            old_hash = flight.hash
            fees = for_resign(base, flight.fees, replace=replace)
            if fees is None:
                out.append(Resigned(flight, False, None, False, old_hash, block))
                continue
            standby = flight.standby
            if standby is not None:
                sb_fees = standby[0]
                # A replacement signed ahead of time serves when it pays at least what the
                # policy asks now (it was signed under the signer's policy like any other).
                if sb_fees[0] >= fees[0] and sb_fees[1] >= fees[1]:
                    self.nonces.replace_signature(flight, standby[1], standby[2], sb_fees)
                    out.append(Resigned(flight, True, None, True, old_hash, block))
                    continue
            todo.append((len(out), flight, fees))
            out.append(Resigned(flight, False, None, False, old_hash, block))
        if todo:
            txs = [build_tx(self.chain_id, f.nonce, f.tx_intent, fees) for _, f, fees in todo]
            try:
                results: list[SignedLike | RouterError] = await self.signer.sign_tx_batch(txs)
            except RouterError as e:
                results = [e] * len(todo)
            for (i, flight, fees), tx, signed in zip(todo, txs, results, strict=True):
                placeholder = out[i]
                if isinstance(signed, RouterError):
                    out[i] = placeholder._replace(error=signed)
                elif flight.landed is not None or flight.nonce != tx.nonce:
                    # landed again or moved while the signer worked: this signature is stale
                    pass
                else:
                    self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
                    out[i] = placeholder._replace(resigned=True)
        return out

    def standby_fees(self, flight: InFlight, base_fee: int | None) -> Fees | None:
        """What the replacement a reorg would need costs, priced for the base fee one block later
        at its highest (+12.5 %); None when the cap forbids it."""
        base = base_fee or 0
        return self.policy.for_resign(base + -(-base // 8), flight.fees,
                                      replace=self.policy.bump_on_reorg)

    async def presign(self, flights: list[InFlight], base_fee: int | None) -> list[InFlight]:
        """Sign the replacements a reorg would need, ahead of time and in one batch, so that the
        reorg path only has to pick them up. Returns the flights that got a standby (the policy
        or the signer may refuse some: the reorg path then signs)."""
        todo = [(f, fees) for f in flights
                if (fees := self.standby_fees(f, base_fee)) is not None]
        if not todo:
            return []
        txs = [build_tx(self.chain_id, f.nonce, f.tx_intent, fees) for f, fees in todo]
        try:
            results = await self.signer.sign_tx_batch(txs)
        except RouterError as e:
            log.info("standby signatures not made", extra={"error": e.diagnostics()})
            return []
        done: list[InFlight] = []
        for (flight, fees), tx, signed in zip(todo, txs, results, strict=True):
            if isinstance(signed, RouterError):
                log.info("standby signature refused", extra={"nonce": flight.nonce,
                                                             "error": signed.diagnostics()})
                continue
            if flight.nonce != tx.nonce or flight.landed is None:
                continue  # moved or reorged out while the signer worked: this one is stale
            flight.standby = (fees, signed.raw, signed.hash)
            flight.sig_nonces[signed.hash] = tx.nonce
            done.append(flight)
        return done

    async def react(self, update: ChainUpdate) -> list[Resigned]:
        """affected + resign: the whole decision for one header."""
        flights, blocks = self.affected_blocks(update)
        if not flights:
            return []
        return await self.resign(flights, update.header.base_fee, blocks)
