"""The jitter canary's own resolution: what each loop adds on top of reading the clock.

- python loop p50 gap vs a bare `time.perf_counter_ns()` call in a `for` loop: the cost of the
  loop's bookkeeping (subtract, compare, count), i.e. how much coarser than the clock it sees.
- compiled loop p50 gap vs the python loop's: what building the C loop with cffi buys.
Samples are per-run medians (and floors in `extra`), all runs pinned to one CPU.
"""

from __future__ import annotations

import os
import statistics
import time

from _harness import Record, compare

from verify.jitter import _compiled
from verify.jitter._spin import RawRun, spin_python

RUNS = 15
RUN_NS = 20_000_000
BATCH = 20_000


def _median_gap(raw: RawRun) -> float:
    half = raw.iterations / 2
    seen = 0
    for gap, count in enumerate(raw.small):
        seen += count
        if seen >= half:
            return float(gap)
    return float(raw.big[0][1]) if raw.big else 0.0


def _floor(raw: RawRun) -> float:
    return float(next(g for g, c in enumerate(raw.small) if c))


def _bare_clock_ns() -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for _ in range(RUNS):
        rng = range(BATCH)
        t0 = clock()
        for _ in rng:
            clock()
        out.append((clock() - t0) / BATCH)
    return out


def run() -> list[Record]:
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        spin_python(RUN_NS)  # warm-up
        bare = _bare_clock_ns()
        py_runs = [spin_python(RUN_NS) for _ in range(RUNS)]
        records = [
            compare(
                "jitter python loop p50 gap",
                [_median_gap(r) for r in py_runs],
                "bare perf_counter_ns() call",
                bare,
                unit="ns",
                extra={"floor_ns": min(_floor(r) for r in py_runs)},
            )
        ]
        loop, why = _compiled.load()
        if loop is not None:
            loop.spin(RUN_NS)
            c_runs = [loop.spin(RUN_NS) for _ in range(RUNS)]
            records.append(
                compare(
                    "jitter compiled loop p50 gap",
                    [_median_gap(r) for r in c_runs],
                    "jitter python loop p50 gap",
                    [_median_gap(r) for r in py_runs],
                    unit="ns",
                    extra={
                        "floor_ns": min(_floor(r) for r in c_runs),
                        "python_floor_ns": min(_floor(r) for r in py_runs),
                        "median_of_medians": statistics.median(_median_gap(r) for r in c_runs),
                    },
                )
            )
        return records
    finally:
        os.sched_setaffinity(0, allowed)
