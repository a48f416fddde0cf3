"""The parent instance's CPUs split three ways: the host's OS, the router, the enclave.

EC2 numbers vCPUs so that core k's threads are k, k + n/t, k + 2n/t ... (n vCPUs, t threads per
core). Nitro takes whole cores for an enclave and never core 0; the router gets whole cores too, so
no latency CPU shares a core with a housekeeping one (the audit's `cpu.smt_siblings`). The host
keeps core 0 and whatever is left.
"""

from __future__ import annotations

from dataclasses import dataclass

from reproducible.deploy.errors import CpuLayoutError, NoHostCore
from verify.audit.cpulist import format_cpulist

__all__ = ["CpuLayout", "plan_layout"]


@dataclass(frozen=True)
class CpuLayout:
    vcpus: int
    threads_per_core: int
    host: frozenset[int]
    router: frozenset[int]
    enclave: frozenset[int]

    @property
    def isolated(self) -> frozenset[int]:
        """Every CPU kept away from the OS: the router's, and the enclave's until Nitro takes them."""
        return self.router | self.enclave

    def describe(self) -> dict[str, str | int]:
        return {
            "vcpus": self.vcpus,
            "threads_per_core": self.threads_per_core,
            "host": format_cpulist(self.host),
            "router": format_cpulist(self.router),
            "enclave": format_cpulist(self.enclave),
        }


def _core(k: int, vcpus: int, threads: int) -> frozenset[int]:
    step = vcpus // threads
    return frozenset(k + j * step for j in range(threads))


def plan_layout(vcpus: int, threads_per_core: int, router_cores: int, enclave_cpus: int) -> CpuLayout:
    """Core 0 for the host, the next `router_cores` for the router, then the enclave's cores.

    Raises:
        CpuLayoutError: counts that are not positive, vCPUs not a multiple of the threads per
            core, or an enclave CPU count that is not whole cores.
        NoHostCore: router and enclave would take every core.
    """
    if vcpus < 1 or threads_per_core < 1 or router_cores < 1 or enclave_cpus < 1:
        raise CpuLayoutError(
            f"vCPUs ({vcpus}), threads per core ({threads_per_core}), router cores ({router_cores}) "
            f"and enclave CPUs ({enclave_cpus}) must all be at least 1"
        )
    if vcpus % threads_per_core:
        raise CpuLayoutError(f"{vcpus} vCPUs is not a whole number of {threads_per_core}-thread cores")
    if enclave_cpus % threads_per_core:
        raise CpuLayoutError(
            f"the enclave takes whole cores: {enclave_cpus} CPUs is not a multiple of "
            f"{threads_per_core} threads per core"
        )
    cores = vcpus // threads_per_core
    enclave_cores = enclave_cpus // threads_per_core
    if router_cores + enclave_cores >= cores:
        raise NoHostCore(
            f"{router_cores} router core(s) and {enclave_cores} enclave core(s) take all {cores} "
            f"cores of {vcpus} vCPUs; the host needs at least one core (core 0) for its OS"
        )

    def cores_of(ks: range) -> frozenset[int]:
        return frozenset(c for k in ks for c in _core(k, vcpus, threads_per_core))

    router = cores_of(range(1, 1 + router_cores))
    enclave = cores_of(range(1 + router_cores, 1 + router_cores + enclave_cores))
    host = frozenset(range(vcpus)) - router - enclave
    return CpuLayout(vcpus, threads_per_core, host, router, enclave)
