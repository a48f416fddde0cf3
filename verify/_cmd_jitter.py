"""`python -m verify jitter`: a pinned spin loop that measures how often its CPU is taken away.

A progress line (rich, on stderr) shows the run live; Ctrl-C ends it early and reports what was
measured so far (`"interrupted": true`, exit 130); a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from rich.text import Text

from verify.errors import MalformedInput

if TYPE_CHECKING:
    from verify.jitter import JitterProgress, JitterReport

#: Exit status of a run ended early by Ctrl-C (its results are still reported).
EXIT_INTERRUPTED = 130


def _ns(value: float) -> str:
    if value >= 1e6:
        return f"{value / 1e6:,.2f} ms"
    if value >= 1e3:
        return f"{value / 1e3:,.2f} µs"
    return f"{value:,.0f} ns"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "jitter",
        help="measure this host's jitter with a pinned spin loop (the canary)",
        description="Pin to one CPU, read a monotonic nanosecond clock back to back, record every "
        "gap in an HDR histogram and count involuntary context switches. Exit 0 after a measurement "
        "(with --require-quiet: 1 when a stall above the threshold or a context switch was seen). "
        "Ctrl-C ends the run early and reports what was measured (exit 130).",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        metavar="N",
        help="CPU to pin to (default: an isolated CPU, else the highest)",
    )
    parser.add_argument(
        "--duration", type=float, default=2.0, metavar="S", help="seconds to spin (default 2)"
    )
    parser.add_argument(
        "--threshold",
        type=int,
        default=10_000,
        metavar="NS",
        help="a gap above this is a stall (default 10000)",
    )
    parser.add_argument(
        "--loop",
        choices=("auto", "compiled", "python"),
        default="auto",
        help="inner loop: compiled (C via cffi, needs a C compiler), python, or auto (compiled if possible)",
    )
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the histogram and the stall timeline"
    )
    parser.add_argument(
        "--slippage", type=float, metavar="FRAC", help="price cost of 1 ms of delay, e.g. 0.0001"
    )
    parser.add_argument(
        "--volume", type=float, metavar="USD", help="daily traded notional, e.g. 50000000"
    )
    parser.add_argument(
        "--require-quiet", action="store_true", help="exit 1 unless the run was quiet"
    )
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from verify._cli import emit_json, stderr_console
    from verify.jitter import JitterConfig, run_jitter

    if args.plot is not None:
        # The 'jitter' extra: its absence is reported by the CLI layer (one line, exit 2) before
        # the measurement rather than after it.
        import matplotlib  # noqa: F401
    if (args.slippage is None) != (args.volume is None):
        raise MalformedInput("--slippage and --volume go together (the jitter tax needs both)")
    for name in ("slippage", "volume"):
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0):
            raise MalformedInput(f"--{name} {value}: expected a finite number >= 0")
    if args.plot is not None and not Path(args.plot).resolve().parent.is_dir():
        raise MalformedInput(f"--plot {args.plot}: directory does not exist")
    config = JitterConfig(
        cpu=args.cpu, duration_s=args.duration, threshold_ns=args.threshold, loop=args.loop
    )
    console = stderr_console()
    with _sigint_stops() as stop, _progress_line(console, config.cpu) as on_progress:
        report = run_jitter(config, on_progress=on_progress, stop=stop)
    if args.slippage is not None:
        report = _with_tax(report, args.slippage, args.volume)
    _print_report(console, report)
    if args.json:
        emit_json(report.to_json())  # before plotting, so a plotting failure loses no measurement
    if args.plot is not None:
        from verify.jitter.plot import plot_report

        try:
            plot_report(report, args.plot)
        except OSError as e:
            raise MalformedInput(f"--plot {args.plot}: cannot write ({e.strerror})") from e
        console.print(f"plot written to {args.plot}")
    if report.interrupted:
        return EXIT_INTERRUPTED
    return 1 if args.require_quiet and not report.quiet else 0


@contextlib.contextmanager
def _sigint_stops() -> Iterator[Callable[[], bool]]:
    """While the run lasts, the first SIGINT asks it to stop after the current slice (the results
    so far are reported); the handler then steps aside so a second Ctrl-C interrupts at once."""
    requested = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield requested.is_set  # signals reach the main thread only
        return

    def handler(signum: int, frame: object) -> None:
        requested.set()
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield requested.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _progress_line(
    console: Console, cpu: int | None
) -> Iterator[Callable[[JitterProgress], None]]:
    """A live line on stderr when it is a terminal. Refreshed only between slices, never from a thread: a refresh
    thread would take the interpreter lock from the spinning loop and show up as stalls."""
    if not console.is_terminal:  # a log gets the report, not a redrawn line
        yield lambda p: None
        return
    where = "" if cpu is None else f" CPU {cpu}"
    with Progress(
        TextColumn(f"jitter{where}"),
        BarColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        auto_refresh=False,
        transient=True,
    ) as progress:
        task = progress.add_task("jitter", total=None, status="warming up")

        def update(p: JitterProgress) -> None:
            status = (
                f"{p.elapsed_ns / 1e9:.1f}/{p.requested_ns / 1e9:.1f} s, {p.iterations:,} "
                f"iterations, worst gap {_ns(p.worst_gap_ns)}, {p.stalls_above_threshold:,} "
                "stalls above threshold (Ctrl-C: stop and report)"
            )
            progress.update(task, completed=p.elapsed_ns, total=p.requested_ns, status=status)
            progress.refresh()

        progress.refresh()
        yield update


def _with_tax(report: JitterReport, slippage: float, volume: float) -> JitterReport:
    from dataclasses import replace

    from verify.jitter import jitter_tax

    return replace(report, tax=jitter_tax(report.stats.stddev_ns, slippage, volume))


def _print_report(console: Console, report: JitterReport) -> None:
    s = report.stats
    above = next(x for x in s.stalls if x.threshold_ns == report.threshold_ns)
    where = (
        f"CPU {report.cpu}"
        + {True: " (isolated)", False: " (not isolated)", None: ""}[report.cpu_isolated]
    )
    if report.interrupted:
        console.print(
            f"[bold yellow]interrupted[/]: {s.elapsed_ns / 1e9:.2f} s of "
            f"{report.requested_ns / 1e9:.2f} s measured; the report covers that part"
        )
    if report.quiet:
        console.print(
            f"[bold green]QUIET[/]: no stall above {_ns(report.threshold_ns)} and no involuntary context "
            f"switch in {s.elapsed_ns / 1e9:.2f} s on {where}; worst gap {_ns(s.per_iteration.max_ns)}"
        )
    else:
        console.print(
            f"[bold red]NOISY[/]: {above.count} stalls above {_ns(report.threshold_ns)} "
            f"({above.fraction_of_time:.2%} of the time), worst {_ns(s.per_iteration.max_ns)}; "
            f"{report.involuntary_switches} involuntary context switches in {s.elapsed_ns / 1e9:.2f} s on {where}"
        )
    console.print(
        Text(
            f"{report.loop} loop: floor {_ns(s.floor_ns)} (fastest iteration), {s.iterations:,} iterations; "
            f"{report.loop_note}"
        )
    )
    table = Table(title="gaps between clock reads")
    table.add_column("view")
    for col in ("p50", "p99", "p99.9", "max"):
        table.add_column(col, justify="right")
    for label, p in (
        ("per iteration", s.per_iteration),
        ("per event arrival (time-weighted)", s.per_arrival),
    ):
        table.add_row(label, _ns(p.p50_ns), _ns(p.p99_ns), _ns(p.p99_9_ns), _ns(p.max_ns))
    console.print(table)
    stalls = Table(title="stalls")
    for col in ("above", "count", "total", "share of time"):
        stalls.add_column(col, justify="right")
    for x in s.stalls:
        stalls.add_row(
            _ns(x.threshold_ns), f"{x.count:,}", _ns(x.total_ns), f"{x.fraction_of_time:.3%}"
        )
    console.print(stalls)
    console.print(
        f"context switches during the run: {report.involuntary_switches} involuntary, "
        f"{report.voluntary_switches} voluntary"
    )
    if report.cpu_isolated is False:
        console.print(
            f"hint: CPU {report.cpu} is not isolated; `python -m verify audit --cpus {report.cpu}` "
            "lists what to change"
        )
    if report.tax is not None:
        t = report.tax
        console.print(
            f"jitter tax (seed's estimate): σ {t.sigma_us:,.2f} µs / 1000 × slippage {t.slippage_per_ms:g} "
            f"× volume {t.daily_volume:,.0f} × 252 = [bold]{t.annual_loss:,.2f}[/] per year"
        )
