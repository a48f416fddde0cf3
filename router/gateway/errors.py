"""JSON-RPC errors the gateway answers with: one exception type carrying the code a client expects.

Codes: the JSON-RPC 2.0 ones (-32700 parse error, -32600 invalid request, -32601 method not found,
-32602 invalid params, -32603 internal error) and the server range EIP-1474 and geth use: -32000
(geth's "unknown account" and node-side failures), -32003 (transaction rejected: the signer's policy
refused), -32005 (limit exceeded: body or batch too large). Messages never hold secrets: they name
the field, the rule or the endpoint (scheme://host:port), nothing else.
"""

from __future__ import annotations

from typing import Any

from router.errors import RouterError

__all__ = [
    "INTERNAL_ERROR",
    "INVALID_PARAMS",
    "INVALID_REQUEST",
    "LIMIT_EXCEEDED",
    "METHOD_NOT_FOUND",
    "PARSE_ERROR",
    "SERVER_ERROR",
    "TX_REJECTED",
    "JsonRpcError",
]

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
SERVER_ERROR = -32000
TX_REJECTED = -32003
LIMIT_EXCEEDED = -32005


class JsonRpcError(RouterError):
    """An error answer: `code`, `message` and optional `data`, exactly as the client will see them."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            out["data"] = self.data
        return out

    def diagnostics(self) -> str:
        return f"JSON-RPC {self.code}: {self.message}"


def invalid_params(field: str, problem: str) -> JsonRpcError:
    """-32602 naming the offending field (`params[0].value: ...`)."""
    return JsonRpcError(INVALID_PARAMS, f"invalid {field}: {problem}")
