"""Strict parsers for the JSON-RPC hex encodings (quantities, 32-byte hashes, addresses, data).

Every node answer goes through these so that a malformed or lying node produces a
`MalformedResponse` naming the field, not a ValueError deep inside the router.
"""

from __future__ import annotations

from .errors import MalformedResponse

_MAX_QUANTITY = (1 << 256) - 1
_HEXDIGITS = frozenset("0123456789abcdefABCDEF")


def quantity(value: object, field: str, *, max_value: int = _MAX_QUANTITY) -> int:
    """Parse a JSON-RPC QUANTITY ("0x1a"); raises MalformedResponse naming `field`."""
    if not isinstance(value, str) or not value.startswith("0x") or len(value) < 3:
        raise MalformedResponse(f"{field}: expected a 0x-hex quantity, got {_show(value)}")
    digits = value[2:]
    if len(digits) > 64 or not _HEXDIGITS.issuperset(digits):
        raise MalformedResponse(f"{field}: expected a 0x-hex quantity, got {_show(value)}")
    n = int(digits, 16)
    if n > max_value:
        raise MalformedResponse(f"{field}: {n} is above the maximum {max_value}")
    return n


def fixed_bytes(value: object, field: str, size: int) -> bytes:
    """Parse 0x-hex DATA of exactly `size` bytes (hashes: 32, addresses: 20)."""
    if (
        not isinstance(value, str)
        or not value.startswith("0x")
        or len(value) != 2 + 2 * size
        or not _HEXDIGITS.issuperset(value[2:])
    ):
        raise MalformedResponse(f"{field}: expected 0x-hex of {size} bytes, got {_show(value)}")
    return bytes.fromhex(value[2:])


def data(value: object, field: str) -> bytes:
    """Parse 0x-hex DATA of any even length."""
    if (
        not isinstance(value, str)
        or not value.startswith("0x")
        or len(value) % 2
        or not _HEXDIGITS.issuperset(value[2:])
    ):
        raise MalformedResponse(f"{field}: expected 0x-hex data, got {_show(value)}")
    return bytes.fromhex(value[2:])


def to_quantity(n: int) -> str:
    return hex(n)


def to_hex(b: bytes) -> str:
    return "0x" + b.hex()


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
