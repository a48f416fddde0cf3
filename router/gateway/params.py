"""Strict parsing of JSON-RPC parameters: quantities, addresses (EIP-55 checked), data, and the
transaction object of `eth_sendTransaction` / `eth_signTransaction`.

Every refusal is a -32602 naming the field (`params[0].value`), so a client sees which of its
values was wrong. Quantities are 0x-hex strings (the JSON-RPC encoding; no decimals, no JSON
numbers, no signs); data is 0x-hex of whole bytes; an address in mixed case must carry a correct
EIP-55 checksum (a typo in a checksummed address is refused, not signed for).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from enclave.keys import checksum_address
from enclave.tx import UINT256_MAX

from .errors import invalid_params

__all__ = ["TxRequest", "parse_address", "parse_data", "parse_quantity", "parse_tx_request"]

_HEX = frozenset("0123456789abcdefABCDEF")
_U64_MAX = (1 << 64) - 1
_TX_FIELDS = frozenset({
    "from", "to", "value", "data", "input", "gas", "gasPrice", "maxFeePerGas",
    "maxPriorityFeePerGas", "nonce", "chainId", "type", "accessList",
})  # fmt: skip


def parse_quantity(field: str, v: object, limit: int = UINT256_MAX) -> int:
    """A 0x-hex quantity in 0..limit.

    Raises:
        JsonRpcError: -32602 naming `field`.
    """
    if not isinstance(v, str):
        raise invalid_params(field, f"expected a 0x-hex quantity, got {_kind(v)}")
    if v[:2] != "0x" or len(v) == 2 or not set(v[2:]) <= _HEX or len(v) > 66:
        raise invalid_params(field, f"expected a 0x-hex quantity, got {v[:40]!r}")
    n = int(v[2:], 16)
    if n > limit:
        raise invalid_params(field, f"{n} is above the maximum {limit}")
    return n


def parse_data(field: str, v: object, size: int | None = None) -> bytes:
    """0x-hex bytes (`size` of them when given).

    Raises:
        JsonRpcError: -32602 naming `field`.
    """
    if not isinstance(v, str) or v[:2] != "0x":
        raise invalid_params(field, f"expected 0x-hex data, got {_kind(v)}")
    body = v[2:]
    if len(body) % 2 or not set(body) <= _HEX:
        raise invalid_params(field, "not an even number of hex digits")
    b = bytes.fromhex(body)
    if size is not None and len(b) != size:
        raise invalid_params(field, f"expected {size} bytes, got {len(b)}")
    return b


def parse_address(field: str, v: object) -> bytes:
    """A 20-byte address; mixed case must be its EIP-55 checksum.

    Raises:
        JsonRpcError: -32602 naming `field` (bad checksum included).
    """
    b = parse_data(field, v, 20)
    text = str(v)[2:]
    if text != text.lower() and text != text.upper() and checksum_address(b) != "0x" + text:
        raise invalid_params(field, f"bad EIP-55 checksum in {str(v)!r} "
                                    f"(expected {checksum_address(b)})")
    return b


@dataclass(frozen=True)
class TxRequest:
    """An `eth_sendTransaction` / `eth_signTransaction` object, parsed; None means absent."""

    sender: bytes | None
    to: bytes | None
    value: int
    data: bytes
    gas: int | None
    nonce: int | None
    chain_id: int | None
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    gas_price: int | None


def parse_tx_request(obj: object, where: str = "params[0]") -> TxRequest:
    """Parse the transaction object.

    Raises:
        JsonRpcError: -32602 naming the field (unknown fields, bad values, data != input,
            gasPrice with EIP-1559 fees, a non-empty accessList, a type other than 2 or 0).
    """
    if not isinstance(obj, Mapping):
        raise invalid_params(where, f"expected a transaction object, got {_kind(obj)}")
    unknown = sorted(set(obj) - _TX_FIELDS)
    if unknown:
        raise invalid_params(where, f"unknown fields {unknown} (known: {sorted(_TX_FIELDS)})")

    def q(name: str, limit: int = UINT256_MAX) -> int | None:
        return None if obj.get(name) is None else parse_quantity(f"{where}.{name}", obj[name], limit)

    data = None if obj.get("data") is None else parse_data(f"{where}.data", obj["data"])
    inp = None if obj.get("input") is None else parse_data(f"{where}.input", obj["input"])
    if data is not None and inp is not None and data != inp:
        raise invalid_params(f"{where}.input", "data and input are both given and differ")
    max_fee, prio, gas_price = q("maxFeePerGas"), q("maxPriorityFeePerGas"), q("gasPrice")
    if gas_price is not None and (max_fee is not None or prio is not None):
        raise invalid_params(f"{where}.gasPrice", "given together with maxFeePerGas / "
                                                  "maxPriorityFeePerGas")
    if max_fee is not None and prio is not None and prio > max_fee:
        raise invalid_params(f"{where}.maxPriorityFeePerGas",
                             f"{prio} is above maxFeePerGas {max_fee}")
    tx_type = q("type", 0xFF)
    if tx_type is not None and tx_type not in (0, 2):
        raise invalid_params(f"{where}.type", f"type {tx_type} is not supported (0 or 2)")
    if obj.get("accessList") not in (None, []):
        raise invalid_params(f"{where}.accessList", "must be empty (the signer encodes none)")
    return TxRequest(
        sender=None if obj.get("from") is None else parse_address(f"{where}.from", obj["from"]),
        to=None if obj.get("to") is None else parse_address(f"{where}.to", obj["to"]),
        value=q("value") or 0,
        data=data if data is not None else inp if inp is not None else b"",
        gas=q("gas", _U64_MAX),
        nonce=q("nonce", _U64_MAX - 1),
        chain_id=q("chainId", _U64_MAX),
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=prio,
        gas_price=gas_price,
    )


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: repr(str(v)[:40]),
            list: "an array", dict: "an object"}.get(type(v), type(v).__name__)
