"""Metrics hook cost: what the signer thread adds to every signer call for the round-trip histogram
(two `perf_counter_ns` reads and `LatencyHistogram.observe_ns`), as in `AsyncSigner._run`.

Each sample is the per-call cost over a batch of 10,000 calls of a no-op "signer" function, in
thread CPU time (time spent preempted by other processes on the machine is not counted); the
baseline is the same loop without the hook, in interleaved blocks. Target: hooked − bare < 1 µs.

Samples: SENTINEL_BENCH_N (default 200) batches of each.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from _harness import Record, percentile

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

N = int(os.environ.get("SENTINEL_BENCH_N", "200"))
BATCH = 10_000


def run() -> list[Record]:
    from router.metrics.latency import LatencyHistogram

    hist = LatencyHistogram()
    clock = time.perf_counter_ns

    def fn() -> None:
        return None

    def bare() -> None:
        for _ in range(BATCH):
            fn()

    def hooked() -> None:
        for _ in range(BATCH):
            start = clock()
            fn()
            hist.observe_ns(clock() - start)

    cpu = time.thread_time_ns
    with_hook: list[float] = []
    without: list[float] = []
    for _ in range(N):
        for body, out in ((bare, without), (hooked, with_hook)):
            t0 = cpu()
            body()
            out.append((cpu() - t0) / BATCH)  # ns per call
    added = [h - b for h, b in zip(with_hook, without, strict=True)]
    return [Record(
        name="signer-thread histogram hook per call (2 clock reads + observe), CPU time",
        unit="ns", p50=percentile(added, 50), p99=percentile(added, 99), n=N,
        baseline_name="the same call without the hook", baseline_p50=percentile(without, 50),
        ratio=percentile(with_hook, 50) / percentile(without, 50),
        extra={"hooked_p50_ns": percentile(with_hook, 50), "target_ns": 1000.0,
               "loadavg_1m": os.getloadavg()[0]},
    )]
