"""Signed transactions accepted and mined by a real execution client (anvil, pinned npm package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from anvil_support import DEV_ADDR_0, Anvil
from signer_support import ROOT, running_signer

from enclave.keys import KeyOrigin, SigningKey
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx
from router.signer_client import SignerClient


def _receipt(anvil: Anvil, tx_hash: str) -> dict[str, Any]:
    return anvil.receipt(tx_hash)


def _send(anvil: Anvil, raw: bytes, expected_hash: bytes, sender: str) -> dict[str, Any]:
    tx_hash = anvil.rpc("eth_sendRawTransaction", "0x" + raw.hex())
    assert tx_hash == "0x" + expected_hash.hex()
    receipt = _receipt(anvil, tx_hash)
    assert receipt["status"] == "0x1" and receipt["blockNumber"] is not None
    assert receipt["from"].lower() == sender.lower()
    return receipt


def _fees(anvil: Anvil) -> tuple[int, int]:
    block = anvil.rpc("eth_getBlockByNumber", "latest", False)
    assert isinstance(block, dict)
    base = int(block["baseFeePerGas"], 16)
    return base * 2 + 10**9, 10**9


def test_anvil_mines_both_types_and_a_creation(anvil: Anvil, tmp_path: Path) -> None:
    max_fee, prio = _fees(anvil)
    with (
        running_signer(tmp_path) as server,
        SignerClient.connect(str(server.address), spin_us=0) as c,
    ):
        nonce = int(str(anvil.rpc("eth_getTransactionCount", DEV_ADDR_0, "pending")), 16)
        dest = bytes.fromhex("70997970C51812dc3A010C7d01b50e0d17dc79C8")
        txs = [
            UnsignedTx(TX_EIP1559, 31337, nonce, 21000, dest, 10**15, b"", max_fee, prio),
            UnsignedTx(TX_LEGACY, 31337, nonce + 1, 21000, dest, 10**15, b"", max_fee),
            # init code "STOP": a contract with empty code
            UnsignedTx(TX_EIP1559, 31337, nonce + 2, 100_000, None, 0, b"\x00", max_fee, prio),
        ]
        for tx in txs:
            signed = c.sign_tx(tx)
            receipt = _send(anvil, signed.raw, signed.hash, DEV_ADDR_0)
        assert receipt["contractAddress"]
        balance = int(str(anvil.rpc("eth_getBalance", "0x" + dest.hex(), "latest")), 16)
        assert balance >= 2 * 10**15


def test_anvil_mines_a_funded_dev_key_via_the_cli(anvil: Anvil, tmp_path: Path) -> None:
    """A fresh development key, funded with anvil_setBalance, through `python -m enclave serve`
    and `python -m router sign-tx` as separate processes."""
    secret = os.urandom(32)
    key = SigningKey(secret, origin=KeyOrigin.DEV)
    anvil.rpc("anvil_setBalance", key.address, hex(10**20))
    key_file = tmp_path / "dev.key"
    key_file.write_text(secret.hex())
    sock = tmp_path / "s.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}", "--dev-key-file",
         str(key_file), "--policy", str(ROOT / "enclave" / "policy.dev.toml")],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        max_fee, prio = _fees(anvil)
        for i, fees in enumerate(
            [
                {"maxFeePerGas": hex(max_fee), "maxPriorityFeePerGas": hex(prio)},
                {"gasPrice": str(max_fee)},
            ]
        ):
            tx_file = tmp_path / f"tx{i}.json"
            tx_file.write_text(json.dumps(
                {"chainId": 31337, "nonce": i, "to": DEV_ADDR_0, "value": "0x1", "gas": 21000,
                 "data": "0x", **fees}
            ))  # fmt: skip
            out = subprocess.run(
                [sys.executable, "-m", "router", "sign-tx", "--signer", f"unix:{sock}", "--tx", str(tx_file),
                 "--json"],
                cwd=ROOT, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            signed = json.loads(out.stdout)
            _send(
                anvil,
                bytes.fromhex(signed["raw"][2:]),
                bytes.fromhex(signed["hash"][2:]),
                key.address,
            )
    finally:
        proc.terminate()
        proc.wait(10)
