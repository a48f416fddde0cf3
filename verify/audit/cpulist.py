"""The kernel's two CPU-set spellings: lists ("0-3,8,10-11") and hex masks ("ff,00000001").

Parsers return None for text that does not parse: on the host side that means "unknown".
"""

from __future__ import annotations

import re

__all__ = ["format_cpulist", "parse_cpulist", "parse_cpumask"]

_RANGE = re.compile(r"^(\d+)(?:-(\d+)(?::(\d+)/(\d+))?)?$")
#: Bound on CPU numbers so a garbage file cannot make us build a huge set.
MAX_CPU = 1 << 16


def parse_cpulist(text: str | None) -> frozenset[int] | None:
    """Parse "0-3,8" (and the kernel's "0-15:2/4" group syntax); "" is the empty set."""
    if text is None:
        return None
    text = text.strip()
    if text in ("", "(null)"):
        return frozenset()
    cpus: set[int] = set()
    for part in text.split(","):
        m = _RANGE.match(part.strip())
        if m is None:
            return None
        lo = int(m.group(1))
        hi = int(m.group(2)) if m.group(2) is not None else lo
        if hi < lo or hi > MAX_CPU:
            return None
        if m.group(3) is not None:
            used, group = int(m.group(3)), int(m.group(4))
            if group == 0 or used > group:
                return None
            cpus.update(c for c in range(lo, hi + 1) if (c - lo) % group < used)
        else:
            cpus.update(range(lo, hi + 1))
    return frozenset(cpus)


def parse_cpumask(text: str | None) -> frozenset[int] | None:
    """Parse a comma-grouped hex mask as in /proc/irq/*/smp_affinity ("3", "00000000,00000f0f")."""
    if text is None:
        return None
    digits = text.strip().replace(",", "")
    if not digits or len(digits) > MAX_CPU // 4 or not re.fullmatch(r"[0-9a-fA-F]+", digits):
        return None
    value = int(digits, 16)
    return frozenset(i for i in range(value.bit_length()) if value >> i & 1)


def format_cpulist(cpus: frozenset[int] | set[int] | None) -> str:
    """The kernel's compact spelling of a set; "none" for the empty set, "unknown" for None."""
    if cpus is None:
        return "unknown"
    if not cpus:
        return "none"
    ordered = sorted(cpus)
    parts: list[str] = []
    start = prev = ordered[0]
    for c in ordered[1:]:
        if c == prev + 1:
            prev = c
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = c
    parts.append(str(start) if start == prev else f"{start}-{prev}")
    return ",".join(parts)
