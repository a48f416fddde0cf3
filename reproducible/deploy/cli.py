"""`python -m reproducible deploy`: write the deployment of one or more published releases."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = sub.add_parser(
        "deploy",
        help="KMS key policy, CloudFormation template and instance set-up for published releases",
    )
    d.add_argument("--measurements", action="append", required=True, metavar="FILE",
                   help="measurements/<version>.json; repeat for a rolling upgrade (old first, "
                   "the instance runs the last)")
    d.add_argument("--out", default="build/deploy", help="output directory (default build/deploy)")
    d.add_argument("--vcpus", type=int, default=8, help="vCPUs of the instance type (default 8)")
    d.add_argument("--threads-per-core", type=int, default=2, help="SMT threads per core (default 2)")
    d.add_argument("--router-cores", type=int, default=1, help="isolated cores for the router (default 1)")
    d.add_argument("--enclave-cpus", type=int, help="vCPUs for the enclave, whole cores (default one core)")
    d.add_argument("--enclave-memory-mib", type=int,
                   help="enclave memory (default: 4x the EIF, rounded up to 256 MiB, at least 512)")
    d.add_argument("--eif", help="the image, to size it when the measurements have no sections")
    d.add_argument("--instance-type", default="c6i.2xlarge", help="template default (c6i.2xlarge)")
    d.add_argument("--parent-role-arn", help="parent role ARN for the standalone kms-key-policy.json")
    d.add_argument("--admin-arn", help="admin principal ARN for the standalone kms-key-policy.json")
    d.add_argument("--json", action="store_true", help="the manifest on stdout")
    d.set_defaults(func=_cmd_deploy)


def _cmd_deploy(args: argparse.Namespace, console: Console) -> int:
    from reproducible.deploy.generate import DeployOptions, generate_deployment, write_deployment

    deployment = generate_deployment(
        DeployOptions(
            measurements=[Path(m) for m in args.measurements],
            vcpus=args.vcpus,
            threads_per_core=args.threads_per_core,
            router_cores=args.router_cores,
            enclave_cpus=args.enclave_cpus,
            enclave_memory_mib=args.enclave_memory_mib,
            instance_type=args.instance_type,
            parent_role_arn=args.parent_role_arn,
            admin_arn=args.admin_arn,
            eif=Path(args.eif) if args.eif else None,
        )
    )
    out = Path(args.out)
    written = write_deployment(deployment, out)
    layout = deployment.layout.describe()
    console.print(
        f"wrote {len(written)} files to {out}: releases "
        f"{', '.join(r.version for r in deployment.releases)}; CPUs host {layout['host']}, router "
        f"{layout['router']}, enclave {layout['enclave']}; enclave memory "
        f"{deployment.enclave_memory_mib} MiB",
        highlight=False,
    )
    if args.json:
        print(deployment.files["manifest.json"].decode(), end="")
    return 0
