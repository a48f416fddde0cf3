"""`python -m enclave serve` and `python -m router sign-tx|address`: outputs, exit codes, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import DEV_ADDR_0, DEV_KEY_0
from eth_account import Account
from signer_support import ROOT, running_signer

from router.errors import MalformedInput
from router.txjson import parse_tx

DEV_POLICY = ROOT / "enclave" / "policy.dev.toml"


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[str]:
    with running_signer(tmp_path) as server:
        yield str(server.address)


TX_1559 = {"chainId": 31337, "nonce": "0x5", "to": "0x" + "22" * 20, "value": "1000", "gas": 21000,
           "maxFeePerGas": "0x4a817c800", "maxPriorityFeePerGas": 10**9, "data": "0xabcd"}  # fmt: skip
TX_LEGACY = {
    "chainId": "31337",
    "nonce": 0,
    "to": "0x" + "22" * 20,
    "gas": "0x5208",
    "gasPrice": 10**9,
}


@pytest.mark.parametrize("tx", [TX_1559, TX_LEGACY], ids=["eip1559", "legacy"])
def test_sign_tx_prints_raw_hex(signer: str, tmp_path: Path, tx: dict[str, object]) -> None:
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(tx))
    out = _run("-m", "router", "sign-tx", "--signer", signer, "--tx", str(path))
    assert out.returncode == 0, out.stderr
    raw = out.stdout.strip()
    assert raw.startswith("0x") and "\n" not in raw
    assert Account.recover_transaction(raw) == DEV_ADDR_0


def test_address(signer: str) -> None:
    out = _run("-m", "router", "address", "--signer", signer)
    assert (out.returncode, out.stdout.strip()) == (0, DEV_ADDR_0)
    out = _run("-m", "router", "address", "--signer", signer, "--json")
    assert json.loads(out.stdout)["address"] == DEV_ADDR_0


@pytest.mark.parametrize(
    "content,code,match",
    [
        ("{not json", 2, "not JSON"),
        (json.dumps({**TX_1559, "maxFeePerGass": 1}), 2, "unknown fields"),
        (json.dumps({**TX_1559, "chainId": 1}), 1, "policy chain_ids"),
    ],
    ids=["not-json", "typo", "denied"],
)
def test_sign_tx_errors(signer: str, tmp_path: Path, content: str, code: int, match: str) -> None:
    path = tmp_path / "tx.json"
    path.write_text(content)
    out = _run("-m", "router", "sign-tx", "--signer", signer, "--tx", str(path))
    assert out.returncode == code and match in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""


def test_router_unreachable_and_usage(tmp_path: Path) -> None:
    out = _run("-m", "router", "address", "--signer", "tcp:127.0.0.1:1", "--connect-timeout", "0.3")
    assert out.returncode == 1 and "cannot connect" in out.stderr and "Traceback" not in out.stderr
    assert _run("-m", "router", "sign-tx").returncode == 2
    assert _run("-m", "router").returncode == 2


@pytest.mark.parametrize(
    "args,code,match",
    [
        (["--listen", "udp:x"], 2, "unknown scheme"),
        (["--listen", "unix:{tmp}/s", "--policy", str(DEV_POLICY)], 2, "exactly one key source"),
        (["--listen", "unix:{tmp}/s", "--dev-key-file", "{tmp}/key"], 1, "refuses development keys"),
        (["--listen", "unix:{tmp}/s", "--dev-key-file", "{tmp}/short", "--policy", str(DEV_POLICY)], 2,
         "expected 64 hex digits"),
        (["--listen", "unix:{tmp}/s", "--policy", "{tmp}/absent.toml"], 2, "cannot read"),
    ],
    ids=["address", "no-key", "prod-policy-dev-key", "bad-key", "no-policy"],
)  # fmt: skip
def test_serve_refuses_bad_configuration(
    tmp_path: Path, args: list[str], code: int, match: str
) -> None:
    (tmp_path / "key").write_text(DEV_KEY_0.hex())
    (tmp_path / "short").write_text(DEV_KEY_0.hex()[:-2])
    out = _run("-m", "enclave", "serve", *(a.format(tmp=tmp_path) for a in args))
    assert out.returncode == code and match in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert DEV_KEY_0.hex()[:-2] not in out.stderr


@pytest.mark.parametrize(
    "obj,match",
    [
        ([], "expected a JSON object"),
        ({"nonce": 0, "gas": 1, "gasPrice": 1}, "missing fields"),
        ({**TX_LEGACY, "maxFeePerGas": 1, "maxPriorityFeePerGas": 1}, "both given"),
        ({k: v for k, v in TX_LEGACY.items() if k != "gasPrice"}, "needs maxFeePerGas"),
        ({**TX_1559, "type": "0x0"}, "disagrees"),
        ({k: v for k, v in TX_1559.items() if k != "maxPriorityFeePerGas"}, "missing fields"),
        ({**TX_1559, "maxPriorityFeePerGas": 10**12}, "above maxFeePerGas"),
        ({**TX_1559, "accessList": [{"address": "0x" + "00" * 20, "storageKeys": []}]}, "accessList"),
        ({**TX_1559, "data": "0x12", "input": "0x34"}, "data and input differ"),
        ({**TX_1559, "to": "0x1234"}, "expected 20 bytes"),
        ({**TX_1559, "data": "abcd"}, "expected 0x-hex"),
        ({**TX_1559, "value": "1e18"}, "quantity"),
        ({**TX_1559, "value": True}, "boolean"),
        ({**TX_1559, "value": -1}, "out of range"),
        ({**TX_1559, "nonce": 2**64 - 1}, "out of range"),
        ({**TX_1559, "chainId": 0}, "chainId 0"),
        ({**TX_1559, "from": "0x" + "33" * 20}, "not the signer's address"),
    ],
    ids=["not-object", "missing", "both-fees", "no-fees", "type", "missing-prio", "prio", "access-list",
         "data-input", "to", "data-hex", "value-float", "value-bool", "value-negative", "nonce-max",
         "chain-0", "from"],
)  # fmt: skip
def test_parse_tx_errors(obj: object, match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        parse_tx(obj, signer_address=bytes.fromhex(DEV_ADDR_0[2:]))


def test_parse_tx_accepts_json_rpc_forms() -> None:
    tx = parse_tx({**TX_1559, "type": "0x2", "input": "0xabcd", "accessList": [], "from": DEV_ADDR_0},
                  signer_address=bytes.fromhex(DEV_ADDR_0[2:]))  # fmt: skip
    assert (tx.tx_type, tx.nonce, tx.value, tx.max_fee_per_gas, tx.data) == (
        2,
        5,
        1000,
        20 * 10**9,
        b"\xab\xcd",
    )
    creation = parse_tx({**TX_LEGACY, "to": None})
    assert creation.to is None and creation.tx_type == 0


def test_sign_tx_reads_stdin(signer: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "router", "sign-tx", "--signer", signer, "--tx", "-", "--json"],
        cwd=ROOT, input=json.dumps(TX_1559), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    signed = json.loads(out.stdout)
    assert Account.recover_transaction(signed["raw"]) == DEV_ADDR_0
    assert len(bytes.fromhex(signed["hash"][2:])) == 32
