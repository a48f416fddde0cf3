"""JSON-RPC over HTTP to an execution client, with every error answer classified.

Answers are validated before use: not JSON, not a JSON-RPC 2.0 object, a mismatched id, or a
result of the wrong shape raise `MalformedResponse`; a well-formed error answer becomes the
`RpcError` subclass matching its message (nonce too low, already known, ...), which is what the
nonce manager and the broadcaster act on.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from . import _hex
from .errors import (
    AlreadyKnown,
    ConfigError,
    FeeTooLow,
    InsufficientFunds,
    InvalidTransaction,
    MalformedResponse,
    NonceTooLow,
    ReplacementUnderpriced,
    RouterError,
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

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any | RpcError]:
        """Send `calls` as one JSON-RPC batch (one HTTP POST); answers in the order of `calls`.

        The node may answer the items in any order; they are matched by id. Each item is its
        `result` or the classified RpcError of its error answer (returned, not raised).

        Raises:
            TransportError: the endpoint could not be reached, timed out, or answered an HTTP
                error status without a JSON-RPC answer (a proxy's 502 page).
            MalformedResponse: the answer is not a list of valid JSON-RPC 2.0 responses carrying
                each request's id exactly once.
        """
        if not calls:
            return []
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        first = next(self._ids)
        ids = [first, *(next(self._ids) for _ in range(len(calls) - 1))]
        body = [
            {"jsonrpc": "2.0", "id": i, "method": method, "params": list(params)}
            for i, (method, params) in zip(ids, calls, strict=True)
        ]
        where = f"batch of {len(calls)} ({calls[0][0]}, ...)"
        try:
            async with self._session.post(self._url, json=body) as resp:
                payload = await resp.content.read(MAX_RESPONSE_BYTES + 1)
                status = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as e:
            raise TransportError(f"{where} to {self.label}: {type(e).__name__}: {e}") from e
        try:
            return self._decode_batch(where, ids, payload, status)
        except MalformedResponse as e:
            if 200 <= status < 300:
                raise
            raise TransportError(f"{where} to {self.label}: HTTP {status} ({e})") from e

    def _decode_batch(self, where: str, ids: list[int], payload: bytes, status: int) -> list[Any]:
        where = f"{where} from {self.label}"
        answer = self._load(where, payload, status)
        if not isinstance(answer, list):
            detail = ""
            if isinstance(answer, dict) and isinstance(answer.get("error"), dict):
                detail = f": {str(answer['error'].get('message'))[:120]}"
            raise MalformedResponse(
                f"{where}: expected a JSON list (a batch answer), got {type(answer).__name__}{detail}"
            )
        slot = {req_id: k for k, req_id in enumerate(ids)}
        out: list[Any] = [None] * len(ids)
        seen: set[int] = set()
        for item in answer:
            req_id = item.get("id") if isinstance(item, dict) else None
            if not isinstance(req_id, int) or isinstance(req_id, bool) or req_id not in slot:
                raise MalformedResponse(f"{where}: answer item with id {req_id!r}, which no "
                                        "request carried")
            if req_id in seen:
                raise MalformedResponse(f"{where}: id {req_id} answered twice")
            seen.add(req_id)
            try:
                out[slot[req_id]] = self._item(f"{where} (id {req_id})", item, req_id)
            except RpcError as e:
                out[slot[req_id]] = e
        if len(seen) != len(ids):
            missing = sorted(set(ids) - seen)
            raise MalformedResponse(f"{where}: no answer for id {missing[0]} "
                                    f"({len(missing)} of {len(ids)} missing)")
        return out

    def _decode(self, method: str, req_id: int, status: int, payload: bytes) -> Any:
        where = f"{method} from {self.label}"
        try:
            answer = self._load(where, payload, status)
            if not isinstance(answer, dict):
                raise MalformedResponse(
                    f"{where}: expected a JSON object, got {type(answer).__name__}"
                )
            return self._item(where, answer, req_id)
        except MalformedResponse as e:
            # A gateway in front of the node (its 502/503 page, a rate limiter's text) is an
            # outage of that endpoint, not a lying node: retry it like a refused connection.
            if 200 <= status < 300:
                raise
            raise TransportError(f"{method} to {self.label}: HTTP {status} ({e})") from e

    @staticmethod
    def _load(where: str, payload: bytes, status: int) -> Any:
        if len(payload) > MAX_RESPONSE_BYTES:
            raise MalformedResponse(f"{where}: answer larger than {MAX_RESPONSE_BYTES} bytes")
        try:
            return json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise MalformedResponse(
                f"{where}: answer is not JSON (HTTP {status}, {len(payload)} bytes)"
            ) from e

    def _item(self, where: str, answer: dict[str, Any], req_id: int) -> Any:
        """The result of one JSON-RPC response object; raises its classified RpcError."""
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


async def probe(
    rpcs: Sequence[RpcClient], chain_id: int, *, timeout: float | None = None
) -> tuple[list[RpcClient], list[tuple[RpcClient, RouterError]]]:
    """Ask every endpoint for its chain id at once: (healthy, failed), each in `rpcs` order.

    Healthy endpoints answer `eth_chainId` with `chain_id`. An endpoint that is down, hangs for
    longer than `timeout` (default: its own timeout), answers an HTTP error page or nonsense is
    failed, with its error; the caller decides whether the healthy ones are enough.

    Raises:
        ConfigError: an endpoint answered with another chain id (misconfiguration, not an outage:
            sending signed transactions there is never right).
    """

    async def one(rpc: RpcClient) -> int:
        if timeout is None:
            return await rpc.chain_id()
        try:
            return await asyncio.wait_for(rpc.chain_id(), timeout)
        except TimeoutError as e:
            raise TransportError(f"eth_chainId to {rpc.label}: no answer within {timeout:g} s") from e

    answers = await asyncio.gather(*(one(r) for r in rpcs), return_exceptions=True)
    healthy: list[RpcClient] = []
    failed: list[tuple[RpcClient, RouterError]] = []
    wrong: list[str] = []
    for rpc, got in zip(rpcs, answers, strict=True):
        if isinstance(got, RouterError):
            failed.append((rpc, got))
        elif isinstance(got, BaseException):
            raise got
        elif got != chain_id:
            wrong.append(f"{rpc.label} serves chain id {got}")
        else:
            healthy.append(rpc)
    if wrong:
        raise ConfigError(f"{'; '.join(wrong)}; configured chain id {chain_id}")
    return healthy, failed
