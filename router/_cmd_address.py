"""`python -m router address --signer ADDR`: print the signer's EVM address (and public key)."""

from __future__ import annotations

import argparse

from router._cli import emit_json


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("address", help="print the signer's EVM address")
    parser.add_argument(
        "--signer",
        required=True,
        metavar="ADDR",
        help="unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT",
    )
    parser.add_argument(
        "--json", action="store_true", help="print {address, public_key} as JSON on stdout"
    )
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, metavar="S",
        help="keep retrying the connection for up to S seconds (default 5)",
    )  # fmt: skip
    parser.add_argument(
        # signer_client.DEFAULT_IO_TIMEOUT, literal so that --help does not import the client
        "--timeout", type=float, default=5.0, metavar="S",
        help="give up on a connected signer that has not answered within S seconds (default 5)",
    )  # fmt: skip
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
