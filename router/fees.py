"""Fee policy: fresh EIP-1559 fees from a base fee, and the bump rule for replacing a transaction.

Nodes only replace a pending transaction (same sender and nonce) when both its max fee and its
priority fee rise by at least their price bump (geth and reth: 10 %); `bump_percent` must be at
least that, and replacements are computed with ceiling division so rounding never lands under it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

GWEI = 10**9


class Fees(NamedTuple):
    """EIP-1559 fees of one signature (a NamedTuple: built on the reorg hot path)."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def covers(self, other: Fees, bump_percent: int) -> bool:
        """True when self may replace `other` under a node's price-bump rule."""
        return self.max_fee_per_gas >= _bumped(
            other.max_fee_per_gas, bump_percent
        ) and self.max_priority_fee_per_gas >= _bumped(other.max_priority_fee_per_gas, bump_percent)


@dataclass(frozen=True)
class FeePolicy:
    """How the router prices transactions. All amounts in wei.

    max_fee = base_fee * base_fee_multiplier_percent / 100 + priority_fee, capped by max_fee_cap.
    """

    priority_fee: int = 1 * GWEI
    base_fee_multiplier_percent: int = 200
    max_fee_cap: int = 500 * GWEI
    bump_percent: int = 13
    # On a reorg the dropped transaction may be back in some node's pool: re-sign at a bumped fee
    # so the new signature replaces it rather than bouncing off as "underpriced".
    bump_on_reorg: bool = True

    def __post_init__(self) -> None:
        if self.bump_percent < 10:
            raise ValueError("bump_percent below 10 would never replace a pending transaction")
        if self.priority_fee < 0 or self.max_fee_cap <= 0 or self.base_fee_multiplier_percent < 100:
            raise ValueError("fee policy amounts must be positive and the multiplier >= 100 %")
        if self.priority_fee > self.max_fee_cap:
            raise ValueError("priority_fee is above max_fee_cap")

    def fresh(self, base_fee: int, *, max_fee: int | None = None,
              priority_fee: int | None = None) -> Fees:
        """Fees for a first signature against a block with `base_fee`; `max_fee` /
        `priority_fee` are an intent's overrides, used in place of the computed ones.

        Raises:
            ValueError: an override above max_fee_cap, or a priority fee above the max fee
                override (the message names them).
        """
        for name, v in (("max_fee_per_gas", max_fee), ("max_priority_fee_per_gas", priority_fee)):
            if v is not None and v > self.max_fee_cap:
                raise ValueError(f"{name} {v} is above the fee policy's max_fee_cap "
                                 f"{self.max_fee_cap}")
        tip = self.priority_fee if priority_fee is None else priority_fee
        if max_fee is not None:
            if tip > max_fee:
                raise ValueError(f"priority fee {tip} is above max_fee_per_gas {max_fee}")
            return Fees(max_fee, tip)
        computed = base_fee * self.base_fee_multiplier_percent // 100 + tip
        return Fees(max(min(computed, self.max_fee_cap), tip), tip)

    def bump(self, old: Fees) -> Fees | None:
        """The smallest fees that replace `old`, or None when that would exceed the cap."""
        new = Fees(
            _bumped(old.max_fee_per_gas, self.bump_percent),
            _bumped(old.max_priority_fee_per_gas, self.bump_percent),
        )
        return None if new.max_fee_per_gas > self.max_fee_cap else new

    def for_resign(self, base_fee: int, old: Fees, *, replace: bool) -> Fees | None:
        """Fees for re-signing a transaction that already went out with `old`.

        With `replace` the result must satisfy the bump rule (None when the cap forbids it, and
        the caller re-broadcasts the old bytes instead); otherwise fresh fees, never below `old`.
        Written out flat: it runs once per affected transaction on the reorg path.
        """
        cap = self.max_fee_cap
        max_fee = base_fee * self.base_fee_multiplier_percent // 100 + self.priority_fee
        if max_fee > cap:
            max_fee = cap
        tip = self.priority_fee
        old_max, old_tip = old
        if replace:
            pct = 100 + self.bump_percent
            old_max = -(-old_max * pct // 100)
            if old_max > cap:
                return None
            old_tip = -(-old_tip * pct // 100)
        if old_max > max_fee:
            max_fee = old_max
        if old_tip > tip:
            tip = old_tip
        return Fees(max_fee, tip)


def _bumped(value: int, percent: int) -> int:
    return -(-value * (100 + percent) // 100)
