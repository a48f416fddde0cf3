"""`python -m chaos --runs N [--seed S]` (tests/ on sys.path; `nox -s chaos -- ...` sets it up).

One line per run, then a summary table; exit 0 when every run kept every invariant, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from .harness import KINDS, ChaosConfig, RunResult, run_chaos


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chaos", description=__doc__)
    parser.add_argument("--runs", type=int, default=1, help="number of runs (seeds S, S+1, ...)")
    parser.add_argument("--seed", type=int, default=None, help="first seed (default: random)")
    parser.add_argument("--intents", type=int, default=None, help="intents per run (default 200)")
    parser.add_argument("--bounded", action="store_true",
                        help="the small form `nox -s tests` runs (60 intents, 7 faults)")
    parser.add_argument("--keep", action="store_true",
                        help="keep each run's directory (logs, state, config) even when it passed")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="parent directory for the runs' directories (default: /tmp)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.intents is not None and args.intents < 1:
        parser.error("--intents must be at least 1")
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    console = Console(stderr=True, highlight=False, soft_wrap=True)
    results: list[RunResult] = []
    for k in range(args.runs):
        cfg = ChaosConfig.bounded(seed + k) if args.bounded else ChaosConfig(seed=seed + k)
        if args.intents is not None:
            cfg = dataclasses.replace(cfg, intents=args.intents)
        workdir = None if args.workdir is None else args.workdir / f"chaos-{seed + k}"
        result = run_chaos(cfg, workdir, say=console.print, keep=args.keep)
        results.append(result)
        print(result.line(), flush=True)
        for example in result.examples:
            console.print(f"  {example}", markup=False)
        if not result.ok:
            console.print(f"  run directory kept: {result.workdir}", markup=False)
    console.print(summary(results))
    return 0 if all(r.ok for r in results) else 1


def summary(results: list[RunResult]) -> Table:
    table = Table(title=f"chaos: {len(results)} runs, {sum(r.ok for r in results)} passed")
    table.add_column("")
    table.add_column("total", justify="right")
    rows: list[tuple[str, float]] = [
        ("intents", sum(r.intents for r in results)),
        ("accepted", sum(r.accepted for r in results)),
        ("landed", sum(r.landed for r in results)),
        ("failed / replaced / cancelled", sum(r.failed for r in results)),
        ("duplicates", sum(r.duplicates for r in results)),
        ("lost", sum(r.lost for r in results)),
        ("stalled", sum(r.stalled for r in results)),
        ("unknown to STATUS", sum(r.unknown_status for r in results)),
        ("STATUS contradicts chain", sum(r.mismatched for r in results)),
        ("gap fillers / cancels on chain", sum(r.fillers for r in results)),
        ("submit retries", sum(r.submit_retries for r in results)),
        ("forgotten ids resubmitted", sum(r.resubmitted_forgotten for r in results)),
        *((f"faults: {k}", sum(r.faults.get(k, 0) for r in results)) for k in KINDS),
        ("wall seconds", round(sum(r.wall_seconds for r in results), 1)),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    return table


if __name__ == "__main__":
    sys.exit(main())
