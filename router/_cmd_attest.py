"""`python -m router attest --signer ADDR [--nonce HEX] [--out DOC]`: fetch the signer's
attestation document.

Without --nonce a fresh random 32-byte nonce is used; it is printed on stderr (and in --json) so
that `python -m verify attestation DOC --nonce HEX` can check the document answers this request.
The document (raw COSE_Sign1 CBOR) goes to --out, or base64 on stdout. Nothing is verified here:
`verify attestation` does that (or in one step: `verify attestation --signer ADDR`).
"""

from __future__ import annotations

import argparse
import base64
import secrets
import sys
from pathlib import Path

from router._cli import add_signer_argument, add_signer_timeouts, emit_json
from router.errors import MalformedInput


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "attest", help="fetch the signer's attestation document (verify it with verify attestation)"
    )
    add_signer_argument(parser)
    parser.add_argument("--nonce", metavar="HEX", help="nonce to bind (default: 32 random bytes)")
    parser.add_argument("--out", metavar="DOC", help="write the raw CBOR document here")
    parser.add_argument(
        "--json", action="store_true", help="print {nonce, out, document (base64)} on stdout"
    )
    add_signer_timeouts(parser)
    parser.set_defaults(func=run)


def _nonce(text: str | None) -> bytes:
    if text is None:
        return secrets.token_bytes(32)
    try:
        nonce = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raise MalformedInput(f"--nonce: not hex: {text!r}") from None
    if not nonce:
        raise MalformedInput("--nonce: empty; omit it for a fresh random nonce")
    return nonce


def run(args: argparse.Namespace) -> int:
    from router.signer_client import SignerClient

    nonce = _nonce(args.nonce)
    with SignerClient.connect(
        args.signer, connect_timeout=args.connect_timeout, io_timeout=args.timeout
    ) as client:
        document = client.attest(nonce=nonce)
    if args.out:
        try:
            Path(args.out).write_bytes(document)
        except OSError as e:
            raise MalformedInput(f"--out {args.out}: {e.strerror or e}") from e
    encoded = base64.b64encode(document).decode()
    if args.json:
        emit_json({"nonce": nonce.hex(), "out": args.out,
                   "document": None if args.out else encoded})  # fmt: skip
    elif not args.out:
        print(encoded)
    print(f"nonce {nonce.hex()} ({len(document)}-byte document"
          f"{' in ' + args.out if args.out else ''})", file=sys.stderr)  # fmt: skip
    return 0
