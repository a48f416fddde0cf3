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
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from enclave.tx import UnsignedTx

from . import _hex
from .broadcast import Accepted, Broadcaster
from .errors import (
    ConfigError,
    FeeTooLow,
    InsufficientFunds,
    IntentFailed,
    InvalidTransaction,
    JournalError,
    LeaseLost,
    MalformedHeader,
    MalformedInput,
    MalformedResponse,
    NonceSourceError,
    NonceTooLow,
    ReorgTooDeep,
    ReplacementUnderpriced,
    RouterError,
    RpcError,
    TransportError,
)
from .fees import FeePolicy, Fees
from .handle import Handle
from .heads import ChainUpdate, ChainView, Header, HeadSources, HeadTracker, parse_header
from .intent import Intent
from .journal import Journal, SignatureRow, open_journal
from .nonces import TERMINAL, InFlight, Landed, NonceManager, TxState
from .recovery import (
    BUMP,
    CANCEL,
    FILLER,
    FIRST,
    MOVE,
    RESIGN,
    STANDBY,
    cancel_intent_for,
    flight_of,
    row_of,
    sig_of,
)
from .reorg import ReorgReactor
from .rpc import Block, RpcClient, probe
from .signer_thread import AsyncSigner
from .signing import SignedLike, TxSigner, build_tx

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RouterConfig:
    chain_id: int
    sender: str
    rpc_urls: tuple[str, ...]
    ws_url: str | None = None
    #: More WebSocket endpoints for heads (all subscribed at once); `ws_url` is the first.
    ws_urls: tuple[str, ...] = ()
    #: Heads by polling eth_getBlockByNumber("latest") while no WebSocket is up, every N s.
    poll_interval: float = 1.0
    fees: FeePolicy = field(default_factory=FeePolicy)
    rebroadcast_after_heads: int = 3
    rebroadcast_after_seconds: float = 2.0
    head_ring: int = 128
    # Landed transactions leave the working set this deep (the journal keeps them, and a chain
    # that rewinds deeper is reconciled from it); never shallower than the ring.
    forget_after_blocks: int = 128
    max_resigns: int = 8
    # Filling a nonce gap (a transaction that failed for good, or a node that over-reported our
    # nonce) uses a zero-value transfer to ourselves; the signer's policy must allow it.
    fill_gaps: bool = True
    # Sign each landed transaction's reorg replacement ahead of time (one extra signature per
    # transaction, off the reorg path); the reorg path then only picks it up.
    presign_replacements: bool = True
    #: Pin the signer thread (the busy-poll client) to this CPU.
    signer_cpu: int | None = None
    #: After a signer transport failure, calls fail at once for this long (no queueing).
    signer_cooldown: float = 0.5
    #: How far below the tip a rewound or replaced chain is checked against the journal.
    reconcile_depth: int = 10_000

    def __post_init__(self) -> None:
        if not self.rpc_urls:
            raise ConfigError("at least one RPC endpoint is required")
        if not (self.sender.startswith("0x") and len(self.sender) == 42):
            raise ConfigError(f"sender must be a 0x-hex address, got {self.sender!r:.50}")
        if self.forget_after_blocks < self.head_ring:
            raise ConfigError(
                f"forget_after_blocks ({self.forget_after_blocks}) must be at least head_ring "
                f"({self.head_ring}): a reorg within the ring must find our transactions"
            )
        if not 0 < self.poll_interval < 3600:
            raise ConfigError(f"poll_interval must be in (0, 3600) seconds, got {self.poll_interval}")

    @property
    def all_ws(self) -> tuple[str, ...]:
        first = (self.ws_url,) if self.ws_url else ()
        return first + tuple(u for u in self.ws_urls if u != self.ws_url)


class Router:
    def __init__(self, config: RouterConfig, signer: TxSigner | AsyncSigner, *,
                 journal: Journal | None = None) -> None:
        self.config = config
        self.signer = signer if isinstance(signer, AsyncSigner) else AsyncSigner(
            signer, cpu=config.signer_cpu, cooldown=config.signer_cooldown)
        self._owns_signer = not isinstance(signer, AsyncSigner)
        self.journal = journal if journal is not None else open_journal(
            "memory", base_dir=Path("."), chain_id=config.chain_id, sender=config.sender)
        self.rpcs = [RpcClient(u) for u in config.rpc_urls]
        self.broadcaster = Broadcaster(self.rpcs)
        self.nonces = NonceManager(config.sender)
        self.view = ChainView(depth=config.head_ring)
        self.tracker = HeadTracker(self.view, self._fetch_header)
        self.reactor = ReorgReactor(self.nonces, self.signer, config.fees, config.chain_id)
        self.heads = HeadSources(config.all_ws, self.rpcs, self._on_header,
                                 on_connect=self._on_connect, poll_interval=config.poll_interval)
        self.counters: Counter[str] = Counter()
        #: newHeads receive -> decision (reorg re-signed, or extension recorded), in microseconds.
        self.decision_us: deque[float] = deque(maxlen=4096)
        self.endpoint_errors: dict[str, str] = {}
        self._handles: dict[str, Handle] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[int] = set()
        self._alloc = asyncio.Lock()
        self._outbox: asyncio.Queue[tuple[InFlight, asyncio.Future[None]]] = asyncio.Queue()
        self._genesis: bytes | None = None
        self._fenced: LeaseLost | None = None
        self._unlinkable = 0
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------

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

    # --- recovery ----------------------------------------------------------------------------

    async def _recover(self) -> list[InFlight]:
        """Rebuild every intent the journal holds; returns the pending ones to re-send.

        Pending intents are re-attached with all their signatures (any may be the one that
        lands: nothing is signed at a new nonce unless the chain shows the nonce taken by a
        transaction that is not ours). Landed ones within `reconcile_depth` are checked against
        receipts; if the node's genesis changed, all of them are.
        """
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

    # --- submit and cancel -------------------------------------------------------------------

    async def submit(self, intent: Intent) -> Handle:
        """Sign the intent at the next nonce, journal it, broadcast it; returns its Handle.

        A second submit with the same `intent.id` returns the first handle (nothing re-signed),
        also after a restart (the journal knows every id). Chain-side trouble after signing
        (unreachable nodes, drops, refusals) is the router's to resolve: the handle ends in a
        terminal state the caller can see. Raises only when nothing was broadcast:

        Raises:
            SignerError: the signer (its policy) refused; no nonce was consumed.
            TransportError: the signer is unreachable (SignerUnavailable: it failed moments
                ago); no nonce was consumed.
            NonceSourceError: the router has no trustworthy nonce yet.
            MalformedInput: the id was already used for a different intent.
            JournalError: the journal could not be written (LeaseLost: another router now owns
                this sender); nothing was broadcast.
        """
        if not self._started:
            raise NonceSourceError("router not started")
        existing = self._existing(intent)
        if existing is not None:
            return existing
        async with self._alloc:
            existing = self._existing(intent)  # the same id may have been submitted meanwhile
            if existing is not None:
                return existing
            nonce = self.nonces.peek()
            fees = self.config.fees.fresh(self._base_fee())
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
            sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            # Queued under the lock: the outbox holds first broadcasts in nonce order.
            self._outbox.put_nowait((flight, sent))
        await asyncio.shield(sent)
        return handle

    def _existing(self, intent: Intent) -> Handle | None:
        existing = self._handles.get(intent.id)
        if existing is not None and existing.intent != intent:
            raise MalformedInput(f"intent id {intent.id!r} was already used for a different intent")
        return existing

    def handle(self, intent_id: str) -> Handle | None:
        return self._handles.get(intent_id)

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
            self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
            self._persist([flight], [sig_of(flight, CANCEL)])
        self.counters["cancel_requested"] += 1
        await self._send(flight)
        self._notify()
        return handle

    # --- signing and the journal -------------------------------------------------------------

    async def _sign(self, tx: UnsignedTx) -> SignedLike:
        """Every signature the router makes goes through here: refused once the lease is lost
        (another router may own this sender now)."""
        self._check_lease()
        return await self.signer.sign_tx(tx)

    def _check_lease(self) -> None:
        if self._fenced is not None:
            raise self._fenced
        if self.journal.lease_remaining() <= 0:
            raise LeaseLost("the journal lease is not renewed in time; not signing for "
                            f"{self.config.sender} until it is")

    def _persist(self, flights: Sequence[InFlight], sigs: Sequence[SignatureRow] = ()) -> None:
        """Write ahead of a broadcast: raises, and the caller must not broadcast."""
        if self._fenced is not None:
            raise self._fenced
        try:
            self.journal.write([row_of(f) for f in flights], sigs)
        except LeaseLost as e:
            self._fence(e)
            raise

    def _record(self, flights: Sequence[InFlight]) -> None:
        """Write what the chain told us (landed, failed...). Not ahead of anything: a failure is
        logged, and recovery learns the same from the chain again."""
        if not flights or self._fenced is not None:
            return
        try:
            self.journal.write([row_of(f) for f in flights])
        except LeaseLost as e:
            self._fence(e)
        except JournalError as e:
            self.counters["journal_errors"] += 1
            log.error("journal write failed", extra={"error": e.diagnostics()})

    def _fence(self, e: LeaseLost) -> None:
        if self._fenced is None:
            self._fenced = e
            self.counters["lease_lost"] += 1
            log.error("journal lease lost: this router stops signing and sending for the sender",
                      extra={"error": e.diagnostics()})

    # --- sending -----------------------------------------------------------------------------

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
        keys = [id(f) for f in todo]
        self._sending.update(keys)
        tip = self.view.tip.number if self.view.tip else -1
        now = time.monotonic()
        for f in todo:
            f.last_sent_head, f.last_sent_time = tip, now
        try:
            results = await self.broadcaster.send_batch([(f.raw, f.hash, f.nonce) for f in todo])
        except RouterError as e:
            results = [e] * len(todo)
        finally:
            self._sending.difference_update(keys)
        for f, r in zip(todo, results, strict=True):
            if isinstance(r, Accepted):
                f.broadcasts += 1
            elif f.state is TxState.PENDING:
                await self._send(f)  # act on the refusal (and retry) one by one, in order

    async def _send(self, flight: InFlight) -> None:
        """Broadcast the flight's current bytes and act on the classified outcome. Never raises
        for chain-side trouble: the flight stays pending (re-sent later) or ends terminal."""
        key = id(flight)  # not the nonce: a flight may move to another nonce while being sent
        if key in self._sending or self._fenced is not None:
            return
        self._sending.add(key)
        try:
            too_low = 0
            for _ in range(self.config.max_resigns):
                if flight.state is not TxState.PENDING:
                    return
                flight.last_sent_head = self.view.tip.number if self.view.tip else -1
                flight.last_sent_time = time.monotonic()
                try:
                    await self.broadcaster.send(flight.raw, flight.hash, nonce=flight.nonce)
                    flight.broadcasts += 1
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
            self._sending.discard(key)

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
        self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
        if flight.cancel_intent is not None:
            flight.cancel_hashes.add(signed.hash)
        self._persist([flight], [sig_of(flight, kind)])

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
            fees = self.config.fees.fresh(self._base_fee())
            try:
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
        else:
            flight.state = state
            flight.error = error
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

    # --- heads -------------------------------------------------------------------------------

    async def _on_header(self, header: Header, received_ns: int) -> None:
        self.counters["heads"] += 1
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
                    return
            self.decision_us.append((time.perf_counter_ns() - received_ns) / 1000)
            self.counters["reorgs"] += 1
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

    def _after_head(self) -> None:
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

    async def _genesis_hash(self) -> bytes:
        async def one(rpc: RpcClient) -> bytes:
            obj = await rpc.call("eth_getBlockByNumber", "0x0", False)
            return parse_header(obj, "eth_getBlockByNumber(0)").hash
        return await self._any(one)

    async def _genesis_changed(self) -> bool:
        if self._genesis is None:
            return False
        try:
            return await self._genesis_hash() != self._genesis
        except RouterError:
            return False

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

    async def _maintenance(self) -> None:
        """Time-driven work: keep the lease, re-send pending transactions, look for nonce gaps,
        retry endpoints that were down at start."""
        while True:
            await asyncio.sleep(min(1.0, self.config.rebroadcast_after_seconds / 2))
            try:
                if self._fenced is None:
                    self.journal.renew()
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

    async def _retry_endpoints(self) -> None:
        down = [r for r in self.rpcs if r.label in self.endpoint_errors]
        healthy, failed = await probe(down, self.config.chain_id)
        for rpc in healthy:
            del self.endpoint_errors[rpc.label]
            log.warning("endpoint answers again", extra={"endpoint": rpc.label})
        for rpc, err in failed:
            self.endpoint_errors[rpc.label] = err.diagnostics()

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
    # --- helpers -----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Future[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task failed", exc_info=task.exception())

    def _prune_handles(self, keep: int = 100_000) -> None:
        """Forget the oldest settled handles beyond `keep` (a long-running service)."""
        excess = len(self._handles) - keep
        if excess <= 0:
            return
        for key in [k for k, h in self._handles.items()
                    if h.flight.state is not TxState.PENDING][:excess]:
            del self._handles[key]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _base_fee(self) -> int:
        tip = self.view.tip
        return tip.base_fee or 0 if tip is not None else 0

    async def _any(self, fn: Callable[[RpcClient], Awaitable[T]]) -> T:
        """Try the endpoints in order; the first answer wins."""
        last: RouterError | None = None
        for rpc in self.rpcs:
            try:
                return await fn(rpc)
            except (TransportError, MalformedResponse) as e:
                last = e
        assert last is not None
        raise last

    # Typed wrappers: a lambda with a default argument (to bind a loop variable) defeats inference.
    async def _receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        return await self._any(lambda rpc: rpc.receipt(tx_hash))

    async def _block_by_hash(self, block_hash: bytes) -> Block | None:
        return await self._any(lambda rpc: rpc.block_by_hash(block_hash))

    async def _fetch_header(self, block_hash: bytes) -> Header | None:
        async def one(rpc: RpcClient) -> Header | None:
            obj = await rpc.call("eth_getBlockByHash", _hex.to_hex(block_hash), False)
            return None if obj is None else parse_header(obj, "eth_getBlockByHash")
        return await self._any(one)

    async def _latest_header(self) -> Header:
        async def one(rpc: RpcClient) -> Header:
            obj = await rpc.call("eth_getBlockByNumber", "latest", False)
            return parse_header(obj, "eth_getBlockByNumber(latest)")
        return await self._any(one)

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
