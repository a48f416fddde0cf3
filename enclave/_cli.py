"""Root of `python -m enclave`: argparse with one subcommand per module (`enclave/_cmd_<name>.py`,
listed in `COMMANDS`, each exposing `register(subparsers)`).

Handlers raise `EnclaveError` subclasses for every expected failure; this module catches them once,
prints one line on stderr and exits with the error's `exit_code` (2 bad input or configuration,
1 refused). `-v` re-raises so developers get the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from enclave.errors import EnclaveError

#: Subcommand modules, `enclave._cmd_<name>`.
COMMANDS: tuple[str, ...] = ("serve", "kms-blob", "provision", "emulator-root")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m enclave", description="The Sentinel signer (runs inside the enclave)."
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; re-raise errors with tracebacks"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"enclave._cmd_{name.replace('-', '_')}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 refused, 2 bad input/usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 on --help
        return int(e.code) if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except EnclaveError as e:
        if args.verbose:
            raise
        print(f"error: {e.diagnostics()}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
