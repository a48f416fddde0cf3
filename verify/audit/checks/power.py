"""CPU power management: frequency scaling and idle states that make wake-ups slow."""

from __future__ import annotations

from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.context import CPU_DIR, HostContext, parse_int
from verify.audit.cpulist import format_cpulist
from verify.audit.tuning import remedy_for

#: Exit latency (µs) at or below which an idle state counts as shallow (POLL, C1/C1E).
SHALLOW_EXIT_US = 2


def _per_target(host: HostContext, leaf: str) -> dict[int, str | None] | None:
    targets = host.targets
    if targets is None:
        return None
    return {cpu: host.read(f"{CPU_DIR}/cpu{cpu}/{leaf}") for cpu in sorted(targets)}


def _group(values: dict[int, str]) -> str:
    by_value: dict[str, set[int]] = {}
    for cpu, value in values.items():
        by_value.setdefault(value, set()).add(cpu)
    return "; ".join(f"{v} on {format_cpulist(frozenset(c))}" for v, c in sorted(by_value.items()))


@dataclass(frozen=True)
class Governor(Check):
    def evaluate(self, host: HostContext) -> Finding:
        values = _per_target(host, "cpufreq/scaling_governor")
        if values is None:
            return Finding.unknown("the target CPUs are unknown")
        if all(v is None for v in values.values()):
            return Finding.unknown(
                "no cpufreq on the target CPUs (hypervisor or firmware controls frequency)"
            )
        known = {c: v or "unknown" for c, v in values.items()}
        bad = {c for c, v in known.items() if v != "performance"}
        return Finding(Status.FAIL if bad else Status.PASS, _group(known))


@dataclass(frozen=True)
class FrequencyPinned(Check):
    def evaluate(self, host: HostContext) -> Finding:
        mins = _per_target(host, "cpufreq/scaling_min_freq")
        maxs = _per_target(host, "cpufreq/scaling_max_freq")
        if mins is None or maxs is None:
            return Finding.unknown("the target CPUs are unknown")
        if all(v is None for v in mins.values()):
            return Finding.unknown(
                "no cpufreq on the target CPUs (hypervisor or firmware controls frequency)"
            )
        shown: dict[int, str] = {}
        bad = False
        for cpu in mins:
            lo, hi = parse_int(mins[cpu]), parse_int(maxs[cpu])
            if lo is None or hi is None:
                return Finding.unknown(f"cpu{cpu} frequency limits unreadable")
            shown[cpu] = f"{lo // 1000}-{hi // 1000} MHz"
            bad = bad or lo != hi
        return Finding(Status.FAIL if bad else Status.PASS, _group(shown))


@dataclass(frozen=True)
class TurboOff(Check):
    def evaluate(self, host: HostContext) -> Finding:
        no_turbo = host.read_int(f"{CPU_DIR}/intel_pstate/no_turbo")
        if no_turbo is not None:
            return Finding(
                Status.PASS if no_turbo == 1 else Status.FAIL, f"intel_pstate no_turbo={no_turbo}"
            )
        boost = host.read_int(f"{CPU_DIR}/cpufreq/boost")
        if boost is not None:
            return Finding(Status.PASS if boost == 0 else Status.FAIL, f"cpufreq boost={boost}")
        return Finding.unknown("neither intel_pstate/no_turbo nor cpufreq/boost is readable")


@dataclass(frozen=True)
class ShallowIdle(Check):
    def evaluate(self, host: HostContext) -> Finding:
        cmdline = host.cmdline
        if cmdline is not None and cmdline.get("idle") == "poll":
            return Finding(Status.PASS, "idle=poll (the CPU never enters an idle state)")
        targets = host.targets
        if targets is None:
            return Finding.unknown("the target CPUs are unknown")
        deepest: dict[int, str] = {}
        bad = False
        for cpu in sorted(targets):
            base = f"{CPU_DIR}/cpu{cpu}/cpuidle"
            names = host.tree.listdir(base)
            if names is None:
                return Finding.unknown(f"{base} is missing or unreadable")
            worst: tuple[int, str] | None = None
            for state in (n for n in names if n.startswith("state")):
                if host.read_int(f"{base}/{state}/disable") not in (0, None):
                    continue
                latency = host.read_int(f"{base}/{state}/latency")
                name = host.read(f"{base}/{state}/name") or state
                if latency is None:
                    return Finding.unknown(f"{base}/{state}/latency unreadable")
                if worst is None or latency > worst[0]:
                    worst = (latency, name)
            if worst is None:
                deepest[cpu] = "no enabled idle state"
                continue
            deepest[cpu] = f"{worst[1]} ({worst[0]} µs)"
            bad = bad or worst[0] > SHALLOW_EXIT_US
        return Finding(Status.FAIL if bad else Status.PASS, _group(deepest))


@dataclass(frozen=True)
class MaxCstate(Check):
    """intel_idle.max_cstate= / processor.max_cstate=: the driver's deepest allowed C-state."""

    module: str = ""
    accept_at_most: int = 1

    def evaluate(self, host: HostContext) -> Finding:
        param = f"{self.module}.max_cstate"
        cmdline = host.cmdline
        if cmdline is not None and cmdline.get("idle") == "poll":
            return Finding(Status.PASS, "idle=poll overrides it")
        value: int | None = None
        source = ""
        if cmdline is not None and cmdline.has(param):
            value, source = parse_int(cmdline.get(param)), "kernel command line"
        if value is None:
            value = host.read_int(f"/sys/module/{self.module}/parameters/max_cstate")
            source = "module parameter"
        if value is None:
            driver = host.read(f"{CPU_DIR}/cpuidle/current_driver")
            if driver is not None and self.module not in driver:
                return Finding(Status.NOT_APPLICABLE, f"not loaded (cpuidle driver: {driver})")
            return Finding.unknown(f"{param} neither on the command line nor readable")
        return Finding(
            Status.PASS if value <= self.accept_at_most else Status.FAIL, f"{value} ({source})"
        )


@dataclass(frozen=True)
class IdlePoll(Check):
    def evaluate(self, host: HostContext) -> Finding:
        cmdline = host.cmdline
        if cmdline is None:
            return Finding.unknown("/proc/cmdline is missing or unreadable")
        idle = cmdline.get("idle")
        return Finding(
            Status.PASS if idle == "poll" else Status.FAIL, f"idle={idle}" if idle else "absent"
        )


CHECKS: tuple[Check, ...] = (
    Governor(
        id="power.governor",
        title="cpufreq governor",
        expected="performance on every target CPU",
        severity=Severity.HIGH,
        latency="ramping up from a low frequency: 10s of µs per transition, slower code until then",
        remedy="cpupower frequency-set -g performance (or tuned-adm profile latency-performance)",
    ),
    FrequencyPinned(
        id="power.freq_limits",
        title="cpufreq frequency limits",
        expected="scaling_min_freq = scaling_max_freq on every target CPU",
        severity=Severity.MEDIUM,
        latency="frequency transitions: ~10 µs stalls and varying iteration times",
        remedy="cpupower frequency-set -d <max> -u <max>",
    ),
    TurboOff(
        id="power.turbo",
        title="Turbo boost",
        expected="off (stable frequency)",
        severity=Severity.LOW,
        latency="frequency changes with package load and temperature: run-to-run variance",
        remedy="echo 1 > /sys/devices/system/cpu/intel_pstate/no_turbo (or echo 0 > "
        "/sys/devices/system/cpu/cpufreq/boost)",
    ),
    ShallowIdle(
        id="power.cstates",
        title="Deepest enabled idle state (cpuidle) on the target CPUs",
        expected=f"exit latency <= {SHALLOW_EXIT_US} µs (POLL/C1)",
        severity=Severity.HIGH,
        latency="waking from a deep C-state: 50-200 µs",
        remedy=remedy_for("power.cstates", "; at run time: echo 1 > /sys/devices/system/cpu/cpu<N>/cpuidle/state<K>/disable"),
    ),
    MaxCstate(
        id="power.intel_idle",
        title="intel_idle.max_cstate",
        expected="0 or 1",
        severity=Severity.MEDIUM,
        latency="deep package C-states allowed: 50-200 µs wake-ups",
        remedy=remedy_for("power.intel_idle"),
        module="intel_idle",
    ),
    MaxCstate(
        id="power.processor_max_cstate",
        title="processor.max_cstate (ACPI idle)",
        expected="<= 1",
        severity=Severity.MEDIUM,
        latency="ACPI C2/C3 allowed: 50-200 µs wake-ups",
        remedy=remedy_for("power.processor_max_cstate"),
        module="processor",
    ),
    IdlePoll(
        id="power.idle_poll",
        title="idle=poll",
        expected="idle=poll (dedicated, well-cooled hosts only)",
        severity=Severity.LOW,
        latency="even C1 costs ~1 µs to exit; polling costs power, not latency",
        remedy=remedy_for("power.idle_poll"),
    ),
)
