"""`python -m verify pcr IMAGE.eif [--measurements FILE] [--json]` (placeholder until the engine lands)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("pcr", help="compute an EIF's PCRs and compare with published ones")
    parser.add_argument("image", metavar="IMAGE.eif")
    parser.add_argument("--measurements", metavar="FILE")
    parser.add_argument("--json", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from verify.errors import MalformedInput

    raise MalformedInput("verify pcr is not implemented yet")
