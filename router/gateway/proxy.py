"""Forwarding to the node: every method the gateway does not answer itself goes to the configured
endpoints (the router's `rpc` list), first healthy one first, the client's request ids kept.

"Healthy" is the router's own view (`Router.endpoint_errors`: endpoints that failed their probe);
an endpoint that fails to answer now (refused, timed out, not JSON) is skipped for the next one. A
well-formed JSON-RPC error from the node is the node's answer and goes back unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import aiohttp

from router.rpc import redact

from .errors import SERVER_ERROR, JsonRpcError

__all__ = ["NodeProxy"]

#: A node's answer larger than this is refused (a runaway eth_getLogs must not exhaust memory).
MAX_NODE_ANSWER = 64 << 20


class NodeProxy:
    """POSTs JSON-RPC payloads (one request or a batch) to the first endpoint that answers."""

    def __init__(self, urls: Sequence[str], down: dict[str, str] | None = None, *,
                 timeout: float = 30.0) -> None:
        self._urls = list(urls)
        self._down = down if down is not None else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _order(self) -> list[str]:
        return sorted(self._urls, key=lambda u: redact(u) in self._down)

    async def forward(self, payload: Any) -> Any:
        """The node's decoded answer to `payload` (a request object or a list of them).

        Raises:
            JsonRpcError: -32000 when no endpoint gave a JSON answer (endpoints named, redacted).
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        problems: list[str] = []
        body = json.dumps(payload).encode()
        for url in self._order():
            try:
                async with self._session.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                ) as resp:
                    raw = await resp.content.read(MAX_NODE_ANSWER + 1)
                    status = resp.status
            except (TimeoutError, aiohttp.ClientError, OSError) as e:
                problems.append(f"{redact(url)}: {type(e).__name__}")
                continue
            if len(raw) > MAX_NODE_ANSWER:
                problems.append(f"{redact(url)}: answer above {MAX_NODE_ANSWER} bytes")
                continue
            try:
                return json.loads(raw)
            except ValueError:
                problems.append(f"{redact(url)}: HTTP {status}, not JSON")
        raise JsonRpcError(SERVER_ERROR, "no node answered: " + "; ".join(problems))

    async def call(self, method: str, params: list[Any]) -> Any:
        """One call on the gateway's own behalf; the node's error is raised with its code.

        Raises:
            JsonRpcError: the node's error answer, or -32000 when none answered.
        """
        answer = await self.forward({"jsonrpc": "2.0", "id": 1, "method": method,
                                     "params": params})
        if not isinstance(answer, dict):
            raise JsonRpcError(SERVER_ERROR, f"{method}: the node's answer is not an object")
        err = answer.get("error")
        if isinstance(err, dict):
            code = err.get("code")
            raise JsonRpcError(code if isinstance(code, int) else SERVER_ERROR,
                               f"{method} (node): {str(err.get('message'))[:300]}",
                               err.get("data"))
        return answer.get("result")
