"""`python -m enclave kms-blob`: create a signing key that only ever exists inside KMS and enclaves.

Operator side (run with AWS credentials from the usual boto3 chain): draws a fresh secp256k1 secret,
encrypts it with KMS `Encrypt` under `--key-id` and writes only the ciphertext blob to `--out`. The
secret is never printed or written; the EVM address to fund is printed (stdout, `--json` for
machines). The enclave loads the blob with `enclave.kms.load_kms_key`, which only succeeds when the
KMS key policy admits its attestation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from enclave.errors import EnclaveError
from enclave.kms import generate_key_blob, kms_client


class KmsBlobUsageError(EnclaveError):
    """Bad arguments for kms-blob (exit 2)."""


def _context(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise KmsBlobUsageError(f"--context {pair!r}: expected KEY=VALUE")
        out[key] = value
    return out


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "kms-blob",
        help="create a new signing key as a KMS ciphertext blob (operator side)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key-id", required=True, help="KMS key id, ARN or alias that encrypts the key")
    p.add_argument("--out", required=True, type=Path, help="file to write the ciphertext blob to")
    p.add_argument(
        "--region", default=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    )
    p.add_argument("--endpoint-url", default=None, help="KMS endpoint (default: the region's)")
    p.add_argument(
        "--context",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="encryption context entry (repeatable); the enclave must pass the same",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--json", action="store_true", help="print a JSON object on stdout")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.region:
        raise KmsBlobUsageError("no region: pass --region or set AWS_REGION")
    if args.out.exists() and not args.force:
        raise KmsBlobUsageError(f"{args.out} exists; pass --force to overwrite it")
    context = _context(args.context)
    client = kms_client(args.region, endpoint_url=args.endpoint_url)
    blob, address = generate_key_blob(client, args.key_id, encryption_context=context or None)
    try:
        args.out.write_bytes(blob)
    except OSError as e:
        raise KmsBlobUsageError(f"cannot write {args.out}: {e.strerror}") from None
    if args.json:
        print(
            json.dumps(
                {
                    "address": address,
                    "blob": str(args.out),
                    "key_id": args.key_id,
                    "encryption_context": context,
                }
            )
        )
    else:
        print(address)
    print(f"wrote the KMS blob of a new signing key for {address} to {args.out}", file=sys.stderr)
    return 0
