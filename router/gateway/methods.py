"""The gateway's JSON-RPC semantics: request validation, batches, the methods it answers itself
(accounts, chain id, sending and signing through the router, intent status, subscriptions), and
forwarding of everything else to the node.

Answered here: eth_accounts, eth_requestAccounts, eth_chainId, net_version, eth_sendTransaction
(a routed intent), eth_signTransaction (raw hex, web3signer's shape), account_signTransaction
(Clef's {"raw", "tx"} shape), eth_sign and personal_sign (digest signing; the signer's policy
decides), sentinel_intentStatus, eth_getTransactionReceipt for hashes this gateway returned (the
receipt of the transaction that landed for that intent, re-signs included), eth_subscribe /
eth_unsubscribe (WebSocket only). Refused: the node's own account namespaces (personal_*, admin_*,
miner_*, eth_signTypedData*), so a node's unlocked keys are never reachable through the gateway.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from Crypto.Hash import keccak

from enclave.keys import checksum_address
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx
from router.errors import (
    GasEstimationFailed,
    JournalError,
    MalformedInput,
    NonceSourceError,
    RouterError,
    SignerError,
    SignerUnavailable,
    TransportError,
)
from router.nonces import TxState

from .errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    LIMIT_EXCEEDED,
    METHOD_NOT_FOUND,
    SERVER_ERROR,
    TX_REJECTED,
    JsonRpcError,
    invalid_params,
)
from .intents import intent_from_tx
from .params import TxRequest, parse_address, parse_data, parse_tx_request
from .proxy import NodeProxy

if TYPE_CHECKING:
    from router.core import Router
    from router.handle import Handle
    from router.intent import Intent

__all__ = ["MAX_BATCH", "Methods", "Subscriber"]

log = logging.getLogger(__name__)

#: Requests in one batch; more is -32005 (one client must not queue unbounded work).
MAX_BATCH = 1000
#: Hashes returned by eth_sendTransaction remembered for receipt redirection and status.
_MAX_HASHES = 100_000
_REFUSED_PREFIXES = ("personal_", "admin_", "miner_", "eth_signTypedData", "clique_")
_LOCAL_ONLY_OK = {"personal_sign"}


class Subscriber(Protocol):
    """A WebSocket connection that can hold subscriptions (subscriptions.py)."""

    async def subscribe(self, params: list[Any]) -> str: ...

    def unsubscribe(self, sub_id: object) -> bool: ...


class Methods:
    """Answers JSON-RPC payloads (one request or a batch) for one router."""

    def __init__(self, router: Router, proxy: NodeProxy) -> None:
        self.router = router
        self.proxy = proxy
        self.address = router.config.sender.lower()
        self._checksummed = checksum_address(bytes.fromhex(self.address[2:]))
        self._hash_to_id: OrderedDict[bytes, str] = OrderedDict()
        self._nonce_lock = asyncio.Lock()

    # --- payloads ---------------------------------------------------------------------------------

    async def handle(self, payload: Any, ws: Subscriber | None = None) -> Any:
        """The answer to a decoded payload: a response object, a list (batch), or None (only
        notifications)."""
        if isinstance(payload, list):
            if not payload:
                return _error(None, JsonRpcError(INVALID_REQUEST, "empty batch"))
            if len(payload) > MAX_BATCH:
                return _error(None, JsonRpcError(
                    LIMIT_EXCEEDED, f"batch of {len(payload)} requests (at most {MAX_BATCH})"))
            answers = await self._batch(payload, ws)
            return [a for a in answers if a is not None] or None
        return (await self._batch([payload], ws))[0]

    async def _batch(self, items: list[Any], ws: Subscriber | None) -> list[Any]:
        """Local methods run concurrently; every proxied item goes to the node in one batch."""
        out: list[Any] = [None] * len(items)
        local: list[tuple[int, Any]] = []
        upstream: list[tuple[int, dict[str, Any]]] = []
        for i, item in enumerate(items):
            try:
                method, params, req_id, notify = _validate(item)
            except JsonRpcError as e:
                out[i] = _error(item.get("id") if isinstance(item, dict) else None, e)
                continue
            if self._is_local(method, params):
                local.append((i, (method, params, req_id, notify)))
            else:
                upstream.append((i, {"jsonrpc": "2.0", "id": i, "method": method,
                                     "params": params}))
                out[i] = (req_id, notify)
        tasks = [self._local(m, p, r, n, ws) for _, (m, p, r, n) in local]
        if upstream:
            forwarded = self._forward(upstream, out)
            results = await asyncio.gather(forwarded, *tasks)
            local_results = results[1:]
        else:
            local_results = list(await asyncio.gather(*tasks))
        for (i, _), answer in zip(local, local_results, strict=True):
            out[i] = answer
        return out

    async def _forward(self, upstream: list[tuple[int, dict[str, Any]]], out: list[Any]) -> None:
        """One node batch for all proxied items; answers matched back by the gateway's ids."""
        single = len(upstream) == 1
        try:
            answer = await self.proxy.forward(upstream[0][1] if single else [u for _, u in upstream])
            answers = [answer] if single else answer
            if not isinstance(answers, list):
                raise JsonRpcError(SERVER_ERROR, "the node answered a batch with "
                                   + (str(answers.get("error"))[:200] if isinstance(answers, dict)
                                      else "a non-list"))
            by_id = {a.get("id"): a for a in answers if isinstance(a, dict)}
        except JsonRpcError as e:
            by_id, failure = {}, e
        else:
            failure = JsonRpcError(SERVER_ERROR, "the node gave no answer to this request")
        for i, _ in upstream:
            req_id, notify = out[i]
            if notify:
                out[i] = None
                continue
            node = by_id.get(i)
            if node is None:
                out[i] = _error(req_id, failure)
            else:
                node = dict(node)
                node["id"] = req_id
                out[i] = node

    def _is_local(self, method: str, params: Any) -> bool:
        if method == "eth_getTransactionReceipt":
            return self._known_hash(params) is not None
        return method in _LOCAL or method.startswith(_REFUSED_PREFIXES)

    async def _local(self, method: str, params: Any, req_id: Any, notify: bool,
                     ws: Subscriber | None) -> Any:
        try:
            result = await self._call(method, params, ws)
        except JsonRpcError as e:
            answer = _error(req_id, e)
        except Exception:  # one bad request must never take the gateway (or router) down
            log.exception("gateway method failed", extra={"method": method})
            answer = _error(req_id, JsonRpcError(INTERNAL_ERROR, f"internal error in {method}"))
        else:
            answer = {"jsonrpc": "2.0", "id": req_id, "result": result}
        return None if notify else answer

    async def _call(self, method: str, params: Any, ws: Subscriber | None) -> Any:
        if method.startswith(_REFUSED_PREFIXES) and method not in _LOCAL_ONLY_OK:
            raise JsonRpcError(METHOD_NOT_FOUND, f"{method} is not available through the gateway "
                               "(node account management is never proxied)")
        if not isinstance(params, list):
            raise JsonRpcError(INVALID_PARAMS, f"{method}: params must be an array")
        if method in ("eth_accounts", "eth_requestAccounts"):
            _arity(method, params, 0, 0)
            return [self._checksummed]
        if method == "eth_chainId":
            _arity(method, params, 0, 0)
            return hex(self.router.config.chain_id)
        if method == "net_version":
            _arity(method, params, 0, 0)
            return str(self.router.config.chain_id)
        if method == "eth_sendTransaction":
            _arity(method, params, 1, 1)
            return await self.send_transaction(params[0])
        if method in ("eth_signTransaction", "account_signTransaction"):
            _arity(method, params, 1, 1)
            raw, tx = await self.sign_transaction(params[0])
            return raw if method == "eth_signTransaction" else {"raw": raw, "tx": tx}
        if method == "eth_sign":
            _arity(method, params, 2, 2)
            self._check_from("params[0]", params[0])
            return await self.sign_message(parse_data("params[1]", params[1]))
        if method == "personal_sign":
            _arity(method, params, 2, 3)
            self._check_from("params[1]", params[1])
            return await self.sign_message(parse_data("params[0]", params[0]))
        if method == "sentinel_intentStatus":
            _arity(method, params, 1, 1)
            return self.intent_status(params[0])
        if method == "eth_getTransactionReceipt":
            return await self.receipt(params)
        if method in ("eth_subscribe", "eth_unsubscribe"):
            if ws is None:
                raise JsonRpcError(METHOD_NOT_FOUND, f"{method}: notifications need a WebSocket "
                                   "connection (ws://), not HTTP")
            if method == "eth_subscribe":
                return await ws.subscribe(params)
            _arity(method, params, 1, 1)
            return ws.unsubscribe(params[0])
        raise JsonRpcError(METHOD_NOT_FOUND, f"the method {method} does not exist")

    # --- methods ----------------------------------------------------------------------------------

    def _check_from(self, where: str, v: object) -> None:
        """`from` must be the signer (case-insensitive; a wrong EIP-55 checksum is refused).

        Raises:
            JsonRpcError: -32602 (malformed), -32000 "unknown account" (another address: geth's
                answer for an account it does not hold).
        """
        addr = parse_address(where, v)
        if "0x" + addr.hex() != self.address:
            raise JsonRpcError(SERVER_ERROR, f"unknown account {checksum_address(addr)}: this "
                               f"gateway signs only for {self._checksummed}")

    def _request(self, obj: object) -> TxRequest:
        req = parse_tx_request(obj)
        if req.sender is None:
            raise invalid_params("params[0].from", "required (the signer's address)")
        self._check_from("params[0].from", obj["from"])  # type: ignore[index]
        chain = self.router.config.chain_id
        if req.chain_id is not None and req.chain_id != chain:
            raise invalid_params("params[0].chainId", f"{req.chain_id} is not this router's "
                                                      f"chain {chain}")
        return req

    async def estimate_gas(self, req: TxRequest) -> int:
        """The node's eth_estimateGas for the request (its revert error passes through)."""
        call: dict[str, Any] = {"from": self._checksummed, "value": hex(req.value),
                                "data": "0x" + req.data.hex()}
        if req.to is not None:
            call["to"] = "0x" + req.to.hex()
        result = await self.proxy.call("eth_estimateGas", [call])
        if not isinstance(result, str) or not result.startswith("0x"):
            raise JsonRpcError(SERVER_ERROR, f"eth_estimateGas: unexpected answer {result!r:.60}")
        return int(result, 16)

    async def send_transaction(self, obj: object) -> str:
        """Route the transaction; returns its hash at the time of return. A re-sign (reorg,
        re-pricing) changes the hash: sentinel_intentStatus and the sentinel_intents stream show
        the current one, and eth_getTransactionReceipt of the returned hash answers with the
        receipt of whichever signature landed."""
        req = self._request(obj)
        intent = intent_from_tx(req, f"rpc-{uuid.uuid4().hex}")
        if req.nonce is None:
            handle = await self._submit(intent)
        else:
            async with self._nonce_lock:  # no other gateway submit between check and submit
                ours = self.router.nonces.next_nonce
                if req.nonce != ours:
                    raise invalid_params("params[0].nonce", f"{req.nonce} is not the router's "
                                         f"next nonce {ours} (the router owns nonces: leave it out)")
                handle = await self._submit(intent)
        tx_hash = handle.tx_hash
        self._remember(tx_hash, intent.id)
        return "0x" + tx_hash.hex()

    async def _submit(self, intent: Intent) -> Handle:
        try:
            return await self.router.submit(intent)
        except RouterError as e:
            raise _from_router(e) from e

    def _remember(self, tx_hash: bytes, intent_id: str) -> None:
        self._hash_to_id[tx_hash] = intent_id
        while len(self._hash_to_id) > _MAX_HASHES:
            self._hash_to_id.popitem(last=False)

    async def sign_transaction(self, obj: object) -> tuple[str, dict[str, Any]]:
        """Sign without sending (no router nonce consumed): `nonce` is required, and may not be
        one a routed intent holds; fees default to the router's current ones, gas to the node's
        estimate. The signer's policy applies."""
        req = self._request(obj)
        if req.nonce is None:
            raise invalid_params("params[0].nonce", "required for eth_signTransaction (it does "
                                 "not take a nonce from the router)")
        if any(f.nonce == req.nonce for f in self.router.nonces.pending()):
            raise invalid_params("params[0].nonce", f"{req.nonce} is held by a pending routed "
                                 "intent (a second signature there would replace it)")
        gas = req.gas if req.gas is not None else await self.estimate_gas(req)
        if req.gas_price is not None:
            tx_type, max_fee, prio = TX_LEGACY, req.gas_price, 0
        else:
            tip = self.router.view.tip
            fees = self.router.config.fees.fresh(tip.base_fee or 0 if tip is not None else 0)
            max_fee = req.max_fee_per_gas if req.max_fee_per_gas is not None else max(
                fees.max_fee_per_gas, req.max_priority_fee_per_gas or 0)
            prio = req.max_priority_fee_per_gas if req.max_priority_fee_per_gas is not None \
                else min(fees.max_priority_fee_per_gas, max_fee)
            tx_type = TX_EIP1559
        tx = UnsignedTx(tx_type, self.router.config.chain_id, req.nonce, gas, req.to, req.value,
                        req.data, max_fee, prio)
        try:
            signed = await self.router.signer.sign_tx(tx)
        except RouterError as e:
            raise _from_router(e) from e
        raw = "0x" + signed.raw.hex()
        described: dict[str, Any] = {
            "type": hex(tx_type), "chainId": hex(tx.chain_id), "nonce": hex(tx.nonce),
            "gas": hex(gas), "to": None if tx.to is None else checksum_address(tx.to),
            "value": hex(tx.value), "input": "0x" + tx.data.hex(), "hash": "0x" + signed.hash.hex(),
        }
        if tx_type == TX_LEGACY:
            described["gasPrice"] = hex(max_fee)
        else:
            described.update(maxFeePerGas=hex(max_fee), maxPriorityFeePerGas=hex(prio),
                             accessList=[])
        return raw, described

    async def sign_message(self, message: bytes) -> str:
        """EIP-191 personal message signature (r || s || v, v = 27/28) by the enclave key; the
        signer's policy must allow digest signing."""
        prefix = b"\x19Ethereum Signed Message:\n" + str(len(message)).encode()
        digest = keccak.new(digest_bits=256, data=prefix + message).digest()
        sign_digest = getattr(self.router.signer.signer, "sign_digest", None)
        if sign_digest is None:
            raise JsonRpcError(METHOD_NOT_FOUND, "message signing is not available with this signer")
        try:
            sig: bytes = await asyncio.get_running_loop().run_in_executor(None, sign_digest, digest)
        except RouterError as e:
            raise _from_router(e) from e
        return "0x" + sig[:64].hex() + f"{sig[64] + 27:02x}"

    def _known_hash(self, params: Any) -> str | None:
        if not (isinstance(params, list) and len(params) == 1 and isinstance(params[0], str)):
            return None
        try:
            return self._hash_to_id.get(bytes.fromhex(params[0][2:]))
        except ValueError:
            return None

    async def receipt(self, params: list[Any]) -> Any:
        """The receipt for a hash eth_sendTransaction returned: that of the signature of its
        intent that landed (a reorg's re-sign has another hash); the node's answer otherwise."""
        intent_id = self._known_hash(params)
        handle = self.router.handle(intent_id) if intent_id is not None else None
        target = params[0]
        if handle is not None and handle.state is TxState.LANDED:
            target = "0x" + handle.tx_hash.hex()
        return await self.proxy.call("eth_getTransactionReceipt", [target])

    def intent_status(self, key: object) -> dict[str, Any]:
        """{id, state, hash, nonce, block, blockHash, to, value}; `key` is an intent id or a hash
        eth_sendTransaction returned.

        Raises:
            JsonRpcError: -32602 not a string; -32000 no such intent.
        """
        if not isinstance(key, str) or not 0 < len(key) <= 128:
            raise invalid_params("params[0]", "expected an intent id or a transaction hash")
        intent_id = key
        if key.startswith("0x") and len(key) == 66:
            intent_id = self._known_hash([key]) or key
        handle = self.router.handle(intent_id)
        if handle is None:
            raise JsonRpcError(SERVER_ERROR, f"no intent {key[:70]!r} known to this router")
        f = handle.flight
        landed = f.landed if f.state is TxState.LANDED else None
        return {
            "id": handle.intent.id, "state": f.state.value, "hash": "0x" + handle.tx_hash.hex(),
            "nonce": hex(f.nonce),
            "block": None if landed is None else hex(landed.block_number),
            "blockHash": None if landed is None else "0x" + landed.block_hash.hex(),
            "error": f.error.diagnostics() if f.error is not None else None,
        }


_LOCAL = {
    "eth_accounts", "eth_requestAccounts", "eth_chainId", "net_version", "eth_sendTransaction",
    "eth_signTransaction", "account_signTransaction", "eth_sign", "personal_sign",
    "sentinel_intentStatus", "eth_subscribe", "eth_unsubscribe",
}  # fmt: skip


def _validate(item: Any) -> tuple[str, Any, Any, bool]:
    """(method, params, id, is_notification) of a JSON-RPC 2.0 request object.

    Raises:
        JsonRpcError: -32600 naming what is wrong.
    """
    if not isinstance(item, dict):
        raise JsonRpcError(INVALID_REQUEST, "a request must be a JSON object")
    if item.get("jsonrpc") != "2.0":
        raise JsonRpcError(INVALID_REQUEST, 'missing or wrong "jsonrpc" (must be "2.0")')
    method = item.get("method")
    if not isinstance(method, str) or not method or len(method) > 128:
        raise JsonRpcError(INVALID_REQUEST, '"method" must be a non-empty string')
    req_id = item.get("id")
    if req_id is not None and (isinstance(req_id, bool) or not isinstance(req_id, str | int | float)):
        raise JsonRpcError(INVALID_REQUEST, '"id" must be a string, a number or null')
    params = item.get("params", [])
    if not isinstance(params, list | dict):
        raise JsonRpcError(INVALID_REQUEST, '"params" must be an array or an object')
    return method, params, req_id, "id" not in item


def _arity(method: str, params: list[Any], low: int, high: int) -> None:
    if not low <= len(params) <= high:
        want = str(low) if low == high else f"{low}..{high}"
        raise JsonRpcError(INVALID_PARAMS, f"{method} takes {want} parameters, got {len(params)}")


def _error(req_id: Any, e: JsonRpcError) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": e.to_json()}


def _from_router(e: RouterError) -> JsonRpcError:
    """The router's refusal as the error a JSON-RPC client expects."""
    if isinstance(e, SignerError):
        if e.name == "RATE_LIMITED":
            return JsonRpcError(LIMIT_EXCEEDED, f"signer rate limit: {e.message}")
        return JsonRpcError(TX_REJECTED, f"refused by the signer ({e.name}): {e.message}",
                            {"signerError": e.name})
    if isinstance(e, GasEstimationFailed):
        # 3 is what nodes answer for a reverting call: clients decode the reason from it.
        return JsonRpcError(e.code if e.code == 3 else SERVER_ERROR,
                            f"gas estimation failed: {e.reason}")
    if isinstance(e, MalformedInput):
        return JsonRpcError(INVALID_PARAMS, e.diagnostics())
    if isinstance(e, SignerUnavailable):
        return JsonRpcError(SERVER_ERROR, f"signer unavailable: {e.diagnostics()}")
    if isinstance(e, TransportError):
        return JsonRpcError(SERVER_ERROR, f"unavailable: {e.diagnostics()}")
    if isinstance(e, NonceSourceError | JournalError):
        return JsonRpcError(SERVER_ERROR, f"router cannot accept transactions now: "
                            f"{e.diagnostics()}")
    return JsonRpcError(SERVER_ERROR, e.diagnostics())
