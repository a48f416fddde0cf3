"""A check is a small policy object: one setting, what we observe, what a latency host expects.

Each check carries everything a reader needs to act (sigstore's policy objects, and tuned's and
Rigtorp's tuning notes for the content): its id, the latency it typically costs when wrong, and the
exact remedy. `evaluate` never raises for a host-side problem: unreadable data is `Status.UNKNOWN`.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from verify.audit.context import HostContext

__all__ = ["Check", "CheckResult", "Finding", "Severity", "Status"]

logger = logging.getLogger(__name__)


class Status(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"  # the file is missing, unreadable without root, or garbage
    NOT_APPLICABLE = "n/a"  # e.g. the NIC check without --nic


class Severity(StrEnum):
    HIGH = "high"  # typically stalls of 100 µs or more
    MEDIUM = "medium"  # typically a few to tens of µs, or periodic
    LOW = "low"  # hygiene: small or rare costs

    @property
    def rank(self) -> int:
        return {"high": 3, "medium": 2, "low": 1}[self.value]


@dataclass(frozen=True)
class Finding:
    """What one check saw on one host."""

    status: Status
    observed: str
    note: str = ""

    @classmethod
    def unknown(cls, why: str) -> Finding:
        return cls(Status.UNKNOWN, "unknown", why)


@dataclass(frozen=True)
class CheckResult:
    id: str
    title: str
    status: Status
    severity: Severity
    observed: str
    expected: str
    latency: str
    remedy: str
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status.value,
            "severity": self.severity.value,
            "observed": self.observed,
            "expected": self.expected,
            "latency": self.latency,
            "remedy": self.remedy,
            "note": self.note,
        }


@dataclass(frozen=True)
class Check(ABC):
    """Metadata of one check; subclasses implement `evaluate`."""

    id: str
    title: str
    expected: str
    severity: Severity
    latency: str
    remedy: str

    @abstractmethod
    def evaluate(self, host: HostContext) -> Finding:
        """Observe the host; return a `Finding` (never raise for host-side problems)."""

    def run(self, host: HostContext) -> CheckResult:
        try:
            finding = self.evaluate(host)
        except (ValueError, KeyError, IndexError, ArithmeticError) as e:
            # Garbage in a host file must cost one "unknown", not the whole audit.
            logger.debug("check %s could not parse the host: %s", self.id, e)
            finding = Finding.unknown(f"unparseable host data ({e})")
        return CheckResult(
            id=self.id,
            title=self.title,
            status=finding.status,
            severity=self.severity,
            observed=finding.observed,
            expected=self.expected,
            latency=self.latency,
            remedy=self.remedy,
            note=finding.note,
        )
