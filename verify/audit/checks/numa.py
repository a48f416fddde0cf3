"""NUMA locality: the latency CPUs, the process's memory and the NIC on one node."""

from __future__ import annotations

import re
from dataclasses import dataclass

from verify.audit.check import Check, Finding, Severity, Status
from verify.audit.context import NODE_DIR, HostContext
from verify.audit.cpulist import format_cpulist, parse_cpulist


def _fmt_nodes(nodes: frozenset[int]) -> str:
    return "node " + format_cpulist(nodes) if nodes else "no node"


@dataclass(frozen=True)
class TargetsOneNode(Check):
    def evaluate(self, host: HostContext) -> Finding:
        targets = host.targets
        if targets is None:
            return Finding.unknown("the target CPUs are unknown")
        nodes = host.nodes_of(targets)
        if nodes is None:
            return Finding.unknown(f"{NODE_DIR} is missing or unreadable")
        return Finding(Status.PASS if len(nodes) == 1 else Status.FAIL, _fmt_nodes(nodes))


@dataclass(frozen=True)
class NicNode(Check):
    def evaluate(self, host: HostContext) -> Finding:
        nic = host.options.nic
        if nic is None:
            return Finding(Status.NOT_APPLICABLE, "no --nic given")
        if host.targets is None:
            return Finding.unknown("the target CPUs are unknown")
        cpu_nodes = host.nodes_of(host.targets)
        if cpu_nodes is None:
            return Finding.unknown(f"{NODE_DIR} is missing or unreadable")
        node = host.read_int(f"/sys/class/net/{nic}/device/numa_node")
        if node is None:
            if host.read(f"/sys/class/net/{nic}/address") is None:
                return Finding.unknown(f"no interface {nic} (or /sys/class/net unreadable)")
            node = -1
        if node < 0:
            if host.nodes is not None and len(host.nodes) == 1:
                return Finding(Status.PASS, f"{nic}: no NUMA affinity", "single-node host")
            return Finding.unknown(f"{nic} reports no NUMA node (virtual device or firmware gap)")
        return Finding(
            Status.PASS if cpu_nodes == {node} else Status.FAIL,
            f"{nic} on node {node}",
            f"target CPUs on {_fmt_nodes(cpu_nodes)}",
        )


@dataclass(frozen=True)
class ProcessMemoryNode(Check):
    def evaluate(self, host: HostContext) -> Finding:
        pid = host.options.pid
        if pid is None:
            return Finding(Status.NOT_APPLICABLE, "no --pid given")
        if host.targets is None:
            return Finding.unknown("the target CPUs are unknown")
        cpu_nodes = host.nodes_of(host.targets)
        if cpu_nodes is None:
            return Finding.unknown(f"{NODE_DIR} is missing or unreadable")
        maps = host.read(f"/proc/{pid}/numa_maps")
        pages: dict[int, int] = {}
        if maps is not None:
            for m in re.finditer(r"\bN(\d+)=(\d+)", maps):
                pages[int(m.group(1))] = pages.get(int(m.group(1)), 0) + int(m.group(2))
        if pages:
            remote = {n: c for n, c in pages.items() if n not in cpu_nodes}
            observed = ", ".join(f"node {n}: {c} pages" for n, c in sorted(pages.items()))
            return Finding(
                Status.FAIL if remote else Status.PASS,
                observed,
                f"target CPUs on {_fmt_nodes(cpu_nodes)}",
            )
        status = host.pid_status
        mems = parse_cpulist(status.get("Mems_allowed_list")) if status else None
        if mems is None:
            return Finding.unknown(f"/proc/{pid}/numa_maps and status unreadable")
        return Finding(
            Status.PASS if mems <= cpu_nodes else Status.FAIL,
            f"memory allowed on {_fmt_nodes(mems)}",
            f"target CPUs on {_fmt_nodes(cpu_nodes)}; numa_maps unreadable",
        )


CHECKS: tuple[Check, ...] = (
    TargetsOneNode(
        id="numa.targets_node",
        title="Target CPUs on one NUMA node",
        expected="exactly one node",
        severity=Severity.MEDIUM,
        latency="cross-node cache-line transfers: ~100 ns each instead of ~20 ns",
        remedy="choose latency CPUs from one node (lscpu -e shows NODE)",
    ),
    NicNode(
        id="numa.nic",
        title="NIC on the target CPUs' NUMA node",
        expected="the NIC's node is the target CPUs' node",
        severity=Severity.MEDIUM,
        latency="DMA and interrupts across the interconnect: 100s of ns per packet",
        remedy="pick latency CPUs on the NIC's node: cat /sys/class/net/<if>/device/numa_node",
    ),
    ProcessMemoryNode(
        id="numa.process_memory",
        title="Process memory on the target CPUs' NUMA node",
        expected="all pages on the target CPUs' node",
        severity=Severity.MEDIUM,
        latency="remote memory access: ~1.5-2x local latency",
        remedy="numactl --cpunodebind=<node> --membind=<node> <command>",
    ),
)
