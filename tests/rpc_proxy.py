"""Loopback proxies between the router and anvil that can tamper with what the node says.

`RpcProxy` forwards JSON-RPC over HTTP and lets a test rewrite answers per method;
`WsProxy` relays the WebSocket and lets a test inject raw notifications into the stream.
Both are real servers on 127.0.0.1, so the router's real HTTP and WebSocket code paths run.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import rlp
import websockets
from aiohttp import web

# tamper(method, request_obj, answer_obj) -> bytes | dict | None (None: forward unchanged)
Tamper = Callable[[str, dict[str, Any], dict[str, Any]], "bytes | dict[str, Any] | None"]
# batch_tamper(request_list, answer_list) -> bytes | object | None (None: forward unchanged)
BatchTamper = Callable[[list[Any], Any], "bytes | object | None"]

BAD_GATEWAY = b"<html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"


class RpcProxy:
    def __init__(
        self, upstream: str, tamper: Tamper | None = None, hang: frozenset[str] = frozenset()
    ) -> None:
        self.upstream = upstream
        self.tamper = tamper
        #: Methods this proxy never answers (a node that accepts the request and hangs).
        self.hang = hang
        self._closing = asyncio.Event()
        self.calls: list[str] = []
        #: Rewrites whole batch answers (a list request); `tamper` sees single requests only.
        self.batch_tamper: BatchTamper | None = None
        #: While set, every request is answered with this HTTP status and an HTML page (a gateway
        #: whose node is down), without reaching the node.
        self.fail_status: int | None = None
        #: Seconds every request waits before it is forwarded (a distant node).
        self.delay = 0.0
        #: Nonces of the eth_sendRawTransaction requests, in the order they arrived.
        self.sent_nonces: list[int] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> RpcProxy:
        app = web.Application()
        app.router.add_post("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closing.set()
        if self._session:
            await self._session.close()
        if self._runner:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        req = json.loads(body)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, body=BAD_GATEWAY, content_type="text/html")
        for r in req if isinstance(req, list) else [req]:
            if r.get("method") == "eth_sendRawTransaction":
                nonce = _nonce_of(r["params"][0])
                if nonce is not None:
                    self.sent_nonces.append(nonce)
        if self.delay:
            await asyncio.sleep(self.delay)
        if isinstance(req, list):
            return await self._handle_batch(body, req)
        self.calls.append(req.get("method", "?"))
        if req.get("method") in self.hang:
            await self._closing.wait()
            return web.Response(status=503)
        answer = await self._forward(body)
        if self.tamper is not None:
            out = self.tamper(req.get("method", ""), req, json.loads(answer))
            if isinstance(out, bytes):
                answer = out
            elif isinstance(out, dict):
                answer = json.dumps(out).encode()
        return web.Response(body=answer, content_type="application/json")

    async def _forward(self, body: bytes) -> bytes:
        assert self._session is not None
        async with self._session.post(
            self.upstream, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return await resp.read()

    async def _handle_batch(self, body: bytes, req: list[Any]) -> web.Response:
        self.calls.append("batch:" + ",".join(str(r.get("method", "?")) for r in req))
        if any(r.get("method") in self.hang for r in req):
            await self._closing.wait()
            return web.Response(status=503)
        answer = await self._forward(body)
        if self.batch_tamper is not None:
            out = self.batch_tamper(req, json.loads(answer))
            if isinstance(out, bytes):
                answer = out
            elif out is not None:
                answer = json.dumps(out).encode()
        return web.Response(body=answer, content_type="application/json")


def _nonce_of(raw_hex: str) -> int | None:
    """The nonce of a signed typed or legacy transaction; None for bytes that are not one (tests
    send garbage on purpose)."""
    try:
        raw = bytes.fromhex(raw_hex[2:])
        fields = rlp.decode(raw[1:] if raw[0] < 0x80 else raw)
        return int.from_bytes(fields[1] if raw[0] < 0x80 else fields[0], "big")
    except (ValueError, IndexError, TypeError, rlp.exceptions.DecodingError):
        return None


class WsProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.url = ""
        self._server: Any = None
        self._clients: list[Any] = []
        self.sub_ids: list[str] = []
        #: While set, notifications from the node are dropped (missed heads).
        self.muted = False
        self.lost = 0
        #: While set, WebSocket upgrades are refused with HTTP 503 (the node's ws port is down
        #: while its HTTP side answers).
        self.refuse = False
        self.upgrades = 0

    async def __aenter__(self) -> WsProxy:
        self._server = await websockets.serve(
            self._handle, "127.0.0.1", 0, process_request=self._gate
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _gate(self, connection: Any, request: Any) -> Any:
        self.upgrades += 1
        if self.refuse:
            return connection.respond(503, "WebSocket endpoint down\n")
        return None

    async def kick(self) -> None:
        """Close every client connection (a node or load balancer dropping its WebSockets)."""
        for c in list(self._clients):
            await c.close()

    async def _handle(self, client: Any) -> None:
        async with websockets.connect(self.upstream) as up:
            self._clients.append(client)

            async def down() -> None:
                async for msg in up:
                    obj = json.loads(msg)
                    if isinstance(obj.get("result"), str) and "id" in obj:
                        self.sub_ids.append(obj["result"])
                    elif self.muted and obj.get("method") == "eth_subscription":
                        self.lost += 1  # a head the client never sees
                        continue
                    await client.send(msg)

            async def upward() -> None:
                async for msg in client:
                    await up.send(msg)

            tasks = [asyncio.create_task(down()), asyncio.create_task(upward())]
            try:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for t in tasks:
                    t.cancel()
                if client in self._clients:
                    self._clients.remove(client)

    async def inject(self, message: str | dict[str, Any]) -> None:
        """Send a raw message to every connected client, as if the node had sent it."""
        text = message if isinstance(message, str) else json.dumps(message)
        for c in list(self._clients):
            await c.send(text)

    def notification(self, header: dict[str, Any]) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "method": "eth_subscription",
            "params": {"subscription": self.sub_ids[-1], "result": header},
        }
