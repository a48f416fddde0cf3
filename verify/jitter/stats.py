"""From raw gaps to numbers: an HDR histogram, per-iteration and per-arrival percentiles, stalls.

Two views of the same gaps, because they answer different questions:

- per iteration: the distribution of gaps between consecutive clock reads. A 3 ms preemption is one
  sample among millions, so this view barely moves when the CPU is shared: p99.9 stays near the
  loop's floor even when the thread is off the CPU half of the time.
- per arrival (time-weighted): the delay an event arriving at a random instant waits until the loop
  next looks. An event lands in a gap with probability proportional to the gap's length and waits
  for the rest of it, so stalls weigh by their duration. This is the coordinated-omission view that
  jHiccup corrects for, and it is the one a trading loop feels.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hdrh.histogram import HdrHistogram

from verify.jitter._spin import RawRun

__all__ = ["GapStats", "Percentiles", "StallCount", "arrival_quantile", "summarize"]

#: HDR range: 1 ns to one hour, 3 significant digits (0.1% value error).
HDR_LOWEST_NS = 1
HDR_HIGHEST_NS = 3_600_000_000_000
HDR_DIGITS = 3
QUANTILES = (50.0, 99.0, 99.9)


@dataclass(frozen=True)
class Percentiles:
    p50_ns: float
    p99_ns: float
    p99_9_ns: float
    max_ns: float

    def to_json(self) -> dict[str, float]:
        # 0.1 ns is far below any clock's resolution; more digits would only be float noise.
        return {
            "p50_ns": round(self.p50_ns, 1),
            "p99_ns": round(self.p99_ns, 1),
            "p99_9_ns": round(self.p99_9_ns, 1),
            "max_ns": round(self.max_ns, 1),
        }


@dataclass(frozen=True)
class StallCount:
    threshold_ns: int
    count: int
    total_ns: int
    fraction_of_time: float

    def to_json(self) -> dict[str, float]:
        return {
            "threshold_ns": self.threshold_ns,
            "count": self.count,
            "total_ns": self.total_ns,
            "fraction_of_time": self.fraction_of_time,
        }


@dataclass(frozen=True)
class GapStats:
    iterations: int
    elapsed_ns: int
    floor_ns: int
    mean_ns: float
    stddev_ns: float
    per_iteration: Percentiles
    per_arrival: Percentiles
    stalls: tuple[StallCount, ...]
    histogram: HdrHistogram

    def encoded_histogram(self) -> str:
        """The HDR histogram in its standard compressed encoding (base64), for offline analysis."""
        data = self.histogram.encode()
        return data.decode("ascii") if isinstance(data, bytes) else str(data)

    def to_json(self) -> dict[str, Any]:
        return {
            "iterations": self.iterations,
            "elapsed_ns": self.elapsed_ns,
            "floor_ns": self.floor_ns,
            "mean_ns": self.mean_ns,
            "stddev_ns": self.stddev_ns,
            "per_iteration": self.per_iteration.to_json(),
            "per_arrival": self.per_arrival.to_json(),
            "stalls": [s.to_json() for s in self.stalls],
            "hdr_histogram": self.encoded_histogram(),
        }


def _value_counts(raw: RawRun) -> list[tuple[int, int]]:
    """(gap, count) ascending, exact to the nanosecond."""
    pairs = [(g, c) for g, c in enumerate(raw.small) if c]
    big: dict[int, int] = {}
    for _, gap in raw.big:
        big[gap] = big.get(gap, 0) + 1
    pairs.extend(sorted(big.items()))
    return pairs


def arrival_quantile(value_counts: Sequence[tuple[int, int]], q: float) -> float:
    """The q-th percentile of the wait of an event arriving uniformly at random during the run.

    With gaps g (counts c) covering time T = sum(c*g), an arrival waits more than x with
    probability P(x) = sum over g > x of c*(g - x) / T. P is continuous and decreasing, so the
    answer is found exactly by walking the distinct gaps from the top.
    """
    total = sum(g * c for g, c in value_counts)
    if total <= 0:
        return 0.0
    tail = (1.0 - q / 100.0) * total
    s1 = s0 = 0  # sum of c*g and of c over the gaps above the current interval
    for i in range(len(value_counts) - 1, -1, -1):
        g, c = value_counts[i]
        s1 += g * c
        s0 += c
        lower = value_counts[i - 1][0] if i > 0 else 0
        if s1 - lower * s0 >= tail:  # P(lower) >= target: the answer lies in [lower, g]
            return max(float(lower), (s1 - tail) / s0)
    return 0.0


def summarize(raw: RawRun, thresholds_ns: Iterable[int]) -> GapStats:
    """Record every gap in an HDR histogram and compute the report's numbers.

    Raises:
        ValueError: the run recorded no gap at all.
    """
    pairs = _value_counts(raw)
    if not pairs:
        raise ValueError("the loop recorded no gap")
    hist = HdrHistogram(HDR_LOWEST_NS, HDR_HIGHEST_NS, HDR_DIGITS)
    for gap, count in pairs:
        hist.record_value(min(gap, HDR_HIGHEST_NS), count)
    q50, q99, q99_9 = QUANTILES
    top = float(pairs[-1][0])
    per_iteration = Percentiles(
        float(hist.get_value_at_percentile(q50)),
        float(hist.get_value_at_percentile(q99)),
        float(hist.get_value_at_percentile(q99_9)),
        top,
    )
    per_arrival = Percentiles(
        arrival_quantile(pairs, q50),
        arrival_quantile(pairs, q99),
        arrival_quantile(pairs, q99_9),
        top,
    )
    span = sum(g * c for g, c in pairs)
    stalls = []
    for threshold in sorted(set(thresholds_ns)):
        above = [(g, c) for g, c in pairs if g > threshold]
        total = sum(g * c for g, c in above)
        stalls.append(
            StallCount(threshold, sum(c for _, c in above), total, total / span if span else 0.0)
        )
    return GapStats(
        iterations=raw.iterations,
        elapsed_ns=raw.elapsed_ns,
        floor_ns=pairs[0][0],
        mean_ns=float(hist.get_mean_value()),
        stddev_ns=float(hist.get_stddev()),
        per_iteration=per_iteration,
        per_arrival=per_arrival,
        stalls=tuple(stalls),
        histogram=hist,
    )
