"""`router sign-tx` refuses a `from` that is not the signer, a bad EIP-55 checksum, and a missing
`to` (contract creation must be asked for with `"to": null` or `--create`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from anvil_support import DEV_ADDR_0
from eth_account import Account
from eth_utils import to_checksum_address
from signer_support import ROOT, running_signer

from router.errors import MalformedInput
from router.txjson import parse_tx

OTHER = to_checksum_address("0x" + "5a" * 10 + "c3" * 10)  # reference EIP-55 from eth-utils
TX = {"chainId": 31337, "nonce": 0, "to": OTHER, "value": 1, "gas": 21000,
      "maxFeePerGas": 10**9, "maxPriorityFeePerGas": 1}  # fmt: skip


def _flip_case(address: str) -> str:
    """The same address with the case of its first letter swapped: a checksum typo."""
    i = next(i for i, c in enumerate(address[2:], 2) if c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1 :]


def _sign_tx(signer: str, tmp_path: Path, tx: dict[str, object], *extra: str
             ) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "tx.json"
    path.write_text(json.dumps(tx))
    return subprocess.run(
        [sys.executable, "-m", "router", "sign-tx", "--signer", signer, "--tx", str(path), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.fixture
def signer(tmp_path: Path) -> Iterator[str]:
    with running_signer(tmp_path) as server:
        yield str(server.address)


def test_mixed_case_checksum_is_checked() -> None:
    assert OTHER != OTHER.lower() and OTHER[2:] != OTHER[2:].upper()
    for ok in (OTHER, OTHER.lower(), "0x" + OTHER[2:].upper()):
        assert parse_tx({**TX, "to": ok}).to == bytes.fromhex(OTHER[2:])
    bad = _flip_case(OTHER)
    with pytest.raises(MalformedInput, match=f"invalid EIP-55 checksum \\(expected {OTHER}\\)"):
        parse_tx({**TX, "to": bad})
    with pytest.raises(MalformedInput, match="from: .* invalid EIP-55"):
        parse_tx({**TX, "from": _flip_case(DEV_ADDR_0)})


def test_contract_creation_must_be_asked_for() -> None:
    no_to = {k: v for k, v in TX.items() if k != "to"}
    with pytest.raises(MalformedInput, match='no "to".*"to": null \\(or --create\\)'):
        parse_tx(no_to)
    assert parse_tx(no_to, create=True).to is None
    assert parse_tx({**TX, "to": None}).to is None
    assert parse_tx({**TX, "to": None}, create=True).to is None
    with pytest.raises(MalformedInput, match="--create.*to is"):
        parse_tx(TX, create=True)


@pytest.mark.parametrize(
    "change,extra,match",
    [
        ({"from": to_checksum_address("0x" + "33" * 20)}, [], "is not the signer's address"),
        ({"to": "typo"}, [], "invalid EIP-55 checksum"),
        ({"to": "absent"}, [], 'no "to"'),
        ({}, ["--create"], "--create"),
    ],
    ids=["from-not-signer", "to-checksum", "to-missing", "create-with-to"],
)  # fmt: skip
def test_sign_tx_refuses(signer: str, tmp_path: Path, change: dict[str, object], extra: list[str],
                         match: str) -> None:
    tx = {**TX, **change}
    if tx["to"] == "typo":
        tx["to"] = _flip_case(OTHER)
    elif tx["to"] == "absent":
        del tx["to"]
    out = _sign_tx(signer, tmp_path, tx, *extra)
    assert out.returncode == 2 and match in out.stderr, out.stderr
    assert out.stdout == "" and "Traceback" not in out.stderr


def test_sign_tx_accepts_the_signer_as_from_in_any_case(signer: str, tmp_path: Path) -> None:
    for sender in (DEV_ADDR_0, DEV_ADDR_0.lower()):
        out = _sign_tx(signer, tmp_path, {**TX, "from": sender, "to": OTHER.lower()})
        assert out.returncode == 0, out.stderr
        assert Account.recover_transaction(out.stdout.strip()) == DEV_ADDR_0
