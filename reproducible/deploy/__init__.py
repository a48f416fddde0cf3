"""`python -m reproducible deploy`: the infrastructure that binds a fund's key to the measured image.

From published measurements and the host tuning table the audit checks (verify.audit.tuning), write
the KMS key policy, a CloudFormation template and the parent instance's set-up files, byte for byte
the same for the same inputs. `generate_deployment(DeployOptions(...))` returns the files;
`write_deployment` writes them.
"""

from __future__ import annotations

from reproducible.deploy.errors import (
    CpuLayoutError,
    DebugMeasurements,
    DeployError,
    EnclaveMemoryTooSmall,
    MissingPcrs,
    NoHostCore,
)
from reproducible.deploy.generate import DeployOptions, generate_deployment, write_deployment
from reproducible.deploy.layout import CpuLayout, plan_layout
from reproducible.deploy.release import Release, load_release

__all__ = [
    "CpuLayout",
    "CpuLayoutError",
    "DebugMeasurements",
    "DeployError",
    "DeployOptions",
    "EnclaveMemoryTooSmall",
    "MissingPcrs",
    "NoHostCore",
    "Release",
    "generate_deployment",
    "load_release",
    "plan_layout",
    "write_deployment",
]
