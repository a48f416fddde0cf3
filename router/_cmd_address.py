"""`python -m router address --signer ADDR`: print the signer's EVM address (and public key)."""

from __future__ import annotations

import argparse

from router._cli import add_signer_argument, add_signer_timeouts, emit_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("address", help="print the signer's EVM address")
    add_signer_argument(parser)
    parser.add_argument(
        "--json", action="store_true", help="print {address, public_key} as JSON on stdout"
    )
    add_signer_timeouts(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from router.signer_client import SignerClient

    with SignerClient.connect(
        args.signer, connect_timeout=args.connect_timeout, io_timeout=args.timeout
    ) as client:
        info = client.address()
    if args.json:
        emit_json({"address": info.address, "public_key": "0x" + info.public_key.hex()})
    else:
        print(info.address)
    return 0
