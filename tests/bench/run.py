"""Run every benchmark module (tests/bench/bench_*.py) and write one JSON report.

Each module defines `run() -> list[Record]`. Usage: python tests/bench/run.py [--out F] [NAME ...]
where NAME filters modules by substring (e.g. `eif`, `sign`).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))

from _harness import Record  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("build/bench.json"))
    parser.add_argument("only", nargs="*")
    args = parser.parse_args()
    console = Console(stderr=True)
    records: list[Record] = []
    failed: list[str] = []
    for path in sorted(HERE.glob("bench_*.py")):
        if args.only and not any(s in path.stem for s in args.only):
            continue
        console.print(f"[bold]running {path.stem}[/]")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            records.extend(module.run())
        except Exception:  # one broken benchmark must not hide the others' figures
            console.print(traceback.format_exc())
            failed.append(path.stem)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps([r.to_json() for r in records], indent=2) + "\n")
    table = Table(title=f"benchmarks ({args.out})")
    for col in ("name", "unit", "p50", "p99", "n", "baseline", "baseline p50", "ratio"):
        table.add_column(col, justify="left" if col in ("name", "baseline") else "right")
    for r in records:
        table.add_row(
            r.name,
            r.unit,
            f"{r.p50:.2f}",
            f"{r.p99:.2f}",
            str(r.n),
            r.baseline_name or "",
            "" if r.baseline_p50 is None else f"{r.baseline_p50:.2f}",
            "" if r.ratio is None else f"{r.ratio:.3f}",
        )
    console.print(table)
    if failed:
        console.print(f"[red]failed benchmarks: {', '.join(failed)}[/]")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
