"""The router: intents in, transactions landed exactly once, through reorgs, drops and restarts.

One `Router` owns one sender. `submit(intent)` signs at the next nonce and broadcasts; the head
watcher feeds every new header through the chain view; a reorg re-signs the dropped transactions
before anything else happens (reorg.py) and re-broadcasts them in nonce order; blocks are scanned
for our hashes to know where each transaction landed; transactions that stay pending are re-sent,
and a nonce consumed outside the router moves its intent to a fresh nonce. All of it runs on one
event loop, so state changes between awaits are atomic.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from . import _hex
from .broadcast import Broadcaster
from .errors import (
    ConfigError,
    FeeTooLow,
    InvalidTransaction,
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
from .fees import FeePolicy
from .handle import Handle
from .heads import ChainUpdate, ChainView, Header, HeadTracker, HeadWatcher, parse_header
from .intent import Intent
from .nonces import InFlight, Landed, NonceManager, TxState
from .reorg import ReorgReactor
from .rpc import Block, RpcClient
from .signing import TxSigner, build_tx

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class RouterConfig:
    chain_id: int
    sender: str
    rpc_urls: tuple[str, ...]
    ws_url: str
    fees: FeePolicy = field(default_factory=FeePolicy)
    rebroadcast_after_heads: int = 3
    rebroadcast_after_seconds: float = 2.0
    head_ring: int = 128
    # Landed transactions are dropped from tracking this deep; never shallower than the ring, or
    # a reorg the ring can still see would find nothing of ours to re-land.
    forget_after_blocks: int = 128
    max_resigns: int = 8
    # How long a first broadcast waits for the previous nonce's to be accepted (ordering).
    order_wait_seconds: float = 0.25
    # Filling a nonce gap (a transaction that can never land, or a node that over-reported our
    # nonce) uses a zero-value transfer to ourselves; the signer's policy must allow it.
    fill_gaps: bool = True
    # Sign each landed transaction's reorg replacement ahead of time (one extra signature per
    # transaction, off the reorg path); the reorg path then only picks it up.
    presign_replacements: bool = True

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


class Router:
    def __init__(self, config: RouterConfig, signer: TxSigner) -> None:
        self.config = config
        self.signer = signer
        self.rpcs = [RpcClient(u) for u in config.rpc_urls]
        self.broadcaster = Broadcaster(self.rpcs)
        self.nonces = NonceManager(config.sender)
        self.view = ChainView(depth=config.head_ring)
        self.tracker = HeadTracker(self.view, self._fetch_header)
        self.reactor = ReorgReactor(self.nonces, signer, config.fees, config.chain_id)
        self.watcher = HeadWatcher(config.ws_url, self._on_header, on_connect=self._on_connect)
        self.counters: Counter[str] = Counter()
        #: newHeads receive -> decision (reorg re-signed, or extension recorded), in microseconds.
        self.decision_us: deque[float] = deque(maxlen=4096)
        self._handles: dict[str, Handle] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sending: set[int] = set()
        self._send_tail: asyncio.Future[None] | None = None
        self._started = False

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self, *, wait_connected: float = 10.0) -> None:
        """Check the endpoints' chain, read the nonce, subscribe to heads.

        An unreachable endpoint is skipped (it still gets broadcasts, and may come back); one
        that answers must serve the configured chain and agree on the nonce.

        Raises:
            ConfigError: an endpoint serves another chain.
            TransportError: no endpoint is reachable.
            NonceSourceError, MalformedResponse: from the endpoints.
        """
        reachable: list[RpcClient] = []
        for rpc in self.rpcs:
            try:
                cid = await rpc.chain_id()
            except TransportError as e:
                log.warning("endpoint unreachable at start", extra={"error": e.diagnostics()})
                continue
            if cid != self.config.chain_id:
                raise ConfigError(
                    f"{rpc.label} serves chain id {cid}, configured {self.config.chain_id}"
                )
            reachable.append(rpc)
        if not reachable:
            raise TransportError(
                f"none of the {len(self.rpcs)} RPC endpoints is reachable "
                f"({', '.join(r.label for r in self.rpcs)})"
            )
        await self.nonces.sync(reachable)
        latest = await self._latest_header()
        self.view.reset(latest)
        self._tasks = [
            asyncio.create_task(self.watcher.run(), name="router-heads"),
            asyncio.create_task(self._maintenance(), name="router-maintenance"),
        ]
        self._started = True
        try:
            await asyncio.wait_for(self.watcher.connected.wait(), wait_connected)
        except TimeoutError:
            log.warning("newHeads not connected yet; continuing", extra={"endpoint": self.watcher.label})

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.broadcaster.close()
        for rpc in self.rpcs:
            await rpc.close()

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- submit ------------------------------------------------------------------------------

    async def submit(self, intent: Intent) -> Handle:
        """Sign the intent at the next nonce and broadcast it; returns its Handle.

        A second submit with the same `intent.id` returns the first handle (nothing re-signed).
        Chain-side trouble after signing (unreachable nodes, drops) is handled by the router;
        the intent stays tracked. Raises only when nothing was signed:

        Raises:
            SignerError: the signer (its policy) refused; no nonce was consumed.
            TransportError: the signer is unreachable; no nonce was consumed.
            NonceSourceError: the router has no trustworthy nonce yet.
            MalformedInput: the id was already used for a different intent.
        """
        if not self._started:
            raise NonceSourceError("router not started")
        existing = self._handles.get(intent.id)
        if existing is not None:
            if existing.intent != intent:
                raise MalformedInput(
                    f"intent id {intent.id!r} was already used for a different intent"
                )
            return existing
        nonce = self.nonces.peek()
        fees = self.config.fees.fresh(self._base_fee())
        # No await between peek and commit: a refused signature never leaves a gap.
        signed = self.signer.sign_tx(build_tx(self.config.chain_id, nonce, intent, fees))
        flight = InFlight(nonce, intent, fees, signed.raw, signed.hash,
                          last_sent_head=self.view.tip.number if self.view.tip else -1,
                          last_sent_time=time.monotonic())  # not stale while queued for order
        self.nonces.commit(flight)
        handle = Handle(self, flight)
        self._handles[intent.id] = handle
        self.counters["submitted"] += 1
        # First broadcasts go out in nonce order: a node that sees nonce n+1 before n parks it in
        # its queued pool (geth keeps 64 per account; anvil's automine may never promote it).
        prev, done = self._send_tail, asyncio.get_running_loop().create_future()
        self._send_tail = done
        try:
            if prev is not None and not prev.done():
                # Bounded: a node that hangs must not serialise every submit behind its timeout.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(prev), self.config.order_wait_seconds)
            await self._send(flight)
        finally:
            if not done.done():
                done.set_result(None)
        return handle

    def handle(self, intent_id: str) -> Handle | None:
        return self._handles.get(intent_id)

    # --- sending -----------------------------------------------------------------------------

    async def _send(self, flight: InFlight) -> None:
        """Broadcast the flight's current bytes and act on the classified outcome. Never raises
        for chain-side trouble: the flight stays pending and is re-sent later."""
        key = id(flight)  # not the nonce: a flight may move to another nonce while being sent
        if key in self._sending:
            return
        self._sending.add(key)
        try:
            too_low = 0
            for _ in range(self.config.max_resigns):
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
                except (ReplacementUnderpriced, FeeTooLow) as e:
                    if isinstance(e, ReplacementUnderpriced) and flight.filler:
                        # The hole is occupied by a pooled transaction after all (e.g. from a
                        # previous run): never outbid it with a filler.
                        self.counters["gap_occupied"] += 1
                        self.nonces.mark_failed(flight, e)
                        return
                    if not self._bump(flight, e):
                        return
                except InvalidTransaction as e:
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
        for f in sorted(flights, key=lambda f: f.nonce):
            if f.state is TxState.PENDING:
                await self._send(f)
        self._notify()

    def _bump(self, flight: InFlight, why: RouterError) -> bool:
        """Re-sign at fees that replace the pooled transaction; False when the cap forbids it."""
        fees = self.config.fees.for_resign(self._base_fee(), flight.fees, replace=True)
        if fees is None:
            self.counters["bump_capped"] += 1
            log.warning("fee bump would exceed max_fee_cap; keeping the current signature",
                        extra={"nonce": flight.nonce, "error": why.diagnostics()})
            return False
        try:
            signed = self.signer.sign_tx(
                build_tx(self.config.chain_id, flight.nonce, flight.intent, fees))
        except RouterError as e:
            self.counters["bump_refused"] += 1
            log.warning("signer refused the fee bump", extra={"nonce": flight.nonce,
                                                               "error": e.diagnostics()})
            return False
        self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
        self.counters["bumped"] += 1
        return True

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
                self.nonces.mark_landed(flight, Landed(
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
        self.counters["nonce_moved"] += 1
        old = flight.nonce
        self.nonces.move(flight, at_least=chain_nonce)
        fees = self.config.fees.fresh(self._base_fee())
        try:
            signed = self.signer.sign_tx(
                build_tx(self.config.chain_id, flight.nonce, flight.intent, fees))
        except RouterError as e:
            await self._fail(flight, e)
            return False
        self.nonces.replace_signature(flight, signed.raw, signed.hash, fees)
        log.warning("nonce consumed outside the router", extra={
            "intent": flight.intent.id, "old_nonce": old, "nonce": flight.nonce})
        return True

    async def _fail(self, flight: InFlight, error: RouterError) -> None:
        """The flight can never land: mark it and keep later nonces executable."""
        self.nonces.mark_failed(flight, error)
        self.counters["failed"] += 1
        log.error("intent failed", extra={"intent": flight.intent.id, "nonce": flight.nonce,
                                          "error": error.diagnostics()})
        self._notify()
        if self.config.fill_gaps and not flight.filler:
            await self._fill_gap(flight.nonce)

    async def _fill_gap(self, nonce: int) -> None:
        filler = Intent(to=bytes.fromhex(self.config.sender[2:]), value=0,
                        id=f"gap-filler-{nonce}-{time.monotonic_ns()}")
        fees = self.config.fees.fresh(self._base_fee())
        try:
            signed = self.signer.sign_tx(build_tx(self.config.chain_id, nonce, filler, fees))
        except RouterError as e:
            self.counters["gap_unfilled"] += 1
            log.error("cannot fill nonce gap: signer refused",
                      extra={"nonce": nonce, "error": e.diagnostics()})
            return
        flight = InFlight(nonce, filler, fees, signed.raw, signed.hash, hashes=[signed.hash],
                          filler=True)
        self.nonces.adopt(flight)
        self._handles[filler.id] = Handle(self, flight)
        self.counters["gap_filled"] += 1
        await self._send(flight)

    # --- heads -------------------------------------------------------------------------------

    async def _on_header(self, header: Header, received_ns: int) -> None:
        self.counters["heads"] += 1
        deep = False
        try:
            update = await self.tracker.ingest(header)
        except ReorgTooDeep as e:
            log.error("reorg beyond the header ring; rebuilding", extra={"error": str(e)})
            update, deep = self.view.reset(header), True
        except RouterError as e:
            self.counters["heads_rejected"] += 1
            log.warning("header rejected: %s", e.diagnostics(), extra={"error": e.diagnostics()})
            return
        if update is None:
            self.counters["heads_duplicate"] += 1
            return
        if deep:
            self.counters["deep_reorgs"] += 1
            affected = [f for f in self.nonces.all() if f.state is TxState.LANDED]
            self.counters["resent"] += len(affected)
            for f in affected:
                self.nonces.unland_blocks([f.landed.block_hash] if f.landed else [])
            self._spawn(self._send_in_order(affected))
        elif update.is_reorg:
            results = self.reactor.react(update)
            self.decision_us.append((time.perf_counter_ns() - received_ns) / 1000)
            self.counters["reorgs"] += 1
            self.counters["resigned"] += sum(r.resigned for r in results)
            self.counters["resigned_from_standby"] += sum(r.from_standby for r in results)
            log.warning("reorg", extra={
                "depth": len(update.removed), "ancestor": update.ancestor.number
                if update.ancestor else None, "affected": [r.flight.nonce for r in results]})
            if results:
                self._spawn(self._send_in_order([r.flight for r in results]))
        else:
            self.decision_us.append((time.perf_counter_ns() - received_ns) / 1000)
        await self._scan(update)
        tip = self.view.tip
        if tip is not None:
            self.nonces.forget_below(tip.number - self.config.forget_after_blocks)
        self._resend_stale(by_heads=True)
        self._notify()

    async def _scan(self, update: ChainUpdate) -> None:
        """Record which of our transactions the added blocks hold."""
        if not self.nonces.all():
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
                if flight is not None and flight.state is not TxState.FAILED:
                    self.nonces.mark_landed(flight, Landed(h.number, h.hash, tx_hash))
                    landed.append(flight)
        if self.config.presign_replacements:
            base = self.view.tip.base_fee if self.view.tip else None
            for flight in landed:
                if flight.standby is None and flight.state is TxState.LANDED:
                    self.counters["presigned"] += self.reactor.presign(flight, base)

    async def _on_connect(self) -> None:
        """After every (re)subscription: catch up on missed heads, re-send what is pending (a
        restarted node has lost its pool)."""
        self.counters["ws_connects"] += 1
        try:
            header = await self._latest_header()
        except RouterError as e:
            log.warning("catch-up after reconnect failed", extra={"error": e.diagnostics()})
            return
        await self._on_header(header, time.perf_counter_ns())
        self._resend_stale(force=True)

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
        base = self.view.tip.base_fee if self.view.tip else None
        if base:
            for f in stale:
                # Valid but unexecutable: the base fee rose above what it pays. Re-price it
                # (a replacement, so by the bump rule at least) instead of re-sending as is.
                if f.fees.max_fee_per_gas < base and self._bump(f, FeeTooLow(
                        f"max fee {f.fees.max_fee_per_gas} below base fee {base}")):
                    self.counters["repriced"] += 1
        self.counters["resent"] += len(stale)
        self._spawn(self._send_in_order(stale))

    async def _maintenance(self) -> None:
        """Time-driven work for quiet chains: re-send pending transactions, look for nonce gaps."""
        while True:
            await asyncio.sleep(min(1.0, self.config.rebroadcast_after_seconds / 2))
            try:
                self._resend_stale()
                await self._check_gap()
            except RouterError as e:
                log.warning("nonce gap check failed", extra={"error": e.diagnostics()})
            except Exception:  # keep the time-driven work alive whatever one round hit
                log.exception("maintenance round failed")
            self._prune_handles()

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
        holes = [n for n in range(latest, oldest.nonce) if self.nonces.get(n) is None]
        if holes:
            self.counters["gaps_detected"] += 1
            log.error("nonce gap below our pending transactions", extra={
                "chain_nonce": latest, "first_pending": oldest.nonce, "holes": len(holes)})
            for n in holes:
                await self._fill_gap(n)

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
        out["watcher"] = vars(self.watcher.stats).copy()
        out["next_nonce"] = self.nonces.next_nonce
        out["pending"] = len(self.nonces.pending())
        out["tip"] = self.view.tip.number if self.view.tip else None
        if self.decision_us:
            ordered = sorted(self.decision_us)
            out["decision_us_p50"] = round(ordered[len(ordered) // 2], 1)
            out["decision_us_max"] = round(ordered[-1], 1)
        return out
