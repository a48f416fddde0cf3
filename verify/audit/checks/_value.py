"""The common shape of a check: read one sysctl/sysfs file and compare its value."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from verify.audit.check import Check, Finding, Status
from verify.audit.context import HostContext, bracketed, parse_int
from verify.audit.cpulist import format_cpulist, parse_cpumask

__all__ = ["ChoiceCheck", "IntCheck", "MaskCheck"]


@dataclass(frozen=True)
class IntCheck(Check):
    """A file holding one integer; `ok` decides whether the value suits a latency host."""

    path: str = ""
    ok: Callable[[int], bool] = field(default=lambda v: v == 0)
    #: A kernel parameter that settles the matter when present (e.g. "nowatchdog").
    cmdline_overrides: tuple[str, ...] = ()

    def evaluate(self, host: HostContext) -> Finding:
        cmdline = host.cmdline
        if cmdline is not None:
            for name in self.cmdline_overrides:
                if cmdline.has(name):
                    return Finding(Status.PASS, f"{name} on the kernel command line")
        raw = host.read(self.path)
        if raw is None:
            return Finding.unknown(f"{self.path} is missing or unreadable")
        value = parse_int(raw)
        if value is None:
            return Finding.unknown(f"{self.path}: not an integer: {raw[:40]!r}")
        return Finding(Status.PASS if self.ok(value) else Status.FAIL, str(value))


@dataclass(frozen=True)
class ChoiceCheck(Check):
    """A sysfs choice file ("always [madvise] never"); passes when the selection is accepted."""

    path: str = ""
    accepted: frozenset[str] = frozenset()

    def evaluate(self, host: HostContext) -> Finding:
        raw = host.read(self.path)
        if raw is None:
            return Finding.unknown(f"{self.path} is missing or unreadable")
        value = bracketed(raw)
        if value is None:
            return Finding.unknown(f"{self.path}: no selection in {raw[:40]!r}")
        return Finding(Status.PASS if value in self.accepted else Status.FAIL, value)


@dataclass(frozen=True)
class MaskCheck(Check):
    """A CPU mask file (comma-separated hex words); passes when it leaves out every target CPU."""

    path: str = ""
    #: What an overlap means, completed by the overlapping CPUs ("new IRQs may land on").
    on_overlap: str = ""

    def evaluate(self, host: HostContext) -> Finding:
        mask = parse_cpumask(host.read(self.path))
        if mask is None:
            return Finding.unknown(f"{self.path} is missing, unreadable or not a mask")
        if host.targets is None:
            return Finding.unknown("the target CPUs are unknown")
        overlap = mask & host.targets
        observed = format_cpulist(mask)
        if overlap:
            return Finding(Status.FAIL, observed, f"{self.on_overlap} {format_cpulist(overlap)}")
        return Finding(Status.PASS, observed)
