"""What the trading bot asks for: a transfer or call, without nonce or fees (the router owns those)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from .errors import MalformedInput

_ids = itertools.count(1)


@dataclass(frozen=True)
class Intent:
    """One transaction the bot wants landed exactly once.

    Args:
        to: 20-byte destination address.
        value: wei to transfer.
        data: call data.
        gas: gas limit.
        id: caller's idempotency key; a second submit with the same id returns the first handle.
    """

    to: bytes
    value: int = 0
    data: bytes = b""
    gas: int = 21_000
    id: str = field(default_factory=lambda: f"intent-{next(_ids)}")

    def __post_init__(self) -> None:
        if not isinstance(self.to, bytes) or len(self.to) != 20:
            raise MalformedInput(f"intent {self.id}: 'to' must be 20 bytes, got {self.to!r:.60}")
        if not isinstance(self.value, int) or not 0 <= self.value < 2**256:
            raise MalformedInput(f"intent {self.id}: value out of range")
        if not isinstance(self.gas, int) or not 21_000 <= self.gas <= 30_000_000:
            raise MalformedInput(f"intent {self.id}: gas {self.gas} outside 21000..30000000")
        if not isinstance(self.data, bytes):
            raise MalformedInput(f"intent {self.id}: data must be bytes")

    @classmethod
    def from_json(cls, obj: object) -> Intent:
        """Parse {"to": "0x..", "value": int|"0x..", "data": "0x..", "gas": int, "id": str}."""
        if not isinstance(obj, dict):
            raise MalformedInput("intent must be a JSON object")
        unknown = set(obj) - {"to", "value", "data", "gas", "id"}
        if unknown:
            raise MalformedInput(f"intent: unknown fields {sorted(unknown)}")
        try:
            to = obj["to"]
            if not (isinstance(to, str) and to.startswith("0x") and len(to) == 42):
                raise MalformedInput(f"intent.to: expected a 0x-hex address, got {to!r:.60}")
            kwargs: dict[str, object] = {"to": bytes.fromhex(to[2:])}
            for name in ("value", "gas"):
                if name in obj:
                    v = obj[name]
                    if isinstance(v, str) and v.startswith("0x"):
                        v = int(v, 16)
                    if not isinstance(v, int) or isinstance(v, bool):
                        raise MalformedInput(f"intent.{name}: expected an integer, got {v!r:.40}")
                    kwargs[name] = v
            if "data" in obj:
                d = obj["data"]
                if not (isinstance(d, str) and d.startswith("0x")):
                    raise MalformedInput("intent.data: expected 0x-hex")
                kwargs["data"] = bytes.fromhex(d[2:])
            if "id" in obj:
                if not isinstance(obj["id"], str) or not 0 < len(obj["id"]) <= 128:
                    raise MalformedInput("intent.id: expected a string of 1..128 characters")
                kwargs["id"] = obj["id"]
        except KeyError as e:
            raise MalformedInput(f"intent: missing field {e}") from e
        except ValueError as e:
            raise MalformedInput(f"intent: bad hex ({e})") from e
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        return {"to": "0x" + self.to.hex(), "value": self.value, "data": "0x" + self.data.hex(),
                "gas": self.gas, "id": self.id}
