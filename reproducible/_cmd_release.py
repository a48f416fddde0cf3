"""`python -m reproducible release`: publish and sign what `python -m reproducible build` wrote.

The release key is a local PEM file in development (`--key-file`; created with
`--generate-dev-key` when missing) or an AWS KMS key in production (`--kms-key-id`, credentials and
region from the usual AWS configuration; `--kms-endpoint-url` for a local KMS such as moto).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from verify.dsse import EnvelopeSigner

# The builder's modules load lazily (as in reproducible._cli) so `--help` stays fast.
_MEASUREMENTS_DIR = Path(__file__).resolve().parents[1] / "measurements"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    r = sub.add_parser("release", help="publish measurements/<version>.json, sign it, write provenance")
    r.add_argument("--build", default="build", help="the build output directory (default: build)")
    r.add_argument("--out", default=str(_MEASUREMENTS_DIR), help="where releases are published")
    key = r.add_mutually_exclusive_group()
    key.add_argument("--key-file", help="P-384 private key PEM (development)")
    key.add_argument("--kms-key-id", help="AWS KMS key id, ARN or alias (ECC_NIST_P384)")
    r.add_argument("--generate-dev-key", action="store_true",
                   help="create --key-file (default build/release-dev-key.pem) when missing")
    r.add_argument("--kms-endpoint-url", help="KMS endpoint (tests: a local moto server)")
    r.add_argument("--kms-region", help="AWS region of the KMS key")
    r.add_argument("--sign-eif", action="store_true",
                   help="sign the EIF with the release key (PCR8) and publish the signed image")
    r.add_argument("--public-key-out", help="write the release public key PEM here")
    r.add_argument("--deploy", metavar="DIR",
                   help="also write this release's deployment (python -m reproducible deploy, "
                        "defaults) into DIR and name its files in the provenance")
    r.add_argument("--inputs-location", metavar="URL-OR-PATH",
                   help="where this release's pinned inputs are published (`inputs export`, or "
                        "an OCI artifact of them): recorded in the provenance")
    r.add_argument("--inputs", metavar="PATH",
                   help="the exported inputs published at --inputs-location, as a local "
                        "directory or OCI layout (default: --inputs-location when it is a "
                        "path): checked to be this build's, their manifest digest recorded in "
                        "the provenance")
    r.add_argument("--json", action="store_true", help="what was published, as JSON on stdout")
    r.set_defaults(func=_cmd_release)


def _signer(args: argparse.Namespace, build: Path) -> EnvelopeSigner:
    from reproducible.release_keys import KmsReleaseKey, LocalReleaseKey, ReleaseKeyError

    if args.kms_key_id:
        import boto3

        client = boto3.client("kms", region_name=args.kms_region, endpoint_url=args.kms_endpoint_url)
        return KmsReleaseKey(args.kms_key_id, client=client)
    path = Path(args.key_file) if args.key_file else build / "release-dev-key.pem"
    if not path.exists() and args.generate_dev_key:
        return LocalReleaseKey.generate(path)
    if not path.exists():
        raise ReleaseKeyError(f"no release key at {path}: pass --key-file, --kms-key-id or --generate-dev-key")
    return LocalReleaseKey.from_pem_file(path)


def _cmd_release(args: argparse.Namespace, console: Console) -> int:
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from reproducible.build import EIF_NAME, MEASUREMENTS_NAME, project_version
    from reproducible.release import publish_release

    build = Path(args.build)
    inputs_location = None
    if args.inputs_location is not None:
        from reproducible.provenance import check_inputs_location

        inputs_location = check_inputs_location(args.inputs_location)
    inputs = Path(args.inputs) if args.inputs else None
    if inputs is None and inputs_location is not None and Path(inputs_location).exists():
        inputs = Path(inputs_location)  # check_inputs_location accepted it as a path
    signer = _signer(args, build)
    eif, measurements = build / EIF_NAME, build / MEASUREMENTS_NAME
    if args.sign_eif:
        from reproducible.release_keys import EifSigningKey
        from reproducible.sign_eif import sign_built_eif

        eif, measurements = sign_built_eif(build, build / "signed", EifSigningKey.self_signed(signer))
        console.print(f"signed {eif} (PCR8 published with the release)")
    byproducts = None
    if args.deploy:
        import hashlib

        from reproducible.deploy.generate import (
            DeployOptions,
            generate_deployment,
            write_deployment,
        )

        # Generated from the measurements about to be published, before the provenance is
        # written, so that the provenance names what a fund will deploy.
        deployment = generate_deployment(DeployOptions(measurements=[measurements], eif=eif))
        write_deployment(deployment, Path(args.deploy))
        byproducts = {f"deploy/{rel}": hashlib.sha256(data).hexdigest()
                      for rel, data in deployment.files.items()}
        console.print(f"deployment of this release written to {args.deploy}")
    artifacts = publish_release(
        eif=eif,
        measurements=measurements,
        out_dir=Path(args.out),
        signer=signer,
        builder_version=project_version(),
        byproducts=byproducts,
        inputs_location=inputs_location,
        inputs=inputs,
    )
    public_pem = signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    public_out = Path(args.public_key_out) if args.public_key_out else build / "release-key.pub.pem"
    public_out.write_bytes(public_pem)
    console.print(f"published {artifacts.measurements}, {artifacts.provenance}")
    console.print(f"signed {artifacts.signature} with key {artifacts.key_id} ({signer!r})")
    console.print(f"check: python -m verify measurements {artifacts.measurements} --key {public_out}")
    if args.json:
        print(json.dumps({
            "measurements": str(artifacts.measurements),
            "signature": str(artifacts.signature),
            "provenance": str(artifacts.provenance),
            "readme": str(artifacts.readme),
            "key_id": artifacts.key_id,
            "public_key": str(public_out),
        }, indent=2))
    return 0
