"""Helpers for the gateway tests: a router with its JSON-RPC gateway, a JSON-RPC client, and
recovering a signed transaction's sender from the chain."""

from __future__ import annotations

import contextlib
import json
import urllib.request
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import coincurve
from anvil_support import Anvil
from router_support import running_router

from enclave.keys import checksum_address
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx, signing_hash
from router.core import Router
from router.gateway.server import GatewayServer
from router.signing import TxSigner


@contextlib.asynccontextmanager
async def gateway_on(anvil: Anvil, signer: TxSigner | None = None, **overrides: object
                     ) -> AsyncIterator[tuple[Router, GatewayServer]]:
    async with running_router(anvil, signer, **overrides) as router:
        gw = GatewayServer(router, "127.0.0.1", 0, max_body=64 * 1024)
        await gw.start()
        try:
            yield router, gw
        finally:
            await gw.close()


async def post(url: str, payload: Any, *, raw: bytes | None = None) -> tuple[int, Any]:
    """(HTTP status, decoded JSON or None) of one POST."""
    async with aiohttp.ClientSession() as s:
        body = raw if raw is not None else json.dumps(payload).encode()
        async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            text = await r.text()
            return r.status, (json.loads(text) if text else None)


async def call(url: str, method: str, *params: Any) -> Any:
    """The full answer object of one call."""
    _, answer = await post(url, {"jsonrpc": "2.0", "id": 7, "method": method,
                                 "params": list(params)})
    return answer


def sync_rpc(url: str, method: str, *params: Any) -> Any:
    req = urllib.request.Request(url, json.dumps({"jsonrpc": "2.0", "id": 1, "method": method,
                                                  "params": list(params)}).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.loads(r.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


def recover_sender(tx: dict[str, Any]) -> str:
    """The address that signed a transaction as the node returns it (eth_getTransactionByHash):
    recomputed from its fields, not taken from its `from`."""
    tx_type = int(tx["type"], 16)
    q = lambda k: int(tx[k], 16)  # noqa: E731
    unsigned = UnsignedTx(
        tx_type, q("chainId"), q("nonce"), q("gas"),
        None if tx["to"] is None else bytes.fromhex(tx["to"][2:]), q("value"),
        bytes.fromhex(tx["input"][2:]),
        q("maxFeePerGas") if tx_type == TX_EIP1559 else q("gasPrice"),
        q("maxPriorityFeePerGas") if tx_type == TX_EIP1559 else 0)
    assert tx_type in (TX_EIP1559, TX_LEGACY)
    if tx_type == TX_EIP1559:
        parity = q("yParity") if "yParity" in tx else q("v")
    else:
        parity = q("v") - 35 - 2 * q("chainId")
    sig = q("r").to_bytes(32, "big") + q("s").to_bytes(32, "big") + bytes([parity])
    pub = coincurve.PublicKey.from_signature_and_message(sig, signing_hash(unsigned), hasher=None)
    from Crypto.Hash import keccak

    addr = keccak.new(digest_bits=256, data=pub.format(compressed=False)[1:]).digest()[-20:]
    return checksum_address(addr)


#: Runtime of a tiny contract: stores calldata word 0 at slot 0 (`CALLDATALOAD 0; SSTORE 0`).
STORE_RUNTIME = bytes.fromhex("60003560005500")
#: Init code returning STORE_RUNTIME.
STORE_INIT = bytes.fromhex("6007600c60003960076000f3") + STORE_RUNTIME


def deploy_store(anvil: Anvil, deployer: str) -> str:
    """Deploy the store contract with anvil's own unlocked account (directly on anvil)."""
    tx_hash = sync_rpc(anvil.rpc_url, "eth_sendTransaction",
                       {"from": deployer, "data": "0x" + STORE_INIT.hex(), "gas": hex(200_000)})
    receipt = anvil.receipt(tx_hash)
    assert receipt["status"] == "0x1"
    address = str(receipt["contractAddress"])
    assert sync_rpc(anvil.rpc_url, "eth_getCode", address, "latest") == "0x" + STORE_RUNTIME.hex()
    return address
