"""Kernel timers, watchdogs, throttling and the clock source."""

from __future__ import annotations

from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.checks._value import IntCheck
from verify.audit.context import HostContext
from verify.audit.tuning import remedy_for


@dataclass(frozen=True)
class Clocksource(Check):
    def evaluate(self, host: HostContext) -> Finding:
        base = "/sys/devices/system/clocksource/clocksource0"
        current = host.read(f"{base}/current_clocksource")
        if current is None:
            return Finding.unknown(f"{base}/current_clocksource is missing or unreadable")
        available = host.read(f"{base}/available_clocksource") or ""
        return Finding(
            Status.PASS if current == "tsc" else Status.FAIL,
            current,
            f"available: {available}" if available else "",
        )


@dataclass(frozen=True)
class CmdlineParam(Check):
    """A kernel parameter that should be present with one of the accepted values."""

    param: str = ""
    accepted: frozenset[str] = frozenset()

    def evaluate(self, host: HostContext) -> Finding:
        cmdline = host.cmdline
        if cmdline is None:
            return Finding.unknown("/proc/cmdline is missing or unreadable")
        value = cmdline.get(self.param)
        if value is None:
            return Finding(Status.FAIL, "absent")
        return Finding(
            Status.PASS if value in self.accepted else Status.FAIL, f"{self.param}={value}"
        )


CHECKS: tuple[Check, ...] = (
    IntCheck(
        id="kernel.nmi_watchdog",
        title="NMI (hard lockup) watchdog",
        expected="0",
        severity=Severity.MEDIUM,
        latency="a perf-counter NMI every few seconds on every CPU: a few µs each",
        remedy=remedy_for("kernel.nmi_watchdog"),
        path="/proc/sys/kernel/nmi_watchdog",
        cmdline_overrides=("nowatchdog",),
    ),
    IntCheck(
        id="kernel.soft_watchdog",
        title="Soft lockup watchdog",
        expected="0",
        severity=Severity.MEDIUM,
        latency="the watchdog hrtimer and its per-CPU stopper thread: µs every few seconds",
        remedy=remedy_for("kernel.soft_watchdog"),
        path="/proc/sys/kernel/soft_watchdog",
        cmdline_overrides=("nowatchdog", "nosoftlockup"),
    ),
    IntCheck(
        id="kernel.timer_migration",
        title="Timer migration",
        expected="0",
        severity=Severity.LOW,
        latency="timers migrate toward busy CPUs: extra timer interrupts on the latency CPU",
        remedy=remedy_for("kernel.timer_migration"),
        path="/proc/sys/kernel/timer_migration",
    ),
    IntCheck(
        id="kernel.rt_throttling",
        title="Real-time throttling (sched_rt_runtime_us)",
        expected="-1 (a SCHED_FIFO spinner is never throttled)",
        severity=Severity.MEDIUM,
        latency="a spinning SCHED_FIFO thread is stopped for 50 ms every second",
        remedy=remedy_for("kernel.rt_throttling"),
        path="/proc/sys/kernel/sched_rt_runtime_us",
        ok=lambda v: v == -1,
    ),
    IntCheck(
        id="kernel.stat_interval",
        title="vm.stat_interval (vmstat timer)",
        expected=">= 10 seconds",
        severity=Severity.LOW,
        latency="the vmstat worker wakes on every CPU each interval: a few µs",
        remedy=remedy_for("kernel.stat_interval"),
        path="/proc/sys/vm/stat_interval",
        ok=lambda v: v >= 10,
    ),
    Clocksource(
        id="kernel.clocksource",
        title="Clock source",
        expected="tsc",
        severity=Severity.HIGH,
        latency="hpet/acpi_pm reads trap to hardware: 0.5-5 µs per clock_gettime",
        remedy=remedy_for("kernel.clocksource", "(only with an invariant TSC)"),
    ),
    CmdlineParam(
        id="kernel.tsc_reliable",
        title="TSC watchdog disabled (tsc=reliable)",
        expected="tsc=reliable or tsc=nowatchdog",
        severity=Severity.LOW,
        latency="the clocksource watchdog reads a slow clock on a timer every 0.5 s",
        remedy=remedy_for("kernel.tsc_reliable"),
        param="tsc",
        accepted=frozenset({"reliable", "nowatchdog"}),
    ),
    CmdlineParam(
        id="kernel.skew_tick",
        title="Skewed scheduler ticks (skew_tick=1)",
        expected="skew_tick=1",
        severity=Severity.LOW,
        latency="all CPUs tick at once and contend on jiffies/RCU locks: µs spikes",
        remedy=remedy_for("kernel.skew_tick"),
        param="skew_tick",
        accepted=frozenset({"1"}),
    ),
)
