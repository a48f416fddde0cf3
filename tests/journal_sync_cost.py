"""Cost of one journal write (one intent row + one signature) with SQLite synchronous=FULL vs NORMAL.

Run: `python tests/journal_sync_cost.py [--n 2000] [--dir DIR]` (DIR on the disk the router's
journal will live on; default: a temp dir). Prints p50/p99 in microseconds for each mode and the
in-memory journal as the floor; the modes alternate in rounds so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from journal_support import CHAIN, SENDER, row, sig  # noqa: E402

from router.journal import Journal, open_journal  # noqa: E402


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="writes per mode")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        journals: dict[str, Journal] = {
            "memory": open_journal("memory", base_dir=Path(tmp), chain_id=CHAIN, sender=SENDER),
            "full": open_journal("full.sqlite", base_dir=Path(tmp), chain_id=CHAIN, sender=SENDER,
                                 sync="full"),
            "normal": open_journal("normal.sqlite", base_dir=Path(tmp), chain_id=CHAIN,
                                   sender=SENDER, sync="normal"),
        }
        samples: dict[str, list[float]] = {name: [] for name in journals}
        rounds = 20
        per_round = max(1, args.n // rounds)
        i = 0
        for _ in range(rounds):
            for name, j in journals.items():
                for _ in range(per_round):
                    r, s = row(i), sig(i)
                    t0 = time.perf_counter_ns()
                    j.write([r], [s])
                    samples[name].append((time.perf_counter_ns() - t0) / 1000)
                    i += 1
        for j in journals.values():
            j.close()
    print(f"one write() of 1 row + 1 signature, {per_round * rounds} writes per mode, dir {tmp}")
    for name, xs in samples.items():
        print(f"{name:>7}: p50 {_pct(xs, 0.5):8.1f} us  p99 {_pct(xs, 0.99):8.1f} us  "
              f"mean {statistics.fmean(xs):8.1f} us")


if __name__ == "__main__":
    main()
