"""What can be wrong with a deployment's inputs; each is a BuildError (the builder's root)."""

from __future__ import annotations

from reproducible.errors import BuildError


class DeployError(BuildError):
    """Root of the deploy generator's errors: the inputs cannot give a safe deployment."""


class MissingPcrs(DeployError):
    """The measurements lack a PCR the key policy must pin (PCR0, PCR1, PCR2)."""


class DebugMeasurements(DeployError):
    """All-zero PCRs: a debug-mode enclave's, which anyone can reproduce; never bind a key to it."""


class CpuLayoutError(DeployError):
    """The CPU layout asked for does not fit the instance or Nitro's rules (whole cores)."""


class NoHostCore(CpuLayoutError):
    """The layout gives every core to the router and the enclave, none to the host's OS."""


class EnclaveMemoryTooSmall(DeployError):
    """The enclave memory given cannot hold the EIF (nitro-cli needs about 4x its size)."""
