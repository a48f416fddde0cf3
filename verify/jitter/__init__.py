"""`verify jitter`: a user-space canary that measures how often and how long its CPU is taken away.

`run_jitter(JitterConfig(cpu=3, duration_s=2))` pins the calling thread, spins reading a monotonic
nanosecond clock, records every gap in an HDR histogram and returns a `JitterReport`.
"""

from __future__ import annotations

from verify.jitter.errors import InvalidJitterOption, LoopUnavailable
from verify.jitter.runner import (
    JitterConfig,
    JitterProgress,
    JitterReport,
    default_cpu,
    run_jitter,
)
from verify.jitter.stats import GapStats, Percentiles, StallCount, arrival_quantile
from verify.jitter.tax import JitterTax, jitter_tax

__all__ = [
    "GapStats",
    "InvalidJitterOption",
    "JitterConfig",
    "JitterProgress",
    "JitterReport",
    "JitterTax",
    "LoopUnavailable",
    "Percentiles",
    "StallCount",
    "arrival_quantile",
    "default_cpu",
    "jitter_tax",
    "run_jitter",
]
