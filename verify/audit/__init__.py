"""`verify audit`: a static audit of a host's /proc and /sys against a low-latency profile.

`run_audit(HostTree.live())` or `run_audit(HostTree.from_path(DIR_OR_TAR))` returns an
`AuditReport` with one `CheckResult` per check; nothing here needs root.
"""

from __future__ import annotations

from verify.audit.check import Check, CheckResult, Finding, Severity, Status
from verify.audit.context import AuditOptions
from verify.audit.errors import MalformedCpuList, MalformedHostTree
from verify.audit.report import AuditReport, run_audit
from verify.audit.tree import HostTree, write_capture

__all__ = [
    "AuditOptions",
    "AuditReport",
    "Check",
    "CheckResult",
    "Finding",
    "HostTree",
    "MalformedCpuList",
    "MalformedHostTree",
    "Severity",
    "Status",
    "run_audit",
    "write_capture",
]
