"""Memory management that stalls a latency thread: THP compaction, NUMA balancing, swap, KSM."""

from __future__ import annotations

import re
from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.checks._value import ChoiceCheck, IntCheck
from verify.audit.context import HostContext, bracketed
from verify.audit.tuning import remedy_for

THP = "/sys/kernel/mm/transparent_hugepage"


@dataclass(frozen=True)
class ThpDependent(ChoiceCheck):
    """A THP knob that does not matter once THP itself is off."""

    def evaluate(self, host: HostContext) -> Finding:
        if bracketed(host.read(f"{THP}/enabled")) == "never":
            raw = host.read(self.path)
            shown = (bracketed(raw) or raw or "unknown") if raw is not None else "unknown"
            return Finding(Status.PASS, shown, "THP is disabled, so this knob is inert")
        return super().evaluate(host)


@dataclass(frozen=True)
class KhugepagedDefrag(IntCheck):
    def evaluate(self, host: HostContext) -> Finding:
        if bracketed(host.read(f"{THP}/enabled")) == "never":
            return Finding(
                Status.PASS,
                host.read(self.path) or "unknown",
                "THP is disabled, so khugepaged does not collapse pages",
            )
        return super().evaluate(host)


@dataclass(frozen=True)
class NoActiveSwap(Check):
    def evaluate(self, host: HostContext) -> Finding:
        text = host.read("/proc/swaps")
        if text is None:
            return Finding.unknown("/proc/swaps is missing or unreadable")
        lines = text.splitlines()
        if not lines or not lines[0].startswith("Filename"):
            return Finding.unknown(f"/proc/swaps has no header: {text[:40]!r}")
        devices = [line.split()[0] for line in lines[1:] if line.strip()]
        if not devices:
            return Finding(Status.PASS, "no active swap")
        return Finding(Status.FAIL, ", ".join(devices))


@dataclass(frozen=True)
class HugepagesReserved(Check):
    def evaluate(self, host: HostContext) -> Finding:
        base = "/sys/kernel/mm/hugepages"
        names = host.tree.listdir(base)
        if names is None:
            return Finding.unknown(f"{base} is missing or unreadable")
        found = []
        for name in names:
            m = re.fullmatch(r"hugepages-(\d+)kB", name)
            if not m:
                continue
            count = host.read_int(f"{base}/{name}/nr_hugepages")
            if count is None:
                return Finding.unknown(f"{base}/{name}/nr_hugepages is unreadable")
            found.append((int(m.group(1)), count))
        if not found:
            return Finding.unknown(f"no hugepage sizes under {base}")
        observed = ", ".join(f"{n} x {size} kB" for size, n in sorted(found))
        total = sum(n for _, n in found)
        return Finding(Status.PASS if total > 0 else Status.FAIL, observed)


CHECKS: tuple[Check, ...] = (
    ChoiceCheck(
        id="mem.thp.enabled",
        title="Transparent huge pages",
        expected="never",
        severity=Severity.HIGH,
        latency="page faults that compact memory or wait for khugepaged: 10 µs to several ms",
        remedy=remedy_for("mem.thp.enabled"),
        path=f"{THP}/enabled",
        accepted=frozenset({"never"}),
    ),
    ThpDependent(
        id="mem.thp.defrag",
        title="THP defragmentation on fault",
        expected="never",
        severity=Severity.HIGH,
        latency="direct compaction in the faulting thread: 100 µs to tens of ms",
        remedy=remedy_for("mem.thp.defrag"),
        path=f"{THP}/defrag",
        accepted=frozenset({"never"}),
    ),
    KhugepagedDefrag(
        id="mem.thp.khugepaged",
        title="khugepaged defragmentation",
        expected="0",
        severity=Severity.MEDIUM,
        latency="khugepaged collapses pages under the mmap lock: µs to ms stalls on page faults",
        remedy=remedy_for("mem.thp.khugepaged"),
        path=f"{THP}/khugepaged/defrag",
    ),
    IntCheck(
        id="mem.numa_balancing",
        title="Automatic NUMA balancing",
        expected="0",
        severity=Severity.HIGH,
        latency="hinting page faults and page migration: 10 µs to ms, periodically",
        remedy=remedy_for("mem.numa_balancing"),
        path="/proc/sys/kernel/numa_balancing",
        ok=lambda v: v == 0,
    ),
    NoActiveSwap(
        id="mem.swap",
        title="Active swap devices",
        expected="no active swap",
        severity=Severity.HIGH,
        latency="a major fault on a swapped-out page: 100 µs (NVMe) to 10 ms (disk)",
        remedy="swapoff -a, and remove swap entries from /etc/fstab; or mlockall() the process",
    ),
    IntCheck(
        id="mem.swappiness",
        title="vm.swappiness",
        expected="<= 10",
        severity=Severity.LOW,
        latency="anonymous pages reclaimed earlier: major faults later",
        remedy=remedy_for("mem.swappiness"),
        path="/proc/sys/vm/swappiness",
        ok=lambda v: 0 <= v <= 10,
    ),
    IntCheck(
        id="mem.ksm",
        title="Kernel same-page merging (KSM)",
        expected="0",
        severity=Severity.MEDIUM,
        latency="ksmd scans and copy-on-write faults on merged pages: µs per fault",
        remedy=remedy_for("mem.ksm"),
        path="/sys/kernel/mm/ksm/run",
        ok=lambda v: v == 0,
    ),
    HugepagesReserved(
        id="mem.hugepages",
        title="Reserved huge pages",
        expected="> 0 pages reserved",
        severity=Severity.LOW,
        latency="without them, TLB misses on a large working set: tens of ns each",
        remedy="sysctl -w vm.nr_hugepages=N (or hugepagesz=1G hugepages=N on the kernel command "
        "line) and map the hot data with MAP_HUGETLB",
    ),
    IntCheck(
        id="mem.zone_reclaim",
        title="vm.zone_reclaim_mode",
        expected="0",
        severity=Severity.MEDIUM,
        latency="synchronous reclaim on the local node instead of a remote allocation: µs to ms",
        remedy=remedy_for("mem.zone_reclaim"),
        path="/proc/sys/vm/zone_reclaim_mode",
        ok=lambda v: v == 0,
    ),
)
