"""What the trading bot asks for: a transfer or call, without nonce or fees (the router owns those),
and the options a caller may set per intent (gas limit or estimation, fee overrides, a deadline)."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

from .errors import MalformedInput

_ids = itertools.count(1)

MIN_GAS = 21_000
MAX_GAS = 30_000_000
_U256 = 2**256
#: Keys of `Intent.to_json` / `Intent.from_json` (the journal stores intents in this form).
JSON_KEYS = frozenset({"to", "value", "data", "gas", "id", "max_fee_per_gas",
                       "max_priority_fee_per_gas", "deadline", "gas_estimated"})


@dataclass(frozen=True, eq=False)
class Intent:
    """One transaction the bot wants landed exactly once.

    Args:
        to: 20-byte destination address.
        value: wei to transfer.
        data: call data.
        gas: gas limit; None asks the router to estimate it (eth_estimateGas at submit, plus a
            margin: see `Router.estimate_gas`).
        id: caller's idempotency key; a second submit with the same id returns the first handle.
        max_fee_per_gas: overrides the fee policy's max fee of the first signature (wei; refused
            above the policy's max_fee_cap). Re-signs and bumps start from it.
        max_priority_fee_per_gas: overrides the policy's priority fee likewise.
        deadline: unix seconds; an intent still pending then is cancelled by the router.
        gas_estimated: set by the router, not by callers: `gas` is the router's estimate for an
            intent submitted with gas=None. Such an intent compares equal to its request (gas
            None), so a resubmit of the same request finds it (idempotency).

    Equality (and hash) is over the request: every field, with an estimated gas counted as None.
    """

    to: bytes
    value: int = 0
    data: bytes = b""
    gas: int | None = MIN_GAS
    id: str = field(default_factory=lambda: f"intent-{next(_ids)}")
    max_fee_per_gas: int | None = None
    max_priority_fee_per_gas: int | None = None
    deadline: float | None = None
    gas_estimated: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.to, bytes) or len(self.to) != 20:
            raise MalformedInput(f"intent {self.id}: 'to' must be 20 bytes, got {self.to!r:.60}")
        if not _is_int(self.value) or not 0 <= self.value < _U256:
            raise MalformedInput(f"intent {self.id}: value out of range")
        if self.gas is None:
            if self.gas_estimated:
                raise MalformedInput(f"intent {self.id}: gas_estimated without a gas value")
        elif not _is_int(self.gas) or not MIN_GAS <= self.gas <= MAX_GAS:
            raise MalformedInput(f"intent {self.id}: gas {self.gas} outside {MIN_GAS}..{MAX_GAS}")
        if not isinstance(self.data, bytes):
            raise MalformedInput(f"intent {self.id}: data must be bytes")
        for name in ("max_fee_per_gas", "max_priority_fee_per_gas"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v < _U256):
                raise MalformedInput(f"intent {self.id}: {name} must be an integer in 0..2**256-1, "
                                     f"got {v!r:.40}")
        if (self.max_fee_per_gas is not None and self.max_priority_fee_per_gas is not None
                and self.max_priority_fee_per_gas > self.max_fee_per_gas):
            raise MalformedInput(
                f"intent {self.id}: max_priority_fee_per_gas ({self.max_priority_fee_per_gas}) is "
                f"above max_fee_per_gas ({self.max_fee_per_gas})")
        if self.deadline is not None:
            d = self.deadline
            if isinstance(d, bool) or not isinstance(d, int | float) or not math.isfinite(d) or d <= 0:
                raise MalformedInput(f"intent {self.id}: deadline must be positive unix seconds, "
                                     f"got {d!r:.40}")
            object.__setattr__(self, "deadline", float(d))
        if not isinstance(self.gas_estimated, bool):
            raise MalformedInput(f"intent {self.id}: gas_estimated must be a bool")

    # --- equality over the request ------------------------------------------------------------

    def _request(self) -> tuple[object, ...]:
        return (self.to, self.value, self.data, None if self.gas_estimated else self.gas, self.id,
                self.max_fee_per_gas, self.max_priority_fee_per_gas, self.deadline)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Intent):
            return NotImplemented
        return self._request() == other._request()

    def __hash__(self) -> int:
        return hash(self._request())

    # --- what the router uses -------------------------------------------------------------------

    @property
    def gas_limit(self) -> int:
        """The gas limit to sign with.

        Raises:
            MalformedInput: gas is None (to be estimated) and was not resolved yet.
        """
        if self.gas is None:
            raise MalformedInput(f"intent {self.id}: gas not estimated yet")
        return self.gas

    @property
    def has_options(self) -> bool:
        """True when anything beyond the fixed transfer/call fields is set (the SUBMIT encoding
        then carries its options block)."""
        return (self.gas is None or self.gas_estimated or self.max_fee_per_gas is not None
                or self.max_priority_fee_per_gas is not None or self.deadline is not None)

    def with_estimated_gas(self, gas: int) -> Intent:
        """This request with the router's estimate filled in (still equal to the request)."""
        return dataclasses.replace(self, gas=gas, gas_estimated=True)

    # --- JSON (the CLI's input, the journal's storage) ------------------------------------------

    @classmethod
    def from_json(cls, obj: object) -> Intent:
        """Parse {"to": "0x..", "value": int|"0x..", "data": "0x..", "gas": int|null, "id": str,
        "max_fee_per_gas": int|"0x..", "max_priority_fee_per_gas": int|"0x..",
        "deadline": unix seconds}; only "to" is required (gas null: estimate).

        Raises:
            MalformedInput: not an object, an unknown or missing field, a bad value.
        """
        if not isinstance(obj, dict):
            raise MalformedInput("intent must be a JSON object")
        unknown = set(obj) - JSON_KEYS
        if unknown:
            raise MalformedInput(f"intent: unknown fields {sorted(unknown)}")
        try:
            to = obj["to"]
            if not (isinstance(to, str) and to.startswith("0x") and len(to) == 42):
                raise MalformedInput(f"intent.to: expected a 0x-hex address, got {to!r:.60}")
            kwargs: dict[str, object] = {"to": bytes.fromhex(to[2:])}
            for name in ("value", "gas", "max_fee_per_gas", "max_priority_fee_per_gas"):
                if name in obj:
                    v = obj[name]
                    if v is None and name != "value":
                        kwargs[name] = None
                        continue
                    if isinstance(v, str) and v.startswith("0x"):
                        v = int(v, 16)
                    if not _is_int(v):
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
            if obj.get("deadline") is not None:
                kwargs["deadline"] = obj["deadline"]
            if "gas_estimated" in obj:
                if not isinstance(obj["gas_estimated"], bool):
                    raise MalformedInput("intent.gas_estimated: expected true or false")
                kwargs["gas_estimated"] = obj["gas_estimated"]
        except KeyError as e:
            raise MalformedInput(f"intent: missing field {e}") from e
        except ValueError as e:
            raise MalformedInput(f"intent: bad hex ({e})") from e
        return cls(**kwargs)  # type: ignore[arg-type]

    def to_json(self) -> dict[str, object]:
        """JSON-ready fields; options only when set (so a plain intent's form is unchanged)."""
        out: dict[str, object] = {"to": "0x" + self.to.hex(), "value": self.value,
                                  "data": "0x" + self.data.hex(), "gas": self.gas, "id": self.id}
        if self.gas_estimated:
            out["gas_estimated"] = True
        for name in ("max_fee_per_gas", "max_priority_fee_per_gas", "deadline"):
            v = getattr(self, name)
            if v is not None:
                out[name] = v
        return out


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
