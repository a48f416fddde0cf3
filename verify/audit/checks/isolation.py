"""CPU isolation: keep the scheduler, the tick, RCU callbacks and kernel work off the latency CPUs."""

from __future__ import annotations

from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.checks._value import MaskCheck
from verify.audit.context import CPU_DIR, HostContext
from verify.audit.cpulist import format_cpulist, parse_cpulist
from verify.audit.tuning import remedy_for


def _cover(host: HostContext, cpus: frozenset[int] | None, what: str) -> Finding:
    """Pass when `cpus` (a configured set) covers every target CPU."""
    targets = host.targets
    if targets is None:
        return Finding.unknown("the target CPUs are unknown (CPU lists unreadable)")
    if cpus is None:
        return Finding(
            Status.FAIL, "absent", f"targets: {host.targets_text} ({host.targets_source})"
        )
    missing = targets - cpus
    observed = format_cpulist(cpus)
    if missing:
        return Finding(
            Status.FAIL,
            observed,
            f"{what} misses target CPUs {format_cpulist(missing)} ({host.targets_source})",
        )
    return Finding(Status.PASS, observed, f"covers targets {host.targets_text}")


@dataclass(frozen=True)
class CmdlineCpus(Check):
    """A kernel parameter whose CPU list must cover the targets (isolcpus=, nohz_full=, ...)."""

    param: str = ""
    #: Another parameter that implies this one (nohz_full= implies rcu_nocbs= since Linux 4.x).
    implied_by: str | None = None
    #: The sysfs file showing what the running kernel actually applied, if there is one.
    sysfs: str | None = None

    def evaluate(self, host: HostContext) -> Finding:
        if self.sysfs is not None:
            raw = host.read(self.sysfs)
            if raw is not None:
                applied = parse_cpulist(raw)
                if applied is None:
                    return Finding.unknown(f"{self.sysfs}: not a CPU list: {raw[:40]!r}")
                if applied:
                    return _cover(host, applied, self.sysfs)
        cmdline = host.cmdline
        if cmdline is None:
            return Finding.unknown("/proc/cmdline is missing or unreadable")
        cpus = cmdline.cpus(self.param)
        if cpus is None and cmdline.has(self.param):
            return Finding.unknown(f"{self.param}={cmdline.get(self.param)!r} does not parse")
        if cpus is None and self.implied_by is not None:
            implied = cmdline.cpus(self.implied_by)
            if implied is not None:
                finding = _cover(host, implied, f"{self.implied_by}=")
                return Finding(
                    finding.status,
                    f"{format_cpulist(implied)} (via {self.implied_by}=)",
                    finding.note,
                )
        return _cover(host, cpus, f"{self.param}=")


@dataclass(frozen=True)
class TargetsIsolated(Check):
    def evaluate(self, host: HostContext) -> Finding:
        raw = host.read(f"{CPU_DIR}/isolated")
        if raw is None:
            return Finding.unknown(f"{CPU_DIR}/isolated is missing or unreadable")
        isolated = parse_cpulist(raw)
        if isolated is None:
            return Finding.unknown(f"{CPU_DIR}/isolated: not a CPU list: {raw[:40]!r}")
        return _cover(host, isolated, "the isolated set")


@dataclass(frozen=True)
class HousekeepingLeft(Check):
    def evaluate(self, host: HostContext) -> Finding:
        online, isolated = host.online, host.isolated
        if online is None or isolated is None:
            return Finding.unknown("online or isolated CPU list unreadable")
        housekeeping = online - isolated
        if not housekeeping:
            return Finding(Status.FAIL, "none", "every online CPU is isolated")
        return Finding(Status.PASS, format_cpulist(housekeeping))


@dataclass(frozen=True)
class SmtSiblings(Check):
    def evaluate(self, host: HostContext) -> Finding:
        targets, isolated = host.targets, host.isolated
        if targets is None or isolated is None:
            return Finding.unknown("target or isolated CPU list unreadable")
        active = host.read_int(f"{CPU_DIR}/smt/active")
        if active == 0:
            return Finding(Status.PASS, "SMT inactive")
        shared: list[str] = []
        for cpu in sorted(targets):
            siblings = parse_cpulist(host.read(f"{CPU_DIR}/cpu{cpu}/topology/thread_siblings_list"))
            if siblings is None:
                return Finding.unknown(f"cpu{cpu} thread_siblings_list unreadable")
            noisy = siblings - {cpu} - isolated
            if noisy:
                shared.append(f"{cpu}~{format_cpulist(noisy)}")
        if shared:
            return Finding(Status.FAIL, "shared with housekeeping: " + " ".join(shared[:8]))
        return Finding(Status.PASS, "no target shares a core with a housekeeping CPU")


CHECKS: tuple[Check, ...] = (
    CmdlineCpus(
        id="cpu.isolcpus",
        title="isolcpus= on the kernel command line",
        expected="covers the target CPUs",
        severity=Severity.HIGH,
        latency="other tasks scheduled on the latency CPU: a time slice, 1-4 ms",
        remedy=remedy_for("cpu.isolcpus", "(then reboot)"),
        param="isolcpus",
    ),
    CmdlineCpus(
        id="cpu.nohz_full",
        title="Adaptive ticks (nohz_full)",
        expected="covers the target CPUs",
        severity=Severity.HIGH,
        latency="the scheduler tick interrupts the CPU every 1-4 ms: 1-10 µs each",
        remedy=remedy_for("cpu.nohz_full", "(kernel built with CONFIG_NO_HZ_FULL)"),
        param="nohz_full",
        sysfs=f"{CPU_DIR}/nohz_full",
    ),
    CmdlineCpus(
        id="cpu.rcu_nocbs",
        title="RCU callbacks offloaded (rcu_nocbs)",
        expected="covers the target CPUs",
        severity=Severity.MEDIUM,
        latency="RCU callback batches run in softirq on the CPU: µs to 100s of µs",
        remedy=remedy_for("cpu.rcu_nocbs"),
        param="rcu_nocbs",
        implied_by="nohz_full",
    ),
    TargetsIsolated(
        id="cpu.targets_isolated",
        title="Target CPUs are isolated",
        expected="every target CPU in /sys/devices/system/cpu/isolated",
        severity=Severity.HIGH,
        latency="the latency thread shares its CPU with everything else: ms-scale preemption",
        remedy=remedy_for("cpu.targets_isolated"),
    ),
    HousekeepingLeft(
        id="cpu.housekeeping",
        title="Housekeeping CPUs left for the OS",
        expected="at least one online, non-isolated CPU",
        severity=Severity.MEDIUM,
        latency="with no housekeeping CPU, kernel threads land on the isolated ones",
        remedy="leave CPU 0 (and its SMT sibling) out of isolcpus=/nohz_full=",
    ),
    SmtSiblings(
        id="cpu.smt_siblings",
        title="SMT siblings of the target CPUs",
        expected="no target CPU shares a core with a housekeeping CPU",
        severity=Severity.MEDIUM,
        latency="a busy hyper-thread sibling halves core throughput: 10-50% slower iterations",
        remedy="isolate both siblings of each core, or disable SMT: kernel command line nosmt "
        "(or echo off > /sys/devices/system/cpu/smt/control)",
    ),
    MaskCheck(
        id="cpu.workqueue",
        title="Unbound workqueue CPU mask",
        expected="excludes the target CPUs",
        severity=Severity.MEDIUM,
        latency="kworker threads preempting the latency thread: µs to ms",
        remedy=remedy_for("cpu.workqueue"),
        path="/sys/devices/virtual/workqueue/cpumask",
        on_overlap="unbound workqueues may run on",
    ),
)
