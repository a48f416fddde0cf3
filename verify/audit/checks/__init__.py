"""Every audit check, grouped by concept; `ALL_CHECKS` is the order of the report."""

from __future__ import annotations

from verify.audit.check import Check
from verify.audit.checks import irq, isolation, kernel, memory, numa, power

__all__ = ["ALL_CHECKS"]

ALL_CHECKS: tuple[Check, ...] = (
    *isolation.CHECKS,
    *irq.CHECKS,
    *power.CHECKS,
    *memory.CHECKS,
    *kernel.CHECKS,
    *numa.CHECKS,
)
