"""The seed's "jitter tax": a back-of-the-envelope annual cost of timing noise.

annual loss = sigma_jitter_us / 1000 x slippage x volume x 252 trading days, with sigma_jitter the
standard deviation of the loop's gaps in microseconds (so sigma/1000 is in milliseconds), slippage
the fractional price cost of one millisecond of delay, and volume the daily traded notional. It is
the seed's model, printed with its inputs so the reader can judge it; it is not a market model.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["JitterTax", "jitter_tax"]

TRADING_DAYS = 252


@dataclass(frozen=True)
class JitterTax:
    sigma_us: float
    slippage_per_ms: float
    daily_volume: float
    annual_loss: float

    def to_json(self) -> dict[str, float | str]:
        return {
            "formula": "sigma_us / 1000 * slippage_per_ms * daily_volume * 252",
            "sigma_us": self.sigma_us,
            "slippage_per_ms": self.slippage_per_ms,
            "daily_volume": self.daily_volume,
            "annual_loss": self.annual_loss,
        }


def jitter_tax(sigma_ns: float, slippage_per_ms: float, daily_volume: float) -> JitterTax:
    """Raises ValueError for negative or non-finite inputs (the CLI turns that into exit 2)."""
    for name, value in (
        ("slippage", slippage_per_ms),
        ("volume", daily_volume),
        ("sigma", sigma_ns),
    ):
        if not (value >= 0 and value != float("inf")):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    sigma_us = sigma_ns / 1000.0
    return JitterTax(
        sigma_us,
        slippage_per_ms,
        daily_volume,
        sigma_us / 1000.0 * slippage_per_ms * daily_volume * TRADING_DAYS,
    )
