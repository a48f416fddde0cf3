"""WebSocket subscriptions: `eth_subscribe("sentinel_intents"[, id or hash])` streams the router's
intent events (`IntentEvent.to_json()`) as `eth_subscription` notifications; `eth_subscribe
("newHeads")` is served from the router's own canonical view (a new tip, reorgs included, as the
node's block header without transactions).

A subscriber that falls behind the router's event bus loses its subscription rather than slowing
the router: it gets one last notification `{"kind": "events_lost", "reason": ...}` (re-read states
with sentinel_intentStatus and subscribe again).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

from router.events import EventsLost

from .errors import INVALID_PARAMS, LIMIT_EXCEEDED, JsonRpcError, invalid_params
from .proxy import NodeProxy

if TYPE_CHECKING:
    from router.core import Router

    from .methods import Methods

__all__ = ["MAX_SUBSCRIPTIONS", "WsSession"]

log = logging.getLogger(__name__)

MAX_SUBSCRIPTIONS = 100
#: How often newHeads looks at the router's tip (it follows heads itself; this only relays).
HEAD_POLL = 0.05


class WsSession:
    """One WebSocket connection's subscriptions; `close()` ends them all."""

    def __init__(self, ws: web.WebSocketResponse, router: Router, methods: Methods,
                 proxy: NodeProxy) -> None:
        self._ws = ws
        self._router = router
        self._methods = methods
        self._proxy = proxy
        self._subs: dict[str, asyncio.Task[None]] = {}
        self._send_lock = asyncio.Lock()

    async def send(self, obj: Any) -> None:
        async with self._send_lock:
            await self._ws.send_str(json.dumps(obj))

    async def subscribe(self, params: list[Any]) -> str:
        """Start a subscription; returns its id.

        Raises:
            JsonRpcError: -32602 unknown kind or bad argument; -32005 too many on this connection.
        """
        if not params or not isinstance(params[0], str):
            raise JsonRpcError(INVALID_PARAMS, "eth_subscribe: params[0] must name the "
                                               "subscription (sentinel_intents, newHeads)")
        kind = params[0]
        if len(self._subs) >= MAX_SUBSCRIPTIONS:
            raise JsonRpcError(LIMIT_EXCEEDED, f"at most {MAX_SUBSCRIPTIONS} subscriptions "
                                               "per connection")
        sub_id = "0x" + uuid.uuid4().hex
        if kind == "sentinel_intents":
            if len(params) > 2:
                raise JsonRpcError(INVALID_PARAMS, "sentinel_intents takes at most one argument")
            intent_id = None
            if len(params) == 2:
                intent_id = self._methods.intent_status(params[1])["id"]
            sub = self._router.events(intent_id)
            self._subs[sub_id] = asyncio.create_task(self._intents(sub_id, sub))
        elif kind == "newHeads":
            if len(params) > 1:
                raise JsonRpcError(INVALID_PARAMS, "newHeads takes no argument")
            self._subs[sub_id] = asyncio.create_task(self._heads(sub_id))
        else:
            raise invalid_params("params[0]", f"subscription {kind[:40]!r} is not supported "
                                              "(sentinel_intents, newHeads)")
        return sub_id

    def unsubscribe(self, sub_id: object) -> bool:
        task = self._subs.pop(sub_id, None) if isinstance(sub_id, str) else None
        if task is None:
            return False
        task.cancel()
        return True

    async def close(self) -> None:
        tasks = list(self._subs.values())
        self._subs.clear()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _notify(self, sub_id: str, result: Any) -> None:
        await self.send({"jsonrpc": "2.0", "method": "eth_subscription",
                         "params": {"subscription": sub_id, "result": result}})

    async def _intents(self, sub_id: str, sub: Any) -> None:
        try:
            async for event in sub:
                await self._notify(sub_id, event.to_json())
        except EventsLost as e:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self._notify(sub_id, {"kind": "events_lost", "reason": e.diagnostics()})
        except (ConnectionError, RuntimeError):  # the client went away mid-send
            pass
        finally:
            sub.close()
            self._subs.pop(sub_id, None)

    async def _heads(self, sub_id: str) -> None:
        last: bytes | None = None
        try:
            while True:
                tip = self._router.view.tip
                if tip is not None and tip.hash != last:
                    last = tip.hash
                    try:
                        block = await self._proxy.call("eth_getBlockByHash",
                                                       ["0x" + tip.hash.hex(), False])
                    except JsonRpcError as e:
                        log.warning("newHeads: header lookup failed",
                                    extra={"error": e.diagnostics()})
                        block = None
                    if isinstance(block, dict):
                        block.pop("transactions", None)
                        await self._notify(sub_id, block)
                await asyncio.sleep(HEAD_POLL)
        except (ConnectionError, RuntimeError):
            pass
        finally:
            self._subs.pop(sub_id, None)
