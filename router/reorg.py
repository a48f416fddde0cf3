"""Reorg reaction: which of our transactions a chain update dropped, and their re-signatures.

This is the latency-critical path (timed by tests/bench/bench_reorg.py): from a ChainUpdate in hand
to re-signed raw transactions, synchronously, in nonce order, with fees from the new head's base
fee (bumped over the previous signature when the policy says the old one may still be pooled).
Broadcasting is the caller's next step.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from .errors import RouterError
from .fees import FeePolicy
from .heads import ChainUpdate
from .nonces import InFlight, NonceManager
from .signing import TxSigner, build_tx

log = logging.getLogger(__name__)


class Resigned(NamedTuple):
    flight: InFlight
    resigned: bool  # False: the old bytes are re-sent (fee cap reached or the signer refused)
    error: RouterError | None = None
    from_standby: bool = False


class ReorgReactor:
    def __init__(
        self, nonces: NonceManager, signer: TxSigner, policy: FeePolicy, chain_id: int
    ) -> None:
        self.nonces = nonces
        self.signer = signer
        self.policy = policy
        self.chain_id = chain_id

    def affected(self, update: ChainUpdate) -> list[InFlight]:
        """Our transactions that sat in the blocks `update` removed (now pending again)."""
        if not update.removed:
            return []
        return self.nonces.unland_blocks([h.hash for h in update.removed])

    def resign(self, flights: list[InFlight], base_fee: int | None) -> list[Resigned]:
        """Re-sign each flight (in nonce order) with fresh fees; never raises per flight."""
        out: list[Resigned] = []
        policy = self.policy
        base = base_fee or 0
        replace = policy.bump_on_reorg
        for_resign = policy.for_resign
        for flight in flights:
            fees = for_resign(base, flight.fees, replace=replace)
            if fees is None:
                out.append(Resigned(flight, False))
                continue
            standby = flight.standby
            if standby is not None:
                sb_fees = standby[0]
                # A replacement signed ahead of time serves when it pays at least what the
                # policy asks now (it was signed under the signer's policy like any other).
                if sb_fees[0] >= fees[0] and sb_fees[1] >= fees[1]:
                    self.nonces.replace_signature(flight, standby[1], standby[2], sb_fees)
                    out.append(Resigned(flight, True, None, True))
                    continue
            try:
                signed = self.signer.sign_tx(build_tx(self.chain_id, flight.nonce, flight.intent, fees))
            except RouterError as e:
                # The old signature was valid under policy when it was made; re-sending it keeps
                # the nonce filled instead of leaving a gap.
                out.append(Resigned(flight, False, e))
                continue
            self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
            out.append(Resigned(flight, True))
        return out

    def presign(self, flight: InFlight, base_fee: int | None) -> bool:
        """Sign the replacement a reorg would need, ahead of time, priced for the base fee one
        block later at its highest (+12.5 %), so that the reorg path only has to pick it up.
        Returns False when the policy or the signer refuses (the reorg path then signs)."""
        base = base_fee or 0
        fees = self.policy.for_resign(base + -(-base // 8), flight.fees,
                                      replace=self.policy.bump_on_reorg)
        if fees is None:
            return False
        try:
            signed = self.signer.sign_tx(build_tx(self.chain_id, flight.nonce, flight.intent, fees))
        except RouterError as e:
            log.info("standby signature refused", extra={"nonce": flight.nonce,
                                                         "error": e.diagnostics()})
            return False
        flight.standby = (fees, signed.raw, signed.hash)
        return True

    def react(self, update: ChainUpdate) -> list[Resigned]:
        """affected + resign: the whole synchronous decision for one header."""
        flights = self.affected(update)
        if not flights:
            return []
        return self.resign(flights, update.header.base_fee)
