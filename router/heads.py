"""Head watching: parse newHeads headers, keep a ring of recent canonical headers, detect reorgs.

`ChainView` is the pure, synchronous part (what the reorg benchmark times): a header that does not
extend our tip is a reorg when its parent is a header we know; it is a gap (or a deeper reorg)
when its parent is unknown, and then `HeadTracker` fetches the missing ancestors by hash until it
reaches a header of our canonical chain. Duplicates (e.g. re-sent after a reconnect) change nothing.
`HeadWatcher` keeps an `eth_subscribe("newHeads")` WebSocket open across drops and restarts;
`HeadSources` runs one per configured WebSocket at once and falls back to HTTP polling of the
latest block while none of them is subscribed, so the tip moves whichever way the node can answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import websockets

from . import _hex
from .errors import MalformedHeader, MalformedResponse, ReorgTooDeep, RouterError, TransportError
from .rpc import RpcClient, redact

log = logging.getLogger(__name__)

_MAX_NUMBER = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Header:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int
    gas_limit: int
    gas_used: int
    base_fee: int | None

    def __repr__(self) -> str:
        return f"Header(#{self.number} {self.hash.hex()[:10]} parent {self.parent_hash.hex()[:10]})"


def parse_header(obj: object, where: str = "header") -> Header:
    """Validate a JSON-RPC header (newHeads payload or block object) into a Header.

    Raises:
        MalformedHeader: a field is missing, mistyped, or the header is impossible on its own.
    """
    if not isinstance(obj, dict):
        raise MalformedHeader(f"{where}: expected an object, got {type(obj).__name__}")
    try:
        base = obj.get("baseFeePerGas")
        h = Header(
            number=_hex.quantity(obj.get("number"), f"{where}.number", max_value=_MAX_NUMBER),
            hash=_hex.fixed_bytes(obj.get("hash"), f"{where}.hash", 32),
            parent_hash=_hex.fixed_bytes(obj.get("parentHash"), f"{where}.parentHash", 32),
            timestamp=_hex.quantity(obj.get("timestamp"), f"{where}.timestamp", max_value=2**64 - 1),
            gas_limit=_hex.quantity(obj.get("gasLimit"), f"{where}.gasLimit", max_value=2**64 - 1),
            gas_used=_hex.quantity(obj.get("gasUsed"), f"{where}.gasUsed", max_value=2**64 - 1),
            base_fee=None if base is None else _hex.quantity(base, f"{where}.baseFeePerGas"),
        )
    except MalformedHeader:
        raise
    except MalformedResponse as e:
        raise MalformedHeader(str(e)) from e
    if h.hash == h.parent_hash:
        raise MalformedHeader(f"{where} #{h.number}: parentHash equals the block's own hash")
    if h.gas_used > h.gas_limit:
        raise MalformedHeader(
            f"{where} #{h.number}: gasUsed {h.gas_used} is above gasLimit {h.gas_limit}"
        )
    if h.number == 0 and any(h.parent_hash):
        raise MalformedHeader(f"{where}: genesis header with a non-zero parentHash")
    return h


class ChainUpdate(NamedTuple):
    """The result of one header: blocks that left and joined our canonical chain (both in
    ascending order). `removed` non-empty means a reorg. (A NamedTuple: built for every head.)"""

    header: Header
    added: tuple[Header, ...]
    removed: tuple[Header, ...] = ()
    ancestor: Header | None = None

    @property
    def is_reorg(self) -> bool:
        return bool(self.removed)


@dataclass(frozen=True)
class NeedParent:
    """The header's ancestry leaves the known window at `block_hash`; fetch it and retry."""

    block_hash: bytes


DUPLICATE = None


@dataclass
class ChainView:
    """A ring of the last `depth` canonical headers plus side headers seen recently."""

    depth: int = 128
    tip: Header | None = None
    _canon: dict[int, bytes] = field(default_factory=dict)
    _known: dict[bytes, Header] = field(default_factory=dict)

    def canonical(self, number: int) -> Header | None:
        block_hash = self._canon.get(number)
        return None if block_hash is None else self._known[block_hash]

    def is_canonical(self, block_hash: bytes) -> bool:
        h = self._known.get(block_hash)
        return h is not None and self._canon.get(h.number) == block_hash

    def remember(self, header: Header) -> None:
        """Keep a fetched (not yet canonical) ancestor so the next `ingest` can walk through it."""
        self._known.setdefault(header.hash, header)

    def reset(self, header: Header) -> ChainUpdate:
        """Forget everything and start over from `header` (start-up, or a reorg past the ring)."""
        removed = tuple(self._known[self._canon[n]] for n in sorted(self._canon))
        self._canon.clear()
        self._known.clear()
        self._known[header.hash] = header
        self._canon[header.number] = header.hash
        self.tip = header
        return ChainUpdate(header=header, added=(header,), removed=removed)

    def ingest(self, header: Header) -> ChainUpdate | NeedParent | None:
        """Apply one header. Returns the update, NeedParent, or None for a duplicate.

        Raises:
            MalformedHeader: the header contradicts its known parent (number or timestamp).
            ReorgTooDeep: its ancestry leaves the ring without meeting our canonical chain.
        """
        tip = self.tip
        if tip is None:
            return self.reset(header)
        # Fast path (every ordinary block): extends our tip.
        if header.parent_hash == tip.hash:
            self._check_link(tip, header)
            self._known[header.hash] = header
            self._canon[header.number] = header.hash
            self.tip = header
            if len(self._known) > 2 * self.depth + 8:
                self._prune()
            return ChainUpdate(header, (header,), (), tip)
        if self._canon.get(header.number) == header.hash:
            return DUPLICATE
        # Walk back through known headers until one is canonical: that is the common ancestor.
        branch = [header]
        cursor = header
        while True:
            parent = self._known.get(cursor.parent_hash)
            if parent is None:
                if cursor.number - 1 < min(self._canon, default=tip.number):
                    # Below the oldest header we know: no common ancestor can be found by
                    # walking further (a view started moments ago, or a chain that replaced ours).
                    raise ReorgTooDeep(
                        f"header #{header.number}: its ancestry leaves the known window at "
                        f"#{cursor.number - 1}"
                    )
                if tip.number - cursor.number >= self.depth or len(branch) > self.depth:
                    raise ReorgTooDeep(
                        f"header #{header.number}: no common ancestor within {self.depth} blocks"
                    )
                return NeedParent(cursor.parent_hash)
            self._check_link(parent, cursor)
            if self._canon.get(parent.number) == parent.hash:
                break
            branch.append(parent)
            cursor = parent
            if len(branch) > self.depth:
                raise ReorgTooDeep(f"header #{header.number}: side branch longer than {self.depth}")
        branch.reverse()
        ancestor = parent
        canon, known = self._canon, self._known
        removed = []
        for n in range(ancestor.number + 1, tip.number + 1):
            gone = canon.pop(n, None)
            if gone is not None:
                removed.append(known[gone])
        for h in branch:
            known[h.hash] = h
            canon[h.number] = h.hash
        self.tip = header
        if len(known) > 2 * self.depth + 8:
            self._prune()
        return ChainUpdate(header, tuple(branch), tuple(removed), ancestor)

    @staticmethod
    def _check_link(parent: Header, child: Header) -> None:
        if child.number != parent.number + 1:
            raise MalformedHeader(
                f"header #{child.number}: its parent {parent.hash.hex()[:10]} is "
                f"#{parent.number} (expected #{child.number - 1})"
            )
        if child.timestamp < parent.timestamp:
            raise MalformedHeader(
                f"header #{child.number}: timestamp {child.timestamp} is before its parent's "
                f"{parent.timestamp}"
            )

    def _prune(self) -> None:
        assert self.tip is not None
        floor = self.tip.number - self.depth
        for n in [n for n in self._canon if n < floor]:
            del self._canon[n]
        for k in [k for k, h in self._known.items() if h.number < floor]:
            del self._known[k]


FetchHeader = Callable[[bytes], Awaitable[Header | None]]


class HeadTracker:
    """ChainView plus ancestor fetching: turns any header into a ChainUpdate (or None)."""

    def __init__(self, view: ChainView, fetch: FetchHeader) -> None:
        self.view = view
        self._fetch = fetch

    async def ingest(self, header: Header) -> ChainUpdate | None:
        """Raises MalformedHeader, ReorgTooDeep, or the fetch's RouterError."""
        for _ in range(self.view.depth + 2):
            result = self.view.ingest(header)
            if not isinstance(result, NeedParent):
                return result
            parent = await self._fetch(result.block_hash)
            if parent is None:
                raise MalformedResponse(
                    f"header #{header.number}: ancestor {result.block_hash.hex()[:10]} is unknown "
                    "to the node"
                )
            if parent.hash != result.block_hash:
                raise MalformedHeader(
                    f"asked for block {result.block_hash.hex()[:10]}, got {parent.hash.hex()[:10]}"
                )
            self.view.remember(parent)
        raise ReorgTooDeep(f"header #{header.number}: ancestry not resolved")


def rpc_header_fetcher(rpc: RpcClient) -> FetchHeader:
    async def fetch(block_hash: bytes) -> Header | None:
        obj = await rpc.call("eth_getBlockByHash", _hex.to_hex(block_hash), False)
        return None if obj is None else parse_header(obj, "eth_getBlockByHash")

    return fetch


@dataclass
class WatcherStats:
    connects: int = 0
    disconnects: int = 0
    heads: int = 0
    malformed: int = 0
    errors: int = 0


OnHeader = Callable[[Header, int], Awaitable[None]]
OnConnect = Callable[[], Awaitable[None]]


class HeadWatcher:
    """Keeps an `eth_subscribe("newHeads")` subscription alive and hands every valid header
    (with its receive time, ns) to `on_header`. Malformed messages are logged, counted and
    skipped; a dropped connection is re-opened with backoff and `on_connect` runs after each
    (re)subscription so the owner can catch up on what it missed."""

    def __init__(
        self,
        ws_url: str,
        on_header: OnHeader,
        *,
        on_connect: OnConnect | None = None,
        backoff: tuple[float, float] = (0.05, 2.0),
        on_disconnect: Callable[[], None] | None = None,
    ) -> None:
        self._url = ws_url
        self._on_disconnect = on_disconnect
        self.label = redact(ws_url)
        self._on_header = on_header
        self._on_connect = on_connect
        self._backoff = backoff
        self.stats = WatcherStats()
        self.connected = asyncio.Event()
        self._ws: Any = None

    async def run(self) -> None:
        delay = self._backoff[0]
        while True:
            try:
                async with websockets.connect(
                    self._url, max_size=8 * 1024 * 1024, open_timeout=5
                ) as ws:
                    self._ws = ws
                    sub_id = await self._subscribe(ws)
                    self.stats.connects += 1
                    log.info("newHeads subscribed", extra={"endpoint": self.label})
                    self.connected.set()
                    delay = self._backoff[0]
                    if self._on_connect is not None:
                        await self._on_connect()
                    async for message in ws:
                        received = time.perf_counter_ns()
                        header = self._decode(message, sub_id)
                        if header is not None:
                            self.stats.heads += 1
                            try:
                                await self._on_header(header, received)
                            except (asyncio.CancelledError, websockets.WebSocketException):
                                raise
                            except Exception:  # a bug in one head must not stop the watcher
                                log.exception("head handler failed",
                                              extra={"number": header.number})
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, TransportError, TimeoutError) as e:
                self.stats.errors += 1
                log.warning(
                    "newHeads connection lost, reconnecting",
                    extra={"endpoint": self.label, "error": f"{type(e).__name__}: {e}"},
                )
            finally:
                self._ws = None
                was_connected = self.connected.is_set()
                self.connected.clear()
                if was_connected:
                    self.stats.disconnects += 1
                    if self._on_disconnect is not None:
                        self._on_disconnect()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff[1])

    async def drop(self) -> None:
        """Close the current connection (tests and operators use it to force a reconnect)."""
        if self._ws is not None:
            await self._ws.close()

    async def _subscribe(self, ws: Any) -> str:
        await ws.send(json.dumps(
            {"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}
        ))
        raw = await asyncio.wait_for(ws.recv(), 5)
        try:
            answer = json.loads(raw)
        except (TypeError, ValueError) as e:
            raise TransportError(f"eth_subscribe answer from {self.label} is not JSON") from e
        sub_id = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(sub_id, str):
            raise TransportError(f"eth_subscribe refused by {self.label}: {str(answer)[:120]}")
        return sub_id

    def _decode(self, message: str | bytes, sub_id: str) -> Header | None:
        try:
            msg = json.loads(message)
            if (
                not isinstance(msg, dict)
                or msg.get("method") != "eth_subscription"
                or not isinstance(msg.get("params"), dict)
            ):
                raise MalformedResponse("not an eth_subscription notification")
            params = msg["params"]
            if params.get("subscription") != sub_id:
                raise MalformedResponse("notification for an unknown subscription")
            return parse_header(params.get("result"), "newHeads")
        except (ValueError, RouterError) as e:
            self.stats.malformed += 1
            log.warning(
                "newHeads message rejected: %s",
                str(e)[:200],
                extra={"endpoint": self.label, "error": str(e)[:200]},
            )
            return None


@dataclass
class PollStats:
    polls: int = 0
    answers: int = 0
    errors: int = 0


@dataclass
class SourcesStats:
    """A snapshot of `HeadSources` counters: totals, then one entry per source (`sources`)."""

    connects: int
    disconnects: int
    heads: int
    duplicates: int
    malformed: int
    errors: int
    polls: int
    polling_active: bool
    takeovers: int
    sources: dict[str, dict[str, int | bool]]


class HeadSources:
    """Heads from every configured WebSocket at once and, while none is subscribed, from HTTP
    polling of `eth_getBlockByNumber("latest", false)` on the RPC endpoints.

    Polling takes over when no WebSocket has been subscribed for `takeover_after` seconds (default
    `poll_interval`: a WebSocket that drops and reconnects at once does not flip the source), and
    stops as soon as one subscribes again. `on_connect` runs after every WebSocket (re)subscription
    and after the first answered poll of each takeover, so the owner catches up and re-sends.

    `on_header` and `on_connect` never run concurrently (one lock): the owner sees one header at a
    time, as with a single `HeadWatcher`. A header whose hash is the one last delivered for its
    number is not delivered again (several sources send the same heads); a header that returns
    after another one took its number (a flip-flop reorg) is delivered.
    """

    #: How many block numbers back the duplicate filter remembers.
    _RECENT = 256

    def __init__(
        self,
        ws_urls: Sequence[str],
        rpcs: Sequence[RpcClient],
        on_header: OnHeader,
        *,
        on_connect: OnConnect | None = None,
        poll_interval: float = 1.0,
        backoff: tuple[float, float] = (0.05, 2.0),
        takeover_after: float | None = None,
    ) -> None:
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be positive, got {poll_interval}")
        if not ws_urls and not rpcs:
            raise ValueError("no head source: give at least one ws URL or RPC endpoint")
        self._on_header = on_header
        self._on_connect = on_connect
        self.poll_interval = poll_interval
        self._takeover_after = poll_interval if takeover_after is None else takeover_after
        self._rpcs = list(rpcs)
        self.watchers = [
            HeadWatcher(
                url,
                self._ws_header,
                on_connect=self._ws_connected,
                backoff=backoff,
                on_disconnect=self._ws_disconnected,
            )
            for url in ws_urls
        ]
        self.connected = asyncio.Event()
        self.polling_active = False
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._down_since = time.monotonic()
        self._poll_connect_due = False
        self._poll_stats = [PollStats() for _ in self._rpcs]
        self._poll_ok = [True] * len(self._rpcs)
        self._inflight: dict[int, asyncio.Task[None]] = {}
        self._last_hash: dict[int, bytes] = {}
        self._delivered = 0
        self._duplicates = 0
        self._takeovers = 0
        parts = []
        if self.watchers:
            first = self.watchers[0].label
            parts.append(first if len(self.watchers) == 1 else f"{first} +{len(self.watchers) - 1} ws")
        if self._rpcs:
            parts.append("poll fallback" if self.watchers else
                         f"polling {self._rpcs[0].label}"
                         + (f" +{len(self._rpcs) - 1}" if len(self._rpcs) > 1 else ""))
        self.label = ", ".join(parts)

    @property
    def stats(self) -> SourcesStats:
        sources: dict[str, dict[str, int | bool]] = {}
        for i, w in enumerate(self.watchers):
            sources[f"{w.label} #{i}"] = {**vars(w.stats), "subscribed": w.connected.is_set()}
        for i, (rpc, st) in enumerate(zip(self._rpcs, self._poll_stats, strict=True)):
            sources[f"poll {rpc.label} #{i}"] = dict(vars(st))
        ws = [w.stats for w in self.watchers]
        return SourcesStats(
            connects=sum(s.connects for s in ws),
            disconnects=sum(s.disconnects for s in ws),
            heads=self._delivered,
            duplicates=self._duplicates,
            malformed=sum(s.malformed for s in ws),
            errors=sum(s.errors for s in ws) + sum(s.errors for s in self._poll_stats),
            polls=sum(s.polls for s in self._poll_stats),
            polling_active=self.polling_active,
            takeovers=self._takeovers,
            sources=sources,
        )

    async def run(self) -> None:
        """Run every source until cancelled. Source trouble is logged and counted, never raised."""
        tasks = [asyncio.create_task(w.run(), name=f"heads-ws-{i}")
                 for i, w in enumerate(self.watchers)]
        tasks.append(asyncio.create_task(self._poll_loop(), name="heads-poll"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            self._stop_polls()
            for t in self._inflight.values():
                t.cancel()
            await asyncio.gather(*tasks, *self._inflight.values(), return_exceptions=True)

    async def drop(self) -> None:
        """Close every WebSocket (tests and operators use it to force reconnects)."""
        for w in self.watchers:
            await w.drop()

    # --- delivery -----------------------------------------------------------------------------

    async def _deliver(self, header: Header, received_ns: int) -> None:
        async with self._lock:
            if self._last_hash.get(header.number) == header.hash:
                self._duplicates += 1
                return
            self._last_hash[header.number] = header.hash
            if len(self._last_hash) > 2 * self._RECENT:
                floor = header.number - self._RECENT
                for n in [n for n in self._last_hash if n < floor]:
                    del self._last_hash[n]
            self._delivered += 1
            try:
                await self._on_header(header, received_ns)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in one head must not stop its source
                log.exception("head handler failed", extra={"number": header.number})

    async def _connect_hook(self, source: str) -> None:
        if self._on_connect is None:
            return
        async with self._lock:
            try:
                await self._on_connect()
            except asyncio.CancelledError:
                raise
            except Exception:  # a failed catch-up must not stop the source; the next head retries
                log.exception("on_connect handler failed", extra={"endpoint": source})

    # --- WebSockets ---------------------------------------------------------------------------

    async def _ws_header(self, header: Header, received_ns: int) -> None:
        await self._deliver(header, received_ns)

    async def _ws_connected(self) -> None:
        self.connected.set()
        if self.polling_active:
            log.info("a WebSocket is subscribed again; polling stops")
            self._stop_polls()
        self._changed.set()
        await self._connect_hook("ws")

    def _ws_disconnected(self) -> None:
        if not self._ws_up():
            self._down_since = time.monotonic()
            self.connected.clear()
        self._changed.set()

    def _ws_up(self) -> bool:
        return any(w.connected.is_set() for w in self.watchers)

    # --- polling ------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        if not self._rpcs:
            return
        while True:
            # No await between a check and `_changed.clear()`: a change cannot be missed.
            if self._ws_up():
                self._stop_polls()
                self._changed.clear()
                await self._changed.wait()
                continue
            if not self.polling_active:
                wait = (self._takeover_after if self.watchers else 0.0) - (
                    time.monotonic() - self._down_since)
                if wait > 0:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), wait)
                    continue
                self.polling_active = True
                self._poll_connect_due = True
                self._takeovers += 1
                log.warning("no WebSocket subscribed; polling for heads",
                            extra={"endpoint": self.label, "interval": self.poll_interval})
            for i, rpc in enumerate(self._rpcs):
                prev = self._inflight.get(i)
                if prev is None or prev.done():  # a hung endpoint gets no second poll in flight
                    self._inflight[i] = asyncio.create_task(self._poll_one(i, rpc))
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.poll_interval)

    def _stop_polls(self) -> None:
        self.polling_active = False
        self._poll_connect_due = False
        # In-flight polls are not cancelled: one may be inside on_header, which must not be cut
        # in half; they see polling_active False and deliver nothing new.

    async def _poll_one(self, i: int, rpc: RpcClient) -> None:
        st = self._poll_stats[i]
        st.polls += 1
        try:
            obj = await rpc.call("eth_getBlockByNumber", "latest", False)
            header = parse_header(obj, f"eth_getBlockByNumber(latest) from {rpc.label}")
        except RouterError as e:
            st.errors += 1
            if self._poll_ok[i]:  # log the first failure, not every poll of an outage
                log.warning("head poll failed", extra={"endpoint": rpc.label,
                                                       "error": e.diagnostics()})
            self._poll_ok[i] = False
            return
        received = time.perf_counter_ns()
        st.answers += 1
        self._poll_ok[i] = True
        if not self.polling_active:
            return
        self.connected.set()
        if self._poll_connect_due:
            self._poll_connect_due = False
            await self._connect_hook(f"poll {rpc.label}")
        await self._deliver(header, received)
