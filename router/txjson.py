"""Transactions as JSON-RPC objects (`eth_sendTransaction` field names) -> `enclave.tx.UnsignedTx`.

Accepted fields: chainId, nonce, gas, to, value, data (or input), and either maxFeePerGas +
maxPriorityFeePerGas (EIP-1559, type 2) or gasPrice (legacy EIP-155, type 0); optional type (must
agree), accessList (must be empty: the signer encodes none) and from (must be the signer's address).
Quantities are JSON integers, 0x-hex strings or decimal strings. Unknown fields are refused so that a
typo (say `maxFeePerGass`) is an error, not a silently different transaction.

Addresses (`to`, `from`) in mixed case must carry a valid EIP-55 checksum (all-lower and all-upper
hex carry none and are accepted): a mistyped mixed-case address is caught before it is signed. A
contract creation must be asked for: `"to": null` or `create=True` (`sign-tx --create`); a missing
`to` is refused, since a forgotten recipient would otherwise deploy the data as a contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from enclave.keys import checksum_address
from enclave.tx import TX_EIP1559, TX_LEGACY, UINT256_MAX, UnsignedTx
from router.errors import MalformedInput

__all__ = ["parse_tx"]

_KNOWN = {
    "chainId", "nonce", "gas", "to", "value", "data", "input", "maxFeePerGas",
    "maxPriorityFeePerGas", "gasPrice", "type", "accessList", "from",
}  # fmt: skip
_U64_MAX = (1 << 64) - 1


def _quantity(name: str, v: Any, limit: int = UINT256_MAX) -> int:
    if isinstance(v, bool):
        raise MalformedInput(f"transaction {name}: expected a number, got a boolean")
    if isinstance(v, int):
        n = v
    elif isinstance(v, str):
        text = v.strip()
        try:
            if text[:2] in ("0x", "0X"):
                if len(text) == 2:
                    raise ValueError
                n = int(text[2:], 16)
            elif text.isdecimal() and text.isascii():
                n = int(text, 10)
            else:
                raise ValueError
        except ValueError:
            raise MalformedInput(
                f"transaction {name}: expected a 0x-hex or decimal quantity, got {v!r}"
            ) from None
    else:
        raise MalformedInput(f"transaction {name}: expected a quantity, got {type(v).__name__}")
    if not 0 <= n <= limit:
        raise MalformedInput(f"transaction {name}: {n} out of range 0..{limit}")
    return n


def _hex_data(name: str, v: Any, size: int | None = None) -> bytes:
    if not isinstance(v, str) or v[:2] not in ("0x", "0X"):
        raise MalformedInput(f"transaction {name}: expected 0x-hex, got {v!r}")
    try:
        b = bytes.fromhex(v[2:])
    except ValueError:
        raise MalformedInput(f"transaction {name}: not hexadecimal") from None
    if size is not None and len(b) != size:
        raise MalformedInput(f"transaction {name}: expected {size} bytes, got {len(b)}")
    return b


def _address(name: str, v: Any) -> bytes:
    """A 20-byte address; a mixed-case one must be EIP-55 checksummed."""
    raw = _hex_data(name, v, 20)
    digits = v[2:]
    if digits != digits.lower() and digits != digits.upper():
        want = checksum_address(raw)
        if digits != want[2:]:
            raise MalformedInput(
                f"transaction {name}: {v} has an invalid EIP-55 checksum (expected {want}); "
                "check the address, or give it all in lower case to skip the checksum"
            )
    return raw


def parse_tx(
    obj: object, *, signer_address: bytes | None = None, create: bool = False
) -> UnsignedTx:
    """Parse a JSON-RPC transaction object.

    Args:
        obj: the decoded JSON (a mapping).
        signer_address: if given and the object has `from`, they must match.
        create: a contract creation is intended, so `to` may be absent (it must not be an address).

    Raises:
        MalformedInput: not an object, unknown or missing fields, bad values, inconsistent type,
            a bad EIP-55 checksum, a missing `to` without `create`, or `create` with a `to`.
    """
    if not isinstance(obj, Mapping):
        raise MalformedInput(f"transaction: expected a JSON object, got {type(obj).__name__}")
    unknown = sorted(set(obj) - _KNOWN)
    if unknown:
        raise MalformedInput(f"transaction: unknown fields {unknown}")
    missing = [k for k in ("chainId", "nonce", "gas") if k not in obj]
    if missing:
        raise MalformedInput(f"transaction: missing fields {missing}")
    has_1559 = "maxFeePerGas" in obj or "maxPriorityFeePerGas" in obj
    if has_1559 and "gasPrice" in obj:
        raise MalformedInput(
            "transaction: gasPrice (legacy) and maxFeePerGas (EIP-1559) both given"
        )
    if not has_1559 and "gasPrice" not in obj:
        raise MalformedInput("transaction: needs maxFeePerGas + maxPriorityFeePerGas, or gasPrice")
    tx_type = TX_EIP1559 if has_1559 else TX_LEGACY
    if "type" in obj and _quantity("type", obj["type"], 0xFF) != tx_type:
        raise MalformedInput(
            f"transaction type {obj['type']!r} disagrees with its fee fields (type {tx_type})"
        )
    if has_1559:
        missing = [k for k in ("maxFeePerGas", "maxPriorityFeePerGas") if k not in obj]
        if missing:
            raise MalformedInput(f"transaction: missing fields {missing}")
        max_fee = _quantity("maxFeePerGas", obj["maxFeePerGas"])
        prio = _quantity("maxPriorityFeePerGas", obj["maxPriorityFeePerGas"])
        if prio > max_fee:
            raise MalformedInput(
                f"transaction: maxPriorityFeePerGas {prio} above maxFeePerGas {max_fee}"
            )
    else:
        max_fee, prio = _quantity("gasPrice", obj["gasPrice"]), 0
    if obj.get("accessList") not in (None, []):
        raise MalformedInput("transaction: non-empty accessList is not supported by the signer")
    if "data" in obj and "input" in obj and obj["data"] != obj["input"]:
        raise MalformedInput("transaction: data and input differ")
    raw_data = obj.get("data", obj.get("input", "0x"))
    if "to" not in obj and not create:
        raise MalformedInput(
            'transaction has no "to": for a contract creation give "to": null (or --create); '
            "a missing recipient is refused rather than deploying the data as a contract"
        )
    to = obj.get("to")
    to_bytes = None if to is None else _address("to", to)
    if create and to_bytes is not None:
        raise MalformedInput(
            f"a contract creation (--create) has no recipient, but the transaction's to is {to}"
        )
    if "from" in obj:
        sender = _address("from", obj["from"])
        if signer_address is not None and sender != signer_address:
            raise MalformedInput(
                f"transaction from 0x{sender.hex()} is not the signer's address 0x{signer_address.hex()}"
            )
    chain_id = _quantity("chainId", obj["chainId"], _U64_MAX)
    if chain_id == 0:
        raise MalformedInput("transaction chainId 0 is not a chain (EIP-155)")
    return UnsignedTx(
        tx_type=tx_type,
        chain_id=chain_id,
        nonce=_quantity("nonce", obj["nonce"], _U64_MAX - 1),
        gas=_quantity("gas", obj["gas"], _U64_MAX),
        to=to_bytes,
        value=_quantity("value", obj.get("value", 0)),
        data=_hex_data("data", raw_data),
        max_fee_per_gas=max_fee,
        max_priority_fee_per_gas=prio,
    )
