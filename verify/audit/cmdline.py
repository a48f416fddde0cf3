"""The kernel command line (/proc/cmdline) as parameters, the way the kernel itself splits it."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field

from verify.audit.cpulist import parse_cpulist

__all__ = ["KernelCmdline", "parse_cmdline"]

#: isolcpus= flags (Documentation/admin-guide/kernel-parameters.txt) that precede the CPU list.
ISOLCPUS_FLAGS = frozenset({"nohz", "domain", "managed_irq"})


@dataclass(frozen=True)
class KernelCmdline:
    raw: str
    #: Last value wins, as in the kernel; a bare flag maps to "".
    params: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.params.get(name)

    def has(self, name: str) -> bool:
        return name in self.params

    def cpus(self, name: str) -> frozenset[int] | None:
        """CPU list of a parameter like nohz_full= or rcu_nocbs=; None if absent or unparseable."""
        value = self.params.get(name)
        if value is None:
            return None
        if name == "isolcpus":
            items = value.split(",")
            while items and items[0] in ISOLCPUS_FLAGS:
                items.pop(0)
            value = ",".join(items)
        return parse_cpulist(value)


def parse_cmdline(text: str | None) -> KernelCmdline | None:
    """Split /proc/cmdline; arguments after a bare "--" belong to init and are dropped."""
    if text is None:
        return None
    try:
        words = shlex.split(text)
    except ValueError:
        words = text.split()  # an unbalanced quote: the kernel would still split on spaces
    params: dict[str, str] = {}
    for word in words:
        if word == "--":
            break
        key, _, value = word.partition("=")
        # The kernel treats '-' and '_' in parameter names alike.
        params[key.replace("-", "_")] = value
    return KernelCmdline(raw=text, params=params)
