"""Between the router's working set (`InFlight`) and its journal rows: what is written, and how a
restarted router rebuilds every intent from what was written.

The journal is written ahead: a signature reaches the journal before it reaches any node, so after a
crash every transaction that can possibly land is known by hash, and no intent is ever signed at a
second nonce while one of its signatures may still land.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from .errors import IntentCancelled, IntentFailed, JournalCorrupt, MalformedInput
from .fees import Fees
from .intent import Intent
from .journal import IntentRow, SignatureRow
from .nonces import InFlight, Landed, TxState

log = logging.getLogger(__name__)

#: Journal kinds of signature (`SignatureRow.kind`).
FIRST, BUMP, RESIGN, MOVE, CANCEL, FILLER, STANDBY = (
    "first", "bump", "resign", "move", "cancel", "filler", "standby")


def cancel_intent_for(intent: Intent, sender: str) -> Intent:
    """The zero-value transfer to ourselves that cancels `intent` (same nonce, higher fees)."""
    return Intent(to=bytes.fromhex(sender[2:]), value=0, id=f"cancel:{intent.id}"[:128])


def row_of(flight: InFlight) -> IntentRow:
    landed = flight.landed
    return IntentRow(
        intent_id=flight.intent.id,
        intent=flight.intent.to_json(),
        nonce=flight.nonce,
        state=flight.state.value,
        tx_hash=flight.hash,
        landed_block=landed.block_number if landed else None,
        landed_block_hash=landed.block_hash if landed else None,
        landed_tx_hash=landed.tx_hash if landed else None,
        error=flight.error.diagnostics() if flight.error is not None else None,
        filler=flight.filler,
    )


def sig_of(flight: InFlight, kind: str, *, raw: bytes | None = None, tx_hash: bytes | None = None,
           fees: Fees | None = None) -> SignatureRow:
    """The journal record of the flight's current signature (or of the given one: a standby)."""
    f = fees if fees is not None else flight.fees
    return SignatureRow(
        intent_id=flight.intent.id,
        tx_hash=tx_hash if tx_hash is not None else flight.hash,
        raw=raw if raw is not None else flight.raw,
        nonce=flight.nonce,
        max_fee_per_gas=f.max_fee_per_gas,
        max_priority_fee_per_gas=f.max_priority_fee_per_gas,
        kind=kind,
    )


def flight_of(row: IntentRow, sigs: Iterable[SignatureRow], sender: str) -> InFlight:
    """Rebuild one intent's flight from its row and its signatures.

    Raises:
        JournalCorrupt: the row's intent does not parse, or its current signature is missing.
    """
    try:
        intent = Intent.from_json(row.intent)
    except MalformedInput as e:
        raise JournalCorrupt(f"journal row {row.intent_id!r}: intent does not parse ({e})") from e
    # Every signature counts, standbys included: a reorg may have sent one (it then became the
    # current signature), and a receipt lookup of one never sent simply finds nothing.
    sig_list = list(sigs)
    current = next((s for s in sig_list if s.tx_hash == row.tx_hash), None)
    if current is None:
        # Should not happen (signatures are written first); the newest one at the row's nonce
        # is as good a candidate to re-send, and every hash is still checked for receipts.
        current = next((s for s in reversed(sig_list) if s.nonce == row.nonce), None)
        if current is None:
            raise JournalCorrupt(
                f"journal row {row.intent_id!r}: no signature at its nonce {row.nonce}")
        log.warning("journal row's current signature is missing; using the newest at its nonce",
                    extra={"intent": row.intent_id})
    try:
        state = TxState(row.state)
    except ValueError as e:
        raise JournalCorrupt(f"journal row {row.intent_id!r}: unknown state {row.state!r}") from e
    flight = InFlight(
        row.nonce, intent, Fees(current.max_fee_per_gas, current.max_priority_fee_per_gas),
        current.raw, current.tx_hash, hashes=[s.tx_hash for s in sig_list], state=state,
        signatures=len(sig_list), filler=row.filler,
        sig_nonces={s.tx_hash: s.nonce for s in sig_list},
        sig_raws={s.tx_hash: s.raw for s in sig_list},
    )
    cancels = {s.tx_hash for s in sig_list if s.kind == CANCEL}
    if cancels:
        flight.cancel_hashes = cancels
        flight.cancel_intent = cancel_intent_for(intent, sender)
    if row.landed_block is not None and row.landed_block_hash is not None and row.landed_tx_hash:
        flight.landed = Landed(row.landed_block, row.landed_block_hash, row.landed_tx_hash)
    if row.error is not None:
        cls = IntentCancelled if state is TxState.CANCELLED else IntentFailed
        flight.error = cls(row.error)
    return flight


def raw_of(sigs: Iterable[SignatureRow], tx_hash: bytes) -> SignatureRow | None:
    return next((s for s in sigs if s.tx_hash == tx_hash), None)
