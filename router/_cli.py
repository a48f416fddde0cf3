"""Root of `python -m router`: argparse with one subcommand per module.

Each subcommand lives in `router/_cmd_<name>.py` and is listed in `COMMANDS` below (adding one is a
one-line edit). A subcommand module exposes::

    def register(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("name", help="...")
        parser.set_defaults(func=run)

    def run(args: argparse.Namespace) -> int: ...   # 0 ok, 1 failed, 2 malformed input

Handlers raise `RouterError` subclasses for every expected failure; this module catches them once,
prints one line on stderr and exits with the error's `exit_code`. Data goes to stdout, status for
people to stderr. `-v` re-raises so developers get the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape

from router.errors import RouterError

#: Subcommand modules, `router._cmd_<name>`; order is the order of `--help`.
COMMANDS: tuple[str, ...] = ("sign-tx", "address", "run", "submit")


def stderr_console() -> Console:
    """The console for people: rich output on stderr, never mixed into data on stdout."""
    return Console(file=sys.stderr, highlight=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout (the machine-readable channel)."""
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")
    sys.stdout.flush()


def add_signer_argument(parser: argparse.ArgumentParser) -> None:
    """`--signer ADDR`, the signer's address, for the subcommands that talk to it directly."""
    parser.add_argument(
        "--signer",
        required=True,
        metavar="ADDR",
        help="unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT",
    )


def add_signer_timeouts(parser: argparse.ArgumentParser) -> None:
    """`--connect-timeout S` and `--timeout S`, the `SignerClient.connect` deadlines."""
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, metavar="S",
        help="keep retrying the connection for up to S seconds (default 5)",
    )  # fmt: skip
    parser.add_argument(
        # signer_client.DEFAULT_IO_TIMEOUT, literal so that --help does not import the client
        "--timeout", type=float, default=5.0, metavar="S",
        help="give up on a connected signer that has not answered within S seconds (default 5)",
    )  # fmt: skip


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m router",
        description="Parent-side tools of Sentinel: talk to the enclave signer, route transactions.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="debug logging; re-raise errors with tracebacks"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        module = importlib.import_module(f"router._cmd_{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 failed, 2 malformed input/usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 on --help
        return int(e.code) if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except RouterError as e:
        if args.verbose:
            raise
        stderr_console().print(f"[bold red]error:[/] {escape(e.diagnostics())}", markup=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1
