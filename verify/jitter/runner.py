"""One jitter measurement: pin, warm up, spin, count context switches, summarize."""

from __future__ import annotations

import gc
import logging
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from verify.audit.cpulist import parse_cpulist
from verify.jitter import _compiled
from verify.jitter._spin import RawRun, spin_python
from verify.jitter.errors import InvalidJitterOption, LoopUnavailable
from verify.jitter.stats import GapStats, summarize
from verify.jitter.tax import JitterTax

__all__ = [
    "JitterConfig",
    "JitterProgress",
    "JitterReport",
    "candidate_cpus",
    "default_cpu",
    "run_jitter",
]

logger = logging.getLogger(__name__)

#: Stalls are also counted at these fixed thresholds, whatever --threshold says.
DECADES_NS = (1_000, 10_000, 100_000, 1_000_000)
WARMUP_NS = 50_000_000  # lets the CPU leave idle and the loop's code and data settle in cache
MAX_DURATION_S = 3600.0
#: The loop runs in slices of this length; between slices (not measured) progress is reported and
#: a stop request is honoured, so Ctrl-C loses at most one slice.
SLICE_NS = 200_000_000


@dataclass(frozen=True)
class JitterConfig:
    cpu: int | None = None
    duration_s: float = 2.0
    threshold_ns: int = 10_000
    loop: str = "auto"  # auto | compiled | python


@dataclass(frozen=True)
class JitterReport:
    cpu: int
    cpu_isolated: bool | None
    loop: str
    loop_note: str
    threshold_ns: int
    involuntary_switches: int
    voluntary_switches: int
    stats: GapStats
    raw: RawRun = field(repr=False)
    tax: JitterTax | None = None
    #: The duration asked for; `stats.elapsed_ns` is what was measured (less when interrupted).
    requested_ns: int = 0
    interrupted: bool = False

    @property
    def stalls_above_threshold(self) -> int:
        return next(s.count for s in self.stats.stalls if s.threshold_ns == self.threshold_ns)

    @property
    def quiet(self) -> bool:
        """No stall above the threshold and no involuntary context switch during the run."""
        return self.stalls_above_threshold == 0 and self.involuntary_switches == 0

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "verdict": "quiet" if self.quiet else "noisy",
            "cpu": self.cpu,
            "cpu_isolated": self.cpu_isolated,
            "loop": self.loop,
            "loop_note": self.loop_note,
            "threshold_ns": self.threshold_ns,
            "interrupted": self.interrupted,
            "requested_duration_s": self.requested_ns / 1e9,
            "stalls_above_threshold": self.stalls_above_threshold,
            "context_switches": {
                "involuntary": self.involuntary_switches,
                "voluntary": self.voluntary_switches,
            },
            **self.stats.to_json(),
        }
        if self.tax is not None:
            doc["jitter_tax"] = self.tax.to_json()
        return doc


@dataclass(frozen=True)
class JitterProgress:
    """What a run has measured so far, reported after every slice."""

    elapsed_ns: int
    requested_ns: int
    iterations: int
    worst_gap_ns: int
    stalls_above_threshold: int


def _merge(runs: list[RawRun]) -> RawRun:
    """One run from consecutive slices; stall offsets count measured time only (the pauses
    between slices are the tool's own and are not gaps)."""
    small = [sum(col) for col in zip(*(r.small for r in runs), strict=True)]
    big: list[tuple[int, int]] = []
    offset = 0
    for r in runs:
        big.extend((offset + at, gap) for at, gap in r.big)
        offset += r.elapsed_ns
    return RawRun(loop=runs[0].loop, elapsed_ns=offset, small=small, big=big)


def _read_cpus(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip() or "none"
    except OSError:
        return "unknown"


def _isolated() -> frozenset[int] | None:
    try:
        with open("/sys/devices/system/cpu/isolated") as f:
            return parse_cpulist(f.read())
    except OSError:
        return None


def candidate_cpus() -> list[int]:
    """CPUs to try when --cpu is not given: isolated ones first, then the highest allowed one.

    Isolated CPUs are usually outside the inherited affinity mask (that is what isolation does),
    but a process may still pin itself there unless its cpuset forbids it, so they are tried first.
    """
    allowed = os.sched_getaffinity(0)
    return [*sorted(_isolated() or ()), max(allowed)]


def default_cpu() -> int:
    """The CPU `run_jitter` uses without --cpu, where pinning there is permitted."""
    allowed = os.sched_getaffinity(0)
    for cpu in candidate_cpus():
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            continue
        finally:
            os.sched_setaffinity(0, allowed)
        return cpu
    return max(allowed)


def _choose_loop(kind: str) -> tuple[Any, str, str]:
    if kind == "python":
        return spin_python, "python", "Python loop (asked for with --loop python)"
    compiled, why = _compiled.load()
    if compiled is not None:
        return compiled.spin, "compiled", why
    if kind == "compiled":
        raise LoopUnavailable(f"--loop compiled: {why}")
    return spin_python, "python", f"Python loop; no compiled loop: {why}"


def run_jitter(
    config: JitterConfig,
    *,
    on_progress: Callable[[JitterProgress], None] | None = None,
    stop: Callable[[], bool] | None = None,
) -> JitterReport:
    """Pin this thread to one CPU, spin for the duration and report the gaps.

    The loop runs in slices of `SLICE_NS`; after each, `on_progress` sees the totals so far and a
    true `stop()` ends the run early: the report then covers the slices measured
    (`interrupted=True`).

    Raises:
        KeyboardInterrupt: `stop()` was true before the first slice: nothing was measured.
        InvalidJitterOption: the CPU is not one this process may use, or a value is out of range.
        LoopUnavailable: `loop="compiled"` and the compiled loop cannot be built here.
    """
    if not 0.001 <= config.duration_s <= MAX_DURATION_S:
        raise InvalidJitterOption(
            f"--duration {config.duration_s}: expected 0.001 to {MAX_DURATION_S:.0f} s"
        )
    if config.threshold_ns <= 0:
        raise InvalidJitterOption(
            f"--threshold {config.threshold_ns}: expected a positive number of ns"
        )
    if config.loop not in ("auto", "compiled", "python"):
        raise InvalidJitterOption(f"--loop {config.loop!r}: expected auto, compiled or python")
    if config.cpu is not None and config.cpu < 0:
        raise InvalidJitterOption(f"--cpu {config.cpu}: expected a CPU number >= 0")
    stopping = stop or (lambda: False)
    allowed = os.sched_getaffinity(0)
    cpu = default_cpu() if config.cpu is None else config.cpu
    spin, loop, note = _choose_loop(config.loop)
    duration_ns = int(config.duration_s * 1e9)
    gc_was_enabled = gc.isenabled()
    try:
        # May be outside the inherited mask (an isolated CPU): only the cpuset limits it.
        os.sched_setaffinity(0, {cpu})
    except (OSError, OverflowError) as e:
        why = e.strerror if isinstance(e, OSError) else "out of range"
        raise InvalidJitterOption(
            f"--cpu {cpu}: cannot pin there ({why}); "
            f"online CPUs: {_read_cpus('/sys/devices/system/cpu/online')}"
        ) from e
    try:
        gc.disable()  # a collection inside the loop would be the tool's own stall, not the host's
        spin(WARMUP_NS)
        before = resource.getrusage(resource.RUSAGE_THREAD)
        slices: list[RawRun] = []
        done = worst = stalls = iterations = 0
        while done < duration_ns and not stopping():
            part = spin(min(SLICE_NS, duration_ns - done))
            slices.append(part)
            done += part.elapsed_ns
            if on_progress is not None:
                worst = max(worst, max((g for _, g in part.big), default=0),
                            max((g for g, c in enumerate(part.small) if c), default=0))
                stalls += _above(part, config.threshold_ns)
                iterations += part.iterations
                on_progress(JitterProgress(done, duration_ns, iterations, worst, stalls))
        after = resource.getrusage(resource.RUSAGE_THREAD)
    finally:
        if gc_was_enabled:
            gc.enable()
        os.sched_setaffinity(0, allowed)
    if not slices:
        raise KeyboardInterrupt  # stopped before anything was measured: nothing to report
    raw = _merge(slices)
    isolated = _isolated()
    stats = summarize(raw, {config.threshold_ns, *DECADES_NS})
    logger.debug("jitter run on cpu %d: %d iterations", cpu, stats.iterations)
    return JitterReport(
        cpu=cpu,
        cpu_isolated=None if isolated is None else cpu in isolated,
        loop=loop,
        loop_note=note,
        threshold_ns=config.threshold_ns,
        involuntary_switches=after.ru_nivcsw - before.ru_nivcsw,
        voluntary_switches=after.ru_nvcsw - before.ru_nvcsw,
        stats=stats,
        raw=raw,
        requested_ns=duration_ns,
        interrupted=done < duration_ns,
    )


def _above(run: RawRun, threshold_ns: int) -> int:
    return sum(run.small[threshold_ns + 1:]) + sum(1 for _, g in run.big if g > threshold_ns)
