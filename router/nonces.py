"""Per-sender nonce bookkeeping: gap-free allocation and the state of every in-flight transaction.

The manager starts from the chain's pending nonce (cross-checked across endpoints and against the
latest nonce), hands out nonces strictly in sequence, and records for each one the intent, every
signature made for it (any of them may be the one that lands), and the block it landed in. The
router acts on what it reports; the manager itself does no I/O except in `sync`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from .errors import NonceSourceError, RouterError
from .fees import Fees
from .intent import Intent
from .rpc import RpcClient

log = logging.getLogger(__name__)


class TxState(Enum):
    PENDING = "pending"  # signed and (being) broadcast, not seen in a canonical block
    LANDED = "landed"  # one of its hashes is in a canonical block
    FAILED = "failed"  # cannot be landed (node refused it for good, fee cap); `error` says why
    CANCELLED = "cancelled"  # `Router.cancel`: our zero-value self-transfer took its nonce
    REPLACED = "replaced"  # its nonce went to a transaction we did not sign, and it was not
    #                        moved: a filler or a cancelled intent (its purpose is served)


#: States an intent never leaves by itself (LANDED can still be undone by a reorg).
TERMINAL = frozenset({TxState.FAILED, TxState.CANCELLED, TxState.REPLACED})


@dataclass(frozen=True)
class Landed:
    block_number: int
    block_hash: bytes
    tx_hash: bytes


@dataclass
class InFlight:
    """One nonce of ours: the intent it carries and everything signed for it."""

    nonce: int
    intent: Intent
    fees: Fees
    raw: bytes
    hash: bytes
    hashes: list[bytes] = field(default_factory=list)
    state: TxState = TxState.PENDING
    landed: Landed | None = None
    signatures: int = 1
    broadcasts: int = 0
    last_sent_head: int = -1
    last_sent_time: float = 0.0
    error: RouterError | None = None
    #: A replacement signed ahead of time (fees, raw, hash) for the reorg path; see core.presign.
    standby: tuple[Fees, bytes, bytes] | None = None
    #: A zero-value transfer to ourselves that only fills a nonce hole (core._fill_gap).
    filler: bool = False
    #: The nonce each of our signatures was made for (a moved intent has signatures at two).
    sig_nonces: dict[bytes, int] = field(default_factory=dict)
    #: Every signature's bytes, by hash: a relocated intent re-sends the one that landed.
    sig_raws: dict[bytes, bytes] = field(default_factory=dict)
    #: `Router.cancel`: the self-transfer now signed for this nonce, and its signatures' hashes.
    cancel_intent: Intent | None = None
    cancel_hashes: set[bytes] = field(default_factory=set)

    @property
    def tx_intent(self) -> Intent:
        """What a (re-)signature of this nonce carries: the intent, or its cancellation."""
        return self.cancel_intent if self.cancel_intent is not None else self.intent

    def __repr__(self) -> str:  # raw bytes stay out of logs and reprs
        return (
            f"InFlight(nonce={self.nonce}, intent={self.intent.id}, hash={self.hash.hex()[:10]}, "
            f"state={self.state.value})"
        )


@dataclass(frozen=True)
class NonceReading:
    endpoint: str
    latest: int
    pending: int


class NonceManager:
    """Nonces of one sender. Not thread-safe: owned by the router's event loop."""

    def __init__(self, sender: str, *, max_pending: int = 1024) -> None:
        self.sender = sender
        self.max_pending = max_pending
        self.next_nonce: int | None = None
        self._by_nonce: dict[int, InFlight] = {}
        self._by_hash: dict[bytes, InFlight] = {}
        self._by_block: dict[bytes, list[InFlight]] = {}

    # --- chain nonce -------------------------------------------------------------------------

    async def sync(self, rpcs: Sequence[RpcClient]) -> int:
        """Read the account's nonce from every endpoint and set the next nonce.

        Raises:
            NonceSourceError: an endpoint reports pending < latest, a pending count implausibly far
                ahead, or endpoints disagree about the latest nonce (one of them is lying or stale).
            TransportError, MalformedResponse: from the endpoints.
        """
        readings = [await self._read(rpc) for rpc in rpcs]
        latest = {r.latest for r in readings}
        if len(latest) > 1:
            shown = ", ".join(f"{r.endpoint}: {r.latest}" for r in readings)
            raise NonceSourceError(
                f"endpoints disagree on the latest nonce of {self.sender} ({shown})"
            )
        pending = max(r.pending for r in readings)
        ours = self.next_nonce
        if ours is not None and pending < ours and any(
            f.state is TxState.PENDING for f in self._by_nonce.values()
        ):
            # The node lost (or never kept) pool entries we sent: keep our own count; the
            # router re-broadcasts what is pending.
            pending = ours
        self.next_nonce = pending if ours is None else max(ours, pending)
        return self.next_nonce

    async def _read(self, rpc: RpcClient) -> NonceReading:
        latest = await rpc.transaction_count(self.sender, "latest")
        pending = await rpc.transaction_count(self.sender, "pending")
        if pending < latest:
            raise NonceSourceError(
                f"{rpc.label} reports pending nonce {pending} below latest nonce {latest} for "
                f"{self.sender}: impossible"
            )
        if pending - latest > self.max_pending:
            raise NonceSourceError(
                f"{rpc.label} reports {pending - latest} pending transactions for {self.sender} "
                f"(latest {latest}, pending {pending}); more than max_pending={self.max_pending}"
            )
        return NonceReading(rpc.label, latest, pending)

    # --- allocation --------------------------------------------------------------------------

    def peek(self) -> int:
        if self.next_nonce is None:
            raise NonceSourceError("nonce manager not synced with the chain yet")
        return self.next_nonce

    def commit(self, flight: InFlight) -> None:
        """Record a freshly signed transaction at the next nonce (sign first, then commit, so a
        refused signature never consumes a nonce and no gap can appear)."""
        if flight.nonce != self.peek():
            raise ValueError(f"commit of nonce {flight.nonce}, expected {self.next_nonce}")
        flight.hashes = [flight.hash]
        flight.sig_nonces[flight.hash] = flight.nonce
        flight.sig_raws[flight.hash] = flight.raw
        self._by_nonce[flight.nonce] = flight
        self._by_hash[flight.hash] = flight
        self.next_nonce = flight.nonce + 1

    def uncommit(self, flight: InFlight) -> None:
        """Undo the last `commit` (its journal write failed: it must never be broadcast)."""
        if self.next_nonce != flight.nonce + 1 or self._by_nonce.get(flight.nonce) is not flight:
            raise ValueError(f"uncommit of nonce {flight.nonce}: not the last commit")
        del self._by_nonce[flight.nonce]
        for h in flight.hashes:
            self._by_hash.pop(h, None)
        self.next_nonce = flight.nonce

    def restore(self, flight: InFlight) -> None:
        """Track a flight recovered from the journal (or re-opened by a chain reset) at its own
        nonce; `next_nonce` moves past it."""
        held = self._by_nonce.get(flight.nonce)
        if held is not None and held is not flight and held.state is TxState.PENDING:
            raise ValueError(f"nonce {flight.nonce} is already held by {held!r}")
        self._by_nonce[flight.nonce] = flight
        for h in flight.hashes:
            self._by_hash[h] = flight
        if flight.landed is not None and flight.state is not TxState.PENDING:
            self._by_block.setdefault(flight.landed.block_hash, []).append(flight)
        if self.next_nonce is not None and flight.nonce >= self.next_nonce:
            self.next_nonce = flight.nonce + 1

    def relocate(self, flight: InFlight, nonce: int, tx_hash: bytes) -> int:
        """An earlier signature (`tx_hash`) of a moved or failed intent landed at `nonce`: the
        intent lives there again, with that signature as its current one (a reorg that drops it
        re-sends those bytes, never the copy's). Returns the nonce it leaves."""
        old = flight.nonce
        if self._by_nonce.get(old) is flight:
            del self._by_nonce[old]
        flight.nonce = nonce
        raw = flight.sig_raws.get(tx_hash)
        if raw is not None:
            flight.raw, flight.hash = raw, tx_hash
        flight.standby = None
        self._by_nonce[nonce] = flight
        return old

    def release_top(self, flight: InFlight) -> bool:
        """A failed flight at the highest nonce gives its nonce back to the next submit (no
        filler needed). False when something of ours is above it."""
        if self.next_nonce != flight.nonce + 1 or self._by_nonce.get(flight.nonce) is not flight:
            return False
        del self._by_nonce[flight.nonce]
        self.next_nonce = flight.nonce
        return True

    def tracks_hashes(self) -> bool:
        return bool(self._by_hash)

    def adopt(self, flight: InFlight) -> None:
        """Track a transaction at a nonce below `next_nonce` that nothing of ours holds (a gap
        filler)."""
        if flight.nonce in self._by_nonce and self._by_nonce[flight.nonce].state is not TxState.FAILED:
            raise ValueError(f"nonce {flight.nonce} is already held")
        if flight.nonce >= self.peek():
            raise ValueError(f"adopt of nonce {flight.nonce} at or above next {self.next_nonce}")
        flight.hashes = [flight.hash]
        flight.sig_nonces[flight.hash] = flight.nonce
        flight.sig_raws[flight.hash] = flight.raw
        self._by_nonce[flight.nonce] = flight
        self._by_hash[flight.hash] = flight

    def replace_signature(self, flight: InFlight, raw: bytes, tx_hash: bytes, fees: Fees) -> None:
        """A new signature for the same nonce (fee bump or re-sign after a reorg)."""
        flight.raw, flight.hash, flight.fees = raw, tx_hash, fees
        flight.standby = None  # priced against the previous signature
        flight.signatures += 1
        if tx_hash not in flight.hashes:
            flight.hashes.append(tx_hash)
        flight.sig_nonces[tx_hash] = flight.nonce
        flight.sig_raws[tx_hash] = raw
        self._by_hash[tx_hash] = flight

    def move(self, flight: InFlight, at_least: int = 0) -> int:
        """Our nonce was consumed outside the router: give the intent the next free nonce (at
        least `at_least`, the chain's nonce: everything below it is taken)."""
        old = flight.nonce
        if self._by_nonce.get(old) is flight:
            del self._by_nonce[old]
        flight.nonce = max(self.peek(), at_least)
        self._by_nonce[flight.nonce] = flight
        self.next_nonce = flight.nonce + 1
        log.warning("nonce consumed outside the router; intent moved",
                    extra={"intent": flight.intent.id, "old_nonce": old, "nonce": flight.nonce})
        return flight.nonce

    # --- chain events ------------------------------------------------------------------------

    def by_hash(self, tx_hash: bytes) -> InFlight | None:
        return self._by_hash.get(tx_hash)

    def get(self, nonce: int) -> InFlight | None:
        return self._by_nonce.get(nonce)

    def mark_landed(self, flight: InFlight, where: Landed) -> None:
        """One of the flight's signatures is in a canonical block: LANDED, or CANCELLED when it
        is the cancellation that landed."""
        if flight.landed is not None:
            self._unindex_block(flight)
        flight.landed = where
        flight.state = (TxState.CANCELLED if where.tx_hash in flight.cancel_hashes
                        else TxState.LANDED)
        flight.error = None
        self._by_block.setdefault(where.block_hash, []).append(flight)

    def unland_blocks(self, block_hashes: Iterable[bytes]) -> list[InFlight]:
        """Our transactions that were in blocks that left the canonical chain, in nonce order."""
        out: list[InFlight] = []
        for bh in block_hashes:
            for flight in self._by_block.pop(bh, ()):
                flight.landed = None
                flight.state = TxState.PENDING
                out.append(flight)
        out.sort(key=lambda f: f.nonce)
        return out

    def mark_failed(self, flight: InFlight, error: RouterError) -> None:
        flight.state = TxState.FAILED
        flight.error = error

    def pending(self) -> list[InFlight]:
        return sorted(
            (f for f in self._by_nonce.values() if f.state is TxState.PENDING),
            key=lambda f: f.nonce,
        )

    def landed_flights(self) -> list[InFlight]:
        """Flights one of whose signatures is in a block (landed, or cancelled by ours)."""
        return [f for f in self._by_nonce.values() if f.landed is not None]

    def all(self) -> list[InFlight]:
        return sorted(self._by_nonce.values(), key=lambda f: f.nonce)

    def forget_below(self, block_number: int) -> int:
        """Drop landed transactions buried below `block_number` (final for our purposes)."""
        gone = [
            f for f in self._by_nonce.values()
            if f.landed is not None and f.landed.block_number < block_number
        ]
        for f in gone:
            self._unindex_block(f)
            del self._by_nonce[f.nonce]
            for h in f.hashes:
                self._by_hash.pop(h, None)
        return len(gone)

    def _unindex_block(self, flight: InFlight) -> None:
        assert flight.landed is not None
        lst = self._by_block.get(flight.landed.block_hash)
        if lst and flight in lst:
            lst.remove(flight)
            if not lst:
                del self._by_block[flight.landed.block_hash]
