"""The spin loops themselves: read a monotonic nanosecond clock back to back and keep every gap.

Gaps below `small_limit` ns are counted exactly in an array indexed by the gap; longer ones (the
stalls) are kept with their offset for the timeline. Both loops read CLOCK_MONOTONIC (Python's
perf_counter_ns is that clock on Linux) and do nothing else, so the fastest gap is the loop's floor.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

__all__ = ["SMALL_LIMIT_NS", "RawRun", "spin_python"]

#: Gaps shorter than this are counted per nanosecond; the rest are stored one by one. A run of D ns
#: can hold at most D / SMALL_LIMIT_NS such gaps, which bounds the memory of the stall list.
SMALL_LIMIT_NS = 4096


@dataclass(frozen=True)
class RawRun:
    loop: str
    elapsed_ns: int
    #: small[g] = number of gaps of exactly g ns, for g < SMALL_LIMIT_NS.
    small: list[int]
    #: (offset from the start in ns, gap in ns) of every gap >= SMALL_LIMIT_NS, in time order.
    big: list[tuple[int, int]]

    @property
    def iterations(self) -> int:
        return sum(self.small) + len(self.big)


def spin_python(duration_ns: int, small_limit: int = SMALL_LIMIT_NS) -> RawRun:
    """Spin for `duration_ns` in the interpreter (floor: one bytecode round trip, ~100 ns)."""
    small = [0] * small_limit
    big: list[tuple[int, int]] = []
    append = big.append
    clock = time.perf_counter_ns
    start = clock()
    end = start + duration_ns
    prev = start
    # Bookkeeping happens after `t` is read, so its cost is part of the next gap: the loop's floor.
    while prev < end:
        t = clock()
        gap = t - prev
        if gap < small_limit:
            small[gap] += 1
        else:
            append((prev - start, gap))
        prev = t
    return RawRun(loop="python", elapsed_ns=prev - start, small=small, big=big)
