"""The gateway's transport: one aiohttp listener for JSON-RPC over HTTP POST and over WebSocket
(a GET with `Upgrade: websocket` on the same path and port).

Limits: a request body (or WebSocket message) above `max_body` bytes is refused: HTTP 413 with a
-32005 JSON-RPC error (WebSocket: the connection is closed with 1009, message too big). Malformed
JSON is -32700. Loopback only unless `allow_remote`: the gateway signs for whoever can reach it.
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .errors import INVALID_REQUEST, LIMIT_EXCEEDED, PARSE_ERROR, JsonRpcError
from .methods import Methods
from .proxy import NodeProxy
from .subscriptions import WsSession

if TYPE_CHECKING:
    from router.core import Router

__all__ = ["DEFAULT_MAX_BODY", "GatewayServer"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 1 << 20  # 1 MiB: a large batch of calls; a contract deploy is ~50 KiB


class GatewayServer:
    """JSON-RPC over HTTP and WebSocket for one router; `await start()`, `await close()`."""

    def __init__(self, router: Router, host: str = "127.0.0.1", port: int = 8645, *,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.router = router
        self.host = host
        self.port = port
        self.max_body = max_body
        self.proxy = NodeProxy(router.config.rpc_urls, router.endpoint_errors)
        self.methods = Methods(router, self.proxy)
        self._runner: web.AppRunner | None = None
        self._sessions: set[WsSession] = set()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        """Listen; with port 0 the chosen port is in `self.port` afterwards."""
        app = web.Application(client_max_size=self.max_body)
        app.router.add_route("*", "/", self._entry)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            sockets = getattr(site._server, "sockets", None) or []  # aiohttp exposes no getter
            self.port = int(sockets[0].getsockname()[1])

    async def close(self) -> None:
        for s in list(self._sessions):
            await s.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.proxy.close()

    async def _entry(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request)
        if request.method != "POST":
            return _json(_err(JsonRpcError(INVALID_REQUEST, "JSON-RPC needs POST (or a "
                                                            "WebSocket upgrade)")), 405)
        if (request.content_length or 0) > self.max_body:
            return self._too_big(request.content_length or 0)
        body = await request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            return self._too_big(len(body))
        answer = await self._answer(body)
        if answer is None:
            return web.Response(status=204)
        return _json(answer)

    def _too_big(self, size: int) -> web.Response:
        return _json(_err(JsonRpcError(
            LIMIT_EXCEEDED, f"request body of {size} bytes is above the limit of "
                            f"{self.max_body}")), 413)

    async def _answer(self, body: bytes | str, ws: WsSession | None = None) -> Any:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            return _err(JsonRpcError(PARSE_ERROR, "parse error: the body is not valid JSON"))
        return await self.methods.handle(payload, ws)

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=self.max_body, heartbeat=30)
        await ws.prepare(request)
        session = WsSession(ws, self.router, self.methods, self.proxy)
        self._sessions.add(session)
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                    answer = await self._answer(msg.data, session)
                    if answer is not None:
                        await session.send(answer)
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            self._sessions.discard(session)
            await session.close()
        return ws


def _err(e: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": None, "error": e.to_json()}


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(obj), status=status, content_type="application/json")
