"""The host facts several checks share (cmdline, CPU sets, the target CPUs), parsed once."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from verify.audit.cmdline import KernelCmdline, parse_cmdline
from verify.audit.cpulist import format_cpulist, parse_cpulist
from verify.audit.tree import HostTree

__all__ = ["AuditOptions", "HostContext", "bracketed", "parse_int"]

CPU_DIR = "/sys/devices/system/cpu"
NODE_DIR = "/sys/devices/system/node"


def parse_int(text: str | None) -> int | None:
    """A single decimal integer, or None for anything else."""
    if text is None or not re.fullmatch(r"-?\d+", text.strip()):
        return None
    return int(text.strip())


def bracketed(text: str | None) -> str | None:
    """The selected word of a sysfs choice file: "always [madvise] never" -> "madvise"."""
    if text is None:
        return None
    m = re.search(r"\[([^\]\s]+)\]", text)
    if m:
        return m.group(1)
    words = text.split()
    return words[0] if len(words) == 1 else None


@dataclass(frozen=True)
class AuditOptions:
    """What the user asked about: explicit CPUs, a process, a NIC."""

    cpus: frozenset[int] | None = None
    pid: int | None = None
    nic: str | None = None


class HostContext:
    """Shared, lazily parsed view of the host for the checks."""

    def __init__(self, tree: HostTree, options: AuditOptions | None = None) -> None:
        self.tree = tree
        self.options = options or AuditOptions()

    def read(self, path: str) -> str | None:
        return self.tree.read(path)

    def read_int(self, path: str) -> int | None:
        return parse_int(self.tree.read(path))

    @cached_property
    def cmdline(self) -> KernelCmdline | None:
        return parse_cmdline(self.tree.read("/proc/cmdline"))

    @cached_property
    def online(self) -> frozenset[int] | None:
        return parse_cpulist(self.tree.read(f"{CPU_DIR}/online"))

    @cached_property
    def isolated(self) -> frozenset[int] | None:
        return parse_cpulist(self.tree.read(f"{CPU_DIR}/isolated"))

    @cached_property
    def pid_status(self) -> dict[str, str] | None:
        """/proc/PID/status of --pid as a dict, or None without --pid or when unreadable."""
        if self.options.pid is None:
            return None
        text = self.tree.read(f"/proc/{self.options.pid}/status")
        if text is None:
            return None
        out: dict[str, str] = {}
        for line in text.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                out[key.strip()] = value.strip()
        return out

    @cached_property
    def _targets(self) -> tuple[frozenset[int] | None, str]:
        if self.options.cpus is not None:
            return self.options.cpus, "--cpus"
        if self.options.pid is not None:
            status = self.pid_status
            cpus = parse_cpulist(status.get("Cpus_allowed_list")) if status else None
            return cpus, f"CPUs allowed to pid {self.options.pid}"
        if self.isolated:
            return self.isolated, "isolated CPUs"
        return self.online, "all online CPUs (nothing isolated; pass --cpus or --pid)"

    @property
    def targets(self) -> frozenset[int] | None:
        """The CPUs latency-critical work runs on: --cpus, else --pid's, else isolated, else all."""
        return self._targets[0]

    @property
    def targets_source(self) -> str:
        return self._targets[1]

    @property
    def targets_text(self) -> str:
        return format_cpulist(self.targets)

    @cached_property
    def nodes(self) -> dict[int, frozenset[int]] | None:
        """NUMA node -> its CPUs, or None when the node directory cannot be read."""
        names = self.tree.listdir(NODE_DIR)
        if names is None:
            return None
        nodes: dict[int, frozenset[int]] = {}
        for name in names:
            m = re.fullmatch(r"node(\d+)", name)
            if not m:
                continue
            cpus = parse_cpulist(self.tree.read(f"{NODE_DIR}/{name}/cpulist"))
            if cpus is None:
                return None
            nodes[int(m.group(1))] = cpus
        return nodes or None

    def nodes_of(self, cpus: frozenset[int]) -> frozenset[int] | None:
        nodes = self.nodes
        if nodes is None:
            return None
        return frozenset(n for n, node_cpus in nodes.items() if node_cpus & cpus)
