"""The router's state and the plumbing every part of it shares: configuration, the signer and
journal gates every signature and write goes through, and first-answer-wins lookups on the nodes.

`Router` (core.py) is built in layers, one concern per module: `RouterBase` (this), `Sender`
(_sending.py: broadcasts and what each refusal means), `Follower` (_following.py: heads, reorgs,
chain resets, recovery from the journal), `Router` (lifecycle, submit, cancel, maintenance).
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
from .broadcast import Broadcaster
from .errors import (
    ConfigError,
    JournalError,
    LeaseLost,
    MalformedInput,
    MalformedResponse,
    RouterError,
    TransportError,
)
from .events import EventBus, EventKind
from .fees import FeePolicy, Fees
from .handle import Handle
from .heads import ChainView, Header, HeadSources, HeadTracker, parse_header
from .intent import Intent
from .journal import Journal, SignatureRow, open_journal
from .nonces import InFlight, Landed, NonceManager, TxState
from .recovery import row_of
from .reorg import ReorgReactor
from .rpc import Block, RpcClient
from .signer_thread import AsyncSigner
from .signing import SignedLike, TxSigner

log = logging.getLogger("router.core")
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
    #: LANDED events are published again, once per new head, until this many confirmations.
    event_confirmations: int = 12

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
        if not 1 <= self.event_confirmations <= 10_000:
            raise ConfigError(
                f"event_confirmations must be in 1..10000, got {self.event_confirmations}")
        if not 0 < self.poll_interval < 3600:
            raise ConfigError(f"poll_interval must be in (0, 3600) seconds, got {self.poll_interval}")

    @property
    def all_ws(self) -> tuple[str, ...]:
        first = (self.ws_url,) if self.ws_url else ()
        return first + tuple(u for u in self.ws_urls if u != self.ws_url)


class RouterBase:
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
        #: Every step of every intent, for `Router.events()`, WATCH, the gateway and metrics.
        self.bus = EventBus()
        #: Recovery re-attaches intents without publishing (nothing is retroactive).
        self._quiet = False
        #: Blocks holding our landed intents, newest last: block hash -> [number, last published
        #: confirmations, flights]; LANDED is re-published per head until event_confirmations.
        self._confirming: dict[bytes, list[Any]] = {}
        #: Why our cancellation of an intent was asked for (its CANCELLED event's reason).
        self._cancel_reasons: dict[str, str] = {}
        #: Pending intents with a deadline: id -> when to cancel them (core._check_deadlines).
        self._deadlines: dict[str, float] = {}
        #: newHeads receive -> decision (reorg re-signed, or extension recorded), in microseconds.
        self.decision_us: deque[float] = deque(maxlen=4096)
        #: For metrics: reorgs by depth (blocks removed), and when the last head arrived (ns).
        self.reorg_depths: Counter[int] = Counter()
        self.last_head_ns: int | None = None
        self.endpoint_errors: dict[str, str] = {}
        self._handles: dict[str, Handle] = {}
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        #: Flights being broadcast (by id) -> set when that send is done.
        self._sending: dict[int, asyncio.Event] = {}
        self._alloc = asyncio.Lock()
        self._outbox: asyncio.Queue[tuple[InFlight, asyncio.Future[None]]] = asyncio.Queue()
        self._genesis: bytes | None = None
        self._fenced: LeaseLost | None = None
        self._unlinkable = 0
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    @property
    def fenced(self) -> bool:
        """The journal lease was lost: this router no longer signs or sends for the sender."""
        return self._fenced is not None

    # --- events -------------------------------------------------------------------------------
    # Plain parameters (no **kwargs): with no subscriber a call allocates nothing at all.

    def _emit(self, kind: EventKind, flight: InFlight, tx_hash: bytes | None = None,
              where: Landed | None = None, confirmations: int | None = None,
              reason: str | None = None, old_hash: bytes | None = None,
              new_hash: bytes | None = None) -> None:
        """Publish one step of `flight`'s intent. Fillers (the router's own gap fillers and
        copy cancellations) publish nothing: no caller submitted them."""
        if not self.bus.subscribers or self._quiet or flight.filler:
            return
        if where is not None:
            self.bus.publish(kind, flight.intent.id, flight.nonce, tx_hash=where.tx_hash,
                             block_number=where.block_number, block_hash=where.block_hash,
                             confirmations=confirmations, reason=reason)
        else:
            self.bus.publish(kind, flight.intent.id, flight.nonce, tx_hash=tx_hash, reason=reason,
                             old_hash=old_hash, new_hash=new_hash)

    def _emit_signed(self, flight: InFlight, old_hash: bytes) -> None:
        """SIGNED for the flight's current signature, and REPLACED when its hash changed."""
        if not self.bus.subscribers:
            return
        self._emit(EventKind.SIGNED, flight, flight.hash)
        if flight.hash != old_hash:
            self._emit(EventKind.REPLACED, flight, old_hash=old_hash, new_hash=flight.hash)

    def _emit_landed(self, flight: InFlight, where: Landed) -> None:
        """LANDED (or CANCELLED, when our cancellation is what landed), and track the block for
        the confirmation updates."""
        if flight.filler:
            return
        if where.tx_hash in flight.cancel_hashes:
            self._emit(EventKind.CANCELLED, flight, where=where, reason=self._cancel_reason(flight))
            return
        tip = self.view.tip
        conf = max(1, tip.number - where.block_number + 1) if tip is not None else 1
        self._emit(EventKind.LANDED, flight, where=where, confirmations=conf)
        if self._quiet or conf >= self.config.event_confirmations:
            return
        entry = self._confirming.get(where.block_hash)
        if entry is None:
            self._confirming[where.block_hash] = [where.block_number, conf, [flight]]
        elif flight not in entry[2]:
            entry[2].append(flight)

    def _cancel_reason(self, flight: InFlight) -> str:
        reason = self._cancel_reasons.get(flight.intent.id)
        if reason is not None:
            return reason
        deadline = flight.intent.deadline  # after a restart the reason is not in memory
        if deadline is not None and deadline <= time.time():
            return f"cancelled: its deadline {deadline} passed while it was pending"
        return "cancelled: our cancellation took its nonce"

    def _emit_confirmations(self) -> None:
        """Per new head: LANDED again for each tracked block that gained confirmations (one
        arithmetic step per block with no subscriber; blocks past the depth or off the
        canonical chain are dropped)."""
        tip = self.view.tip
        if not self._confirming or tip is None:
            return
        depth = self.config.event_confirmations
        listening = self.bus.subscribers > 0
        done: list[bytes] = []
        for block_hash, entry in self._confirming.items():
            number, last, flights = entry
            conf = tip.number - number + 1
            if conf <= last:
                continue
            if not self.view.is_canonical(block_hash) and self.view.canonical(number) is not None:
                done.append(block_hash)  # reorged out: REORGED_OUT was published for it
                continue
            entry[1] = conf
            if listening:
                for f in flights:
                    landed = f.landed
                    if (landed is not None and landed.block_hash == block_hash
                            and f.state is TxState.LANDED):
                        self._emit(EventKind.LANDED, f, where=landed, confirmations=conf)
            if conf >= depth:
                done.append(block_hash)
        for block_hash in done:
            del self._confirming[block_hash]

    def _fresh_fees(self, intent: Intent) -> Fees:
        """Fees of a first signature (or a move to a new nonce): the policy's, with the intent's
        overrides in place of the computed max fee / priority fee.

        Raises:
            MalformedInput: an override above the policy's max_fee_cap, or a priority fee
                override above the max fee override.
        """
        try:
            return self.config.fees.fresh(self._base_fee(), max_fee=intent.max_fee_per_gas,
                                          priority_fee=intent.max_priority_fee_per_gas)
        except ValueError as e:
            raise MalformedInput(f"intent {intent.id[:60]!r}: {e}") from None

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

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Future[None]) -> None:
        if task in self._tasks:
            self._tasks.remove(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("router task failed", exc_info=task.exception())

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

    async def _genesis_hash(self) -> bytes:
        async def one(rpc: RpcClient) -> bytes:
            obj = await rpc.call("eth_getBlockByNumber", "0x0", False)
            return parse_header(obj, "eth_getBlockByNumber(0)").hash
        return await self._any(one)

    # Defined by the upper layers (_following.py); called from here and from _sending.py.
    async def _on_header(self, header: Header, received_ns: int) -> None:
        raise NotImplementedError

    async def _on_connect(self) -> None:
        raise NotImplementedError

    def _land(self, flight: InFlight, where: Landed) -> bool:
        raise NotImplementedError
