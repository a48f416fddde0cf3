"""The latency tuning of a Sentinel host: one table, read by the audit and by the deploy generator.

Each `Setting` is one thing to set on the host (a kernel parameter, a sysctl, a file write at boot,
a service to disable) and names the audit checks it makes pass. The audit builds its remedies from
this table (`remedy_for`); `python -m reproducible deploy` renders the same table into the kernel
command line, /etc/sysctl.d and the boot-time tuning unit, so what we deploy is what we audit.

Values may hold three placeholders, filled from the CPU layout by `Setting.render`:
`<cpus>` (the isolated, latency CPUs), `<housekeeping cpus>` (a CPU list) and `<housekeeping mask>`
(the same set as a hex mask, for files that take masks).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from verify.audit.cpulist import format_cpulist

__all__ = [
    "LATENCY_TUNING",
    "Setting",
    "SettingKind",
    "format_cpumask",
    "remedy_for",
    "settings_of",
]


class SettingKind(StrEnum):
    CMDLINE = "cmdline"  # kernel command line parameter (a reboot applies it)
    SYSCTL = "sysctl"  # /proc/sys key, dotted name
    WRITE = "write"  # a file written at boot (a glob `*` writes every match)
    DISABLE = "disable"  # a systemd service to stop, disable and mask


@dataclass(frozen=True)
class Setting:
    """One host setting and the audit checks it satisfies."""

    kind: SettingKind
    #: Parameter name, sysctl key, file path (may hold one `*`), or service name.
    key: str
    #: The value, with placeholders; "" for a bare kernel flag or a service.
    value: str
    checks: tuple[str, ...]

    def render(self, isolated: frozenset[int], housekeeping: frozenset[int]) -> str:
        """The value for a concrete CPU layout (placeholders replaced)."""
        return (
            self.value.replace("<cpus>", format_cpulist(isolated))
            .replace("<housekeeping cpus>", format_cpulist(housekeeping))
            .replace("<housekeeping mask>", format_cpumask(housekeeping))
        )

    @property
    def remedy(self) -> str:
        """How a person applies this setting by hand, placeholders kept."""
        if self.kind is SettingKind.CMDLINE:
            word = f"{self.key}={self.value}" if self.value else self.key
            return f"kernel command line: {word}"
        if self.kind is SettingKind.SYSCTL:
            return f"sysctl -w {self.key}={self.value}"
        if self.kind is SettingKind.WRITE:
            target = self.key.replace("*", "<N>")
            return f"echo {self.value} > {target}"
        return f"systemctl disable --now {self.key}"


def format_cpumask(cpus: frozenset[int]) -> str:
    """A CPU set as the kernel's comma-grouped hex mask ("1", "ff,00000001")."""
    value = sum(1 << c for c in cpus)
    digits = f"{value:x}"
    groups: list[str] = []
    while digits:
        groups.insert(0, digits[-8:])
        digits = digits[:-8]
    return ",".join(g.rjust(8, "0") if i else g for i, g in enumerate(groups)) or "0"


_C, _S, _W, _D = SettingKind.CMDLINE, SettingKind.SYSCTL, SettingKind.WRITE, SettingKind.DISABLE
THP = "/sys/kernel/mm/transparent_hugepage"

#: The tuning of a latency host (tuned's latency-performance/realtime profiles, Rigtorp's guide,
#: the kernel's admin-guide). Order is the order of the generated files.
LATENCY_TUNING: tuple[Setting, ...] = (
    Setting(_C, "isolcpus", "managed_irq,domain,<cpus>", ("cpu.isolcpus", "cpu.targets_isolated")),
    Setting(_C, "nohz_full", "<cpus>", ("cpu.nohz_full",)),
    Setting(_C, "rcu_nocbs", "<cpus>", ("cpu.rcu_nocbs",)),
    Setting(_C, "irqaffinity", "<housekeeping cpus>", ("irq.default_affinity",)),
    Setting(_C, "intel_idle.max_cstate", "0", ("power.intel_idle", "power.cstates")),
    Setting(_C, "processor.max_cstate", "1", ("power.processor_max_cstate",)),
    Setting(_C, "idle", "poll", ("power.idle_poll", "power.cstates")),
    Setting(_C, "transparent_hugepage", "never", ("mem.thp.enabled",)),
    Setting(_C, "nowatchdog", "", ("kernel.nmi_watchdog", "kernel.soft_watchdog")),
    # Nitro instances boot with kvm-clock; their TSC is invariant, and AWS recommends tsc there.
    Setting(_C, "clocksource", "tsc", ("kernel.clocksource",)),
    Setting(_C, "tsc", "reliable", ("kernel.tsc_reliable",)),
    Setting(_C, "skew_tick", "1", ("kernel.skew_tick",)),
    Setting(_S, "kernel.nmi_watchdog", "0", ("kernel.nmi_watchdog",)),
    Setting(_S, "kernel.soft_watchdog", "0", ("kernel.soft_watchdog",)),
    Setting(_S, "kernel.timer_migration", "0", ("kernel.timer_migration",)),
    Setting(_S, "kernel.sched_rt_runtime_us", "-1", ("kernel.rt_throttling",)),
    Setting(_S, "kernel.numa_balancing", "0", ("mem.numa_balancing",)),
    Setting(_S, "vm.swappiness", "10", ("mem.swappiness",)),
    Setting(_S, "vm.stat_interval", "10", ("kernel.stat_interval",)),
    Setting(_S, "vm.zone_reclaim_mode", "0", ("mem.zone_reclaim",)),
    Setting(_W, f"{THP}/enabled", "never", ("mem.thp.enabled",)),
    Setting(_W, f"{THP}/defrag", "never", ("mem.thp.defrag",)),
    Setting(_W, f"{THP}/khugepaged/defrag", "0", ("mem.thp.khugepaged",)),
    Setting(_W, "/sys/kernel/mm/ksm/run", "0", ("mem.ksm",)),
    Setting(_W, "/sys/devices/virtual/workqueue/cpumask", "<housekeeping mask>", ("cpu.workqueue",)),
    Setting(_W, "/proc/irq/default_smp_affinity", "<housekeeping mask>", ("irq.default_affinity",)),
    Setting(_W, "/proc/irq/*/smp_affinity_list", "<housekeeping cpus>", ("irq.affinity",)),
    Setting(_D, "irqbalance", "", ("irq.irqbalance",)),
)


def settings_of(check_id: str) -> tuple[Setting, ...]:
    """The settings that make `check_id` pass, in table order."""
    return tuple(s for s in LATENCY_TUNING if check_id in s.checks)


def remedy_for(check_id: str, extra: str = "") -> str:
    """The remedy an audit check prints: its settings from the table, then `extra`.

    Raises:
        KeyError: no setting in the table names `check_id` (a programming error).
    """
    settings = settings_of(check_id)
    if not settings:
        raise KeyError(f"no tuning setting names the check {check_id!r}")
    text = "; ".join(s.remedy for s in settings)
    if not extra:
        return text
    return f"{text}{extra}" if extra.startswith(";") else f"{text} {extra}"
