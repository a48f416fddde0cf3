"""Interrupts: where device IRQs are delivered, and whether irqbalance moves them back."""

from __future__ import annotations

from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.checks._value import MaskCheck
from verify.audit.context import HostContext
from verify.audit.cpulist import format_cpulist, parse_cpulist
from verify.audit.tuning import remedy_for


def _irq_names(host: HostContext) -> dict[str, str]:
    """IRQ number -> device name, from /proc/interrupts (best effort)."""
    text = host.read("/proc/interrupts")
    names: dict[str, str] = {}
    if text is None:
        return names
    for line in text.splitlines()[1:]:
        head, sep, rest = line.partition(":")
        if sep and head.strip().isdigit():
            words = rest.split()
            if words:
                names[head.strip()] = words[-1]
    return names


@dataclass(frozen=True)
class IrqbalanceAbsent(Check):
    def evaluate(self, host: HostContext) -> Finding:
        pids = [n for n in (host.tree.listdir("/proc") or []) if n.isdigit()]
        seen = 0
        for pid in pids:
            comm = host.read(f"/proc/{pid}/comm")
            if comm is None:
                continue  # the process exited while we looked
            seen += 1
            if comm == "irqbalance":
                return Finding(Status.FAIL, f"running (pid {pid})")
        if seen == 0:
            return Finding.unknown("no process names readable under /proc")
        return Finding(Status.PASS, f"not running ({seen} processes looked at)")


@dataclass(frozen=True)
class IrqAffinity(Check):
    def evaluate(self, host: HostContext) -> Finding:
        targets = host.targets
        if targets is None:
            return Finding.unknown("the target CPUs are unknown")
        irqs = sorted((n for n in (host.tree.listdir("/proc/irq") or []) if n.isdigit()), key=int)
        if not irqs:
            return Finding.unknown("/proc/irq lists no IRQs")
        names = _irq_names(host)
        offending: list[str] = []
        readable = 0
        for irq in irqs:
            # effective_affinity is where the IRQ really lands; smp_affinity is only the request.
            cpus = parse_cpulist(host.read(f"/proc/irq/{irq}/effective_affinity_list"))
            if cpus is None:
                cpus = parse_cpulist(host.read(f"/proc/irq/{irq}/smp_affinity_list"))
            if cpus is None:
                continue
            readable += 1
            hit = cpus & targets
            if hit:
                offending.append(f"{irq}({names.get(irq, '?')})->{format_cpulist(hit)}")
        if readable == 0:
            return Finding.unknown("no IRQ affinity readable under /proc/irq")
        if offending:
            more = f" (+{len(offending) - 6} more)" if len(offending) > 6 else ""
            return Finding(
                Status.FAIL,
                f"{len(offending)} of {readable} IRQs on targets: "
                + " ".join(offending[:6])
                + more,
            )
        return Finding(Status.PASS, f"none of {readable} IRQs on targets {host.targets_text}")


CHECKS: tuple[Check, ...] = (
    IrqbalanceAbsent(
        id="irq.irqbalance",
        title="irqbalance daemon",
        expected="not running",
        severity=Severity.HIGH,
        latency="moves device IRQs onto isolated CPUs: 1-10 µs per interrupt, at device rate",
        remedy=remedy_for("irq.irqbalance", "(or IRQBALANCE_BANNED_CPULIST=<cpus>)"),
    ),
    IrqAffinity(
        id="irq.affinity",
        title="Device IRQ affinity",
        expected="no device IRQ delivered to a target CPU",
        severity=Severity.HIGH,
        latency="each interrupt and its softirq: 1-50 µs",
        remedy=remedy_for("irq.affinity", "(isolcpus=managed_irq,... covers managed IRQs)"),
    ),
    MaskCheck(
        id="irq.default_affinity",
        title="Default affinity of new IRQs",
        expected="excludes the target CPUs",
        severity=Severity.MEDIUM,
        latency="newly registered IRQs land on the latency CPUs: 1-50 µs each",
        remedy=remedy_for("irq.default_affinity"),
        path="/proc/irq/default_smp_affinity",
        on_overlap="new IRQs may land on",
    ),
)
