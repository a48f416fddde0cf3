"""Acceptance (issue 16): real clients — ethers v6 (npm), web3.py (PyPI) and foundry's cast (npm)
— through `python -m router run`'s gateway against real anvil and the real signer.

The signer holds a key anvil does not know (funded with anvil_setBalance), so a transaction from it
on chain can only have been signed by the signer; each is also recovered from its signature. The
policy allows 1 ETH per transaction: 2 ETH is refused and each client must see that message.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from anvil_support import DEV_ADDR_0, ROOT, Anvil, free_port, start_anvil
from gateway_support import STORE_RUNTIME, deploy_store, recover_sender, sync_rpc
from router_proc_support import RouterProcess
from signer_support import DEV_POLICY, running_signer

from enclave.keys import KeyOrigin, SigningKey
from enclave.policy import Policy

pytestmark = pytest.mark.timeout(180)
NODE = ROOT / "tests" / "node"
CAST = NODE / "node_modules" / "@foundry-rs" / "cast-linux-amd64" / "bin" / "cast"
# A key only the signer holds (public test value; not one of anvil's accounts).
KEY = SigningKey(bytes.fromhex("5e" * 32), origin=KeyOrigin.DEV)
ONE_ETH = 10**18


@dataclass
class Stack:
    anvil: Anvil
    gateway: str
    address: str
    contract: str
    router: RouterProcess


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    anvil = start_anvil()
    policy = Policy.from_toml(DEV_POLICY.read_text().replace(
        'max_value = "1000000000000000000000000"', f'max_value = "{ONE_ETH}"'))
    try:
        sync_rpc(anvil.rpc_url, "anvil_setBalance", KEY.address, hex(100 * ONE_ETH))
        contract = deploy_store(anvil, DEV_ADDR_0)
        with running_signer(tmp_path, key=KEY, policy=policy) as signer:
            port = free_port()
            cfg = tmp_path / "router.toml"
            cfg.write_text(
                f'chain_id = {anvil.chain_id}\nsigner = "{signer.address}"\n'
                f'listen = "unix:{tmp_path / "router.sock"}"\nrpc = ["{anvil.rpc_url}"]\n'
                f'ws = ["{anvil.ws_url}"]\ngateway = "127.0.0.1:{port}"\n'
                f'journal = "memory"\n[router]\nrebroadcast_after_seconds = 1.0\n')
            with RouterProcess(cfg) as router:
                yield Stack(anvil, f"http://127.0.0.1:{port}", KEY.address, contract, router)
    finally:
        anvil.stop()


def _landed_by_enclave(stack: Stack, tx_hash: str, to: str) -> dict[str, Any]:
    tx = sync_rpc(stack.anvil.rpc_url, "eth_getTransactionByHash", tx_hash)
    assert tx is not None and tx["to"].lower() == to.lower()
    assert recover_sender(tx) == stack.address
    assert stack.anvil.receipt(tx_hash)["status"] == "0x1"
    return tx  # type: ignore[no-any-return]


def _stored(stack: Stack) -> str:
    return str(sync_rpc(stack.anvil.rpc_url, "eth_getStorageAt", stack.contract, "0x0", "latest"))


def test_ethers(stack: Stack) -> None:
    to = "0x" + "e1" * 20
    word = "0x" + "ab" * 32
    r = subprocess.run(["node", str(NODE / "gateway_ethers.mjs"), stack.gateway, to,
                        stack.contract, word, str(2 * ONE_ETH)],
                       cwd=NODE, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["address"] == stack.address
    assert out["transfer"]["status"] == 1 and out["call"]["status"] == 1
    _landed_by_enclave(stack, out["transfer"]["hash"], to)
    _landed_by_enclave(stack, out["call"]["hash"], stack.contract)
    assert _stored(stack) == word
    assert out["refusal"]["code"] == -32003 and "max_value" in out["refusal"]["message"]


def test_web3py(stack: Stack) -> None:
    from web3 import Web3
    from web3.exceptions import Web3RPCError

    w3 = Web3(Web3.HTTPProvider(stack.gateway))
    assert w3.eth.accounts == [stack.address] and w3.eth.chain_id == stack.anvil.chain_id
    to = Web3.to_checksum_address("0x" + "e2" * 20)
    word = "0x" + "cd" * 32
    h1 = w3.eth.send_transaction({"from": stack.address, "to": to, "value": 1000})
    r1 = w3.eth.wait_for_transaction_receipt(h1, timeout=30, poll_latency=0.1)
    contract = Web3.to_checksum_address(stack.contract)
    h2 = w3.eth.send_transaction({"from": stack.address, "to": contract, "data": word})
    r2 = w3.eth.wait_for_transaction_receipt(h2, timeout=30, poll_latency=0.1)
    assert r1["status"] == 1 and r2["status"] == 1
    _landed_by_enclave(stack, "0x" + bytes(h1).hex(), to)
    _landed_by_enclave(stack, "0x" + bytes(h2).hex(), stack.contract)
    assert _stored(stack) == word
    with pytest.raises(Web3RPCError, match="max_value") as e:
        w3.eth.send_transaction({"from": stack.address, "to": to, "value": 2 * ONE_ETH})
    assert e.value.rpc_response is not None and e.value.rpc_response["error"]["code"] == -32003


def _cast(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CAST), "send", "--unlocked", "--from", stack.address,
                           "--rpc-url", stack.gateway, "--json", *args],
                          capture_output=True, text=True, timeout=120)


def test_cast(stack: Stack) -> None:
    to = "0x" + "e3" * 20
    word = "0x" + "ef" * 32
    r = _cast(stack, to, "--value", "1000")
    assert r.returncode == 0, r.stderr
    receipt = json.loads(r.stdout)
    assert receipt["status"] == "0x1"
    _landed_by_enclave(stack, receipt["transactionHash"], to)
    r = _cast(stack, stack.contract, word)
    assert r.returncode == 0, r.stderr
    _landed_by_enclave(stack, json.loads(r.stdout)["transactionHash"], stack.contract)
    assert _stored(stack) == word
    r = _cast(stack, to, "--value", str(2 * ONE_ETH))
    assert r.returncode != 0 and "max_value" in r.stderr


def test_reorg_while_waiting(stack: Stack) -> None:
    """A transfer lands, anvil_reorg drops its block while a web3.py client waits on the hash
    eth_sendTransaction returned: the client gets the receipt of the re-included (re-signed)
    transaction, on the canonical chain; the sentinel_intents stream shows reorged_out then
    landed (published by the router: needs the events wiring of issue 16)."""
    from web3 import Web3

    anvil = stack.anvil
    events: list[dict[str, Any]] = []

    async def watch(stop: threading.Event, ready: threading.Event) -> None:
        async with aiohttp.ClientSession() as s, \
                s.ws_connect(stack.gateway.replace("http", "ws")) as ws:
            await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe",
                                          "params": ["sentinel_intents"]}))
            assert "result" in json.loads((await ws.receive(timeout=10)).data)
            ready.set()
            while not stop.is_set():
                try:
                    msg = await ws.receive(timeout=0.2)
                except TimeoutError:
                    continue
                events.append(json.loads(msg.data)["params"]["result"])

    stop, ready = threading.Event(), threading.Event()
    watcher = threading.Thread(target=lambda: asyncio.run(watch(stop, ready)), daemon=True)
    watcher.start()
    assert ready.wait(10)
    to = "0x" + "e4" * 20
    sent = sync_rpc(stack.gateway, "eth_sendTransaction",
                    {"from": stack.address, "to": to, "value": "0x7"})
    first = None
    while first is None:
        first = sync_rpc(stack.gateway, "eth_getTransactionReceipt", sent)
    # The router must have seen it land before the reorg, or there is nothing to reorg out
    # from its point of view (it would see only the re-included block).
    deadline = time.monotonic() + 20
    while sync_rpc(stack.gateway, "sentinel_intentStatus", sent)["state"] != "landed":
        assert time.monotonic() < deadline, "the router never saw the transfer land"
        time.sleep(0.02)
    got: dict[str, Any] = {}
    w3 = Web3(Web3.HTTPProvider(stack.gateway))
    sync_rpc(anvil.rpc_url, "anvil_reorg", 1, [])
    waiter = threading.Thread(target=lambda: got.update(
        w3.eth.wait_for_transaction_receipt(sent, timeout=60, poll_latency=0.1)))
    waiter.start()
    waiter.join(70)
    assert got, "no receipt"
    # The node answers with the new receipt as soon as it re-mined; the router's events follow
    # when its head watcher has seen the new block.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not _reorged_then_landed(events):
        time.sleep(0.05)
    stop.set()
    watcher.join(10)
    canonical = sync_rpc(anvil.rpc_url, "eth_getBlockByNumber", hex(got["blockNumber"]), False)
    assert "0x" + bytes(got["blockHash"]).hex() == canonical["hash"] != first["blockHash"]
    assert got["status"] == 1
    landed_hash = "0x" + bytes(got["transactionHash"]).hex()
    _landed_by_enclave(stack, landed_hash, to)
    status = sync_rpc(stack.gateway, "sentinel_intentStatus", sent)
    assert status["state"] == "landed" and status["hash"] == landed_hash
    kinds = [e["kind"] for e in list(events) if e.get("id") == status["id"]]
    assert "reorged_out" in kinds and "landed" in kinds[kinds.index("reorged_out"):], kinds


def _reorged_then_landed(events: list[dict[str, Any]]) -> bool:
    kinds = [e["kind"] for e in list(events)]
    return "reorged_out" in kinds and "landed" in kinds[kinds.index("reorged_out"):]


def test_contract_runtime_is_what_we_deployed(stack: Stack) -> None:
    assert sync_rpc(stack.anvil.rpc_url, "eth_getCode", stack.contract, "latest") == \
        "0x" + STORE_RUNTIME.hex()
