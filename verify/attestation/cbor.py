"""The one CBOR decoder for attestation documents: a strict subset, one encoding per value.

Everything that reads an attestation document (the library's `parse_document`, the verifier, the
CLI, the router through the verifier) decodes with `decode_strict`, so they accept and refuse the
same bytes. What the NSM emits is deterministic CBOR (RFC 8949 §4.2.1 heads) built from a handful of
types, so that is all this accepts:

- unsigned and negative integers, byte strings, UTF-8 text strings, arrays, maps,
  false / true / null; nothing else (no floats, undefined, other simple values or bignums);
- definite lengths only (no indefinite-length strings, arrays or maps);
- shortest heads only: an argument below 24 is inline, below 2^8 takes one byte, and so on;
- map keys are integers or text, each at most once (a duplicate key is refused, never "last wins");
- tags only where the caller allows them (COSE_Sign1's tag 18, at the top);
- bounded nesting depth, and exactly one item with no trailing bytes.

Map key order is not checked: AWS's documents keep the NSM's order, which is not RFC 8949's
canonical order, and the order carries no meaning once duplicates are refused.

Even so, a document's bytes are not a unique name for what it says: ECDSA signatures are malleable
((r, s) and (r, n - s) both verify) and the signed payload is a byte string whose outer encoding
could in principle change. Nothing in Sentinel uses a document's hash as an identifier; compare
its decoded fields instead.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import cbor2

__all__ = ["MAX_DEPTH", "CborError", "decode_strict"]

#: Deepest nesting accepted; an attestation document needs 3 (envelope, payload map, pcrs map).
MAX_DEPTH = 16

_FALSE, _TRUE, _NULL = 20, 21, 22
_MINIMUM = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}  # smallest value each head width may hold


class CborError(ValueError):
    """The bytes are not CBOR in the strict subset; the message says where and why."""


class _Reader:
    def __init__(self, data: bytes, tags: Collection[int]) -> None:
        self.data = data
        self.pos = 0
        self.tags = tags

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise CborError(f"truncated at byte {self.pos}: needs {n} more bytes")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def head(self) -> tuple[int, int, int]:
        """(major type, additional info, argument) of the next item, refusing non-shortest forms."""
        start = self.pos
        initial = self.take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info == 31:
            raise CborError(f"indefinite length at byte {start} (only definite lengths)")
        if info > 27:
            raise CborError(f"reserved additional information {info} at byte {start}")
        if major == 7:
            return major, info, 0  # floats and simple values: refused by the caller
        width = 1 << (info - 24)
        value = int.from_bytes(self.take(width), "big")
        if value < _MINIMUM[info]:
            raise CborError(f"non-shortest head at byte {start}: {value} encoded in {width} bytes")
        return major, info, value

    def count(self, n: int, per_item: int, start: int) -> int:
        # Each item takes at least one byte: a length beyond what is left is a lie, refused before
        # anything is allocated for it.
        if n * per_item > len(self.data) - self.pos:
            raise CborError(f"length {n} at byte {start} exceeds the remaining input")
        return n

    def item(self, depth: int, top: bool) -> Any:
        if depth > MAX_DEPTH:
            raise CborError(f"nesting deeper than {MAX_DEPTH} at byte {self.pos}")
        start = self.pos
        major, info, arg = self.head()
        if major == 0:
            return arg
        if major == 1:
            return -1 - arg
        if major == 2:
            return self.take(arg)
        if major == 3:
            raw = self.take(arg)
            try:
                return raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CborError(f"text string at byte {start} is not UTF-8") from e
        if major == 4:
            return [self.item(depth + 1, False) for _ in range(self.count(arg, 1, start))]
        if major == 5:
            result: dict[Any, Any] = {}
            for _ in range(self.count(arg, 2, start)):
                key_at = self.pos
                key = self.item(depth + 1, False)
                if type(key) not in (int, str):
                    raise CborError(f"map key at byte {key_at} is {type(key).__name__}, not int or text")
                if key in result:
                    raise CborError(f"duplicate map key {key!r} at byte {key_at}")
                result[key] = self.item(depth + 1, False)
            return result
        if major == 6:
            if not top or arg not in self.tags:
                raise CborError(f"CBOR tag {arg} at byte {start} is not allowed here")
            return cbor2.CBORTag(arg, self.item(depth + 1, False))
        # major 7
        if info == _FALSE:
            return False
        if info == _TRUE:
            return True
        if info == _NULL:
            return None
        raise CborError(f"simple value or float (additional information {info}) at byte {start}")


def decode_strict(data: bytes, *, tags: Collection[int] = ()) -> Any:
    """Decode exactly one CBOR item in the strict subset described above.

    Args:
        data: the encoded item; nothing may follow it.
        tags: tag numbers accepted on the outermost item only (none by default).

    Returns:
        int, bytes, str, list, dict, bool, None, or a `cbor2.CBORTag` around the outer item.

    Raises:
        CborError: anything outside the subset: truncation, trailing bytes, indefinite lengths,
            non-shortest heads, duplicate or non-int/text map keys, floats, disallowed tags, depth.
    """
    reader = _Reader(data, tags)
    value = reader.item(0, True)
    if reader.pos != len(data):
        raise CborError(f"{len(data) - reader.pos} trailing bytes after the CBOR item")
    return value
