"""Run the checks over one host and collect every outcome (the audit never stops at a failure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from verify.audit.check import Check, CheckResult, Severity, Status
from verify.audit.context import AuditOptions, HostContext
from verify.audit.tree import HostTree

__all__ = ["AuditReport", "run_audit"]


@dataclass(frozen=True)
class AuditReport:
    source: str
    targets: str
    targets_source: str
    results: tuple[CheckResult, ...]

    def failed(self, at_least: Severity = Severity.LOW) -> list[CheckResult]:
        return [
            r for r in self.results if r.status is Status.FAIL and r.severity.rank >= at_least.rank
        ]

    def passed(self, at_least: Severity = Severity.LOW) -> bool:
        return not self.failed(at_least)

    def counts(self) -> dict[str, int]:
        c = Counter(r.status.value for r in self.results)
        return {s.value: c.get(s.value, 0) for s in Status}

    def by_id(self) -> dict[str, CheckResult]:
        return {r.id: r for r in self.results}

    def to_json(self, fail_on: Severity = Severity.LOW) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed(fail_on) else "fail",
            "fail_on": fail_on.value,
            "source": self.source,
            "target_cpus": self.targets,
            "target_cpus_source": self.targets_source,
            "counts": self.counts(),
            "checks": [r.to_json() for r in self.results],
        }


def run_audit(
    tree: HostTree,
    options: AuditOptions | None = None,
    checks: Sequence[Check] | None = None,
    *,
    source: str = "live host",
) -> AuditReport:
    """Evaluate every check against `tree`; host-side problems become "unknown" results."""
    from verify.audit.checks import ALL_CHECKS

    selected = tuple(ALL_CHECKS if checks is None else checks)
    if not selected:
        raise ValueError("no checks to run")  # an empty audit must never read as a pass
    host = HostContext(tree, options)
    results = tuple(check.run(host) for check in selected)
    return AuditReport(
        source=source,
        targets=host.targets_text,
        targets_source=host.targets_source,
        results=results,
    )
