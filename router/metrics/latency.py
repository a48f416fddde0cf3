"""A fixed-bucket latency histogram cheap enough to sit on the signer thread's every call.

One writer (the signer thread) increments plain ints; the exporter copies them at scrape time.
No lock: under the GIL an increment cannot be lost to a reader, and a scrape that races an
observation at worst reports the sum without that observation's share (the bucket counts it
copies are consistent with the count it reports, which is all Prometheus checks).
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

__all__ = ["ROUND_TRIP_BOUNDS_NS", "HistogramSnapshot", "LatencyHistogram"]

#: 1-2-5 steps from 10 µs to 100 ms: a signer round trip is tens of µs; a reconnect is ms.
ROUND_TRIP_BOUNDS_NS: tuple[int, ...] = (
    10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 100_000_000,
)  # fmt: skip


@dataclass(frozen=True)
class HistogramSnapshot:
    """Upper bounds (ns, ascending) with cumulative counts (`le`), the +Inf count and the sum."""

    bounds_ns: tuple[int, ...]
    cumulative: tuple[int, ...]  # one per bound, then +Inf (== count)
    sum_ns: int

    @property
    def count(self) -> int:
        return self.cumulative[-1]


class LatencyHistogram:
    """Observations in nanoseconds into `bounds_ns` buckets (a value equal to a bound falls in it,
    as Prometheus' `le` says)."""

    __slots__ = ("bounds_ns", "_counts", "_sum_ns")

    def __init__(self, bounds_ns: tuple[int, ...] = ROUND_TRIP_BOUNDS_NS) -> None:
        if not bounds_ns or any(b <= a for a, b in zip(bounds_ns, bounds_ns[1:], strict=False)):
            raise ValueError("bounds must be a non-empty strictly increasing sequence")
        if bounds_ns[0] <= 0:
            raise ValueError("bounds must be positive")
        self.bounds_ns = tuple(bounds_ns)
        self._counts = [0] * (len(bounds_ns) + 1)
        self._sum_ns = 0

    def observe_ns(self, ns: int) -> None:
        self._counts[bisect_left(self.bounds_ns, ns)] += 1
        self._sum_ns += ns

    def snapshot(self) -> HistogramSnapshot:
        counts = list(self._counts)  # one copy: the cumulative counts below agree with each other
        total = 0
        cumulative = []
        for c in counts:
            total += c
            cumulative.append(total)
        return HistogramSnapshot(self.bounds_ns, tuple(cumulative), self._sum_ns)
