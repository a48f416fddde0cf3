"""Shared pieces of the benchmark harness: timing loops, percentiles and the report record.

Every benchmark compares itself with a baseline measured in the same process and the same run, so
that the ratio, not the absolute figure, is what we track on a noisy 2-core machine.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Record:
    name: str
    unit: str
    p50: float
    p99: float
    n: int
    baseline_name: str | None = None
    baseline_p50: float | None = None
    ratio: float | None = None
    extra: dict[str, float] | None = None

    def to_json(self) -> dict[str, object]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def percentile(samples: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample list."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def time_calls(fn: Callable[[], object], n: int, warmup: int = 100) -> list[float]:
    """Wall time of each of n calls of fn, in microseconds."""
    for _ in range(warmup):
        fn()
    clock = time.perf_counter_ns
    out = []
    for _ in range(n):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000.0)
    return out


def time_interleaved(
    fn: Callable[[], object],
    base: Callable[[], object],
    n: int,
    *,
    blocks: int = 10,
    warmup: int = 50,
) -> tuple[list[float], list[float]]:
    """(samples of fn, samples of base), n of each, taken in alternating blocks so that load from
    other processes on the machine hits the measurement and its baseline alike."""
    samples: list[float] = []
    baseline: list[float] = []
    per = max(1, n // blocks)
    for _ in range(blocks):
        baseline += time_calls(base, per, warmup=warmup)
        samples += time_calls(fn, per, warmup=warmup)
    return samples, baseline


def tail_extra(samples: list[float], baseline: list[float], **more: float) -> dict[str, float]:
    """A record's `extra`: the sample's p99.9, the baseline's p99 and the 1-minute load average
    (how busy the machine was), then `more`."""
    return {
        "p99_9": percentile(samples, 99.9),
        "baseline_p99": percentile(baseline, 99),
        "loadavg_1m": os.getloadavg()[0],
        **more,
    }


def compare(
    name: str,
    samples: list[float],
    baseline_name: str,
    baseline: list[float],
    unit: str = "us",
    extra: dict[str, float] | None = None,
) -> Record:
    """A record whose ratio is p50(samples) / p50(baseline) (lower is better for times)."""
    p50 = percentile(samples, 50)
    b50 = percentile(baseline, 50)
    return Record(
        name=name,
        unit=unit,
        p50=p50,
        p99=percentile(samples, 99),
        n=len(samples),
        baseline_name=baseline_name,
        baseline_p50=b50,
        ratio=p50 / b50 if b50 else None,
        extra=extra,
    )
