"""`verify jitter`: a live progress line while it runs, and Ctrl-C (a real SIGINT) ends the run
early with the results measured so far."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from verify.jitter import JitterConfig, JitterProgress, run_jitter
from verify.jitter.runner import SLICE_NS

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


def test_stop_ends_the_run_after_the_slices_measured() -> None:
    seen: list[JitterProgress] = []
    report = run_jitter(
        JitterConfig(cpu=min(os.sched_getaffinity(0)), duration_s=30, loop="python"),
        on_progress=seen.append,
        stop=lambda: len(seen) >= 2,
    )
    assert report.interrupted and report.requested_ns == 30_000_000_000
    assert len(seen) == 2 and seen[0].elapsed_ns < seen[1].elapsed_ns
    assert report.stats.elapsed_ns == seen[-1].elapsed_ns
    assert 2 * SLICE_NS <= report.stats.elapsed_ns < 3 * SLICE_NS
    assert report.stats.iterations == seen[-1].iterations
    assert report.to_json()["interrupted"] is True
    # stall offsets count measured time only: all inside the measured span
    assert all(at < report.raw.elapsed_ns for at, _ in report.raw.big)


def test_a_full_run_is_not_interrupted() -> None:
    report = run_jitter(JitterConfig(cpu=min(os.sched_getaffinity(0)), duration_s=0.5,
                                     loop="python"))
    assert not report.interrupted and report.stats.elapsed_ns >= 500_000_000


def test_progress_line_then_ctrl_c_reports_the_results_so_far() -> None:
    master, slave = pty.openpty()  # stderr is a terminal: rich draws the live line
    proc = subprocess.Popen(
        [sys.executable, "-m", "verify", "jitter", "--cpu", str(min(os.sched_getaffinity(0))),
         "--duration", "60", "--loop", "python", "--json"],
        stdout=subprocess.PIPE, stderr=slave, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"},
    )
    os.close(slave)
    screen = b""
    deadline = time.monotonic() + 30
    while b"stalls above threshold" not in screen and time.monotonic() < deadline:
        if select.select([master], [], [], 1)[0]:
            screen += os.read(master, 65536)
    assert b"stalls above threshold (Ctrl-C: stop and report)" in screen, screen[-500:]
    assert proc.poll() is None  # the line is live: shown while the run goes on
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert time.monotonic() - started < 10  # well before the 60 s asked for
    while select.select([master], [], [], 0.5)[0]:
        try:
            screen += os.read(master, 65536)
        except OSError:
            break
    os.close(master)
    assert proc.returncode == 130
    report = json.loads(out)
    assert report["interrupted"] is True and report["requested_duration_s"] == 60
    assert 0 < report["elapsed_ns"] < 60e9 and report["iterations"] > 0
    text = screen.decode(errors="replace")
    assert "interrupted" in text and "Traceback" not in text
