"""Put the deployment together: releases + layout + tuning table -> files, same inputs, same bytes."""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reproducible.deploy.errors import DeployError, EnclaveMemoryTooSmall
from reproducible.deploy.host import HostPlan, host_files
from reproducible.deploy.key_policy import key_policy
from reproducible.deploy.layout import CpuLayout, plan_layout
from reproducible.deploy.release import Release, load_release
from reproducible.deploy.template import cloudformation_template

__all__ = [
    "EIF_MEMORY_FACTOR",
    "DeployOptions",
    "Deployment",
    "generate_deployment",
    "required_memory_mib",
    "write_deployment",
]

#: nitro-cli refuses an enclave with less memory than about 4x its EIF (the ramdisks are unpacked).
EIF_MEMORY_FACTOR = 4
MIB = 1 << 20
#: Placeholders for the standalone policy file; KMS rejects them as principals, so an unedited
#: file cannot be applied by mistake. The CloudFormation template fills them itself.
PARENT_PLACEHOLDER = "REPLACE-WITH-PARENT-ROLE-ARN"
ADMIN_PLACEHOLDER = "REPLACE-WITH-ADMIN-PRINCIPAL-ARN"


@dataclass(frozen=True)
class DeployOptions:
    measurements: list[Path]
    vcpus: int = 8
    threads_per_core: int = 2
    router_cores: int = 1
    enclave_cpus: int | None = None  # default: one core
    enclave_memory_mib: int | None = None  # default: 4x the EIF, rounded up to 256 MiB
    instance_type: str = "c6i.2xlarge"
    parent_role_arn: str | None = None
    admin_arn: str | None = None
    eif: Path | None = None  # the newest release's image, when its file has no sections
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Deployment:
    releases: list[Release]
    layout: CpuLayout
    enclave_memory_mib: int
    files: dict[str, bytes]


def required_memory_mib(eif_bytes: int) -> int:
    return math.ceil(EIF_MEMORY_FACTOR * eif_bytes / MIB)


def _memory(release: Release, given: int | None) -> int:
    if release.eif_bytes is None:
        if given is None:
            raise DeployError(
                f"{release.source}: no EIF sections to size the enclave from; pass --eif or "
                "--enclave-memory-mib"
            )
        return given
    need = required_memory_mib(release.eif_bytes)
    if given is None:
        return max(512, math.ceil(need / 256) * 256)
    if given < need:
        raise EnclaveMemoryTooSmall(
            f"the EIF of release {release.version} is {release.eif_bytes} bytes "
            f"({release.eif_bytes / MIB:.1f} MiB); --enclave-memory-mib {given} is less than the "
            f"{need} MiB ({EIF_MEMORY_FACTOR}x) an enclave needs to boot it"
        )
    return given


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def generate_deployment(options: DeployOptions) -> Deployment:
    """Every file of the deployment, keyed by relative path, in bytes.

    The last measurements file is the release the instance runs; all of them may decrypt (a
    rolling upgrade lists the old release and the new one).

    Raises:
        DeployError: a bad measurements file, a debug build, missing PCRs, a CPU layout without a
            host core, too little enclave memory for the EIF (see reproducible.deploy.errors).
    """
    if not options.measurements:
        raise DeployError("give at least one --measurements file")
    releases = [
        load_release(p, options.eif if i == len(options.measurements) - 1 else None)
        for i, p in enumerate(options.measurements)
    ]
    versions = [r.version for r in releases]
    if len(set(versions)) != len(versions):
        raise DeployError(f"the same release given twice: {versions}")
    layout = plan_layout(
        options.vcpus,
        options.threads_per_core,
        options.router_cores,
        options.enclave_cpus if options.enclave_cpus is not None else options.threads_per_core,
    )
    current = releases[-1]
    memory = _memory(current, options.enclave_memory_mib)
    texts: dict[str, bytes] = {
        "cloudformation.json": _json(cloudformation_template(releases, options.instance_type)),
        "kms-key-policy.json": _json(
            key_policy(
                releases,
                parent=options.parent_role_arn or PARENT_PLACEHOLDER,
                admin=options.admin_arn or ADMIN_PLACEHOLDER,
            )
        ),
    }
    plan = HostPlan(layout=layout, release=current, enclave_memory_mib=memory)
    texts.update({k: v.encode() for k, v in host_files(plan).items()})
    manifest = {
        "generator": "python -m reproducible deploy",
        "releases": [
            {"version": r.version, "measurements": Path(r.source).name,
             "pcrs": {f"PCR{i}": v for i, v in r.pcrs.items()}, "eif_bytes": r.eif_bytes}
            for r in releases
        ],
        "runs": current.version,
        "layout": layout.describe(),
        "enclave_memory_mib": memory,
        "instance_type": options.instance_type,
        "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(texts.items())},
    }
    texts["manifest.json"] = _json(manifest)
    return Deployment(releases, layout, memory, dict(sorted(texts.items())))


def write_deployment(deployment: Deployment, out: Path) -> list[Path]:
    """Write the files under `out` (scripts executable); returns the paths written."""
    written = []
    for rel, data in deployment.files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, 0o755 if data.startswith(b"#!") else 0o644)
        written.append(path)
    return written
