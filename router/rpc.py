"""JSON-RPC over HTTP to an execution client, with every error answer classified.

Answers are validated before use: not JSON, not a JSON-RPC 2.0 object, a mismatched id, or a
result of the wrong shape raise `MalformedResponse`; a well-formed error answer becomes the
`RpcError` subclass matching its message (nonce too low, already known, ...), which is what the
nonce manager and the broadcaster act on.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import _hex
from .errors import (
    AlreadyKnown,
    FeeTooLow,
    InsufficientFunds,
    InvalidTransaction,
    MalformedResponse,
    NonceTooLow,
    ReplacementUnderpriced,
    RpcError,
    TransportError,
)

log = logging.getLogger(__name__)

# Substrings of the error messages geth, reth, erigon, nethermind and anvil use; order matters
# ("replacement transaction underpriced" must win over the generic "underpriced").
_CLASSIFIERS: tuple[tuple[tuple[str, ...], type[RpcError]], ...] = (
    (("nonce too low", "nonce is too low", "oldnonce", "old nonce"), NonceTooLow),
    (
        ("already known", "already imported", "known transaction", "alreadyknown",
         "already in the mempool", "already exists"),
        AlreadyKnown,
    ),
    (("replacement transaction underpriced", "replacement underpriced", "replacementnotallowed"),
     ReplacementUnderpriced),
    (("insufficient funds", "insufficient balance"), InsufficientFunds),
    (("fee cap less than block base fee", "max fee per gas less than block base fee",
      "transaction underpriced", "fee too low", "feetoolow", "underpriced"), FeeTooLow),
    (("failed to decode", "invalid", "rlp", "intrinsic gas too low", "gas limit"),
     InvalidTransaction),
)

MAX_RESPONSE_BYTES = 16 * 1024 * 1024


def classify(message: str, code: int | None, endpoint: str = "") -> RpcError:
    """Map a JSON-RPC error answer to the RpcError subclass the router acts on."""
    lowered = message.lower()
    for needles, cls in _CLASSIFIERS:
        if any(n in lowered for n in needles):
            return cls(message, code=code, endpoint=endpoint)
    return RpcError(message, code=code, endpoint=endpoint)


def redact(url: str) -> str:
    """An endpoint label safe for logs: scheme, host and port only (paths often carry API keys)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


@dataclass(frozen=True)
class Block:
    """The parts of a block the router needs: its header fields and its transaction hashes."""

    number: int
    hash: bytes
    parent_hash: bytes
    tx_hashes: tuple[bytes, ...]
    raw: dict[str, Any]


class RpcClient:
    """One HTTP JSON-RPC endpoint. Safe to share between tasks of one event loop."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) JSON-RPC URL: {redact(url)}")
        self._url = url
        self.label = redact(url)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"RpcClient({self.label})"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, *params: Any) -> Any:
        """Call `method`; returns the raw `result` or raises a RouterError subclass.

        Raises:
            TransportError: the endpoint could not be reached or timed out.
            MalformedResponse: the answer is not a valid JSON-RPC 2.0 response to this request.
            RpcError: (a classified subclass of) a well-formed error answer.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        req_id = next(self._ids)
        body = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": list(params)}
        try:
            async with self._session.post(self._url, json=body) as resp:
                payload = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransportError(f"{method} to {self.label}: {type(e).__name__}: {e}") from e
        return self._decode(method, req_id, status, payload)

    def _decode(self, method: str, req_id: int, status: int, payload: bytes) -> Any:
        where = f"{method} from {self.label}"
        if len(payload) > MAX_RESPONSE_BYTES:
            raise MalformedResponse(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            answer = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MalformedResponse(
                f"{where}: answer is not JSON (HTTP {status}, {len(payload)} bytes)"
            ) from e
        if not isinstance(answer, dict):
            raise MalformedResponse(f"{where}: expected a JSON object, got {type(answer).__name__}")
        if answer.get("jsonrpc") != "2.0":
            raise MalformedResponse(f"{where}: jsonrpc member is {answer.get('jsonrpc')!r}, "
                                    "expected '2.0'")
        if answer.get("id") != req_id:
            raise MalformedResponse(f"{where}: answer id {answer.get('id')!r}, expected {req_id}")
        has_result, has_error = "result" in answer, "error" in answer
        if has_result == has_error:
            raise MalformedResponse(f"{where}: expected exactly one of result/error")
        if has_error:
            err = answer["error"]
            if not isinstance(err, dict) or not isinstance(err.get("message"), str):
                raise MalformedResponse(f"{where}: error member is not {{code, message}}")
            code = err.get("code")
            raise classify(err["message"], code if isinstance(code, int) else None, self.label)
        return answer["result"]

    # Typed helpers: each validates the shape of its result.

    async def chain_id(self) -> int:
        return _hex.quantity(
            await self.call("eth_chainId"), f"eth_chainId from {self.label}", max_value=2**64 - 1
        )

    async def transaction_count(self, address: str, tag: str = "pending") -> int:
        result = await self.call("eth_getTransactionCount", address, tag)
        return _hex.quantity(result, f"eth_getTransactionCount({tag}) from {self.label}", max_value=2**64 - 1)

    async def send_raw_transaction(self, raw: bytes) -> bytes:
        result = await self.call("eth_sendRawTransaction", _hex.to_hex(raw))
        return _hex.fixed_bytes(result, f"eth_sendRawTransaction from {self.label}", 32)

    async def block_by_hash(self, block_hash: bytes) -> Block | None:
        result = await self.call("eth_getBlockByHash", _hex.to_hex(block_hash), False)
        return None if result is None else parse_block(result, f"eth_getBlockByHash from {self.label}")

    async def block_by_number(self, tag: str | int) -> Block | None:
        ref = tag if isinstance(tag, str) else hex(tag)
        result = await self.call("eth_getBlockByNumber", ref, False)
        return None if result is None else parse_block(result, f"eth_getBlockByNumber from {self.label}")

    async def receipt(self, tx_hash: bytes) -> dict[str, Any] | None:
        result = await self.call("eth_getTransactionReceipt", _hex.to_hex(tx_hash))
        if result is None:
            return None
        if not isinstance(result, dict):
            raise MalformedResponse(f"eth_getTransactionReceipt from {self.label}: not an object")
        for field in ("blockHash", "blockNumber", "status", "transactionHash"):
            if field not in result:
                raise MalformedResponse(
                    f"eth_getTransactionReceipt from {self.label}: missing {field}"
                )
        _hex.fixed_bytes(result["blockHash"], f"receipt.blockHash from {self.label}", 32)
        _hex.quantity(result["blockNumber"], f"receipt.blockNumber from {self.label}")
        return result


def parse_block(obj: object, where: str) -> Block:
    """Validate a block object (transactions as hashes) into a Block."""
    if not isinstance(obj, dict):
        raise MalformedResponse(f"{where}: block is not an object")
    txs = obj.get("transactions")
    if not isinstance(txs, list):
        raise MalformedResponse(f"{where}: block.transactions is not a list")
    return Block(
        number=_hex.quantity(obj.get("number"), f"{where}.number", max_value=2**63 - 1),
        hash=_hex.fixed_bytes(obj.get("hash"), f"{where}.hash", 32),
        parent_hash=_hex.fixed_bytes(obj.get("parentHash"), f"{where}.parentHash", 32),
        tx_hashes=tuple(_hex.fixed_bytes(t, f"{where}.transactions[]", 32) for t in txs),
        raw=obj,
    )
