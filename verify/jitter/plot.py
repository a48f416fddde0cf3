"""`--plot FILE.png`: the gap histogram and the stall timeline, drawn headless with matplotlib."""

from __future__ import annotations

import os

from verify.jitter._spin import SMALL_LIMIT_NS
from verify.jitter.runner import JitterReport

__all__ = ["plot_report"]


def plot_report(report: JitterReport, dest: str | os.PathLike[str]) -> None:
    """Write a two-panel PNG. Raises OSError when the file cannot be written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    stats, raw = report.stats, report.raw
    fig, (ax_hist, ax_time) = plt.subplots(2, 1, figsize=(10, 8), constrained_layout=True)
    fig.suptitle(
        f"Jitter on CPU {report.cpu} ({report.loop} loop, {stats.elapsed_ns / 1e9:.2f} s, "
        f"{stats.iterations:,} iterations, {report.involuntary_switches} involuntary switches)"
    )
    xs, ys = [], []
    for item in stats.histogram.get_recorded_iterator():
        xs.append(max(item.value_iterated_to, 1))
        ys.append(item.count_at_value_iterated_to)
    ax_hist.vlines(xs, 0.8, ys, linewidth=1)
    ax_hist.set_xscale("log")
    ax_hist.set_yscale("log")
    ax_hist.set_xlabel("gap between consecutive clock reads (ns)")
    ax_hist.set_ylabel("count")
    for label, value, style in (
        ("floor", stats.floor_ns, ":"),
        ("p99.9 per iteration", stats.per_iteration.p99_9_ns, "--"),
        ("p99.9 per arrival", stats.per_arrival.p99_9_ns, "-."),
        ("threshold", report.threshold_ns, "-"),
    ):
        ax_hist.axvline(
            max(value, 1),
            linestyle=style,
            color="tab:red" if label == "threshold" else "gray",
            label=f"{label}: {value:,.0f} ns",
        )
    ax_hist.legend(loc="upper right")
    if raw.big:
        ax_time.scatter([t / 1e9 for t, _ in raw.big], [g / 1e3 for _, g in raw.big], s=6)
    ax_time.axhline(report.threshold_ns / 1e3, color="tab:red", label="threshold")
    ax_time.set_yscale("log")
    ax_time.set_xlim(0, max(stats.elapsed_ns / 1e9, 1e-3))
    ax_time.set_xlabel("time since start (s)")
    ax_time.set_ylabel("stall (µs)")
    ax_time.set_title(f"every gap >= {SMALL_LIMIT_NS / 1e3:.1f} µs ({len(raw.big):,} gaps)")
    ax_time.legend(loc="upper right")
    fig.savefig(dest, dpi=100)
    plt.close(fig)
