"""`python -m enclave provision`: the parent's side of run-time key provisioning.

Sends the KMS blob and the parent's AWS credentials (boto3's default chain: on an instance, its
role) to a production enclave waiting in `enclave serve --kms-provision`, and prints the address of
the key the enclave loaded. See `enclave.provision` for what is sent and why.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from enclave.errors import KeyLoadError
from enclave.provision import MAX_MESSAGE, Provision, send_provision


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "provision", help="parent side: send the KMS key blob and AWS credentials to the enclave"
    )
    p.add_argument("--enclave", required=True, metavar="ADDR", help="e.g. vsock:16:5001")
    p.add_argument("--blob", required=True, metavar="FILE", help="KMS ciphertext of the key")
    p.add_argument("--key-id", metavar="ID", help="the KMS key that encrypted the blob")
    p.add_argument(
        "--context", action="append", default=[], metavar="KEY=VALUE", help="encryption context"
    )
    p.add_argument(
        "--no-credentials",
        action="store_true",
        help="send no AWS credentials (the enclave then has none: only for test endpoints)",
    )
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="answer timeout")
    p.add_argument("--json", action="store_true", help='print {"address": ...} on stdout')
    p.set_defaults(func=run)


def _credentials() -> tuple[str, str, str | None]:
    import boto3

    creds = boto3.Session().get_credentials()
    if creds is None:
        raise KeyLoadError("no AWS credentials on this host (boto3's default chain found none)")
    frozen = creds.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token


def run(args: argparse.Namespace) -> int:
    path = Path(args.blob)
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise KeyLoadError(f"--blob {path}: cannot read ({e.strerror or e})") from None
    if not blob or len(blob) > MAX_MESSAGE // 2:
        raise KeyLoadError(f"--blob {path}: {len(blob)} bytes is not a KMS ciphertext")
    context = {}
    for pair in args.context:
        k, sep, v = pair.partition("=")
        if not sep or not k:
            raise KeyLoadError(f"--context {pair!r}: expected KEY=VALUE")
        context[k] = v
    access, secret, token = (None, None, None) if args.no_credentials else _credentials()
    address = send_provision(
        args.enclave,
        Provision(blob, access, secret, token, args.key_id, context or None),
        timeout=args.timeout,
    )
    print(f"enclave loaded the key of {address}", file=sys.stderr)
    if args.json:
        print(json.dumps({"address": address}))
    return 0
