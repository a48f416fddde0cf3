"""`python -m verify measurements FILE --key PUB.pem`: did our release key sign these measurements?

Checks the DSSE envelope next to the file (`FILE.sig`, or `--signature`), that its signature is by
the given P-384 key, and that the file (and `--provenance`, `--eif` when given) has the SHA-256 the
signed statement names. Exit 0 signed, 1 a check failed, 2 malformed input.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.table import Table

from verify._checks import results_json
from verify._cli import emit_json, stderr_console
from verify.dsse import key_id
from verify.errors import MalformedInput
from verify.signed_release import verify_release
from verify.terminal import markup_safe


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "measurements",
        help="check the release signature of a measurements file",
        description=__doc__,
    )
    parser.add_argument("file", metavar="FILE", help="measurements/<version>.json")
    parser.add_argument("--key", metavar="PUB.pem", required=True, help="the release public key")
    parser.add_argument("--signature", metavar="SIG", help="the envelope (default: FILE.sig)")
    parser.add_argument("--provenance", metavar="FILE", help="also check this provenance statement")
    parser.add_argument("--eif", metavar="IMAGE.eif", help="also check this image's SHA-256")
    parser.add_argument("--json", action="store_true", help="machine-readable result on stdout")
    parser.set_defaults(func=run)


def load_public_key(path: str | Path) -> ec.EllipticCurvePublicKey:
    """A P-384 public key from a PEM file.

    Raises:
        MalformedInput: unreadable, not PEM, or not an EC P-384 key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise MalformedInput(f"cannot read key {path}: {e.strerror}") from e
    try:
        key = load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        raise MalformedInput(f"{path} is not a PEM public key: {e}") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise MalformedInput(f"{path}: expected an EC P-384 public key")
    return key


def run(args: argparse.Namespace) -> int:
    key = load_public_key(args.key)
    check = verify_release(
        Path(args.file),
        key,
        signature=Path(args.signature) if args.signature else None,
        provenance=Path(args.provenance) if args.provenance else None,
        eif=Path(args.eif) if args.eif else None,
        fail_fast=False,
    )
    if args.json:
        emit_json(
            {
                "file": args.file,
                "key_id": key_id(key),
                "verified": bool(check),
                "checks": results_json(check.results),
                "statement": check.statement,
            }
        )
    console = stderr_console()
    table = Table(title=markup_safe(f"measurements {args.file}"))
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    for r in check.results:
        if r.error is None:
            table.add_row(r.name, "[green]pass[/]", "")
        else:
            table.add_row(r.name, "[bold red]FAIL[/]", markup_safe(r.error.diagnostics()))
    console.print(table)
    if check.statement is not None:
        predicate = check.statement["predicate"]
        console.print(
            markup_safe(f"release {predicate.get('version')} ({predicate.get('mode')}), key {key_id(key)}")
        )
    console.print("[green]OK[/]" if check else "[bold red]FAILED[/]", markup_safe(args.file))
    return check.exit_code
