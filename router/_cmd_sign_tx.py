"""`python -m router sign-tx --signer ADDR --tx TX.json`: print the raw signed transaction as 0x-hex.

TX.json uses the Ethereum JSON-RPC field names (chainId, nonce, to, value, gas, maxFeePerGas,
maxPriorityFeePerGas, data, or gasPrice for legacy EIP-155); see `router.txjson`. A `from` must be
the signer's own address (it is checked against the signer's GET_KEY answer before signing); a
mixed-case address must be EIP-55 checksummed; a contract creation needs `"to": null` or `--create`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from router._cli import add_signer_argument, add_signer_timeouts, emit_json
from router.errors import MalformedInput


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "sign-tx", help="have the signer sign a transaction (JSON-RPC fields)"
    )
    add_signer_argument(parser)
    parser.add_argument(
        "--tx", required=True, metavar="TX.json", help="transaction file ('-' reads stdin)"
    )
    parser.add_argument(
        "--create", action="store_true",
        help='the transaction deploys a contract (no "to"; same as "to": null)',
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print {raw, hash} as JSON on stdout")
    add_signer_timeouts(parser)
    parser.set_defaults(func=run)


def _read_tx(path: str) -> object:
    import sys

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MalformedInput(f"{path}: cannot read transaction file ({e})") from e
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MalformedInput(f"{path}: not JSON ({e})") from e


def run(args: argparse.Namespace) -> int:
    from router.signer_client import SignerClient
    from router.txjson import parse_tx

    obj = _read_tx(args.tx)
    parse_tx(obj, create=args.create)  # every check that needs no signer, before connecting
    with SignerClient.connect(
        args.signer, connect_timeout=args.connect_timeout, io_timeout=args.timeout
    ) as client:
        sender = None
        if isinstance(obj, dict) and "from" in obj:
            sender = client.address().address_bytes
        signed = client.sign_tx(parse_tx(obj, signer_address=sender, create=args.create))
    if args.json:
        emit_json({"raw": "0x" + signed.raw.hex(), "hash": "0x" + signed.hash.hex()})
    else:
        print("0x" + signed.raw.hex())
    return 0
